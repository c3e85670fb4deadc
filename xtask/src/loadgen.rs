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
//!    bound, before any connection. `netns_path` (`/proc/PID/ns/net`) stays
//!    valid for the whole run, so a tracer can be given `--netns PATH` (or
//!    the inode), and other loads `--join-netns PATH`.
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
//! A fresh namespace (`unshare(CLONE_NEWNET)`, which moves only the calling
//! thread) is entered before any other thread exists; the workers are spawned
//! from that thread and inherit it, and each checks its namespace before its
//! first connection.
//! In a fresh namespace only, it writes [`FRESH_NS_SYSCTLS`] (sysctls under
//! /proc/sys/net are per namespace, so the host's values are untouched); a
//! joined namespace is left as it is. Listeners bind 127.0.0.1 only and every
//! connection goes to one of them: no traffic leaves loopback. Joining the
//! namespace the process runs in (the host's) is refused.
//!
//! # Limits
//!
//! - Time: the load stops at `--max-seconds` (at most 3600), counted from
//!   the go signal; the wait for that signal itself has no bound, but no
//!   connection is made before it. accept and the server's read give up
//!   after 5 s; a worker still blocked 10 s after the deadline fails the run.
//! - Hold: two descriptors per pair, with the soft RLIMIT_NOFILE raised to
//!   the hard one: [`max_hold_pairs`] per process (9,984 under a hard limit
//!   of 20,000). More pairs are refused up front; run several processes,
//!   the first fresh and the others with `--join-netns` its netns_path.
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

/// Why a load could not run. Each message names the operation and carries
/// its cause (which is why no variant has a `source`: printed as a chain it
/// would say the cause twice).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid options: {0}")]
    Invalid(String),
    #[error("unshare(CLONE_NEWNET): {0} (the load generator must run as root)")]
    Unshare(io::Error),
    #[error("joining network namespace {path}: {cause}")]
    Join { path: PathBuf, cause: io::Error },
    #[error(
        "--join-netns {0}: that is the namespace this process runs in; \
         the load only runs in a namespace of its own (another load's netns_path)"
    )]
    JoinOwn(PathBuf),
    #[error("unshare succeeded but the thread is still in namespace {0}")]
    NotIsolated(u64),
    #[error("worker {thread} is in network namespace {got}, not the load's {want}")]
    WrongNamespace { thread: usize, got: u64, want: u64 },
    #[error("bringing lo up in the load's namespace: {0}")]
    LoUp(io::Error),
    #[error("writing /proc/sys/{name} in the load's namespace: {cause}")]
    Sysctl {
        name: &'static str,
        cause: io::Error,
    },
    #[error("binding a listener on 127.0.0.1:{port}: {cause}")]
    Bind { port: u16, cause: io::Error },
    #[error("reading {path}: {cause}")]
    Proc { path: String, cause: io::Error },
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
    /// Completed connections per second of elapsed_s (hold: of the time
    /// spent opening and closing, holding excluded).
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

/// Runs the load. The calling thread enters the load's namespace and stays
/// there (unshare and setns move only the calling thread): call it from a
/// thread of its own unless that is what you want. `cargo xtask loadgen`
/// calls it before any other thread exists, so the whole process, and its
/// `/proc/PID/ns/net`, is in the namespace; tools that find namespaces
/// through processes (`tcpwatch --netns INODE`, `--all-netns`, `lsns`) see
/// it. The workers are spawned from this thread and inherit it.
pub fn run(opts: &Options, mut on_event: impl FnMut(Event<'_>) -> bool) -> Result<Report, Error> {
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
    in_namespace(opts, &mut on_event)
}

/// Set up, tell, load, report.
fn in_namespace(
    opts: &Options,
    on_event: &mut dyn FnMut(Event<'_>) -> bool,
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
                .map_err(|cause| Error::Sysctl { name, cause })?;
            sysctls.insert(name, value);
        }
    }
    let listeners: Vec<TcpListener> = (0..opts.listener_count())
        .map(|i| {
            let port = opts.port_base.map_or(0, |b| b + i as u16);
            let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                .map_err(|cause| Error::Bind { port, cause })?;
            set_rcv_timeout(&l, IO_TIMEOUT).map_err(|cause| Error::Bind { port, cause })?;
            Ok(l)
        })
        .collect::<Result<_, Error>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|cause| Error::Bind { port: 0, cause })?;
    let ready = Ready {
        netns,
        netns_path: own_netns_path(),
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
            .map_err(|cause| Error::Bind { port: 0, cause })?;
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
    on_event: &mut dyn FnMut(Event<'_>) -> bool,
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
        let text = std::fs::read_to_string(path).map_err(|cause| Error::Proc {
            path: path.into(),
            cause,
        })?;
        all.extend(parse_proc_net(&text));
    }
    Ok(all)
}

