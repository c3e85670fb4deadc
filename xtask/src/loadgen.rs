//! The bench's load generator: loopback TCP connect/accept/close in a network
//! namespace of its own (no TIME-WAIT left from earlier rounds, nothing on the
//! host), bounded by a connection count and by time, whichever comes first.
//! The workload is pure std::net; the namespace, sysctl and /proc edges sit in
//! small functions at the bottom, the pure parts (pacing, validation, report)
//! have unit tests.
//!
//! # Protocol (`cargo xtask loadgen`, or [`run`] in process)
//!
//! stdout carries JSON objects, one per line, each with an `"event"` key:
//!
//! 1. `ready`: `{"event":"ready","netns":INODE,"netns_path":PATH,"pid":..,
//!    "ports":[..],..}`, once the namespace is set up and the listeners are
//!    bound, before any connection. `netns_path` stays valid for the whole run
//!    (it is the namespace thread's `/proc/PID/task/TID/ns/net`), so a tracer
//!    can be given `--netns PATH`, and other loads `--join-netns PATH`.
//! 2. With `--wait` (alias `--wait-for-stdin`) the load then waits for one
//!    line on stdin: the go signal. End of input instead aborts without any
//!    connection (exit 1). This is how the bench attaches a tracer first.
//! 3. `holding` (hold mode only): all pairs are open and now idle.
//! 4. `result`: the last line, one object; see [`Report`] for the fields.
//!
//! Exit status: 0 when the load ran (failed connections are in the result,
//! under `errors`, and summed on stderr), 1 when it could not run or was
//! aborted (one sentence on stderr).
//!
//! # What it sets up
//!
//! A fresh namespace (`unshare(CLONE_NEWNET)`) is made on a thread of its own,
//! so a caller's thread never moves; the workers are spawned from that thread
//! and inherit it, and each checks its namespace before its first connection.
//! In a fresh namespace only, it writes [`FRESH_NS_SYSCTLS`] (sysctls under
//! /proc/sys/net are per namespace, so the host's values are untouched); a
//! joined namespace is left as it is. Listeners bind 127.0.0.1 only and every
//! connection goes to one of them: no traffic leaves loopback.
use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use serde::Serialize;

/// How each connection ends, or what the load does with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Client connects, server accepts, client closes first, server closes.
    Normal,
    /// As normal, but the client closes with SO_LINGER {1,0}: an RST.
    Rst,
    /// Open --connections pairs, hold them idle for --hold-seconds, close.
    Hold,
    /// Normal connections paced at --rate per second (for scaling curves).
    Rate,
}

impl Mode {
    /// TCP state transitions (`sock:inet_sock_set_state`) one connection makes
    /// on Linux, both ends together, listener excluded. Normal: client
    /// CLOSE→SYN-SENT→ESTABLISHED→FIN-WAIT-1→FIN-WAIT-2→CLOSE (TIME-WAIT is a
    /// separate mini socket, no transition), server child LISTEN→SYN-RECV→
    /// ESTABLISHED→CLOSE-WAIT→LAST-ACK→CLOSE. RST: CLOSE→SYN-SENT→
    /// ESTABLISHED→CLOSE and LISTEN→SYN-RECV→ESTABLISHED→CLOSE. Hold: 4 at
    /// open, 6 at close (as normal). Checked against the tracepoint by the
    /// test `expected_transitions_match_the_kernel_tracepoint`.
    pub fn expected_transitions_per_connection(self) -> u64 {
        match self {
            Mode::Normal | Mode::Rate | Mode::Hold => 10,
            Mode::Rst => 6,
        }
    }

    fn resets(self) -> bool {
        self == Mode::Rst
    }
}

/// Listeners (destination ports) per worker thread, by default. With
/// [`FRESH_NS_SYSCTLS`] one is enough; more multiply the 4-tuples connect()
/// can pick from, for joined namespaces whose sysctls are not ours to set.
pub const DEFAULT_LISTENERS_PER_THREAD: usize = 1;

