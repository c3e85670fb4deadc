//! Helpers for the root tests: run a workload while the real probe captures,
//! and make network namespaces that vanish with their thread.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    process::Command,
    time::{Duration, Instant},
};

use tcpwatch::{
    core::model::{KernelCounters, State, Transition},
    probe::{capture::Capture, loader::LoadOptions},
};
use tcpwatch_common::TcpState;

/// Tests whose assertions rely on the perf witness (it counts every firing
/// of the tracepoint) hold this shared; a test that attaches a program to
/// the *classic* tracepoint holds it exclusively: such a program returning
/// 0 stops perf from counting firings, which blinds every witness on the
/// host for as long as it is attached.
static CLASSIC_TRACEPOINT: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn witness_may_count() -> std::sync::RwLockReadGuard<'static, ()> {
    CLASSIC_TRACEPOINT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn classic_tracepoint_in_use() -> std::sync::RwLockWriteGuard<'static, ()> {
    CLASSIC_TRACEPOINT
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The churn tests' catcher budget (a few unrecovered skips) assumes the
/// host's connection rate is theirs: they hold this shared, and a test
/// that drives other full-rate churn holds it exclusively, so the two never
/// overlap.
static FULL_CHURN: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn churn_budget_holds() -> std::sync::RwLockReadGuard<'static, ()> {
    FULL_CHURN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn full_churn_elsewhere() -> std::sync::RwLockWriteGuard<'static, ()> {
    FULL_CHURN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether this test may load BPF programs and make namespaces. In CI (CI set) a missing
/// privilege is a failure; elsewhere the test is skipped, loudly.
#[path = "../shared/skip.rs"]
mod skip;
pub use skip::{skipped, tool_available};

pub fn root_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: CI is set but the tests do not run as root; kernel tests must run for real in CI"
        );
    }
    skipped(
        test,
        "not root (no BPF, no namespaces). Run the suite as root (README) to test the kernel side.",
    );
    false
}

/// What a capture saw while a workload ran.
pub struct Captured<R> {
    pub result: R,
    pub events: Vec<Transition>,
    pub counters: KernelCounters,
    pub delivered: u64,
    /// Of those, read from the main program's lanes.
    pub from_lanes: u64,
    /// Lane doorbells read, and records of no known kind.
    pub doorbells: u64,
    pub malformed: u64,
}

/// Starts the probe, runs `work` on a thread, keeps draining until it is
/// done and `settle` has passed, then detaches and reads the counters.
pub fn capture_during<R: Send + 'static>(
    opts: LoadOptions,
    settle: Duration,
    work: impl FnOnce() -> R + Send + 'static,
) -> Captured<R> {
    capture_watching(opts, settle, |_| {}, work)
}

/// [`capture_during`], showing `watch` the kernel counters as they stand
/// after each read of the ring (so the test can tell its work when enough
/// has happened).
pub fn capture_watching<R: Send + 'static>(
    opts: LoadOptions,
    settle: Duration,
    mut watch: impl FnMut(&KernelCounters) + Send + 'static,
    work: impl FnOnce() -> R + Send + 'static,
) -> Captured<R> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut cap = Capture::start(&opts).expect("loading the probe");
        let mut events = Vec::new();
        let worker = std::thread::spawn(work);
        let mut done_at: Option<Instant> = None;
        loop {
            if done_at.is_none() && worker.is_finished() {
                done_at = Some(Instant::now());
            }
            if done_at.is_some_and(|t| t.elapsed() >= settle) {
                break;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(20), cap.next_batch(&mut events, 8192))
                    .await;
            watch(&cap.counters().unwrap());
        }
        cap.stop(&mut events).await.unwrap();
        let counters = cap.counters().unwrap();
        Captured {
            result: worker.join().unwrap(),
            events,
            counters,
            delivered: cap.delivered(),
            from_lanes: cap.read_from_lanes(),
            doorbells: cap.doorbells(),
            malformed: cap.malformed(),
        }
    })
}

pub fn st(s: TcpState) -> State {
    State::Known(s)
}

/// Transitions grouped by socket, each in kernel order.
pub fn by_socket(events: &[Transition]) -> BTreeMap<u64, Vec<&Transition>> {
    let mut map: BTreeMap<u64, Vec<&Transition>> = BTreeMap::new();
    for e in events {
        map.entry(e.skaddr).or_default().push(e);
    }
    for v in map.values_mut() {
        v.sort_by_key(|e| e.ts_ns);
    }
    map
}

pub fn states(seq: &[&Transition]) -> Vec<(State, State)> {
    seq.iter().map(|e| (e.old, e.new)).collect()
}

/// Transitions that involve `port` locally or remotely.
pub fn on_port(events: &[Transition], port: u16) -> Vec<Transition> {
    events
        .iter()
        .filter(|e| e.local.port() == port || e.remote.port() == port)
        .cloned()
        .collect()
}

