//! Connection churn in a namespace of the test's own: the kernel counters
//! must be exact, and every transition delivered or counted as dropped.
use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use tcpwatch::{core::model::Accounting, probe::loader::LoadOptions};
use tcpwatch_common::state::*;

use crate::common::{
    capture_during, capture_watching, held_connections, netns_thread, root_available,
};

const CONNECTIONS: u32 = 20_000;

/// Connect, accept, client closes, server closes: 10 transitions each, plus
/// the listener's two. Runs in the calling thread's namespace.
fn churn(n: u32) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        drop(server);
    }
    let took = start.elapsed();
    drop(listener);
    wait_until_only_time_wait();
    took
}

/// Waits until every TCP socket of this thread's namespace is in TIME-WAIT,
/// i.e. every full socket has made its last transition, so the capture
/// cannot stop before the kernel is done (softirq work can be deferred).
fn wait_until_only_time_wait() {
    wait_until_open_at_most(0);
}

const TEN: [(u8, u8); 10] = [
    (TCP_CLOSE, TCP_SYN_SENT),
    (TCP_SYN_SENT, TCP_ESTABLISHED),
    (TCP_ESTABLISHED, TCP_FIN_WAIT1),
    (TCP_FIN_WAIT1, TCP_FIN_WAIT2),
    (TCP_FIN_WAIT2, TCP_CLOSE),
    (TCP_LISTEN, TCP_SYN_RECV),
    (TCP_SYN_RECV, TCP_ESTABLISHED),
    (TCP_ESTABLISHED, TCP_CLOSE_WAIT),
    (TCP_CLOSE_WAIT, TCP_LAST_ACK),
    (TCP_LAST_ACK, TCP_CLOSE),
];

struct Run {
    counters: tcpwatch::core::model::KernelCounters,
    acct: Accounting,
    delivered: u64,
    /// Delivered events of the test's namespace.
    in_netns: u64,
    /// Of those, delivered by the catcher.
    caught_in_netns: u64,
    /// Breaks in the namespace's sockets' chains of transitions, followed
    /// in delivery order as trace follows them.
    chain_breaks: u64,
    /// Sockets' closes (not a listener's, not a failed connect's) delivered
    /// in the namespace.
    #[cfg_attr(
        not(feature = "fault-injection"),
        expect(dead_code, reason = "read by the fault-injection tests")
    )]
    closes: u64,
    /// Delivered events read from the main program's lanes.
    from_lanes: u64,
    doorbells: u64,
    malformed: u64,
}

fn run(ring_bytes: u32, simulate_skip_every: u32, simulate_not_run_every: u16) -> Run {
    let _witness = crate::common::witness_may_count();
    let _budget = crate::common::churn_budget_holds();
    let (ino, go, worker) = netns_thread(|| churn(CONNECTIONS));
    let opts = LoadOptions {
        netns: Some(ino),
        ring_bytes: Some(ring_bytes),
        witness: true,
        ..LoadOptions::default()
    };
    #[cfg(feature = "fault-injection")]
    let opts = LoadOptions {
        simulate_skip_every,
        simulate_not_run_every,
        ..opts
    };
    #[cfg(not(feature = "fault-injection"))]
    assert_eq!(
        (simulate_skip_every, simulate_not_run_every),
        (0, 0),
        "fault injection needs --features fault-injection"
    );
    let cap = capture_during(opts, Duration::from_millis(500), move || {
        go.send(()).unwrap();
        worker.join().unwrap()
    });
    let in_netns = cap.events.iter().filter(|e| e.netns == Some(ino)).count() as u64;
    let caught_in_netns = cap
        .events
        .iter()
        .filter(|e| e.netns == Some(ino) && e.caught)
        .count() as u64;
    eprintln!(
        "churn: {CONNECTIONS} connections in {:?}, ring {ring_bytes} B: {:?}",
        cap.result,
        cap.counters.summary()
    );
    // Only with sysctl kernel.bpf_stats_enabled=1 (the bench turns it on).
    let per_run = |p: &tcpwatch::core::model::ProgCounters| p.run_time_ns.checked_div(p.run_cnt);
    if let Some(main_ns) = per_run(&cap.counters.main) {
        let catcher_ns = cap.counters.catcher.as_ref().and_then(per_run).unwrap_or(0);
        eprintln!(
            "churn: in-kernel cost per transition: main {main_ns} ns + catcher {catcher_ns} ns ({} runs)",
            cap.counters.main.run_cnt
        );
    }
    let mut chains = tcpwatch::core::chains::Chains::default();
    let mut closes = 0;
    for e in cap.events.iter().filter(|e| e.netns == Some(ino)) {
        chains.follow(e);
        closes += u64::from(is_close(e.old.raw(), e.new.raw()));
    }
    eprintln!("churn: {} chain breaks", chains.breaks);
    let acct = cap.counters.summary();
    Run {
        chain_breaks: chains.breaks,
        closes,
        counters: cap.counters,
        acct,
        delivered: cap.delivered,
        from_lanes: cap.from_lanes,
        doorbells: cap.doorbells,
        malformed: cap.malformed,
        in_netns,
        caught_in_netns,
    }
}