/// Written in a fresh namespace only (never in a joined one, never on the
/// host: sysctls under /proc/sys/net belong to the writer's namespace).
/// Every normal connection leaves a client TIME-WAIT on its 4-tuple. With
/// the defaults (tw_reuse 2, i.e. loopback only, and only for TIME-WAIT
/// older than `tcp_tw_reuse_delay` = 1 s; 28k ephemeral ports), one
/// destination per thread runs out of free ports within a second and
/// connect() crawls through the port space: measured here, 2 threads, 50,000
/// connections, ~31k conn/s against ~49k with these (200,000: 28k against
/// 49k). A 1 ms delay (the minimum) lets connect() reuse TIME-WAIT at once,
/// the wider range gives it room; tw_reuse 1 says so without relying on the
/// loopback default. TIME-WAIT makes no state transition, so the count per
/// connection is the same either way.
pub const FRESH_NS_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/tcp_tw_reuse", "1"),
    ("net/ipv4/tcp_tw_reuse_delay", "1"),
    ("net/ipv4/ip_local_port_range", "1024 65535"),
];

/// File descriptors a hold process keeps for itself beside its pairs.
const RESERVED_FDS: u64 = 32;
/// Upper bound of --max-seconds: the load is always bounded in time.
const MAX_SECONDS_CAP: f64 = 3600.0;
/// How long a single accept or read may block (inherited by accepted
/// sockets from the listener's SO_RCVTIMEO).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// After the deadline, how long workers get to finish before the run gives
/// up on them.
const STUCK_GRACE: Duration = Duration::from_secs(10);

/// `cargo xtask loadgen`: see the module documentation for the protocol.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    #[arg(long, value_enum, default_value = "normal")]
    pub mode: Mode,
    /// Connections (pairs, for hold) in total; the load stops after them.
    #[arg(long, default_value_t = 50_000)]
    pub connections: u64,
    /// The load stops after this long, whatever the count (at most 3600).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Worker threads, each with its own listeners (default: CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Connections per second in total, paced (rate mode; also paces normal
    /// and rst).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Hold mode: seconds to hold the pairs open (bounded by --max-seconds).
    #[arg(long, default_value_t = 10.0)]
    pub hold_seconds: f64,
    /// Listeners (destination ports) per thread.
    #[arg(long, default_value_t = DEFAULT_LISTENERS_PER_THREAD)]
    pub listeners_per_thread: usize,
    /// Bind listeners to consecutive ports from this one (default: any
    /// free port), for tracers that filter on ports.
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Join this namespace (e.g. another load's netns_path) instead of
    /// making a fresh one; its sysctls are left alone.
    #[arg(long)]
    pub join_netns: Option<PathBuf>,
    /// After the ready line, wait for a line on stdin before the load.
    #[arg(long, alias = "wait-for-stdin")]
    pub wait: bool,
}

impl LoadArgs {
    pub fn options(&self) -> Options {
        Options {
            mode: self.mode,
            connections: self.connections,
            max_seconds: self.max_seconds,
            threads: self.threads.unwrap_or_else(default_threads),
            rate: self.rate,
            hold_seconds: self.hold_seconds,
            listeners_per_thread: self.listeners_per_thread,
            port_base: self.port_base,
            join_netns: self.join_netns.clone(),
        }
    }
}

/// What [`run`] does; [`Options::validate`] says whether it makes sense.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub mode: Mode,
    /// Connections, or pairs in hold mode.
    pub connections: u64,
    pub max_seconds: f64,
    /// Worker threads (hold mode uses one).
    pub threads: usize,
    /// Connections per second in total; required by rate mode.
    pub rate: Option<f64>,
    pub hold_seconds: f64,
    pub listeners_per_thread: usize,
    pub port_base: Option<u16>,
    pub join_netns: Option<PathBuf>,
}

