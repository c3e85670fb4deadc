//! The `tcpwatch` binary as a user runs it.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::root_available;

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");

/// Parses the `tcpwatch-accounting:` line of stderr into (key, value) pairs.
fn accounting(stderr: &str) -> std::collections::HashMap<String, u64> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tcpwatch-accounting: "))
        .unwrap_or_else(|| panic!("no accounting line in:\n{stderr}"));
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn trace_json_prints_one_object_per_transition_and_accounts_at_exit() {
    if !root_available("trace_json_prints_one_object_per_transition_and_accounts_at_exit") {
        return;
    }
    let _witness = crate::common::witness_may_count();
    // In a thread with its own fd table: no child another test forks holds
    // (and closes) its sockets, so every owner is checked exactly; and
    // trace's start census must find the listener in that table, which
    // procfs's process table does not list.
    std::thread::spawn(trace_json_in_a_threads_own_fd_table)
        .join()
        .unwrap();
}

fn trace_json_in_a_threads_own_fd_table() {
    crate::common::private_fd_table();
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut child, seen) = start_attached(
        &[
            "trace",
            "--witness",
            "--json",
            "--port",
            &port.to_string(),
            "--count",
            "11",
            "--duration",
            "20",
        ],
        Stdio::piped(),
    );
    let mut stderr = child.stderr.take().unwrap();
    // The listener already exists: its CLOSE->LISTEN is not seen, so one
    // connection plus the listener's close make 11.
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    drop(server);
    drop(listener);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "--count did not stop it"
    );
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let stderr = seen + &rest;
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11, "{stdout}");
    let me = std::process::id();
    for l in &lines {
        // This thread made every transition or owns the listener that the
        // server side comes from (found by trace's start census).
        assert_eq!((&l["pid"], &l["tid"]), (&me.into(), &tid.into()), "{l}");
        assert_eq!(l["laddr"], "127.0.0.1");
        assert!(l["lport"] == port || l["rport"] == port, "{l}");
    }
    assert_eq!(lines[0]["oldstate"], "CLOSE");
    assert_eq!(lines[0]["newstate"], "SYN-SENT");
    let a = accounting(&stderr);
    assert_eq!(a["written"], 11);
    assert_eq!(a["emitted"], a["delivered"], "{stderr}");
    assert_eq!(
        a["counted"],
        a["emitted"] + a["ringbuf_dropped"],
        "{stderr}"
    );
    assert_eq!(a["unrecovered"], 0);
    // The perf witness runs on the BTF hook and says what it saw (its
    // count covers the whole host; this trace's own transitions are all
    // checked above).
    assert_eq!(a["witness"], 1, "{stderr}");
    assert!(
        stderr.contains("firings the kernel ran no program for"),
        "{stderr}"
    );
}

/// Starts `tcpwatch` with `args` and waits until it says it is attached;
/// returns the child and what it printed so far.
fn start_attached(args: &[&str], stdout: Stdio) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("Ctrl-C") {
        assert_eq!(
            stderr.read(&mut byte).unwrap(),
            1,
            "tcpwatch exited early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    child.stderr = Some(stderr);
    (child, String::from_utf8_lossy(&seen).into_owned())
}

/// A program on the classic tracepoint that returns 0 (here tcpwatch's own
/// `--hook classic`) stops perf from counting firings: a BTF tracer beside
/// it must give its witness up and say why, not report "none lost".
#[test]
fn a_classic_tracer_beside_blinds_the_witness_and_it_says_so() {
    if !root_available("a_classic_tracer_beside_blinds_the_witness_and_it_says_so") {
        return;
    }
    let _classic = crate::common::classic_tracepoint_in_use();
    let (mut classic, _) = start_attached(
        &["trace", "--hook", "classic", "--duration", "20"],
        Stdio::null(),
    );
    // In a namespace of the test's own, filtered in the kernel, so that
    // `counted` is this test's traffic whatever else the host does.
    let ns = crate::daemon::NsWorker::new();
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let (btf, seen) = start_attached(
        &[
            "trace",
            "--witness",
            "--hook",
            "btf",
            "--duration",
            "1.5",
            "--netns",
            &ns.path,
        ],
        Stdio::null(),
    );
    ns.run(move || {
        for _ in 0..20 {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            drop(client);
            drop(server);
        }
    });
    let out = btf.wait_with_output().unwrap();
    let _ = classic.kill();
    let _ = classic.wait();
    let stderr = seen + &String::from_utf8_lossy(&out.stderr);
    let a = assert_no_witness(out.status, &stderr, "firings behind the programs");
    // 20 connections of 10 transitions, and the listener's LISTEN -> CLOSE
    // (its CLOSE -> LISTEN came before the trace).
    assert_eq!(a["counted"], 201, "{stderr}");
}

/// A trace run's account without a witness: it ran, says why, and its
/// accounting line says `witness=0`.
fn assert_no_witness(
    status: std::process::ExitStatus,
    stderr: &str,
    why: &str,
) -> std::collections::HashMap<String, u64> {
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains(why), "no \"{why}\" in: {stderr}");
    let a = accounting(stderr);
    assert_eq!(a["witness"], 0, "{stderr}");
    a
}