/// A path to this thread's namespace that others can open while the load
/// runs: the process's when this is the main thread (the CLI), else the
/// thread's own.
fn own_netns_path() -> String {
    let pid = std::process::id();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    if tid == pid {
        format!("/proc/{pid}/ns/net")
    } else {
        format!("/proc/{pid}/task/{tid}/ns/net")
    }
}

fn netns_inode() -> Result<u64, Error> {
    let path = "/proc/thread-self/ns/net";
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|cause| Error::Proc {
            path: path.into(),
            cause,
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
    let err = |cause| Error::Join {
        path: path.to_path_buf(),
        cause,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    // Never the caller's (the host's, usually) namespace: its loopback is
    // shared with everything else on the machine.
    if f.metadata().map_err(err)?.ino() == netns_inode()? {
        return Err(Error::JoinOwn(path.to_path_buf()));
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<Options, String> {
        let cli = Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let opts = cli.load.options();
        opts.validate().map_err(|e| e.to_string())?;
        Ok(opts)
    }

    #[test]
    fn pacing_puts_connection_k_at_k_over_rate() {
        assert_eq!(pacing_due(0, 1000.0), Duration::ZERO);
        assert_eq!(pacing_due(1, 1000.0), Duration::from_millis(1));
        assert_eq!(pacing_due(2_500, 500.0), Duration::from_secs(5));
        // Fractional rates pace too: 0.5/s is one every two seconds.
        assert_eq!(pacing_due(3, 0.5), Duration::from_secs(6));
    }

    #[test]
    fn thread_quotas_interleave_to_every_index_once() {
        for total in [1u64, 2, 7, 50_000, 50_001] {
            for threads in [1usize, 2, 3, 8] {
                let mut seen = vec![0u8; total as usize];
                for t in 0..threads {
                    for j in 0..thread_quota(total, threads, t) {
                        seen[(t as u64 + j * threads as u64) as usize] += 1;
                    }
                }
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{total} over {threads} threads"
                );
            }
        }
    }

    #[test]
    fn hold_capacity_leaves_reserved_fds_and_takes_two_per_pair() {
        assert_eq!(max_hold_pairs(20_000), 9_984);
        assert_eq!(max_hold_pairs(10), 0);
    }

    #[test]
    fn cli_defaults_are_a_valid_normal_load() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.mode, Mode::Normal);
        assert_eq!(o.connections, 50_000);
        assert_eq!(o.threads, default_threads());
        assert_eq!(o.listeners_per_thread, DEFAULT_LISTENERS_PER_THREAD);
        assert_eq!(o, Options::default());
    }

    #[test]
    fn cli_accepts_each_mode_with_its_options() {
        let o = parse(&["--mode", "rate", "--rate", "1000", "--threads", "3"]).unwrap();
        assert_eq!((o.mode, o.rate, o.threads), (Mode::Rate, Some(1000.0), 3));
        let o = parse(&["--mode", "rst", "--rate", "10"]).unwrap();
        assert_eq!((o.mode, o.rate), (Mode::Rst, Some(10.0)));
        let o = parse(&[
            "--mode",
            "hold",
            "--connections",
            "9000",
            "--hold-seconds",
            "0",
        ])
        .unwrap();
        assert_eq!(
            (o.mode, o.connections, o.listener_count()),
            (Mode::Hold, 9000, 1)
        );
        let o = parse(&["--port-base", "23000", "--threads", "2"]).unwrap();
        assert_eq!(o.port_base, Some(23000));
        assert!(
            Cli::try_parse_from(["loadgen", "--wait-for-stdin"])
                .unwrap()
                .load
                .wait
        );
    }

    #[test]
    fn cli_rejects_loads_that_are_unbounded_or_meaningless() {
        for (args, why) in [
            (&["--connections", "0"][..], "--connections"),
            (&["--max-seconds", "0"], "--max-seconds"),
            (&["--max-seconds", "NaN"], "--max-seconds"),
            (&["--max-seconds", "inf"], "--max-seconds"),
            (&["--max-seconds", "3601"], "--max-seconds"),
            (&["--threads", "0"], "--threads"),
            (&["--listeners-per-thread", "0"], "--listeners-per-thread"),
            (&["--mode", "rate"], "needs --rate"),
            (&["--rate", "0"], "--rate"),
            (&["--rate=-5"], "--rate"),
            (&["--rate", "NaN"], "--rate"),
            (&["--mode", "hold", "--rate", "5"], "no --rate"),
            (&["--hold-seconds=-1"], "--hold-seconds"),
            (&["--port-base", "0"], "--port-base"),
            (&["--port-base", "65535", "--threads", "2"], "--port-base"),
            (&["--mode", "burst"], "invalid value"),
        ] {
            let e = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert!(e.contains(why), "{args:?}: {e}");
        }
    }

    fn sample_report() -> Report {
        Report {
            mode: Mode::Rst,
            connections_requested: 10,
            connections_attempted: 10,
            connections_completed: 9,
            errors_total: 1,
            errors: [("connect:ECONNREFUSED".to_string(), 1)].into(),
            stopped_by: "count",
            elapsed_s: 0.5,
            conn_per_s: 18.0,
            rate_target: None,
            max_lag_ms: None,
            held_s: None,
            netns: 4026532000,
            netns_path: "/proc/1/task/2/ns/net".into(),
            netns_fresh: true,
            threads: 2,
            listeners: 2,
            ports: vec![23000, 23001],
            expected_transitions_per_connection: 6,
            expected_transitions: 9 * 6 + 4,
            sysctls: FRESH_NS_SYSCTLS.iter().copied().collect(),
            kernel: [("Tcp.ActiveOpens".to_string(), 10)].into(),
        }
    }

    #[test]
    fn result_line_is_one_json_object_led_by_its_event() {
        let line = event_line("result", &sample_report());
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"{"event":"result","mode":"rst","#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for (key, is) in [
            ("connections_attempted", "u64"),
            ("connections_completed", "u64"),
            ("errors_total", "u64"),
            ("elapsed_s", "f64"),
            ("conn_per_s", "f64"),
            ("netns", "u64"),
            ("threads", "u64"),
            ("listeners", "u64"),
            ("expected_transitions_per_connection", "u64"),
            ("expected_transitions", "u64"),
        ] {
            let ok = match is {
                "u64" => v[key].is_u64(),
                _ => v[key].is_f64(),
            };
            assert!(ok, "{key} should be {is}: {line}");
        }
        assert_eq!(v["errors"]["connect:ECONNREFUSED"], 1);
        assert_eq!(v["ports"], serde_json::json!([23000, 23001]));
        assert_eq!(v["netns_path"], "/proc/1/task/2/ns/net");
        assert!(v["rate_target"].is_null() && v["held_s"].is_null());
        assert_eq!(v["sysctls"]["net/ipv4/tcp_tw_reuse_delay"], "1");
        assert_eq!(v["kernel"]["Tcp.ActiveOpens"], 10);
    }

    #[test]
    fn ready_line_names_the_namespace_and_the_ports() {
        let r = Ready {
            netns: 7,
            netns_path: "/proc/1/task/2/ns/net".into(),
            netns_fresh: false,
            pid: 1,
            ports: vec![5],
        };
        assert_eq!(
            event_line("ready", &r),
            r#"{"event":"ready","netns":7,"netns_path":"/proc/1/task/2/ns/net","netns_fresh":false,"pid":1,"ports":[5]}"#
        );
    }

    #[test]
    fn errno_names_are_symbolic_and_unknown_ones_keep_their_number() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(errno_name(&os(libc::ECONNREFUSED)), "ECONNREFUSED");
        assert_eq!(errno_name(&os(libc::EADDRNOTAVAIL)), "EADDRNOTAVAIL");
        assert_eq!(errno_name(&os(4095)), "errno4095");
        assert_eq!(
            errno_name(&io::Error::new(io::ErrorKind::TimedOut, "x")),
            "TimedOut"
        );
    }

    #[test]
    fn proc_net_counters_parse_by_group_and_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm ActiveOpens MaxConn\nTcp: 1 42 -1\n\
                    Udp: InDatagrams\nUdp: 3\n";
        let m = parse_proc_net(text);
        assert_eq!(m["Tcp.ActiveOpens"], 42);
        assert_eq!(m["Tcp.MaxConn"], -1);
        assert_eq!(m["Ip.DefaultTTL"], 64);
        assert_eq!(m["Udp.InDatagrams"], 3);
        assert_eq!(m.len(), 6);
    }

    #[test]
    fn joining_the_callers_own_namespace_is_refused() {
        let o = Options {
            join_netns: Some("/proc/self/ns/net".into()),
            ..Options::default()
        };
        match load(&o, |_| panic!("no load in the caller's namespace")) {
            Err(Error::JoinOwn(p)) => assert_eq!(p, Path::new("/proc/self/ns/net")),
            other => panic!("expected JoinOwn, got {other:?}"),
        }
    }

    #[test]
    fn hold_refuses_more_pairs_than_the_fd_limit_allows() {
        let o = Options {
            mode: Mode::Hold,
            connections: 1 << 40,
            ..Options::default()
        };
        match load(&o, |_| panic!("no namespace before the fd check")) {
            Err(Error::FdLimit { max, limit, .. }) => assert_eq!(max, max_hold_pairs(limit)),
            other => panic!("expected FdLimit, got {other:?}"),
        }
    }

    /// A load on a thread of its own, since run() moves its caller into the
    /// load's namespace.
    fn load(o: &Options, on_event: impl FnMut(Event<'_>) -> bool + Send) -> Result<Report, Error> {
        std::thread::scope(|s| s.spawn(|| run(o, on_event)).join().unwrap())
    }

    // Root tests: real namespaces, real loopback connections. Serialized,
    // because the tracepoint test filters on ports and the others' clients
    // use ports from the same range.
    static KERNEL: Mutex<()> = Mutex::new(());

    fn root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs root, and CI is set");
        }
        // Past the harness's capture, which would hide it in a passing test.
        let _ = writeln!(
            io::stderr(),
            "\n!!! SKIPPED {test}: not root (no namespaces). Run as root to test the load.\n"
        );
        false
    }

    #[test]
    fn normal_and_rst_loads_complete_every_connection_in_a_fresh_namespace() {
        if !root("normal_and_rst_loads_complete_every_connection_in_a_fresh_namespace") {
            return;
        }
        let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
        let ours = netns_inode().unwrap();
        for mode in [Mode::Normal, Mode::Rst] {
            let o = Options {
                mode,
                connections: 2_000,
                max_seconds: 30.0,
                threads: 2,
                ..Options::default()
            };
            let mut ready = None;
            let r = load(&o, |ev| {
                if let Event::Ready(r) = ev {
                    ready = Some(r.clone());
                }
                true
            })
            .unwrap();
            let ready = ready.expect("a ready event before the load");
            assert_eq!(
                (r.connections_attempted, r.connections_completed),
                (2_000, 2_000)
            );
            assert!(r.errors.is_empty(), "{mode:?}: {:?}", r.errors);
            assert_eq!(r.stopped_by, "count");
            assert!(r.netns_fresh && r.netns == ready.netns && r.netns != ours);
            assert!(r.netns_path.contains("/task/"), "{}", r.netns_path);
            assert_eq!(r.ports, ready.ports);
            // The namespace's own counters agree, with no tracer.
            assert_eq!(r.kernel["Tcp.ActiveOpens"], 2_000);
            assert_eq!(r.kernel["Tcp.PassiveOpens"], 2_000);
            assert_eq!(r.kernel["Tcp.AttemptFails"], 0);
            let resets = if mode == Mode::Rst { 2_000 } else { 0 };
            // Tolerance of 2, open: one clean-clone CI run (the whole suite
            // beside it) counted 1 reset in Normal mode, with every
            // connection completed and no error; the segment that drew it
            // was not captured (a retransmission reaching a closed socket
            // under load is the likely one). The transitions stay exact.
            let rsts = r.kernel["Tcp.OutRsts"];
            assert!(
                (resets..=resets + 2).contains(&rsts),
                "{mode:?}: {rsts} resets sent, expected {resets}"
            );
            assert_eq!(
                r.expected_transitions,
                2_000 * mode.expected_transitions_per_connection() + 4
            );
        }
    }

    #[test]
    fn a_paced_load_stops_at_max_seconds_and_says_so() {
        if !root("a_paced_load_stops_at_max_seconds_and_says_so") {
            return;
        }
        let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
        let o = Options {
            mode: Mode::Rate,
            connections: 1_000,
            rate: Some(100.0),
            max_seconds: 0.5,
            threads: 2,
            ..Options::default()
        };
        let r = load(&o, |_| true).unwrap();
        assert_eq!(r.stopped_by, "time");
        // Due times 0, 10, ..., 490 ms: 50 connections fit before 0.5 s.
        assert_eq!(r.connections_attempted, 50, "{r:?}");
        assert_eq!(r.connections_completed, 50);
        assert!(r.elapsed_s < 1.0, "{r:?}");
    }

    #[test]
    fn a_refused_go_signal_makes_no_connection() {
        if !root("a_refused_go_signal_makes_no_connection") {
            return;
        }
        let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
        let o = Options {
            connections: 10,
            ..Options::default()
        };
        assert!(matches!(load(&o, |_| false), Err(Error::Aborted)));
    }

    /// A tracefs instance recording `sock:inet_sock_set_state` for some
    /// ports; removed on drop.
    struct Trace(PathBuf);

    impl Trace {
        fn new(name: &str, ports: std::ops::Range<u16>) -> Trace {
            let dir = PathBuf::from(format!(
                "/sys/kernel/tracing/instances/{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir(&dir).expect("tracefs instance (is tracefs mounted?)");
            let t = Trace(dir);
            t.write("buffer_size_kb", "4096");
            let filter = format!(
                "family == 2 && ((sport >= {a} && sport < {b}) || (dport >= {a} && dport < {b}))",
                a = ports.start,
                b = ports.end
            );
            t.write("events/sock/inet_sock_set_state/filter", &filter);
            t
        }

        fn write(&self, file: &str, v: &str) {
            std::fs::write(self.0.join(file), v).unwrap_or_else(|e| panic!("{file}: {e}"));
        }

        fn enable(&self, on: bool) {
            self.write(
                "events/sock/inet_sock_set_state/enable",
                if on { "1" } else { "0" },
            );
        }

        /// (old, new) → count, and whether the buffer lost anything.
        fn transitions(&self) -> (BTreeMap<(String, String), u64>, bool) {
            let text = std::fs::read_to_string(self.0.join("trace")).unwrap();
            let complete = text
                .lines()
                .find_map(|l| l.strip_prefix("# entries-in-buffer/entries-written: "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|l| l.split_once('/'))
                .is_some_and(|(a, b)| a == b);
            let mut m = BTreeMap::new();
            for l in text.lines().filter(|l| !l.starts_with('#')) {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix(k))
                        .map(|s| s.trim_start_matches("TCP_").to_string())
                };
                if let (Some(a), Some(b)) = (field("oldstate="), field("newstate=")) {
                    *m.entry((a, b)).or_default() += 1;
                }
            }
            (m, complete)
        }
    }

    impl Drop for Trace {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("events/sock/inet_sock_set_state/enable"), "0");
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn expected_transitions_match_the_kernel_tracepoint() {
        if !root("expected_transitions_match_the_kernel_tracepoint") {
            return;
        }
        let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
        // Below every namespace's default ephemeral range (32768-60999), so
        // other loads on the machine do not use these ports; the tests that
        // widen the range in their own namespace are serialized with this.
        let base = 23_170;
        let n = 1_000u64;
        let normal = [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE"),
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ];
        let rst = [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE"),
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE"),
        ];
        for (mode, pattern) in [
            (Mode::Normal, &normal[..]),
            (Mode::Rst, &rst[..]),
            (Mode::Hold, &normal[..]),
        ] {
            let o = Options {
                mode,
                connections: n,
                threads: 2,
                hold_seconds: 0.0,
                port_base: Some(base),
                ..Options::default()
            };
            let listeners = o.listener_count() as u64;
            let trace = Trace::new("loadgen-test", base..base + listeners as u16);
            // Listeners are bound before Ready: their CLOSE→LISTEN is traced
            // only if the trace starts earlier.
            trace.enable(true);
            let r = load(&o, |_| true).unwrap();
            trace.enable(false);
            assert_eq!(r.connections_completed, n, "{mode:?}: {:?}", r.errors);
            let (got, complete) = trace.transitions();
            assert!(complete, "{mode:?}: the trace buffer overflowed");
            let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
            for (a, b) in pattern {
                *want.entry((a.to_string(), b.to_string())).or_default() += n;
            }
            want.insert(("CLOSE".into(), "LISTEN".into()), listeners);
            want.insert(("LISTEN".into(), "CLOSE".into()), listeners);
            assert_eq!(got, want, "{mode:?}");
            assert_eq!(
                got.values().sum::<u64>(),
                r.expected_transitions,
                "{mode:?}"
            );
            assert_eq!(
                pattern.len() as u64,
                mode.expected_transitions_per_connection()
            );
        }
    }
}