/// The CLI's defaults.
impl Default for Options {
    fn default() -> Options {
        Options {
            mode: Mode::Normal,
            connections: 50_000,
            max_seconds: 60.0,
            threads: default_threads(),
            rate: None,
            hold_seconds: 10.0,
            listeners_per_thread: DEFAULT_LISTENERS_PER_THREAD,
            port_base: None,
            join_netns: None,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.connections == 0 {
            return bad("--connections must be at least 1".into());
        }
        if !(self.max_seconds > 0.0 && self.max_seconds <= MAX_SECONDS_CAP) {
            return bad(format!(
                "--max-seconds must be in (0, {MAX_SECONDS_CAP}], not {}",
                self.max_seconds
            ));
        }
        if !(1..=256).contains(&self.threads) {
            return bad(format!("--threads must be 1 to 256, not {}", self.threads));
        }
        if !(1..=64).contains(&self.listeners_per_thread) {
            return bad(format!(
                "--listeners-per-thread must be 1 to 64, not {}",
                self.listeners_per_thread
            ));
        }
        match (self.mode, self.rate) {
            (Mode::Rate, None) => return bad("rate mode needs --rate".into()),
            (Mode::Hold, Some(_)) => return bad("hold mode opens pairs unpaced: no --rate".into()),
            (_, Some(r)) if !(r.is_finite() && r > 0.0) => {
                return bad(format!("--rate must be a positive number, not {r}"));
            }
            _ => {}
        }
        if !(self.hold_seconds >= 0.0 && self.hold_seconds.is_finite()) {
            return bad(format!(
                "--hold-seconds must be 0 or more, not {}",
                self.hold_seconds
            ));
        }
        if let Some(base) = self.port_base {
            let last = u32::from(base) + self.listener_count() as u32 - 1;
            if base == 0 || last > u32::from(u16::MAX) {
                return bad(format!(
                    "--port-base {base}: {} listeners need ports {base}..={last}",
                    self.listener_count()
                ));
            }
        }
        Ok(())
    }

    fn listener_count(&self) -> usize {
        if self.mode == Mode::Hold {
            1
        } else {
            self.threads * self.listeners_per_thread
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid options: {0}")]
    Invalid(String),
    #[error("unshare(CLONE_NEWNET): {0} (the load generator must run as root)")]
    Unshare(io::Error),
    #[error("joining network namespace {path}: {source}")]
    Join { path: PathBuf, source: io::Error },
    #[error("unshare succeeded but the thread is still in namespace {0}")]
    NotIsolated(u64),
    #[error("worker {thread} is in network namespace {got}, not the load's {want}")]
    WrongNamespace { thread: usize, got: u64, want: u64 },
    #[error("bringing lo up in the load's namespace: {0}")]
    LoUp(io::Error),
    #[error("writing /proc/sys/{name} in the load's namespace: {source}")]
    Sysctl {
        name: &'static str,
        source: io::Error,
    },
    #[error("binding a listener on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("reading {path}: {source}")]
    Proc { path: String, source: io::Error },
    #[error("raising RLIMIT_NOFILE: {0}")]
    Rlimit(io::Error),
    #[error(
        "hold: {pairs} pairs need {need} file descriptors and this process may open {limit}; \
         hold at most {max} pairs per process and add processes with --join-netns"
    )]
    FdLimit {
        pairs: u64,
        need: u64,
        limit: u64,
        max: u64,
    },
    #[error("starting a worker thread: {0}")]
    Spawn(io::Error),
    #[error("aborted before the load: the go signal never came")]
    Aborted,
    #[error("{stuck} worker(s) still blocked {STUCK_GRACE:?} after the deadline")]
    Stuck { stuck: usize },
}

/// The namespace and listeners, told before the first connection.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    pub netns: u64,
    pub netns_path: String,
    /// Made by this load (false: joined with --join-netns).
    pub netns_fresh: bool,
    pub pid: u32,
    pub ports: Vec<u16>,
}

/// What the caller of [`run`] hears about while the load runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Return false to abort before any connection.
    Ready(&'a Ready),
    /// Hold mode: this many pairs are open and idle now.
    Holding { pairs: u64 },
}