/// Without the witness (the default) the account says it could not count
/// firings the kernel runs no program for, rather than printing a count it
/// did not take; `--no-witness` overrides `--witness` from a file.
#[test]
fn trace_without_witness_says_so_and_claims_no_count() {
    if !root_available("trace_without_witness_says_so_and_claims_no_count") {
        return;
    }
    let out = Command::new(BIN)
        .args(["trace", "--duration", "0.3", "--port", "9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let a = assert_no_witness(
        out.status,
        &stderr,
        "no perf counter of the tracepoint (off; --witness audits with one)",
    );
    assert_eq!(a["not_run"], 0, "{stderr}");
}

/// trace prints transitions only: it holds the transition programs and no
/// signal program (resets, SYN-ACKs, connect() failures), whose cost would
/// buy it nothing (the syscall tracepoint's taxes every system call).
#[test]
fn trace_holds_no_signal_program() {
    if !root_available("trace_holds_no_signal_program") {
        return;
    }
    let (mut child, _) = start_attached(&["trace", "--hook", "btf", "--port", "9"], Stdio::null());
    let held: Vec<String> = crate::failures::programs_held(child.id())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(held, ["tcpwatch_catch", "tcpwatch_main"], "{held:?}");
}

/// `bin` run as user nobody, without groups or capabilities (root only).
fn as_nobody(bin: &std::path::Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .arg(bin);
    c
}

#[test]
fn unprivileged_user_gets_a_clear_error_and_exit_77() {
    // Needs root to switch to nobody; as a normal user the check is direct.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // The build directory may not be readable by nobody: run a copy.
    let dir = std::env::temp_dir().join(format!("tcpwatch-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("tcpwatch");
    std::fs::copy(BIN, &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = if root {
        as_nobody(&bin)
    } else {
        Command::new(&bin)
    };
    let out = cmd.args(["trace", "--count", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("needs CAP_BPF and CAP_PERFMON (or root)"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one sentence, no backtrace: {stderr}"
    );
    // Entering another namespace is a permission error too.
    if root {
        let ns = crate::daemon::NsWorker::new();
        let out = as_nobody(&bin)
            .args(["states", "--netns", &ns.path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // nobody may not even look at a root thread's namespace file.
        assert_eq!(out.status.code(), Some(77), "{stderr}");
        // Its own namespace it may census, and is told what it cannot see.
        let out = as_nobody(&bin).args(["states", "-p"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("need root"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let out = Command::new(BIN)
        .args(["trace", "--state", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown TCP state `bogus`"));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tcpwatch 0."));
}

/// `trace | head -1` on a quiet host: the reader takes the header and
/// goes; trace notices within its flush interval without writing, prints
/// its account and exits 141, however quiet the host is.
#[test]
fn trace_ends_promptly_when_its_reader_goes_and_says_so() {
    let test = "trace_ends_promptly_when_its_reader_goes_and_says_so";
    if !root_available(test) {
        return;
    }
    // A namespace nobody uses: nothing to write after the header.
    let ns = crate::daemon::NsWorker::new();
    let (mut child, _) = start_attached(&["trace", "--netns", &ns.path], Stdio::piped());
    let mut out = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\n") {
        assert_eq!(out.read(&mut byte).unwrap(), 1);
        first.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&first).starts_with("TIME(UTC)"));
    let closed = Instant::now();
    drop(out);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "still running 5 s after its reader went"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{test}: ended {:?} after its reader went", closed.elapsed());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(stderr.contains("output closed early"), "{stderr}");
    accounting(&stderr);
}

/// `trace > /dev/full`: the failure is said and is a failure exit.
#[test]
fn trace_to_a_full_disk_fails() {
    let test = "trace_to_a_full_disk_fails";
    if !root_available(test) {
        return;
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(BIN)
        .args(["trace", "-d", "3"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let a = accounting(&stderr);
    // Every delivered transition is written, dropped or filtered.
    assert_eq!(
        a["delivered"],
        a["written"] + a["output_dropped"] + a["filtered"],
        "{stderr}"
    );
}

/// Reads `child`'s stderr until a line containing `needle` has come;
/// returns what was read.
fn stderr_until(child: &mut std::process::Child, needle: &str) -> String {
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert_eq!(
            stderr.read(&mut byte).unwrap(),
            1,
            "tcpwatch exited before saying {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    child.stderr = Some(stderr);
    String::from_utf8_lossy(&seen).into_owned()
}

/// Waits for `child` to end by itself, at most `limit`.
fn ends_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let since = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if since.elapsed() >= limit {
            let _ = child.kill();
            let mut said = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut said);
            }
            panic!("still running after {limit:?}; it said:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `child`'s stdout on a thread: a pipe left unread would stall it.
fn read_stdout(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    })
}

/// Waits at most `limit` for `child` to end by itself; its status, what
/// `reader` read of its stdout, and the rest of its stderr.
fn finish(
    child: &mut std::process::Child,
    reader: std::thread::JoinHandle<String>,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let status = ends_within(child, limit);
    let stdout = reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stdout, stderr)
}

/// `trace --netns NAME` holds the namespace: once its name is deleted, a
/// new namespace cannot take its inode while trace runs, nothing of the
/// new one is shown, and trace ends by itself saying the namespace is gone.
#[test]
fn trace_holds_its_namespace_so_a_recycled_inode_is_never_followed() {
    let test = "trace_holds_its_namespace_so_a_recycled_inode_is_never_followed";
    if !root_available(test) {
        return;
    }
    let a = crate::common::NamedNetns::new("pin-a");
    let a_ino = crate::common::inode_of(a.path());
    let (mut child, _) = start_attached(&["trace", "--json", "--netns", &a.0], Stdio::piped());
    let reader = read_stdout(&mut child);
    drop(a); // `ip netns del`: only trace's pin holds it now
    let b = crate::common::NamedNetns::new("pin-b");
    let b_ino = crate::common::inode_of(b.path());
    b.run(|| crate::common::connect_n(20));
    // Trace checks once a second whether its namespace is gone; if that
    // came before `b` was made, the pin's window was not exercised.
    if child.try_wait().unwrap().is_none() {
        assert_ne!(b_ino, a_ino, "a new namespace took the inode trace holds");
        let pinned = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .unwrap()
            .flatten()
            .any(|e| {
                use std::os::unix::fs::MetadataExt;
                // The link names the deleted path; the file is the namespace.
                std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == u64::from(a_ino))
            });
        assert!(pinned, "trace keeps its namespace open");
    } else {
        eprintln!("{test}: trace ended before the second namespace was made");
    }
    let (status, shown, stderr) = finish(&mut child, reader, Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert_eq!(shown, "", "nothing of the new namespace is shown");
    assert!(stderr.contains("is gone"), "{stderr}");
}

/// `trace --netns NAME --wait` started before the namespace exists keeps
/// everything of it from its first moment: 400 connections made right
/// after `ip netns add` are all shown, then trace ends when it is deleted.
#[test]
fn trace_waits_for_a_namespace_and_loses_nothing_of_its_start() {
    let test = "trace_waits_for_a_namespace_and_loses_nothing_of_its_start";
    if !root_available(test) {
        return;
    }
    let name = format!("tcpwatch-test-{}-wait", std::process::id());
    let mut child = Command::new(BIN)
        .args(["trace", "--json", "--netns", &name, "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut child, "waiting for network namespace");
    let reader = read_stdout(&mut child);
    let ns = crate::common::NamedNetns::new("wait");
    assert_eq!(ns.0, name);
    let ino = crate::common::inode_of(ns.path());
    let began = Instant::now();
    ns.run(|| crate::common::connect_n(400));
    eprintln!("{test}: 400 connections in {:?}", began.elapsed());
    drop(ns);
    let (status, shown, stderr) = finish(&mut child, reader, Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("is here") && stderr.contains("is gone"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().all(|l| l["netns"] == ino),
        "only its namespace"
    );
    // Each connection: 5 client and 5 server transitions; the listener's
    // CLOSE -> LISTEN and LISTEN -> CLOSE. All captured and in scope: every
    // one written, or (in a slow emulated guest, where the writer lagged
    // the burst) counted as dropped at output, never lost.
    let a = accounting(&stderr);
    assert_eq!(a["wait_dropped"], 0, "{stderr}");
    assert_eq!(a["ringbuf_dropped"], 0, "{stderr}");
    assert_eq!(a["delivered"] - a["filtered"], 4002, "{stderr}");
    assert_eq!(a["written"] + a["output_dropped"], 4002, "{stderr}");
    assert_eq!(lines.len() as u64, a["written"], "{stderr}");
    if a["output_dropped"] > 0 {
        eprintln!(
            "{test}: {} dropped at output (a slow writer)",
            a["output_dropped"]
        );
    }
}

/// `--wait` for a namespace that never comes: the run ends as asked, says
/// so, and everything it captured meanwhile is filtered, not lost.
#[test]
fn trace_waiting_for_a_namespace_that_never_comes_filters_all_it_saw() {
    if !root_available("trace_waiting_for_a_namespace_that_never_comes_filters_all_it_saw") {
        return;
    }
    let name = format!("tcpwatch-test-{}-never", std::process::id());
    let out = Command::new(BIN)
        .args(["trace", "--netns", &name, "--wait", "-d", "0.5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("never appeared"), "{stderr}");
    let a = accounting(&stderr);
    assert_eq!((a["written"], a["wait_dropped"]), (0, 0), "{stderr}");
    assert_eq!(a["delivered"], a["filtered"], "{stderr}");
}

/// `trace` names what it lost at a socket's end too: with every 13th
/// firing never run (fault injection), the two censuses at its stop count
/// exactly the sockets whose last shown transition left them open and that
/// are gone, never one still open, and the run exits 3.
#[cfg(feature = "fault-injection")]
#[test]
fn trace_names_the_closes_it_lost_by_two_censuses_at_its_stop() {
    use tcpwatch::core::sockets::censused;
    use tcpwatch_common::TcpState;
    if !root_available("trace_names_the_closes_it_lost_by_two_censuses_at_its_stop") {
        return;
    }
    const N: usize = 200;
    const KEPT: usize = 5;
    let ns = crate::common::NamedNetns::new("trace-last");
    let (mut child, _) = start_attached(
        &[
            "trace",
            "--json",
            "--netns",
            &ns.0,
            "--simulate-not-run-every",
            "13",
        ],
        Stdio::piped(),
    );
    let reader = read_stdout(&mut child);
    // N connections opened and closed (client first), then KEPT held open
    // across the stop.
    let (listener, kept) = ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        drop(crate::common::held_connections(&listener, to, N));
        let kept = crate::common::held_connections(&listener, to, KEPT);
        (listener, kept)
    });
    let kept_ports: std::collections::HashSet<u64> = kept
        .iter()
        .map(|(c, _)| u64::from(c.local_addr().unwrap().port()))
        .collect();
    // SAFETY: a signal to our own child, still running (not yet reaped).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let (status, shown, stderr) = finish(&mut child, reader, Duration::from_secs(20));
    drop((listener, kept));
    // Each socket's last shown state (a freed address taken by a new
    // socket shows the new one's: a loss before that is a chain break).
    let mut last = std::collections::HashMap::<String, (u8, bool)>::new();
    for line in shown.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let state = TcpState::parse(v["newstate"].as_str().unwrap()).unwrap() as u8;
        let port = |k: &str| v[k].as_u64().unwrap();
        let is_kept = kept_ports.contains(&port("lport")) || kept_ports.contains(&port("rport"));
        last.insert(v["skaddr"].as_str().unwrap().to_owned(), (state, is_kept));
    }
    let open_kept = last.values().filter(|&&(s, k)| k && censused(s)).count();
    let unclosed = last.values().filter(|&&(s, k)| !k && censused(s)).count() as u64;
    let a = accounting(&stderr);
    eprintln!(
        "{} lines, {unclosed} sockets left open by what was shown, {open_kept} kept open; {a:?}",
        shown.lines().count()
    );
    // Every delivered line was written: the output is the follower's view.
    assert_eq!(a["output_dropped"], 0, "{stderr}");
    assert!(unclosed > 0, "no close was lost: {stderr}");
    assert_eq!(a["sockets_vanished"], unclosed, "{stderr}");
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("sockets vanished from two censuses in a row"),
        "{stderr}"
    );
}
