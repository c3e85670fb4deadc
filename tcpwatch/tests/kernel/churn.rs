//! Connection churn in a namespace of the test's own: the kernel counters
//! must be exact, and every transition delivered or counted as dropped.
use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use tcpwatch::{loader::LoadOptions, model::Accounting};
use tcpwatch_common::state::*;

use crate::common::{bpf_available, capture_during, netns_thread};

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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy = ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l.split_whitespace().nth(3) != Some("06"))
            .count();
        if busy == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{busy} sockets still not closed after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
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
    counters: tcpwatch::model::KernelCounters,
    acct: Accounting,
    delivered: u64,
    /// Delivered events of the test's namespace.
    in_netns: u64,
    /// Of those, delivered by the catcher.
    caught_in_netns: u64,
}

fn run(ring_bytes: u32, simulate_skip_every: u32) -> Run {
    let (ino, go, worker) = netns_thread(|| churn(CONNECTIONS));
    let opts = LoadOptions {
        netns: Some(ino),
        ring_bytes,
        simulate_skip_every,
        ..LoadOptions::default()
    };
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
    let m = &cap.counters.main;
    if m.run_cnt > 0 {
        // Only with sysctl kernel.bpf_stats_enabled=1 (the bench turns it on).
        eprintln!(
            "churn: main program {} runs, {} ns per run in the kernel",
            m.run_cnt,
            m.run_time_ns / m.run_cnt
        );
    }
    let acct = cap.counters.summary();
    Run {
        counters: cap.counters,
        acct,
        delivered: cap.delivered,
        in_netns,
        caught_in_netns,
    }
}

fn assert_exact(counters: &tcpwatch::model::KernelCounters) {
    for (old, new) in TEN {
        assert_eq!(
            counters.transition(old, new),
            CONNECTIONS as u64,
            "{old}->{new}: {:?}",
            counters.transitions()
        );
    }
    assert_eq!(counters.transition(TCP_CLOSE, TCP_LISTEN), 1);
    assert_eq!(counters.transition(TCP_LISTEN, TCP_CLOSE), 1);
    let total: u64 = counters.transitions().iter().map(|(_, n)| n).sum();
    assert_eq!(
        total,
        10 * CONNECTIONS as u64 + 2,
        "{:?}",
        counters.transitions()
    );
}

#[test]
fn churn_counts_every_transition_and_accounts_for_every_event() {
    if !bpf_available("churn_counts_every_transition_and_accounts_for_every_event") {
        return;
    }
    // A ring large enough for the whole run: nothing may be dropped.
    let r = run(8 << 20, 0);
    assert_exact(&r.counters);
    assert_eq!(r.acct.counted, 10 * CONNECTIONS as u64 + 2);
    assert_eq!(r.acct.ringbuf_full, 0, "{:?}", r.acct);
    assert_eq!(r.delivered, r.acct.emitted);
    assert_eq!(
        r.in_netns, r.acct.counted,
        "every delivered event is in the namespace"
    );
    assert!(
        r.acct.lossless(),
        "kernel skips not all caught: {:?}",
        r.acct
    );
    assert_eq!(r.acct.read_failed, 0);

    // A one-page ring: drops are certain, counted, and the counters stay exact.
    let r = run(4096, 0);
    assert_exact(&r.counters);
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
    assert!(r.acct.lossless(), "{:?}", r.acct);
}

/// Real recursion skips are rare and cannot be provoked on demand, so the
/// main program is told to skip every 7th run exactly as the kernel would
/// (no identity left behind). The catcher must handle exactly those: the
/// counters stay exact and every skip is caught once.
#[test]
fn catcher_handles_exactly_the_runs_the_main_program_missed() {
    if !bpf_available("catcher_handles_exactly_the_runs_the_main_program_missed") {
        return;
    }
    let r = run(8 << 20, 7);
    assert_exact(&r.counters);
    let simulated = r.counters.main.stat(tcpwatch_common::stat::SIMULATED_SKIP);
    assert!(
        simulated >= (10 * CONNECTIONS as u64) / 7 - 2,
        "{:?}",
        r.acct
    );
    assert_eq!(r.acct.caught, r.acct.kernel_skipped, "{:?}", r.acct);
    assert!(r.acct.lossless(), "{:?}", r.acct);
    assert_eq!(r.delivered, r.acct.emitted);
    assert_eq!(r.in_netns, r.acct.counted);
    // Caught events are delivered like any other, flagged as caught.
    let catcher = r.counters.catcher.as_ref().unwrap();
    let catcher_counted: u64 = catcher.transitions.iter().sum();
    assert_eq!(r.caught_in_netns, catcher_counted);
    assert!(catcher_counted > 0);
}
