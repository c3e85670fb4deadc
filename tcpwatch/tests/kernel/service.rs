//! The daemon as the shipped systemd unit runs it: root with exactly the
//! unit's capabilities (read from `deploy/systemd/tcpwatch.service`), in
//! its own network namespace (here the test's, entered first, as the unit
//! runs in the host's), with the default scope. With one capability fewer
//! it names what is missing.
use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    common::{root_available, tool_available},
    daemon::{Daemon, NsWorker, samples},
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");

fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/tcpwatch.service"
    ))
    .unwrap()
}

/// The unit's capability set, as setpriv names them (`bpf`, `perfmon`...).
fn unit_capabilities() -> Vec<String> {
    let unit = unit();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    let ambient = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit sets AmbientCapabilities");
    assert_eq!(line, ambient, "bounding and ambient sets differ");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// nsenter into `ns`, then setpriv down to `caps` (root keeps only what its
/// bounding set allows across exec) and the unit's group (Group=), then
/// the command that follows.
fn wrapper(ns: &str, caps: &[String]) -> Vec<String> {
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let unit = unit();
    let group = unit
        .lines()
        .find_map(|l| l.strip_prefix("Group="))
        .expect("the unit sets Group=");
    vec![
        "nsenter".into(),
        format!("--net={ns}"),
        "setpriv".into(),
        format!("--bounding-set=-all{set}"),
        format!("--regid={}", group.trim()),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

/// A listener of user nobody in `ns` that never accepts; its port.
struct NobodyListener(Child, u16);

impl NobodyListener {
    fn start(ns: &str) -> NobodyListener {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([
                "perl",
                "-MIO::Socket::INET",
                "-e",
                "$s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16) or die $!; $| = 1; print $s->sockport, qq(\\n); sleep 600",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        NobodyListener(child, line.trim().parse().expect("perl printed its port"))
    }
}

impl Drop for NobodyListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Scrapes until `ready` holds for the metrics text (up to 15 s).
fn scrape_until(d: &Daemon, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = d.scrape();
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; daemon said:\n{}\n{text}",
            d.all_stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has(text: &str, name: &str, parts: &[&str]) -> bool {
    samples(text, name)
        .keys()
        .any(|labels| parts.iter().all(|p| labels.contains(p)))
}

#[test]
fn the_daemon_runs_with_only_the_units_capabilities_and_names_a_missing_one() {
    let test = "the_daemon_runs_with_only_the_units_capabilities_and_names_a_missing_one";
    if !root_available(test)
        || !tool_available(test, "curl", "curl")
        || !tool_available(test, "perl", "perl")
    {
        return;
    }
    let caps = unit_capabilities();
    // The unit's group, as its package makes it (the daemon gives its
    // control socket to it, which needs membership without CAP_CHOWN).
    let _group = crate::common::Group::ensure();
    let ns = NsWorker::new();
    let listener = NobodyListener::start(&ns.path);
    let port = listener.1;
    let netns = format!("netns=\"{}\"", ns.inode);

    // Exactly the unit's set: transitions, the census, and the owner of
    // another user's listener (its fd table read through procfs).
    let d = Daemon::start_wrapped(&wrapper(&ns.path, &caps), Some(&ns.path), &[]);
    ns.run(move || drop(TcpStream::connect(("127.0.0.1", port)).unwrap()));
    let text = scrape_until(&d, "the connection, the census and perl's listener", |t| {
        has(
            t,
            "tcpwatch_transitions_total",
            &[&netns, "to=\"ESTABLISHED\""],
        ) && has(
            t,
            "tcpwatch_process_sockets",
            &["comm=\"perl\"", "state=\"LISTEN\""],
        )
    });
    assert!(has(
        &text,
        "tcpwatch_sockets",
        &[&netns, "state=\"LISTEN\""]
    ));
    let said = d.all_stderr();
    assert!(
        !said.contains("CAP_"),
        "a capability missing with the unit's set:\n{said}"
    );
    assert!(d.stop().success());

    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        match missing.as_str() {
            // The probe cannot load: exit 77, naming both.
            "bpf" | "perfmon" => {
                let out = Command::new(&wrapper(&ns.path, &fewer)[0])
                    .args(&wrapper(&ns.path, &fewer)[1..])
                    .args([
                        BIN,
                        "daemon",
                        // Bounded, should it start after all.
                        "--duration",
                        "2",
                        "--metrics-addr",
                        "127.0.0.1:0",
                        "--control-socket",
                    ])
                    .arg(
                        std::env::temp_dir()
                            .join(format!("tcpwatch-caps-{}.sock", std::process::id())),
                    )
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(77), "without {missing}: {err}");
                assert!(
                    err.contains("CAP_BPF and CAP_PERFMON"),
                    "without {missing}: {err}"
                );
            }
            // Runs, counts, and says why other users' sockets have no owner.
            "sys_ptrace" | "dac_read_search" => {
                let d = Daemon::start_wrapped(&wrapper(&ns.path, &fewer), Some(&ns.path), &[]);
                // An owner scan has run once the daemon's own metrics
                // listener (root's, readable) has its owner.
                let text = scrape_until(&d, "an owner scan", |t| {
                    has(t, "tcpwatch_sockets", &[&netns, "state=\"LISTEN\""])
                        && has(t, "tcpwatch_process_sockets", &["comm=\"tcpwatch\""])
                });
                assert!(
                    !has(&text, "tcpwatch_process_sockets", &["comm=\"perl\""]),
                    "without {missing} perl's listener still has its owner"
                );
                let said = d.all_stderr();
                assert!(
                    said.contains("CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are needed"),
                    "without {missing}: {said}"
                );
                assert!(d.stop().success());
            }
            other => panic!("the unit grants {other}: add what it is needed for here"),
        }
    }
    drop(listener);
}

/// Beyond the unit's default scope: every namespace needs setns
/// (CAP_SYS_ADMIN); without it the daemon says so instead of censusing
/// nothing there in silence.
#[test]
fn all_namespaces_without_cap_sys_admin_says_so() {
    let test = "all_namespaces_without_cap_sys_admin_says_so";
    if !root_available(test) || !tool_available(test, "curl", "curl") {
        return;
    }
    let caps = unit_capabilities();
    assert!(!caps.iter().any(|c| c == "sys_admin"), "{caps:?}");
    let _group = crate::common::Group::ensure();
    let ns = NsWorker::new();
    // In the host's namespace, censusing the test's: it must enter it.
    let host = format!("/proc/{}/ns/net", std::process::id());
    let d = Daemon::start_wrapped(&wrapper(&host, &caps), None, &["--all-netns"]);
    ns.run(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        drop(TcpStream::connect(l.local_addr().unwrap()).unwrap());
    });
    d.wait_for_log("setns needs CAP_SYS_ADMIN");
    assert!(d.stop().success());
}