/// The result line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub connections_requested: u64,
    /// connect() calls made (the count or the deadline stopped the rest).
    pub connections_attempted: u64,
    /// Connections that went through the whole pattern of the mode.
    pub connections_completed: u64,
    pub errors_total: u64,
    /// "operation:ERRNO" → count, e.g. "connect:EADDRNOTAVAIL".
    pub errors: BTreeMap<String, u64>,
    /// "count" or "time".
    pub stopped_by: &'static str,
    /// From the go signal to the last worker's end (hold: includes holding).
    pub elapsed_s: f64,
    /// Completed connections per second of elapsed_s (hold: opening only).
    pub conn_per_s: f64,
    pub rate_target: Option<f64>,
    /// Paced modes: how far behind its schedule a connection started, worst.
    pub max_lag_ms: Option<f64>,
    /// Hold mode: seconds the pairs were held idle.
    pub held_s: Option<f64>,
    pub netns: u64,
    pub netns_path: String,
    pub netns_fresh: bool,
    pub threads: usize,
    pub listeners: usize,
    pub ports: Vec<u16>,
    pub expected_transitions_per_connection: u64,
    /// completed × per connection + 2 per listener (CLOSE→LISTEN and
    /// LISTEN→CLOSE). Failed connections add their own, not counted here.
    pub expected_transitions: u64,
    /// What was written under /proc/sys (fresh namespace only).
    pub sysctls: BTreeMap<&'static str, &'static str>,
    /// Change of the namespace's own counters over the run (/proc/net/snmp
    /// and netstat); with --join-netns it includes the other loads.
    pub kernel: BTreeMap<String, i64>,
}

/// Counters reported in [`Report::kernel`].
const KERNEL_COUNTERS: &[&str] = &[
    "Tcp.ActiveOpens",
    "Tcp.PassiveOpens",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
    "Tcp.OutRsts",
    "TcpExt.TW",
    "TcpExt.TWRecycled",
    "TcpExt.TCPTimeWaitOverflow",
];

/// Connection `index` (0-based, across all threads) of a load paced at
/// `rate` per second is due this long after the start. Thread `t` of `n`
/// takes indices t, t+n, t+2n..., so the threads interleave on one schedule.
pub fn pacing_due(index: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate)
}

/// Connections for thread `t` of `threads` when they take every
/// `threads`-th index of `total`.
pub fn thread_quota(total: u64, threads: usize, t: usize) -> u64 {
    let n = threads as u64;
    total / n + u64::from((t as u64) < total % n)
}

/// Pairs one hold process can keep open under an fd limit.
pub fn max_hold_pairs(fd_limit: u64) -> u64 {
    fd_limit.saturating_sub(RESERVED_FDS) / 2
}

