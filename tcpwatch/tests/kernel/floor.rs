//! The bench's keyed floor counts what its row claims: per namespace and
//! state pair, every transition, exactly.
use std::collections::BTreeMap;

use tcpwatch::probe::loader::Floor;
use tcpwatch_common::{floor_key, state::*};

use crate::common::{held_connections, netns_thread, root_available};

#[test]
fn the_keyed_floor_counts_each_pair_of_a_namespace_exactly() {
    if !root_available("the_keyed_floor_counts_each_pair_of_a_namespace_exactly") {
        return;
    }
    let floor = Floor::attach(true).expect("attaching the keyed floor");
    let (ino, go, h) = netns_thread(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let held = held_connections(&l, addr, 100);
        (l, held)
    });
    go.send(()).unwrap();
    // Held open: every transition up to ESTABLISHED on both sides has run
    // (accept() returns only established children), no close has begun.
    let held = h.join().unwrap();
    let want: BTreeMap<u64, u64> = [
        (TCP_CLOSE, TCP_LISTEN, 1),
        (TCP_CLOSE, TCP_SYN_SENT, 100),
        (TCP_SYN_SENT, TCP_ESTABLISHED, 100),
        (TCP_LISTEN, TCP_SYN_RECV, 100),
        (TCP_SYN_RECV, TCP_ESTABLISHED, 100),
    ]
    .into_iter()
    .map(|(old, new, n)| (floor_key(ino, old, new), n))
    .collect();
    let got: BTreeMap<u64, u64> = floor
        .keyed_counts()
        .expect("reading the keyed floor")
        .into_iter()
        .filter(|(key, _)| key >> 16 == u64::from(ino))
        .collect();
    drop(held);
    assert_eq!(got, want, "the keyed floor's counts in namespace {ino}");
}