/// Every per-transition counter of the namespace equals the workload's,
/// except by what the account itself names: skipped and not caught, never
/// run by the kernel (the perf witness), or caught twice.
///
/// What the account does not name is tolerated up to this many per run,
/// always printed. Why any: before the witness, one connection's
/// FIN-WAIT-1 -> FIN-WAIT-2 -> CLOSE went missing in about one of ten
/// loaded runs here, and the witness names those exactly. But once in ~60
/// loaded runs a connection lost 4 transitions, its server's close()
/// among them, and the witness named only 2 (README, "Transitions the
/// kernel never runs the programs for"). Not explained yet.
const UNNAMED_BUDGET: u64 = 4;

/// How far the per-transition counters are from `expected` (every other
/// pair expected 0), summed over every (old, new) pair.
fn deviation(
    counters: &tcpwatch::core::model::KernelCounters,
    expected: &[((u8, u8), u64)],
) -> u64 {
    let mut deviation = 0;
    for old in 0..16u8 {
        for new in 0..16u8 {
            let want = expected
                .iter()
                .find(|(t, _)| *t == (old, new))
                .map_or(0, |(_, n)| *n);
            deviation += counters.transition(old, new).abs_diff(want);
        }
    }
    deviation
}

fn assert_exact(counters: &tcpwatch::core::model::KernelCounters, acct: &Accounting) {
    let mut expected: Vec<((u8, u8), u64)> = TEN.iter().map(|&t| (t, CONNECTIONS as u64)).collect();
    expected.push(((TCP_CLOSE, TCP_LISTEN), 1));
    expected.push(((TCP_LISTEN, TCP_CLOSE), 1));
    let deviation = deviation(counters, &expected);
    if std::path::Path::new(tcpwatch::probe::loader::BTF_PATH).exists() {
        assert!(
            acct.has_witness,
            "no perf witness on the BTF hook: {acct:?}"
        );
    }
    let reported = acct.lost_in_kernel() + acct.double_counted;
    let unnamed = deviation.saturating_sub(reported);
    if unnamed > 0 {
        eprintln!(
            "churn: WARNING {unnamed} transitions neither counted nor named by the account: {:?} {acct:?}",
            counters.transitions()
        );
    }
    assert!(
        unnamed <= UNNAMED_BUDGET,
        "counters deviate by {deviation}, the account names {reported}: {:?} {acct:?}",
        counters.transitions()
    );
    let catcher = acct.unrecovered + acct.double_counted;
    assert!(catcher <= 5, "catcher discrepancy too large: {acct:?}");
    assert_eq!(acct.nested, 0, "the main program ran nested: {acct:?}");
    if reported > 0 {
        eprintln!(
            "churn: NOTE the account names {reported} transitions lost or doubled (not run by the kernel: {}): {acct:?}",
            acct.not_run
        );
    }
}