/// Runs the load. `on_event` is called on the load's namespace thread. The
/// caller's own thread stays in its namespace.
pub fn run<F>(opts: &Options, mut on_event: F) -> Result<Report, Error>
where
    F: FnMut(Event<'_>) -> bool + Send,
{
    opts.validate()?;
    if opts.mode == Mode::Hold {
        let limit = raise_nofile()?;
        let need = opts.connections * 2 + RESERVED_FDS;
        if need > limit {
            return Err(Error::FdLimit {
                pairs: opts.connections,
                need,
                limit,
                max: max_hold_pairs(limit),
            });
        }
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("loadgen-netns".into())
            .spawn_scoped(s, || in_namespace(opts, &mut on_event))
            .map_err(Error::Spawn)?
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The namespace thread: set up, tell, load, report.
fn in_namespace(
    opts: &Options,
    on_event: &mut (dyn FnMut(Event<'_>) -> bool + Send),
) -> Result<Report, Error> {
    let fresh = opts.join_netns.is_none();
    let netns = match &opts.join_netns {
        Some(path) => join_netns(path)?,
        None => fresh_netns()?,
    };
    let mut sysctls = BTreeMap::new();
    if fresh {
        for &(name, value) in FRESH_NS_SYSCTLS {
            std::fs::write(Path::new("/proc/sys").join(name), value)
                .map_err(|source| Error::Sysctl { name, source })?;
            sysctls.insert(name, value);
        }
    }
    let listeners: Vec<TcpListener> = (0..opts.listener_count())
        .map(|i| {
            let port = opts.port_base.map_or(0, |b| b + i as u16);
            let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                .map_err(|source| Error::Bind { port, source })?;
            set_rcv_timeout(&l, IO_TIMEOUT).map_err(|source| Error::Bind { port, source })?;
            Ok(l)
        })
        .collect::<Result<_, Error>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Bind { port: 0, source })?;
    let ready = Ready {
        netns,
        // SAFETY: gettid has no preconditions.
        netns_path: format!("/proc/{}/task/{}/ns/net", std::process::id(), unsafe {
            libc::gettid()
        }),
        netns_fresh: fresh,
        pid: std::process::id(),
        ports: ports.clone(),
    };
    if !on_event(Event::Ready(&ready)) {
        return Err(Error::Aborted);
    }
    let counters0 = kernel_counters()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.max_seconds);
    let (stats, held) = if opts.mode == Mode::Hold {
        let (stats, held) = hold(opts, &listeners[0], deadline, on_event);
        drop(listeners);
        (stats, Some(held))
    } else {
        (churn(opts, listeners, netns, start, deadline)?, None)
    };
    let elapsed = start.elapsed();
    let counters1 = kernel_counters()?;
    let active = elapsed.saturating_sub(held.unwrap_or_default());
    Ok(Report {
        mode: opts.mode,
        connections_requested: opts.connections,
        connections_attempted: stats.attempted,
        connections_completed: stats.completed,
        errors_total: stats.errors.values().sum(),
        errors: stats.errors,
        stopped_by: if stats.attempted < opts.connections {
            "time"
        } else {
            "count"
        },
        elapsed_s: elapsed.as_secs_f64(),
        conn_per_s: stats.completed as f64 / active.as_secs_f64().max(1e-9),
        rate_target: opts.rate,
        max_lag_ms: opts.rate.map(|_| stats.max_lag.as_secs_f64() * 1e3),
        held_s: held.map(|h| h.as_secs_f64()),
        netns,
        netns_path: ready.netns_path,
        netns_fresh: fresh,
        threads: if opts.mode == Mode::Hold {
            1
        } else {
            opts.threads
        },
        listeners: ports.len(),
        ports,
        expected_transitions_per_connection: opts.mode.expected_transitions_per_connection(),
        expected_transitions: stats.completed * opts.mode.expected_transitions_per_connection()
            + 2 * opts.listener_count() as u64,
        sysctls,
        kernel: KERNEL_COUNTERS
            .iter()
            .map(|&k| {
                let d =
                    counters1.get(k).copied().unwrap_or(0) - counters0.get(k).copied().unwrap_or(0);
                (k.to_string(), d)
            })
            .collect(),
    })
}

#[derive(Debug, Default)]
struct Stats {
    attempted: u64,
    completed: u64,
    errors: BTreeMap<String, u64>,
    max_lag: Duration,
}

impl Stats {
    fn error(&mut self, op: &str, e: &io::Error) {
        let key = format!("{op}:{}", errno_name(e));
        *self.errors.entry(key).or_default() += 1;
    }

    fn merge(&mut self, o: Stats) {
        self.attempted += o.attempted;
        self.completed += o.completed;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.max_lag = self.max_lag.max(o.max_lag);
    }
}

/// Normal, rst and rate modes: one worker per `listeners_per_thread`
/// listeners. Workers are not scoped threads: one blocked in the kernel must
/// not keep the run (and the caller) waiting past the deadline.
fn churn(
    opts: &Options,
    mut listeners: Vec<TcpListener>,
    netns: u64,
    start: Instant,
    deadline: Instant,
) -> Result<Stats, Error> {
    let (tx, rx) = mpsc::channel();
    for t in (0..opts.threads).rev() {
        let mine = listeners.split_off(t * opts.listeners_per_thread);
        let w = Worker {
            thread: t,
            threads: opts.threads,
            quota: thread_quota(opts.connections, opts.threads, t),
            resets: opts.mode.resets(),
            rate: opts.rate,
            start,
            deadline,
        };
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let r = w.run(&mine, netns);
                // Closed before the report, so the listeners' LISTEN→CLOSE
                // is in by the time the caller hears the load is over.
                drop(mine);
                let _ = tx.send(r);
            })
            .map_err(Error::Spawn)?;
    }
    drop(tx);
    let mut total = Stats::default();
    for done in 0..opts.threads {
        let wait = (deadline + STUCK_GRACE).saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(r) => total.merge(r?),
            Err(_) => {
                return Err(Error::Stuck {
                    stuck: opts.threads - done,
                });
            }
        }
    }
    Ok(total)
}