/// Gives the calling thread a file table of its own, holding only stdin,
/// stdout and stderr: a child another test forks copies only its own
/// thread's table, so it cannot hold this thread's sockets and run their
/// close in its exec (seen: another test's child ran ESTABLISHED ->
/// FIN-WAIT-1 of this one's); nor does this thread hold other tests' fds
/// and delay their closes. Threads this one spawns share the new table.
/// Call it first, before the thread makes or is given any fd, and only in
/// a thread that ends with its work: an fd made here means nothing to the
/// others.
pub fn private_fd_table() {
    // SAFETY: close_range(CLOSE_RANGE_UNSHARE) gives the calling thread a
    // copy of its table and closes fds 3 and up in that copy only; the
    // callers own no fd yet, so nothing here refers to a closed number.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    assert_eq!(
        rc,
        0,
        "close_range(3, ~0, CLOSE_RANGE_UNSHARE): {}",
        std::io::Error::last_os_error()
    );
}

/// Moves the calling thread into a new network namespace with `lo` up and
/// returns its inode. The namespace disappears when the thread ends.
pub fn enter_new_netns() -> u32 {
    // SAFETY: unshare(CLONE_NEWNET) affects only the calling thread's
    // namespace membership (threads have their own nsproxy for this).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    // A child forked from this thread inherits its namespace.
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success(), "ip link set lo up");
    thread_netns()
}

pub fn thread_netns() -> u32 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino() as u32
}

/// `n` connections to `listener` at `to`, each (client, server), all held
/// open.
pub fn held_connections(
    listener: &std::net::TcpListener,
    to: std::net::SocketAddr,
    n: usize,
) -> Vec<(std::net::TcpStream, std::net::TcpStream)> {
    fd_limit_raised();
    (0..n)
        .map(|_| {
            let client = std::net::TcpStream::connect(to).unwrap();
            (client, listener.accept().unwrap().0)
        })
        .collect()
}

/// Raises this process's soft limit on open files to its hard limit, once:
/// tests hold a thousand sockets or more, and a fresh machine's soft limit
/// (the kernel's default of 1024 in the matrix's guests) is below that.
pub fn fd_limit_raised() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit for the call to fill, then read.
        let ok = unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
            }
        };
        assert!(
            ok,
            "raising RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// A thread that enters a fresh netns, reports its inode, then runs `f`.
/// The capture should filter on the inode, so start it before `f` begins:
/// `f` waits on the returned barrier.
pub fn netns_thread<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> (u32, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<R>) {
    let (ino_tx, ino_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        ino_tx.send(enter_new_netns()).unwrap();
        go_rx.recv().unwrap();
        f()
    });
    (ino_rx.recv().unwrap(), go_tx, h)
}

/// Runs `nft` in the calling thread's network namespace.
pub fn nft(args: &[&str]) {
    let out = Command::new("nft")
        .args(args)
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates nft table `table` with an output chain `out` in the calling
/// thread's namespace (the tests' namespaces vanish with their thread).
pub fn nft_output_chain(table: &str) {
    nft(&["add", "table", "inet", table]);
    nft(&[
        "add",
        "chain",
        "inet",
        table,
        "out",
        "{ type filter hook output priority 0; }",
    ]);
}

/// Adds `rule` (words separated by spaces) to the output chain of `table`.
pub fn nft_output_rule(table: &str, rule: &str) {
    let mut args = vec!["add", "rule", "inet", table, "out"];
    args.extend(rule.split_whitespace());
    nft(&args);
}

/// A namespace made with `ip netns add`, deleted on drop (also when the
/// test panics). `tag` keeps tests of one run, which share a pid, apart.
pub struct NamedNetns(pub String);

impl NamedNetns {
    pub fn new(tag: &str) -> NamedNetns {
        let name = format!("tcpwatch-test-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        // From here on, drop removes it whatever fails next.
        let ns = NamedNetns(name);
        let st = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "ip -n {} link set lo up", ns.0);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// Runs `f` on a thread that entered the namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        tcpwatch::host::netns::run_in(std::path::Path::new(&self.path()), f)
            .unwrap_or_else(|e| panic!("entering {}: {e}", self.path()))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A loopback port that was free a moment ago (nothing listens on it now;
/// another test could still take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The inode of a file: for a namespace file, the namespace's.
pub fn inode_of(path: impl AsRef<std::path::Path>) -> u32 {
    let path = path.as_ref();
    let ino = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino();
    u32::try_from(ino).unwrap()
}

/// `n` loopback connections to a listener in the calling thread's namespace,
/// each accepted, then closed.
pub fn connect_n(n: usize) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    for _ in 0..n {
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        drop((c, s));
    }
}

/// Group `tcpwatch`, made for the test if the machine has none (and
/// removed after). One test at a time holds it: the daemon gives its
/// control socket to that group when it exists, and a daemon without
/// CAP_CHOWN (the unit's) can only do so as a member of it.
pub(crate) struct Group {
    pub(crate) gid: u32,
    made: bool,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Group {
    pub(crate) fn ensure() -> Group {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let gid = |name: &str| {
            let out = Command::new("getent")
                .args(["group", name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split(':')
                .nth(2)
                .and_then(|g| g.trim().parse::<u32>().ok())
        };
        if let Some(g) = gid("tcpwatch") {
            return Group {
                gid: g,
                made: false,
                _one_at_a_time: guard,
            };
        }
        let st = Command::new("groupadd")
            .args(["--system", "tcpwatch"])
            .status()
            .unwrap();
        assert!(st.success(), "groupadd --system tcpwatch");
        Group {
            gid: gid("tcpwatch").expect("the group just made"),
            made: true,
            _one_at_a_time: guard,
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.made {
            let _ = Command::new("groupdel").arg("tcpwatch").status();
        }
    }
}