#[test]
fn churn_counts_every_transition_and_accounts_for_every_event() {
    if !root_available("churn_counts_every_transition_and_accounts_for_every_event") {
        return;
    }
    // A ring that holds the whole run (200,002 x 104 bytes): nothing may be
    // dropped whatever the reader does.
    let r = run(32 << 20, 0, 0);
    assert_exact(&r.counters, &r.acct);
    assert_eq!(r.acct.ringbuf_full, 0, "{:?}", r.acct);
    assert_eq!(r.delivered, r.acct.emitted);
    assert_eq!(r.acct.emitted, r.acct.counted);
    assert_eq!(
        r.in_netns, r.acct.counted,
        "a delivered event from elsewhere"
    );
    assert_eq!(r.acct.read_failed, 0);
    assert_lanes_carry_the_main_program(&r);
    // Whatever the catcher delivered (real skips are rare) it also counted.
    assert!(r.caught_in_netns <= r.acct.caught, "{:?}", r.acct);
    // A chain breaks only where a transition was lost: with nothing lost,
    // 200,002 transitions in delivery order make no false break.
    if r.acct.lossless() {
        assert_eq!(r.chain_breaks, 0, "{:?}", r.acct);
    }

    // A one-page ring: drops are certain, counted, and the counters stay exact.
    let r = run(4096, 0, 0);
    assert_exact(&r.counters, &r.acct);
    assert!(
        r.acct.ringbuf_full > 0,
        "a 4 KiB ring should overflow: {:?}",
        r.acct
    );
    assert_eq!(r.delivered, r.acct.emitted);
    assert_eq!(r.in_netns, r.delivered);
    assert_eq!(
        r.acct.emitted + r.acct.ringbuf_full,
        r.acct.counted,
        "{:?}",
        r.acct
    );
    assert_lanes_carry_the_main_program(&r);
    // A lane of 32 events fills to its quarter over and over: its doorbell
    // rings, and is read as one.
    if cfg!(target_arch = "x86_64") {
        assert!(
            r.doorbells > 0,
            "no doorbell from a full lane: {:?}",
            r.acct
        );
    }
    // Each break is a drop the ring counted (or a loss the account names).
    assert!(
        r.chain_breaks > 0 && r.chain_breaks <= r.acct.ringbuf_full + r.acct.lost_in_kernel(),
        "{} breaks: {:?}",
        r.chain_breaks,
        r.acct
    );
}

/// On x86-64 the main program writes to its lanes, the catcher to the
/// rings: each path carries exactly its program's emitted events (elsewhere
/// there are no lanes, and everything comes through the rings).
fn assert_lanes_carry_the_main_program(r: &Run) {
    use tcpwatch_common::stat::EMITTED;
    let main = r.counters.main.stat(EMITTED);
    let expected = if cfg!(target_arch = "x86_64") {
        main
    } else {
        0
    };
    assert_eq!(r.from_lanes, expected, "{:?}", r.acct);
    assert!(main > 0, "{:?}", r.acct);
    let caught = r.counters.catcher.as_ref().map_or(0, |c| c.stat(EMITTED));
    assert_eq!(r.delivered, main + caught, "{:?}", r.acct);
    assert_eq!(r.malformed, 0, "doorbells are no malformed records");
}

/// The fault-injection tests below exist only in a test build with the
/// fault-injection object (cargo xtask test builds it); in CI their absence
/// is a failure, elsewhere it is said.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn fault_injection_tests_are_built() {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the kernel tests with --features fault-injection (cargo xtask test does)"
    );
    crate::common::skipped(
        "the fault-injection tests",
        "build with --features fault-injection (cargo xtask test)",
    );
}