struct Worker {
    thread: usize,
    threads: usize,
    quota: u64,
    resets: bool,
    rate: Option<f64>,
    start: Instant,
    deadline: Instant,
}

impl Worker {
    fn run(&self, listeners: &[TcpListener], netns: u64) -> Result<Stats, Error> {
        let got = netns_inode()?;
        if got != netns {
            return Err(Error::WrongNamespace {
                thread: self.thread,
                got,
                want: netns,
            });
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|source| Error::Bind { port: 0, source })?;
        let mut st = Stats::default();
        let mut buf = [0u8; 1];
        for j in 0..self.quota {
            let mut now = Instant::now();
            if let Some(rate) = self.rate {
                let due =
                    self.start + pacing_due(self.thread as u64 + j * self.threads as u64, rate);
                if due >= self.deadline {
                    break;
                }
                if due > now {
                    std::thread::sleep(due - now);
                    now = Instant::now();
                } else {
                    st.max_lag = st.max_lag.max(now - due);
                }
            }
            if now >= self.deadline {
                break;
            }
            let k = j as usize % listeners.len();
            st.attempted += 1;
            let c = match TcpStream::connect(addrs[k]) {
                Ok(c) => c,
                Err(e) => {
                    st.error("connect", &e);
                    continue;
                }
            };
            let s = match listeners[k].accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    st.error("accept", &e);
                    continue;
                }
            };
            if self.resets
                && let Err(e) = set_linger0(&c)
            {
                st.error("setsockopt", &e);
                continue;
            }
            drop(c);
            // The server closes after the client's FIN (CLOSE-WAIT, then
            // LAST-ACK) or after its RST (ESTABLISHED→CLOSE): wait for it.
            match ((&s).read(&mut buf), self.resets) {
                (Ok(0), false) => st.completed += 1,
                (Err(e), true) if e.kind() == io::ErrorKind::ConnectionReset => {
                    st.completed += 1;
                }
                (Ok(0), true) => *st.errors.entry("read:EOF-not-RST".into()).or_default() += 1,
                (Ok(_), _) => *st.errors.entry("read:unexpected-data".into()).or_default() += 1,
                (Err(e), _) => st.error("read", &e),
            }
        }
        Ok(st)
    }
}

/// Hold mode, on the namespace thread: open, tell, hold, close (client
/// first, pair by pair, so each closes as a normal connection).
fn hold(
    opts: &Options,
    l: &TcpListener,
    deadline: Instant,
    on_event: &mut (dyn FnMut(Event<'_>) -> bool + Send),
) -> (Stats, Duration) {
    let mut st = Stats::default();
    let addr = match l.local_addr() {
        Ok(a) => a,
        Err(e) => {
            st.error("getsockname", &e);
            return (st, Duration::ZERO);
        }
    };
    let mut held = Vec::with_capacity(opts.connections as usize);
    for _ in 0..opts.connections {
        if Instant::now() >= deadline {
            break;
        }
        st.attempted += 1;
        let c = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(e) => {
                st.error("connect", &e);
                continue;
            }
        };
        match l.accept() {
            Ok((s, _)) => held.push((c, s)),
            Err(e) => st.error("accept", &e),
        }
    }
    st.completed = held.len() as u64;
    on_event(Event::Holding {
        pairs: st.completed,
    });
    let t = Instant::now();
    let wait =
        Duration::from_secs_f64(opts.hold_seconds).min(deadline.saturating_duration_since(t));
    std::thread::sleep(wait);
    let held_for = t.elapsed();
    drop(held);
    (st, held_for)
}

/// errno's symbolic name for the errors a loopback load can meet.
pub fn errno_name(e: &io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return format!("{:?}", e.kind());
    };
    let name = match n {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPIPE => "EPIPE",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        other => return format!("errno{other}"),
    };
    name.into()
}

