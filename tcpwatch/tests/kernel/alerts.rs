//! Detection end to end: a bounded SYN flood of spoofed sources (the
//! network rule of `synflood`) at a listener in a namespace of the test's
//! own, watched by a daemon of its own; the alert must name that listener
//! and namespace within 3 s, as a warning while syncookies absorb it and
//! critical when SYNs are dropped, and resolve within 15 s of the end.
use std::{
    net::{SocketAddr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    common::root_available,
    daemon::{Daemon, NsWorker},
    synflood::{self, SpoofNet},
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");
/// The listener's backlog: small, so a short flood fills it.
const BACKLOG: i32 = 64;

fn alerts(d: &Daemon) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["alerts", "--json", "--socket"])
        .arg(&d.control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls (up to `within` after `from`) until `f` says yes; how long it took.
fn until(from: Instant, within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    loop {
        if f() {
            return from.elapsed();
        }
        assert!(from.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The namespace's listener and flood set-up: syncookies as asked, a veth
/// subnet with an unanswered source, a listener with a small backlog.
fn setup(ns: &NsWorker, syncookies: bool) -> (TcpListener, SocketAddrV4) {
    ns.run(move || {
        std::fs::write(
            "/proc/sys/net/ipv4/tcp_syncookies",
            if syncookies { "1" } else { "0" },
        )
        .unwrap();
        // Goes with the namespace (the thread's), which the test's end removes.
        std::mem::forget(SpoofNet::new());
        let l = TcpListener::bind((synflood::LOCAL, 0)).unwrap();
        // SAFETY: listen(2) on a listening socket we own just sets its backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), BACKLOG) }, 0);
        let SocketAddr::V4(a) = l.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        (l, a)
    })
}

/// Floods `dst` from the namespace for `secs` seconds: 400 SYNs every
/// 200 ms (at most 2,000 a second, 30,000 in all), each from a new port.
fn flood(ns: &NsWorker, dst: SocketAddrV4, secs: f64) -> u32 {
    assert!(secs <= 10.0, "floods are bounded");
    ns.run(move || {
        let start = Instant::now();
        let mut sent = 0u32;
        while start.elapsed().as_secs_f64() < secs && sent < 30_000 {
            synflood::send_spoofed_syns(synflood::SPOOFED, dst, 400);
            sent += 400;
            std::thread::sleep(Duration::from_millis(200));
        }
        sent
    })
}

fn daemon_for(ns: &NsWorker, dir: &tempdir::Dir) -> Daemon {
    // A short warm-up: the test waits for it below rather than for 5 s.
    let cfg = dir.0.join("tcpwatch.toml");
    std::fs::write(&cfg, "[detect]\nwarmup = 1.0\n").unwrap();
    let d = Daemon::start(&["--netns", &ns.path, "--config", cfg.to_str().unwrap()]);
    // Past the warm-up: snapshots for more than a second.
    let started = Instant::now();
    until(
        started,
        Duration::from_secs(10),
        "the daemon warmed up",
        || {
            started.elapsed() > Duration::from_millis(1500)
                && alerts(&d)["active"].as_array().is_some()
        },
    );
    d
}

mod tempdir {
    /// A directory of the test's own, removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("tcpwatch-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn the_alert(v: &serde_json::Value, port: u16) -> Option<serde_json::Value> {
    v["active"]
        .as_array()?
        .iter()
        .find(|a| a["key"]["name"] == "SynFlood" && a["key"]["subject"]["listener"]["port"] == port)
        .cloned()
}

#[test]
fn a_syn_flood_absorbed_by_syncookies_warns_within_3_s_and_resolves_within_15() {
    let test = "a_syn_flood_absorbed_by_syncookies_warns_within_3_s_and_resolves_within_15";
    if !root_available(test) {
        return;
    }
    let ns = NsWorker::new();
    let (_listener, dst) = setup(&ns, true);
    let dir = tempdir::Dir::new("alerts-warn");
    let d = daemon_for(&ns, &dir);
    assert!(alerts(&d)["active"].as_array().unwrap().is_empty(), "calm");

    // The flood runs on the namespace's thread; the test polls meanwhile.
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = &ns;
    std::thread::scope(|s| {
        s.spawn(|| tx.send(flood(worker, dst, 5.0)).unwrap());
        let mut seen = None;
        let fired = until(start, Duration::from_secs(3), "the SYN flood alert", || {
            seen = the_alert(&alerts(&d), dst.port());
            seen.is_some()
        });
        let a = seen.unwrap();
        assert_eq!(a["severity"], "warning", "syncookies absorb it: {a}");
        assert_eq!(a["key"]["netns"], ns.inode, "{a}");
        let metrics = d.scrape();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("tcpwatch_alert_active{")
                    && l.contains("alertname=\"SynFlood\"")
                    && l.contains(&format!("port=\"{}\"", dst.port()))
                    && l.ends_with(" 1")),
            "{metrics}"
        );
        eprintln!("{test}: fired {fired:?} after the flood began");
    });
    let sent = rx.recv().unwrap();
    let ended = Instant::now();
    let resolved = until(ended, Duration::from_secs(15), "the alert resolved", || {
        let v = alerts(&d);
        the_alert(&v, dst.port()).is_none()
            && v["recent"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["key"]["subject"]["listener"]["port"] == dst.port())
    });
    eprintln!("{test}: {sent} SYNs; resolved {resolved:?} after the flood ended");
    assert!(d.stop().success());
}

#[test]
fn a_syn_flood_without_syncookies_is_critical() {
    let test = "a_syn_flood_without_syncookies_is_critical";
    if !root_available(test) {
        return;
    }
    let ns = NsWorker::new();
    let (_listener, dst) = setup(&ns, false);
    let dir = tempdir::Dir::new("alerts-crit");
    let d = daemon_for(&ns, &dir);
    let start = Instant::now();
    let worker = &ns;
    std::thread::scope(|s| {
        let h = s.spawn(|| flood(worker, dst, 4.0));
        let mut seen = None;
        let fired = until(start, Duration::from_secs(3), "the SYN flood alert", || {
            seen = the_alert(&alerts(&d), dst.port());
            seen.as_ref().is_some_and(|a| a["severity"] == "critical")
        });
        let a = seen.unwrap();
        assert!(
            a["description"].as_str().unwrap().contains("dropped"),
            "{a}"
        );
        eprintln!("{test}: critical {fired:?} after the flood began");
        h.join().unwrap();
    });
}
