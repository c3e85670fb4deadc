//! The counts-only mode's probe: the kernel counts per namespace, pair and
//! error at close; a namespace's counts, once deleted, start again from
//! zero. The daemon's exact test of the mode is in `daemon`.
use std::{collections::BTreeMap, net::TcpStream};

use tcpwatch::probe::{capture::Capture, loader::LoadOptions};
use tcpwatch_common::state::*;
use tcpwatch_core::counts::CountsSample;

use crate::{common::root_available, daemon::NsWorker};

/// `n` connects to port 1, where nothing listens in a fresh namespace:
/// each returns ECONNREFUSED once its socket went CLOSE -> SYN-SENT ->
/// CLOSE, so both transitions have run when it returns.
fn refused(n: usize) {
    for _ in 0..n {
        assert!(TcpStream::connect(("127.0.0.1", 1)).is_err());
    }
}

/// (old, new, error) -> count, of one reading.
fn by_pair(s: &CountsSample, netns: u32) -> BTreeMap<(u8, u8, Option<u16>), u64> {
    s.counts
        .iter()
        .filter(|c| c.netns == netns)
        .map(|c| ((c.old.raw(), c.new.raw(), c.error), c.n))
        .collect()
}

#[test]
fn counts_of_a_namespace_gone_are_deleted_and_count_again_from_zero() {
    if !root_available("counts_of_a_namespace_gone_are_deleted_and_count_again_from_zero") {
        return;
    }
    let ns = NsWorker::new();
    let ino = ns.inode;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = LoadOptions {
            counts_only: true,
            netns: Some(ino),
            ..Default::default()
        };
        let mut cap = Capture::start(&opts).expect("loading the counts-only probe");
        assert!(cap.counts_only());
        let expect = |n: u64| {
            BTreeMap::from([
                ((TCP_CLOSE, TCP_SYN_SENT, None), n),
                ((TCP_SYN_SENT, TCP_CLOSE, Some(111)), n),
            ])
        };

        ns.run(|| refused(5));
        let s = cap.read_counts(1).unwrap().expect("counts in this mode");
        assert_eq!(by_pair(&s, ino), expect(5));
        // Still alive: nothing is deleted, nothing new is read.
        let s = cap.forget_counts(2, &[ino]).unwrap().unwrap();
        assert!(s.counts.is_empty(), "{s:?}");
        ns.run(|| refused(2));
        assert_eq!(
            by_pair(&cap.read_counts(3).unwrap().unwrap(), ino),
            expect(2)
        );

        // Gone from the enumeration: read a last time (nothing new), and
        // deleted in the kernel (the probe counts only this namespace), so
        // the next connects count from zero.
        assert_eq!(cap.count_keys().unwrap(), Some(2));
        let s = cap.forget_counts(4, &[]).unwrap().unwrap();
        assert!(s.counts.is_empty(), "{s:?}");
        assert_eq!(cap.count_keys().unwrap(), Some(0), "deleted in the kernel");
        ns.run(|| refused(3));
        assert_eq!(
            by_pair(&cap.read_counts(5).unwrap().unwrap(), ino),
            expect(3)
        );

        // Every transition counted in the kernel was read in some reading.
        let mut none = Vec::new();
        cap.stop(&mut none).await.unwrap();
        assert!(none.is_empty(), "no events in the counts-only mode");
        let a = cap.counters().unwrap().summary();
        assert_eq!(a.counted, 2 * (5 + 2 + 3));
        assert_eq!(cap.delivered(), a.counted);
        assert!(!a.has_catcher && a.emitted == 0);
    });
}
