//! What `top` remembers between snapshots: a minute of samples per series
//! (census counts, cumulative counters), for rates over the chosen window
//! and for sparklines. Only series present in the newest snapshot are
//! kept, so its size follows the daemon's caps, not the host's history.
use std::collections::{BTreeMap, VecDeque};

use crate::model::State;

/// How far back samples go: the longest window, plus the sample it
/// starts from.
const SPAN_NS: u64 = 61_000_000_000;

/// Samples closer than this to the one before are merged into it (the
/// newest moves forward), so a fast tick (down to 10 ms) still keeps a
/// minute in a bounded number of samples (a half-second tick keeps all
/// of its samples, give or take its jitter).
const MIN_GAP_NS: u64 = 450_000_000;

/// Samples per series at most: a minute at the gap above, with room.
pub const KEPT: usize = 2 * (SPAN_NS / MIN_GAP_NS) as usize;

const NS_PER_S: f64 = 1e9;

/// What a series follows. `netns` is an inode; `ALL` sums every namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Series {
    /// Sockets in a state (census), by its index in the census's order.
    State {
        netns: u32,
        state: String,
    },
    /// Transitions of one (from, to) pair in a namespace (cumulative).
    Pair {
        netns: u32,
        from: State,
        to: State,
    },
    /// Connections a listening port completed (cumulative).
    Accepted {
        netns: u32,
        port: u16,
    },
    /// A process's transitions, connects and failed connects (cumulative).
    ProcTransitions {
        netns: u32,
        pid: u32,
    },
    ProcConnects {
        netns: u32,
        pid: u32,
    },
    ProcFailed {
        netns: u32,
        pid: u32,
    },
    /// A namespace's kernel counter (cumulative), e.g. TcpExt.SyncookiesSent.
    Counter {
        netns: u32,
        name: &'static str,
    },
    /// Transitions delivered by the probe (cumulative).
    Delivered,
    /// The daemon's CPU time in ns (cumulative).
    DaemonCpu,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    series: BTreeMap<Series, VecDeque<(u64, f64)>>,
    now_ns: u64,
    /// When the newest sample was taken (all series sample together), and
    /// the one before it, which stays.
    newest: Option<u64>,
    settled: Option<u64>,
}

impl History {
    /// Starts a sample at `now_ns` (the snapshot's engine time). The
    /// newest sample stays when it is `MIN_GAP_NS` past the one before it
    /// (and this is a new instant); otherwise this one takes its place.
    pub fn begin(&mut self, now_ns: u64) {
        if let Some(newest) = self.newest {
            let stays = now_ns != newest
                && self
                    .settled
                    .is_none_or(|s| newest.saturating_sub(s) >= MIN_GAP_NS);
            if stays {
                self.settled = Some(newest);
            } else {
                for q in self.series.values_mut() {
                    if q.back().is_some_and(|&(t, _)| t == newest) {
                        q.pop_back();
                    }
                }
            }
        }
        self.newest = Some(now_ns);
        self.now_ns = now_ns;
    }

    /// Records one value at the current sample's time; a second value at
    /// the same time replaces the first (a snapshot without time passing).
    pub fn put(&mut self, s: Series, v: f64) {
        *self.current(s) = v;
    }

    /// Adds to a value of the current sample (sums over namespaces).
    pub fn add(&mut self, s: Series, v: f64) {
        *self.current(s) += v;
    }

    /// The current sample's value of a series, 0 when new.
    fn current(&mut self, s: Series) -> &mut f64 {
        let now = self.now_ns;
        let q = self.series.entry(s).or_default();
        if q.back().is_none_or(|last| last.0 != now) {
            q.push_back((now, 0.0));
            // Older than the longest window needs, but for the one sample
            // it starts from.
            while q.len() > KEPT || q.get(1).is_some_and(|&(t, _)| now - t >= SPAN_NS) {
                q.pop_front();
            }
        }
        &mut q.back_mut().expect("just pushed").1
    }

    /// Drops the series the current sample did not touch: gone from the
    /// daemon's tables, so gone from ours.
    pub fn end(&mut self) {
        let now = self.now_ns;
        self.series
            .retain(|_, q| q.back().is_some_and(|&(t, _)| t == now));
    }

    /// Change per second over the last `window_s` seconds (or as much of it
    /// as is known); None with one sample, after a reset (a counter that
    /// went down), or when the samples around the window are so far apart
    /// (a pause, a lost daemon) that the rate would not be the window's.
    pub fn rate(&self, s: &Series, window_s: u64) -> Option<f64> {
        let q = self.series.get(s)?;
        let &(t1, v1) = q.back()?;
        let window_ns = window_s.saturating_mul(1_000_000_000);
        let from = t1.saturating_sub(window_ns);
        // The newest sample at or before the window's start; the oldest
        // known when the history is shorter than the window.
        let &(t0, v0) = q.iter().rev().find(|(t, _)| *t <= from).or(q.front())?;
        let too_long = window_ns + window_ns.max(2_000_000_000);
        if t1 <= t0 || t1 - t0 > too_long {
            return None;
        }
        // A counter that went down anywhere in between was reset.
        let mut prev = v0;
        for &(_, v) in q.iter().filter(|(t, _)| *t >= t0) {
            if v < prev {
                return None;
            }
            prev = v;
        }
        Some((v1 - v0) * NS_PER_S / (t1 - t0) as f64)
    }

