//! The bench's load generator: loopback TCP connections in a network
//! namespace of its own (no leftover TIME-WAIT between rounds, nothing on
//! the host), bounded by count and by time.
//!
//! Protocol with the bench (or a person): at start it enters a fresh
//! namespace (or joins `--join-netns`), prints one line
//! `{"netns":INODE,"path":"/proc/PID/ns/net"}` on stdout and, with `--wait`,
//! waits for a line on stdin before the timed workload, so a tracer can be
//! attached to that namespace first. At the end it prints one JSON object.
use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// connect, accept, client closes first, server closes: 10 transitions.
    Normal,
    /// connect, accept, client resets (SO_LINGER 0): 6 transitions.
    Rst,
    /// open --connections pairs and hold them idle for --hold-seconds.
    Hold,
}

impl Mode {
    /// Transitions per connection on Linux (kernel tests check these).
    pub fn transitions_per_connection(self) -> u64 {
        match self {
            Mode::Normal => 10,
            Mode::Rst => 6,
            Mode::Hold => 4,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    #[arg(long, value_enum, default_value = "normal")]
    pub mode: Mode,
    /// Connections (pairs, for hold) in total.
    #[arg(long, default_value_t = 50_000)]
    pub connections: u64,
    /// Stop after this long whatever the count.
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Connections per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Worker threads (each with its own listener).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Hold mode: seconds to hold the connections open.
    #[arg(long, default_value_t = 10.0)]
    pub hold_seconds: f64,
    /// Join this namespace instead of making a fresh one.
    #[arg(long)]
    pub join_netns: Option<String>,
    /// Wait for a line on stdin before the workload.
    #[arg(long)]
    pub wait: bool,
}

fn enter_netns(join: Option<&str>) -> anyhow::Result<()> {
    match join {
        Some(path) => {
            let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns with an open namespace fd, before any thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
        }
        None => {
            // SAFETY: unshare before any thread exists, so the whole process
            // (and the threads it spawns) lives in the new namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "unshare(CLONE_NEWNET): {} (needs root)",
                    std::io::Error::last_os_error()
                );
            }
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .context("running ip")?;
            if !st.success() {
                bail!("ip link set lo up failed");
            }
        }
    }
    Ok(())
}

/// Raises the soft fd limit to the hard one (hold mode needs two per pair).
fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// Listeners (destination ports) per worker thread.
pub const LISTENERS_PER_WORKER: u64 = 8;

struct Shared {
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// One worker: its own listener, `quota` connections, paced at `rate`/s.
fn worker(mode: Mode, quota: u64, rate: f64, deadline: Instant, sh: &Shared) -> anyhow::Result<()> {
    // Several listeners per worker: every connection leaves a TIME-WAIT
    // behind, and with one destination 25,000 of them crowd the 28,000
    // ephemeral ports, slowing connect()'s port search (measured: 34k
    // conn/s for 50,000 connections against 56k for 20,000).
    let listeners: Vec<TcpListener> = (0..LISTENERS_PER_WORKER)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut buf = [0u8; 1];
    for i in 0..quota {
        if sh.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
        let k = i as usize % listeners.len();
        let (l, addr) = (&listeners[k], addrs[k]);
        let c = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(_) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let (s, _) = l.accept()?;
        match mode {
            Mode::Normal => {
                drop(c);
                // Wait for the FIN so the server side goes CLOSE-WAIT ->
                // LAST-ACK, not an abort.
                let _ = (&s).read(&mut buf);
                drop(s);
            }
            Mode::Rst => {
                linger0(&c);
                drop(c);
                let _ = (&s).read(&mut buf);
                drop(s);
            }
            Mode::Hold => unreachable!(),
        }
        sh.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    enter_netns(args.join_netns.as_deref())?;
    let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
    let nofile = raise_nofile();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{{\"netns\":{inode},\"path\":\"/proc/{}/ns/net\"}}",
        std::process::id()
    )?;
    out.flush()?;
    drop(out);
    if args.wait {
        let mut line = String::new();
        // End of input instead of a line: whoever started us gave up.
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
    let max = Duration::from_secs_f64(args.max_seconds);
    let start = Instant::now();
    let deadline = start + max;
    let sh = Arc::new(Shared {
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    if args.mode == Mode::Hold {
        if args.connections * 2 + 16 > nofile {
            bail!(
                "hold: {} pairs need {} fds, the limit is {nofile}; run several with --join-netns",
                args.connections,
                args.connections * 2
            );
        }
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let mut held = Vec::with_capacity(args.connections as usize * 2);
        for _ in 0..args.connections {
            held.push(TcpStream::connect(addr)?);
            held.push(l.accept()?.0);
        }
        sh.done.store(args.connections, Ordering::Relaxed);
        let mut o = std::io::stdout().lock();
        writeln!(o, "{{\"holding\":{}}}", args.connections)?;
        o.flush()?;
        std::thread::sleep(Duration::from_secs_f64(args.hold_seconds).min(max));
        drop(held);
    } else {
        let threads = args.threads.max(1) as u64;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sh = sh.clone();
                let quota = args.connections / threads + u64::from(t < args.connections % threads);
                let (mode, rate) = (args.mode, args.rate / threads as f64);
                std::thread::spawn(move || {
                    let r = worker(mode, quota, rate, deadline, &sh);
                    if r.is_err() {
                        sh.stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        for h in handles {
            h.join().expect("worker panicked")?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = sh.done.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"{:?}\",\"attempted\":{},\"completed\":{done},\"errors\":{},\"elapsed_s\":{elapsed:.4},\"conn_per_s\":{:.1},\"transitions_per_connection\":{},\"netns\":{inode},\"threads\":{},\"listeners\":{}}}",
        args.mode,
        args.connections,
        sh.errors.load(Ordering::Relaxed),
        done as f64 / elapsed,
        args.mode.transitions_per_connection(),
        args.threads,
        if args.mode == Mode::Hold {
            1
        } else {
            args.threads.max(1) as u64 * LISTENERS_PER_WORKER
        }
    );
    Ok(())
}
