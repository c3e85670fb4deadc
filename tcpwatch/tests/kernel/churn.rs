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
    start.elapsed()
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

fn run(ring_bytes: u32) -> (tcpwatch::model::KernelCounters, Accounting, u64, u64) {
    let (ino, go, worker) = netns_thread(|| churn(CONNECTIONS));
    let opts = LoadOptions {
        netns: Some(ino),
        ring_bytes,
        ..LoadOptions::default()
    };
    let cap = capture_during(opts, Duration::from_millis(500), move || {
        go.send(()).unwrap();
        worker.join().unwrap()
    });
    let in_netns = cap.events.iter().filter(|e| e.netns == Some(ino)).count() as u64;
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
    (cap.counters, acct, cap.delivered, in_netns)
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
    let (counters, acct, delivered, in_netns) = run(8 << 20);
    assert_exact(&counters);
    assert_eq!(acct.counted, 10 * CONNECTIONS as u64 + 2);
    assert_eq!(acct.ringbuf_full, 0, "{acct:?}");
    assert_eq!(delivered, acct.emitted);
    assert_eq!(
        in_netns, acct.counted,
        "every delivered event is in the namespace"
    );
    assert!(acct.lossless(), "kernel skips not all caught: {acct:?}");
    assert_eq!(acct.read_failed, 0);

    // A one-page ring: drops are certain, counted, and the counters stay exact.
    let (counters, acct, delivered, in_netns) = run(4096);
    assert_exact(&counters);
    assert!(
        acct.ringbuf_full > 0,
        "a 4 KiB ring should overflow: {acct:?}"
    );
    assert_eq!(delivered, acct.emitted);
    assert_eq!(in_netns, delivered);
    assert_eq!(acct.emitted + acct.ringbuf_full, acct.counted, "{acct:?}");
    assert!(acct.lossless(), "{acct:?}");
}
