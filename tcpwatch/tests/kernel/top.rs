//! `tcpwatch top` in a real terminal (tmux) against real traffic: as a
//! non-root member of group `tcpwatch` reading a running daemon, and as
//! root without one. Only the test's own namespace is watched, so other
//! traffic on the machine cannot change what it checks.
use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{NamedNetns, root_available, tool_available};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");
const PORT: u16 = 18765;

/// Loopback load in a namespace until dropped: five connections held open
/// (ESTABLISHED in the census) and a steady churn of new ones to PORT.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(ns: &NamedNetns) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let path = ns.path();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                tcpwatch::host::netns::run_in(std::path::Path::new(&path), move || {
                    let l = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
                    let held: Vec<_> = (0..5)
                        .map(|_| {
                            let c = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
                            (c, l.accept().unwrap().0)
                        })
                        .collect();
                    ready_tx.send(()).unwrap();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let c = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
                        let (s, _) = l.accept().unwrap();
                        drop(c);
                        drop(s);
                        n += 1;
                        // A steady rate, not a flood: the screen is what is
                        // tested here.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    drop(held);
                    n
                })
                .unwrap()
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("load started");
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A daemon watching one namespace, with its control socket; killed on drop.
struct Daemon {
    child: Child,
    socket: std::path::PathBuf,
}

impl Daemon {
    fn start(ns: &NamedNetns) -> Daemon {
        let socket = std::env::temp_dir().join(format!("tcpwatch-top-{}.sock", std::process::id()));
        let mut child = Command::new(BIN)
            .args(["daemon", "--no-metrics", "--interval", "0.5", "--netns"])
            .arg(ns.path())
            .arg("--control-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "daemon exited:\n{seen}"
            );
            seen.push_str(&line);
            if line.starts_with("tcpwatch: daemon up") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Daemon { child, socket }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A tmux server of the test's own, with one window running `cmd`;
/// killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(tag: &str, cmd: &str) -> Tmux {
        let t = Tmux(format!("tcpwatch-test-{}-{tag}", std::process::id()));
        let st = Command::new("tmux")
            .args([
                "-L",
                &t.0,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "40",
            ])
            .arg(format!("{cmd}; echo TOP-EXIT=$?; sleep 120"))
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session");
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", keys]);
    }

    /// Polls the screen (up to 20 s) until `ok` holds; the last screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the screen never showed it:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .status();
    }
}

/// The listener row of PORT: (pid, comm, accepted/s) once it has a rate.
fn listener_row(screen: &str) -> Option<(String, String, f64)> {
    let line = screen
        .lines()
        .find(|l| l.starts_with(&format!("127.0.0.1:{PORT} ")))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    // ADDRESS:PORT PID COMM SYNRQ/BKLG ACCQ ACC/s ESTAB CLOSE-WAIT
    let rate = f.get(5)?.parse::<f64>().ok()?;
    Some((f[1].to_string(), f[2].to_string(), rate))
}

fn census(screen: &str, state: &str) -> Option<u64> {
    let line = screen
        .lines()
        .find(|l| l.starts_with(&format!("{state} ")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pane's shell got the screen back: top left the alternate screen.
fn restored(t: &Tmux) -> bool {
    t.tmux(&["display-message", "-p", "#{alternate_on}"]).trim() == "0"
}

fn live_screen_checks(t: &Tmux) -> String {
    // The owner comes with the first owner scan after the listener
    // appeared (an unowned listener brings it forward, within the census
    // budget): seconds, not the tenth census.
    let s = t.wait_for(
        "the port with its owner, a non-zero accept rate and ESTABLISHED sockets",
        |s| {
            listener_row(s).is_some_and(|(pid, _, r)| r > 0.0 && pid != "-")
                && census(s, "ESTABLISHED").is_some_and(|n| n >= 10)
        },
    );
    let (pid, comm, _) = listener_row(&s).unwrap();
    assert_eq!(
        pid,
        std::process::id().to_string(),
        "attributed to the test process:\n{s}"
    );
    assert_ne!(comm, "?", "{s}");
    assert!(s.contains("lost: none"), "{s}");
    assert!(!restored(t), "top runs on the alternate screen");
    s
}

fn quit_checks(t: &Tmux) {
    t.keys("q");
    let s = t.wait_for("top exited with 0", |s| s.contains("TOP-EXIT="));
    assert!(s.contains("TOP-EXIT=0"), "{s}");
    assert!(
        !s.contains("tcpwatch top"),
        "the view is gone from the screen:\n{s}"
    );
    assert!(restored(t), "the terminal is restored");
}

#[test]
fn top_in_a_terminal_as_a_group_member_shows_the_port_live_and_quits_clean() {
    let test = "top_in_a_terminal_as_a_group_member_shows_the_port_live_and_quits_clean";
    if !root_available(test)
        || !tool_available(test, "tmux", "tmux")
        || !tool_available(test, "setpriv", "util-linux")
    {
        return;
    }
    let group = crate::common::Group::ensure();
    let ns = NamedNetns::new("top");
    let daemon = Daemon::start(&ns);
    let load = Load::start(&ns);
    let t = Tmux::start(
        "member",
        &format!(
            "setpriv --reuid 65534 --regid 65534 --groups {} -- {BIN} top --socket {}",
            group.gid,
            daemon.socket.display()
        ),
    );
    let s = live_screen_checks(&t);
    assert!(s.contains("daemon at"), "{s}");
    // A key round trip: the detail of the selected (busiest) listener.
    t.keys("Enter");
    t.wait_for("the listener's detail", |s| {
        s.contains(&format!("listener 127.0.0.1:{PORT}"))
    });
    t.keys("Escape");
    quit_checks(&t);
    drop(load);
}

#[test]
fn top_without_a_daemon_runs_the_probe_itself_as_root() {
    let test = "top_without_a_daemon_runs_the_probe_itself_as_root";
    if !root_available(test) || !tool_available(test, "tmux", "tmux") {
        return;
    }
    let ns = NamedNetns::new("top-alone");
    let load = Load::start(&ns);
    let t = Tmux::start(
        "root",
        &format!(
            "{BIN} top --socket /nonexistent/tcpwatch.sock --netns {} -d 0.5",
            ns.path()
        ),
    );
    let s = live_screen_checks(&t);
    assert!(
        s.contains("in-process (no daemon at /nonexistent/tcpwatch.sock)"),
        "{s}"
    );
    quit_checks(&t);
    drop(load);
}

#[test]
fn top_tells_a_user_without_daemon_or_root_what_to_do() {
    let test = "top_tells_a_user_without_daemon_or_root_what_to_do";
    if !root_available(test) || !tool_available(test, "setpriv", "util-linux") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
            BIN,
        ])
        .args(["top", "--once", "--socket", "/nonexistent/tcpwatch.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("needs root") && err.contains("group tcpwatch"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    // Not a terminal and not --once/--json: a usage error, said once.
    let out = Command::new(BIN)
        .args(["top", "--socket", "/nonexistent/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
