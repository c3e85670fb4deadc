//! The counts-only mode's input (`daemon --counts-only`): transitions the
//! kernel counted per namespace, state pair and error at close, read as
//! what changed since the previous reading of the probe's cumulative
//! per-key totals. Nothing per socket: no owner, port or time in state.
use serde::{Deserialize, Serialize};
use tcpwatch_common::count_key_parts;

use crate::{model::State, totals::Totals};

/// Transitions of one (namespace, pair, error) since the previous reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairCount {
    /// Network namespace inode, 0 when unreadable.
    pub netns: u32,
    pub old: State,
    pub new: State,
    /// The error the socket closed with (`-> CLOSE` only), as on a
    /// transition.
    pub error: Option<u16>,
    pub n: u64,
}

/// One reading of the counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsSample {
    pub ts_ns: u64,
    pub counts: Vec<PairCount>,
}

impl CountsSample {
    /// Transitions in this reading.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.n).sum()
    }
}

/// The previous reading of every key (as many as the probe's map holds).
#[derive(Debug, Default)]
pub struct Deltas {
    last: Totals<u64>,
}

impl Deltas {
    /// What changed since the previous call, from the probe's cumulative
    /// per-key totals (`tcpwatch_common::count_key`), in key order.
    pub fn update(
        &mut self,
        ts_ns: u64,
        totals: impl IntoIterator<Item = (u64, u64)>,
    ) -> CountsSample {
        let mut changed: Vec<(u64, u64)> = totals
            .into_iter()
            .filter_map(|(key, total)| {
                let n = self.last.change(key, total);
                (n > 0).then_some((key, n))
            })
            .collect();
        changed.sort_unstable();
        CountsSample {
            ts_ns,
            counts: changed
                .into_iter()
                .map(|(key, n)| {
                    let (netns, error, old, new) = count_key_parts(key);
                    PairCount {
                        netns,
                        old: State::from_raw(old),
                        new: State::from_raw(new),
                        error: (error != 0).then_some(error),
                        n,
                    }
                })
                .collect(),
        }
    }

    /// The key was deleted from the probe's map: should it come back, it
    /// counts from zero.
    pub fn forget(&mut self, key: u64) {
        self.last.forget(&key);
    }

    /// Keys whose namespace is not in `alive` (sorted), nor 0 (unreadable).
    pub fn keys_outside(&self, alive: &[u32]) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .last
            .keys()
            .copied()
            .filter(|k| {
                let netns = count_key_parts(*k).0;
                netns != 0 && alive.binary_search(&netns).is_err()
            })
            .collect();
        keys.sort_unstable();
        keys
    }
}

#[cfg(test)]
mod tests {
    use tcpwatch_common::{count_key, state::*};

    use super::*;

    #[test]
    fn readings_give_what_changed_per_key_and_a_forgotten_key_starts_over() {
        let mut d = Deltas::default();
        let refused = count_key(7, 111, TCP_SYN_SENT, TCP_CLOSE);
        let opens = count_key(7, 0, TCP_CLOSE, TCP_SYN_SENT);
        let s = d.update(1, [(opens, 5), (refused, 2)]);
        assert_eq!(
            s.counts,
            vec![
                PairCount {
                    netns: 7,
                    old: State::from_raw(TCP_CLOSE),
                    new: State::from_raw(TCP_SYN_SENT),
                    error: None,
                    n: 5
                },
                PairCount {
                    netns: 7,
                    old: State::from_raw(TCP_SYN_SENT),
                    new: State::from_raw(TCP_CLOSE),
                    error: Some(111),
                    n: 2
                },
            ]
        );
        // Unchanged keys say nothing; a grown one says by how much.
        let s = d.update(2, [(opens, 9), (refused, 2)]);
        assert_eq!((s.counts.len(), s.total(), s.ts_ns), (1, 4, 2));
        assert_eq!(d.keys_outside(&[7]), Vec::<u64>::new());
        assert_eq!(d.keys_outside(&[8]), vec![opens, refused]);
        d.forget(opens);
        assert_eq!(d.update(3, [(opens, 1)]).total(), 1);
    }
}