/// Fields of /proc/net/snmp or /proc/net/netstat ("Tcp.ActiveOpens" → n):
/// pairs of lines, names then values, both starting with "Group:".
pub fn parse_proc_net(text: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{group}.{n}"), v);
            }
        }
    }
    out
}

// The kernel edges. /proc/thread-self, not /proc/self: the load's namespace
// is its thread's, and /proc/self/net follows the main thread's.

fn kernel_counters() -> Result<BTreeMap<String, i64>, Error> {
    let mut all = BTreeMap::new();
    for path in [
        "/proc/thread-self/net/snmp",
        "/proc/thread-self/net/netstat",
    ] {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Proc {
            path: path.into(),
            source,
        })?;
        all.extend(parse_proc_net(&text));
    }
    Ok(all)
}

fn netns_inode() -> Result<u64, Error> {
    let path = "/proc/thread-self/ns/net";
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| Error::Proc {
            path: path.into(),
            source,
        })
}

fn fresh_netns() -> Result<u64, Error> {
    let before = netns_inode()?;
    // SAFETY: unshare takes no pointers. For CLONE_NEWNET it moves only the
    // calling thread, which is the load's own namespace thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(Error::Unshare(io::Error::last_os_error()));
    }
    let now = netns_inode()?;
    if now == before {
        return Err(Error::NotIsolated(now));
    }
    set_lo_up().map_err(Error::LoUp)?;
    Ok(now)
}

fn join_netns(path: &Path) -> Result<u64, Error> {
    let err = |source| Error::Join {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    // SAFETY: setns on an fd we hold open; it moves only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    netns_inode()
}

/// `ip link set lo up`, without needing iproute2.
fn set_lo_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_ifru.ifru_flags of the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just wrote ifru_flags, the union's active field.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Soft RLIMIT_NOFILE up to the hard one; returns the new soft limit.
fn raise_nofile() -> Result<u64, Error> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(Error::Rlimit(io::Error::last_os_error()));
    }
    l.rlim_cur = l.rlim_max;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        return Err(Error::Rlimit(io::Error::last_os_error()));
    }
    Ok(l.rlim_cur)
}

fn setsockopt<T>(fd: &impl std::os::fd::AsRawFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: v points to a live T and we pass its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_linger0(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(s, libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// On a listener, bounds accept(); accepted sockets inherit it, which bounds
/// the server's read.
fn set_rcv_timeout(l: &TcpListener, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(l, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// `cargo xtask loadgen`: the protocol of the module documentation.
pub fn cli(args: &LoadArgs) -> anyhow::Result<()> {
    let opts = args.options();
    let wait = args.wait;
    let report = run(&opts, |ev| {
        let line = match ev {
            Event::Ready(r) => event_line("ready", r),
            Event::Holding { pairs } => event_line("holding", &serde_json::json!({"pairs": pairs})),
        };
        if emit(&line).is_err() {
            // Nobody reads us: no point in loading.
            return false;
        }
        match ev {
            Event::Ready(_) if wait => {
                let mut go = String::new();
                matches!(io::stdin().lock().read_line(&mut go), Ok(n) if n > 0)
            }
            _ => true,
        }
    })?;
    emit(&event_line("result", &report))?;
    if report.errors_total > 0 {
        eprintln!(
            "loadgen: {} of {} connections failed: {:?}",
            report.errors_total, report.connections_attempted, report.errors
        );
    }
    Ok(())
}

/// `{"event":NAME, ...fields of body}` on one line, fields in their order.
#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    event: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

fn event_line(event: &str, body: &impl Serialize) -> String {
    serde_json::to_string(&Line { event, body })
        .unwrap_or_else(|e| format!(r#"{{"event":"error","error":"{e}"}}"#))
}

fn emit(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