/// Real recursion skips are rare and cannot be provoked on demand, so the
/// main program is told to skip every 7th run exactly as the kernel would
/// (no identity left behind). The catcher must handle exactly those: the
/// counters stay exact and every skip is caught once.
#[cfg(feature = "fault-injection")]
#[test]
fn catcher_handles_exactly_the_runs_the_main_program_missed() {
    if !root_available("catcher_handles_exactly_the_runs_the_main_program_missed") {
        return;
    }
    let r = run(32 << 20, 7, 0);
    assert_exact(&r.counters, &r.acct);
    let simulated = r.counters.main.stat(tcpwatch_common::stat::SIMULATED_SKIP);
    assert!(
        simulated >= (10 * CONNECTIONS as u64) / 7 - 2,
        "{:?}",
        r.acct
    );
    let gap = r.acct.caught.abs_diff(r.acct.kernel_skipped);
    assert!(
        gap <= 5,
        "caught {} of {} skips",
        r.acct.caught,
        r.acct.kernel_skipped
    );
    assert_eq!(r.delivered, r.acct.emitted);
    assert_eq!(r.in_netns, r.acct.counted);
    // Caught events are delivered like any other, flagged as caught.
    let catcher = r.counters.catcher.as_ref().unwrap();
    let catcher_counted: u64 = catcher.transitions.iter().sum();
    assert_eq!(r.caught_in_netns, catcher_counted);
    // About one in seven of the namespace's transitions (the per-CPU
    // sequence also runs on other namespaces' transitions, so not exactly).
    let ours = 10 * CONNECTIONS as u64 + 2;
    assert!(
        catcher_counted > ours / 14,
        "{catcher_counted} caught of {ours}"
    );
    // Caught transitions take their place in their sockets' chains.
    assert!(
        r.chain_breaks <= r.acct.lost_in_kernel() + r.acct.double_counted,
        "{} breaks: {:?}",
        r.chain_breaks,
        r.acct
    );
}

/// Firings the kernel never runs the programs for cannot be provoked on
/// demand either (here they came only from softirqs on one foreign thread),
/// so the main program is told to behave exactly so on every 5th armed run:
/// no run counted, nothing handled, its identity left so the catcher stays
/// out. Only the perf witness sees those firings: `not_run` must count
/// every one of them (and at most a few real ones on top, the witness
/// being host-wide), and the counters' shortfall must be named by it.
#[cfg(feature = "fault-injection")]
#[test]
fn witness_counts_exactly_the_firings_no_program_ran_for() {
    if !root_available("witness_counts_exactly_the_firings_no_program_ran_for") {
        return;
    }
    let r = run(32 << 20, 0, 5);
    let simulated = r
        .counters
        .main
        .stat(tcpwatch_common::stat::SIMULATED_NOT_RUN);
    let ours = 10 * CONNECTIONS as u64 + 2;
    assert!(
        simulated >= ours / 5 - 2,
        "{simulated} of {ours}: {:?}",
        r.acct
    );
    assert!(r.acct.has_witness, "{:?}", r.acct);
    // Every simulated one is counted. The witness covers the whole host, so
    // a real firing the kernel ran nothing for (the case it exists for: a
    // pair now and then on this VM, in any namespace) may come on top; a
    // few, printed. Fewer than simulated would be a witness that misses.
    assert!(r.acct.not_run >= simulated, "{simulated}: {:?}", r.acct);
    let real = r.acct.not_run - simulated;
    if real > 0 {
        eprintln!("churn: NOTE {real} firings not run by the kernel on top of the simulated ones");
    }
    assert!(real <= 4, "{real} more than simulated: {:?}", r.acct);
    assert!(!r.acct.lossless());
    assert_exact(&r.counters, &r.acct);
    // The namespace's shortfall is what was not run in it (the per-CPU
    // sequence also covers other namespaces' transitions, which parallel
    // tests make).
    let short = ours - r.in_netns;
    assert!(
        short > 0 && short <= r.acct.not_run,
        "{short} short: {:?}",
        r.acct
    );
    // The sockets' chains name those losses in scope, for free: at least
    // one per socket that went on after its loss, never more than were lost.
    // A lost close is a socket's last transition (no break follows it), and
    // one break can follow two losses of one socket: so at least half of
    // the losses that were no close. (`> short / 2` held until the
    // kernel's own never-run pair, a socket's last two, came on top: seen
    // at 20,001 breaks for 40,002 lost.)
    let lost_closes = (2 * u64::from(CONNECTIONS)).saturating_sub(r.closes);
    assert!(
        2 * r.chain_breaks >= short.saturating_sub(lost_closes) && r.chain_breaks <= short,
        "{} breaks for {short} lost, {lost_closes} of them closes",
        r.chain_breaks
    );
}

/// Sockets of one wave, made over a second, that give up connecting
/// about a second after each was made.
const WAVE: usize = 500;
const WAVE_PACE: Duration = Duration::from_millis(2);
/// Waves at most, until the kernel has skipped the main program.
const MAX_WAVES: u32 = 20;

