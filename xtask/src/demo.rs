//! `cargo xtask demo synflood`: the SYN-flood scenario with `tcpwatch top`
//! watching, for people evaluating tcpwatch. Everything happens in a
//! network namespace made for it and deleted after: a listener (backlog
//! 64) on a veth subnet, spoofed SYNs from 10.77.0.99, an address of that
//! subnet nobody answers for (a permanent neighbour entry to a MAC no
//! interface has), bounded in count (at most 2,000 a second, 30,000 in
//! all) and time; first with syncookies (a warning), then without (a
//! critical alert). Root, and a terminal.
use std::{
    io::IsTerminal as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::syn_packet::{RawSender, syn};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);
const MAX_SYNS: u32 = 30_000;

/// The demo's namespace, deleted on drop (its veth pair with it).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    ensure!(st.success(), "ip {}", args.join(" "));
    Ok(())
}

/// Enters the namespace on the calling thread.
fn enter(name: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) on an fd we hold open; it changes only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(r == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn synflood(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the demo needs root (sudo cargo xtask demo synflood)"
    );
    ensure!(
        std::io::stdout().is_terminal(),
        "the demo shows `tcpwatch top`: run it in a terminal"
    );
    crate::cargo(&["build", "--release", "-p", "tcpwatch"], &[])?;
    let bin = root.join("target/release/tcpwatch");
    let name = format!("tcpwatch-demo-{}", std::process::id());
    ip(&["netns", "add", &name])?;
    let ns = Netns(name);
    let n = ns.0.as_str();
    ip(&["-n", n, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", n, "link", "add", "tw-demo0", "type", "veth", "peer", "name", "tw-demo1",
    ])?;
    ip(&["-n", n, "addr", "add", "10.77.0.1/24", "dev", "tw-demo0"])?;
    ip(&["-n", n, "link", "set", "tw-demo0", "up"])?;
    ip(&["-n", n, "link", "set", "tw-demo1", "up"])?;
    ip(&[
        "-n",
        n,
        "neigh",
        "add",
        "10.77.0.99",
        "lladdr",
        "02:00:00:00:77:99",
        "nud",
        "permanent",
        "dev",
        "tw-demo0",
    ])?;

    let dir = std::env::temp_dir().join(&ns.0);
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("tcpwatch.toml");
    std::fs::write(&cfg, "[detect]\nwarmup = 2.0\n")?;
    let socket = dir.join("tcpwatch.sock");
    let daemon = Daemon(
        Command::new(&bin)
            .args(["daemon", "--no-metrics", "--netns", n, "--config"])
            .arg(&cfg)
            .arg("--control-socket")
            .arg(&socket)
            .stderr(Stdio::null())
            .spawn()
            .context("starting the daemon")?,
    );
    let t = Instant::now();
    while !socket.exists() {
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, name) = (stop.clone(), ns.0.clone());
        std::thread::spawn(move || scenario(&name, &stop))
    };
    let top = Command::new(&bin)
        .args(["top", "--socket"])
        .arg(&socket)
        .status()
        .context("running top")?;
    stop.store(true, Ordering::Relaxed);
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "demo: {sent} spoofed SYNs sent inside {}; namespace removed",
        ns.0
    );
    if !top.success() {
        bail!("top exited with {top}");
    }
    Ok(())
}

/// In the namespace: the listener, then a flood with syncookies, a pause
/// for the alert to resolve, and a flood without; until `stop`.
fn scenario(name: &str, stop: &AtomicBool) -> anyhow::Result<u32> {
    enter(name)?;
    let sysctl = |on: bool| {
        std::fs::write(
            "/proc/sys/net/ipv4/tcp_syncookies",
            if on { "1" } else { "0" },
        )
    };
    sysctl(true)?;
    let l = TcpListener::bind((LOCAL, 8080))?;
    // SAFETY: listen(2) on a listening socket we own sets its backlog.
    ensure!(unsafe { libc::listen(l.as_raw_fd(), 64) } == 0, "listen");
    let sender = RawSender::open().context("raw socket")?;
    let dst = SocketAddrV4::new(LOCAL, 8080);
    let mut sent = 0u32;
    let wait = |secs: u64| {
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let burst = |secs: u64, sent: &mut u32| -> anyhow::Result<()> {
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && t.elapsed() < Duration::from_secs(secs)
            && *sent < MAX_SYNS
        {
            for _ in 0..400 {
                let port = 40_000 + (*sent % 20_000) as u16;
                let p = syn(SocketAddrV4::new(SPOOFED, port), dst, 0x1000_0000 + *sent);
                sender.send(&p, LOCAL).context("sendto")?;
                *sent += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    };
    // Warm-up, flood with cookies (warning), calm (resolves), flood
    // without cookies (critical), calm.
    wait(4);
    burst(8, &mut sent)?;
    wait(20);
    sysctl(false)?;
    burst(6, &mut sent)?;
    wait(3600);
    drop(l);
    Ok(sent)
}