    /// The last value.
    pub fn last(&self, s: &Series) -> Option<f64> {
        self.series.get(s)?.back().map(|&(_, v)| v)
    }

    /// The values, oldest first (gauges' sparklines).
    pub fn values(&self, s: &Series) -> Vec<u64> {
        self.series
            .get(s)
            .map_or_else(Vec::new, |q| q.iter().map(|&(_, v)| v as u64).collect())
    }

    /// Per-sample increases, oldest first (counters' sparklines); a reset
    /// counts as zero.
    pub fn deltas(&self, s: &Series) -> Vec<u64> {
        let Some(q) = self.series.get(s) else {
            return Vec::new();
        };
        q.iter()
            .zip(q.iter().skip(1))
            .map(|(a, b)| (b.1 - a.1).max(0.0) as u64)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn feed(h: &mut History, samples: &[(u64, f64)]) {
        for &(t, v) in samples {
            h.begin(t * S);
            h.put(Series::Delivered, v);
            h.end();
        }
    }

    #[test]
    fn rates_span_the_window_or_what_is_known_of_it() {
        let mut h = History::default();
        feed(&mut h, &[(1, 0.0)]);
        assert_eq!(h.rate(&Series::Delivered, 10), None, "one sample: unknown");
        feed(&mut h, &[(2, 100.0), (3, 300.0), (4, 600.0)]);
        assert_eq!(h.rate(&Series::Delivered, 1), Some(300.0));
        assert_eq!(h.rate(&Series::Delivered, 10), Some(200.0), "3 s known");
        assert_eq!(h.deltas(&Series::Delivered), vec![100, 200, 300]);
    }

    #[test]
    fn a_restarted_daemon_gives_no_rate_instead_of_a_negative_one() {
        let mut h = History::default();
        feed(&mut h, &[(1, 500.0), (2, 10.0)]);
        assert_eq!(h.rate(&Series::Delivered, 1), None);
        assert_eq!(h.deltas(&Series::Delivered), vec![0]);
    }

    #[test]
    fn it_keeps_a_minute_and_only_what_the_last_snapshot_had() {
        let mut h = History::default();
        for t in 0..200 {
            h.begin(t * S);
            h.put(Series::Delivered, t as f64);
            if t < 5 {
                h.put(Series::DaemonCpu, 0.0);
            }
            h.end();
        }
        assert_eq!(
            h.values(&Series::Delivered).len(),
            62,
            "a minute and its base"
        );
        assert_eq!(h.len(), 1, "the CPU series left with its snapshot");
        assert_eq!(h.rate(&Series::Delivered, 60), Some(1.0));
    }

    #[test]
    fn a_fast_tick_still_keeps_a_minute_in_bounded_samples() {
        let mut h = History::default();
        // 100 transitions a second, a snapshot every 10 ms, for 2 minutes.
        for i in 0..12_000u64 {
            h.begin(i * 10_000_000);
            h.put(Series::Delivered, i as f64);
            h.end();
        }
        assert!(h.values(&Series::Delivered).len() <= KEPT);
        let r60 = h.rate(&Series::Delivered, 60).unwrap();
        assert!((r60 - 100.0).abs() < 1.0, "{r60}");
        let r1 = h.rate(&Series::Delivered, 1).unwrap();
        assert!((r1 - 100.0).abs() < 1.0, "{r1}");
    }

    #[test]
    fn a_gap_longer_than_the_window_gives_no_rate() {
        let mut h = History::default();
        feed(&mut h, &[(1, 0.0), (2, 10.0), (40, 400.0)]);
        assert_eq!(
            h.rate(&Series::Delivered, 1),
            None,
            "38 s is not the last second"
        );
        assert_eq!(h.rate(&Series::Delivered, 60), Some(400.0 / 39.0));
    }

    #[test]
    fn a_counter_reset_inside_the_window_gives_no_rate() {
        let mut h = History::default();
        feed(&mut h, &[(1, 0.0), (2, 1.0), (3, 5.0), (4, 2.0), (5, 8.0)]);
        assert_eq!(
            h.rate(&Series::Delivered, 60),
            None,
            "8 > 0 but it restarted"
        );
        assert_eq!(h.rate(&Series::Delivered, 1), Some(6.0));
    }
}