/// A real nested run, made on demand: SYN-SENT sockets to an address that
/// never answers (the test's own veth subnet, a static neighbour entry)
/// give up together in the timer softirq, about a second after their
/// connect(), while loopback churn on both CPUs keeps the main program
/// running in process context. A timer interrupt that lands inside such a
/// run changes a socket's state nested in it; the kernel then skips the
/// main program (its recursion check) and only the catcher sees the
/// transition. Loopback churn alone never nests: its softirqs run where
/// the sender enables them again, never inside a program run.
///
/// Wave after wave until `enough` is set (or MAX_WAVES). Returns (churn
/// connections, sockets that timed out, waves).
fn nest_load(enough: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (u64, u64, u32) {
    use std::{
        os::fd::AsRawFd,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };
    let _net = crate::synflood::SpoofNet::new();
    let stop = Arc::new(AtomicBool::new(false));
    // One listener per thread: each accept() takes that thread's own connect.
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let client = TcpStream::connect(addr).unwrap();
                    let (mut server, _) = listener.accept().unwrap();
                    drop(client);
                    // The client's FIN is in before the server closes: with
                    // softirqs deferred to ksoftirqd under the timer storms,
                    // a close before it would make some simultaneous closes.
                    assert_eq!(std::io::Read::read(&mut server, &mut [0]).unwrap(), 0);
                    drop(server);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut timed_out = 0u64;
    let mut waves = 0;
    while waves < MAX_WAVES && !enough.load(Ordering::Relaxed) {
        waves += 1;
        // Paced over a second: the timer wheel batches 1 s timeouts into
        // 32 ms slots, and each slot whose softirq runs at an interrupt is
        // one more chance to land inside a program run.
        let socks: Vec<std::os::fd::OwnedFd> = (0..WAVE)
            .map(|_| {
                std::thread::sleep(WAVE_PACE);
                syn_sent_to_nobody()
            })
            .collect();
        // Until every connect has ended (poll says so), then its error.
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fds.iter().any(|p| p.revents == 0) {
            assert!(
                Instant::now() < deadline,
                "connects still pending after 10 s"
            );
            let mut pending: Vec<libc::pollfd> =
                fds.iter().filter(|p| p.revents == 0).copied().collect();
            // SAFETY: poll on our own open descriptors, `pending.len()` of them.
            let n = unsafe { libc::poll(pending.as_mut_ptr(), pending.len() as _, 1000) };
            assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
            for p in pending.iter().filter(|p| p.revents != 0) {
                fds.iter_mut().find(|f| f.fd == p.fd).unwrap().revents = p.revents;
            }
        }
        for s in &socks {
            assert_eq!(so_error(s), libc::ETIMEDOUT, "how the connect failed");
            timed_out += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let connections = churners.into_iter().map(|c| c.join().unwrap()).sum();
    wait_until_only_time_wait();
    (connections, timed_out, waves)
}

/// A non-blocking connect() to SPOOFED, which never answers, given up at
/// the first retransmission timer (1 s) rather than after the SYN retries.
fn syn_sent_to_nobody() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // option and address are correctly sized values of ours.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let ms: libc::c_uint = 50;
        let rc = libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&raw const ms).cast(),
            size_of_val(&ms) as libc::socklen_t,
        );
        assert_eq!(
            rc,
            0,
            "TCP_USER_TIMEOUT: {}",
            std::io::Error::last_os_error()
        );
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 9u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(crate::synflood::SPOOFED).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const to).cast(),
            size_of_val(&to) as libc::socklen_t,
        );
        let e = std::io::Error::last_os_error();
        assert!(
            rc == -1 && e.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {e}"
        );
        fd
    }
}

/// The socket's pending error (SO_ERROR), 0 if none.
fn so_error(fd: &std::os::fd::OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of_val(&err) as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the size given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_ERROR: {}", std::io::Error::last_os_error());
    err
}

#[test]
fn a_real_nested_run_is_caught_and_what_is_not_exact_is_named() {
    let test = "a_real_nested_run_is_caught_and_what_is_not_exact_is_named";
    if !root_available(test) {
        return;
    }
    let _witness = crate::common::witness_may_count();
    // Its churn would spoil the budget of the churn tests' catcher.
    let _churn = crate::common::full_churn_elsewhere();
    let enough = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = enough.clone();
    let (ino, go, worker) = netns_thread(move || nest_load(enough));
    let opts = LoadOptions {
        netns: Some(ino),
        ring_bytes: Some(32 << 20),
        witness: true,
        ..LoadOptions::default()
    };
    let watch = move |c: &tcpwatch::core::model::KernelCounters| {
        if c.summary().kernel_skipped > 0 {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let cap = capture_watching(opts, Duration::from_millis(500), watch, move || {
        go.send(()).unwrap();
        worker.join().unwrap()
    });
    let (connections, timed_out, waves) = cap.result;
    let acct = cap.counters.summary();
    let ours: Vec<&tcpwatch::core::model::Transition> =
        cap.events.iter().filter(|e| e.netns == Some(ino)).collect();
    let caught: Vec<_> = ours.iter().filter(|e| e.caught).collect();
    eprintln!(
        "{test}: {connections} connections, {timed_out} timed out in {waves} waves: {acct:?}; caught {:?}",
        caught
            .iter()
            .fold(std::collections::BTreeMap::new(), |mut m, e| {
                *m.entry(format!("{} -> {}", e.old, e.new)).or_insert(0u64) += 1;
                m
            })
    );
    assert!(
        acct.kernel_skipped > 0,
        "no real nested run in {waves} waves of {WAVE} timeouts: the kernel never skipped the main program: {acct:?}"
    );
    // Real skips were caught and delivered; whatever was not delivered
    // exactly once is named by the account. Not yet exactly once: a
    // softirq that lands between a firing's main and catcher runs can make
    // the catcher deliver that firing again (double_counted; see
    // docs/cost-history.md).
    assert!(acct.caught > 0, "{acct:?}");
    assert_eq!(caught.len() as u64, acct.caught, "{acct:?}");
    assert_eq!(acct.ringbuf_full, 0, "{acct:?}");
    assert_eq!(cap.delivered, acct.counted, "{acct:?}");
    assert_eq!(ours.len() as u64, acct.counted, "{acct:?}");
    let mut chains = tcpwatch::core::chains::Chains::default();
    for e in &ours {
        chains.follow(e);
    }
    // And the per-transition counters are the workload's, except by what
    // the account names: counted twice, skipped and not caught, or never
    // run (the witness; the rare loss the churn tests budget for, README
    // "Transitions the kernel never runs the programs for"). Here nothing
    // may go unnamed.
    let c = &cap.counters;
    let n = connections;
    let mut expected: Vec<((u8, u8), u64)> = TEN.iter().map(|&t| (t, n)).collect();
    expected.push(((TCP_CLOSE, TCP_LISTEN), 2));
    expected.push(((TCP_LISTEN, TCP_CLOSE), 2));
    expected.push(((TCP_SYN_SENT, TCP_CLOSE), timed_out));
    expected[0].1 += timed_out;
    let deviation = deviation(c, &expected);
    let named = acct.not_run + acct.unrecovered + acct.double_counted;
    assert_eq!(deviation, named, "{:?} {acct:?}", c.transitions());
    assert!(chains.breaks <= named, "{} breaks: {acct:?}", chains.breaks);
    if named > 0 {
        eprintln!(
            "{test}: WARNING the account names {} transitions counted twice, {} skipped and not caught, {} never run",
            acct.double_counted, acct.unrecovered, acct.not_run
        );
    }
}

/// A socket's close: to CLOSE from anything but LISTEN (a listener's) and
/// SYN-SENT (a failed connect's).
fn is_close(old: u8, new: u8) -> bool {
    new == TCP_CLOSE && old != TCP_LISTEN && old != TCP_SYN_SENT
}

/// Sockets of the vanish test kept open across its census.
const KEPT: usize = 5;
/// Connections opened all at once, then all closed: no address is reused
/// before the census, so every lost close is the follower's to name (with
/// churn, the next socket at a freed address names most as chain breaks).
const VANISH_CONNECTIONS: u32 = 500;

struct VanishRun {
    /// Sockets the follower named as vanished.
    gone: Vec<tcpwatch::core::sockets::Vanished>,
    /// Of those, sockets still open at the census (must be none).
    kept_named: usize,
    /// The kept sockets' pairs the census showed (must be all).
    kept_found: usize,
    /// Churned sockets whose transition to CLOSE was not delivered.
    lost_closes: u64,
    /// Addresses whose last delivered transition left a churned socket in
    /// a state a census lists: counted plainly from the events, what the
    /// follower must name, exactly.
    unclosed: usize,
    acct: Accounting,
}

/// The address family of the vanish test's connections.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
    /// IPv4 clients of a dual-stack listener: the server sockets are IPv6
    /// with v4-mapped addresses, the clients plain IPv4.
    Mapped,
}

impl Family {
    /// The listener, and the address its connections go to.
    fn listener(self) -> (TcpListener, std::net::SocketAddr) {
        let (bind, to) = match self {
            Family::V4 => ("127.0.0.1:0", "127.0.0.1"),
            Family::V6 => ("[::1]:0", "::1"),
            Family::Mapped => ("[::]:0", "127.0.0.1"),
        };
        let listener = TcpListener::bind(bind).unwrap();
        let port = listener.local_addr().unwrap().port();
        (
            listener,
            (to.parse::<std::net::IpAddr>().unwrap(), port).into(),
        )
    }
}

/// Churn in a namespace of the test's own with `KEPT` connections held
/// open, a census once only those and TIME-WAIT are left, then the
/// daemon's check: the delivered events, followed as the capture follows
/// them, against the census.
fn vanish_run(family: Family, simulate_not_run_every: u16) -> VanishRun {
    use tcpwatch::core::census::TimeWait;
    use tcpwatch::core::sockets::{Follower, OpenPairs, censused, pair_key};
    use tcpwatch::host::census;

    let _witness = crate::common::witness_may_count();
    let _budget = crate::common::churn_budget_holds();
    let (ino, go, worker) = netns_thread(move || {
        let (listener, to) = family.listener();
        let kept = held_connections(&listener, to, KEPT);
        drop(held_connections(&listener, to, VANISH_CONNECTIONS as usize));
        // Every churned socket has made its last transition: only the
        // kept ones (two sockets each) and the listener are left open.
        wait_until_open_at_most(2 * KEPT + 1);
        // Two, as the daemon names a socket missing from two in a row.
        let found: Vec<_> = (0..2)
            .map(|_| {
                let taken = tcpwatch::host::clock::monotonic_ns();
                let c = census::take(TimeWait::Counted, None).unwrap();
                (c, taken, tcpwatch::host::clock::monotonic_ns())
            })
            .collect();
        let pairs: Vec<u64> = kept
            .iter()
            .flat_map(|(c, s)| {
                [
                    pair_key(c.local_addr().unwrap(), c.peer_addr().unwrap()),
                    pair_key(s.local_addr().unwrap(), s.peer_addr().unwrap()),
                ]
            })
            .collect();
        (kept, listener, found, pairs)
    });
    let opts = LoadOptions {
        netns: Some(ino),
        ..LoadOptions::default()
    };
    #[cfg(feature = "fault-injection")]
    let opts = LoadOptions {
        simulate_not_run_every,
        ..opts
    };
    #[cfg(not(feature = "fault-injection"))]
    assert_eq!(
        simulate_not_run_every, 0,
        "fault injection needs --features fault-injection"
    );
    let cap = capture_during(opts, Duration::from_millis(300), move || {
        go.send(()).unwrap();
        worker.join().unwrap()
    });
    // The kept sockets close only now, after the capture.
    let (_kept, _listener, found, kept_pairs) = cap.result;
    let open: Vec<OpenPairs> = found
        .iter()
        .map(|(c, taken, done)| OpenPairs::of(ino, *taken, *done, &c.entries))
        .collect();
    let kept_found = kept_pairs
        .iter()
        .filter(|p| open.iter().all(|o| o.pairs.contains(p)))
        .count();
    let mut follower = Follower::default();
    let mut kept_skaddrs = std::collections::HashSet::new();
    let mut closes = 0u64;
    let mut last = std::collections::HashMap::new();
    for e in cap.events.iter().filter(|e| e.netns == Some(ino)) {
        let mut t = e.clone();
        follower.follow(&mut t);
        last.insert(e.skaddr, e.new.raw());
        if kept_pairs.contains(&pair_key(e.local, e.remote)) {
            kept_skaddrs.insert(e.skaddr);
        }
        closes += u64::from(is_close(e.old.raw(), e.new.raw()));
    }
    assert_eq!(follower.vanished(&open[..1]), [], "named at a first miss");
    let gone = follower.vanished(&open[1..]);
    let kept_named = gone
        .iter()
        .filter(|v| kept_skaddrs.contains(&v.skaddr))
        .count();
    for v in &gone {
        assert_eq!(last.get(&v.skaddr), Some(&v.state), "{v:?}");
    }
    let unclosed = last
        .iter()
        .filter(|(sk, st)| censused(**st) && !kept_skaddrs.contains(sk))
        .count();
    VanishRun {
        kept_named,
        kept_found,
        lost_closes: (2 * u64::from(VANISH_CONNECTIONS)).saturating_sub(closes),
        unclosed,
        gone,
        acct: cap.counters.summary(),
    }
}

impl VanishRun {
    /// What holds whatever was lost: the census shows every kept socket,
    /// none is named, and the sockets named are exactly those the events
    /// left in an open state.
    fn assert_only_the_unclosed_named(&self, family: Family) {
        assert_eq!(
            self.kept_found,
            2 * KEPT,
            "{family:?}: the census shows the kept sockets"
        );
        assert_eq!(self.kept_named, 0, "{family:?}: {:?}", self.gone);
        assert_eq!(
            self.gone.len(),
            self.unclosed,
            "{family:?}: {:?}",
            self.acct
        );
    }
}

/// Waits until at most `n` TCP sockets of this thread's namespace are in a
/// state other than TIME-WAIT.
fn wait_until_open_at_most(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l.split_whitespace().nth(3) != Some("06"))
            .count();
        if open <= n {
            return;
        }
        assert!(Instant::now() < deadline, "{open} sockets open after 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With nothing lost, no socket vanishes: every churned socket's close was
/// followed, and the sockets still open are in the census under the pairs
/// their transitions gave.
#[test]
fn no_socket_vanishes_when_nothing_was_lost() {
    if !root_available("no_socket_vanishes_when_nothing_was_lost") {
        return;
    }
    // One family after another: the census lists IPv6 sockets (and a
    // dual-stack listener's v4-mapped children) under the addresses the
    // transitions gave them, or every one of them would be named.
    for family in [Family::V4, Family::V6, Family::Mapped] {
        let r = vanish_run(family, 0);
        // What the kernel itself may lose (a pair now and then on this VM,
        // see the README) is named too, and nothing else.
        r.assert_only_the_unclosed_named(family);
        assert!(
            r.unclosed as u64 <= r.lost_closes,
            "{family:?}: {:?}",
            r.acct
        );
        if r.lost_closes > 0 {
            eprintln!(
                "vanish {family:?}: NOTE {} closes lost by the kernel itself, {} named",
                r.lost_closes,
                r.gone.len()
            );
        }
    }
}

/// A socket whose last transitions no program ran for (injected on every
/// 13th run) vanishes from the census while its chain says open: it is
/// named, once, and a socket still open never is. Not every lost close is
/// named so: one whose transitions into an open state were all lost too is
/// not followed in one (and under churn, a socket whose address a later
/// one took before the census is named by that one's chain break).
#[cfg(feature = "fault-injection")]
#[test]
fn a_socket_that_vanishes_from_the_census_names_its_lost_last_transitions() {
    if !root_available("a_socket_that_vanishes_from_the_census_names_its_lost_last_transitions") {
        return;
    }
    for family in [Family::V4, Family::V6, Family::Mapped] {
        let r = vanish_run(family, 13);
        r.assert_only_the_unclosed_named(family);
        let gone = r.gone.len() as u64;
        // No address reused: all but the sockets whose every transition
        // into an open state was lost too (then it is not followed in one).
        assert!(
            gone >= r.lost_closes * 3 / 4 && gone <= r.lost_closes,
            "{family:?}: {gone} named of {} lost closes: {:?}",
            r.lost_closes,
            r.acct
        );
        eprintln!(
            "vanish {family:?}: {gone} named of {} lost closes",
            r.lost_closes
        );
    }
}
