//! Fixed-bucket histograms of durations, in the shape Prometheus exports
//! (cumulative buckets, sum, count), so the daemon's `/metrics` and the views
//! read the same numbers.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds in seconds: from a loopback handshake (tens of µs) to a
/// CLOSE-WAIT socket leaked for an hour.
pub const BOUNDS_S: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); one more than BOUNDS_S
    /// for +Inf.
    pub counts: Vec<u64>,
    pub sum_ns: u128,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; BOUNDS_S.len() + 1];
        }
        let s = d.as_secs_f64();
        let i = BOUNDS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BOUNDS_S.len());
        self.counts[i] += 1;
        self.sum_ns += d.as_nanos();
        self.count += 1;
    }

    /// (upper bound, cumulative count) pairs, +Inf last, as Prometheus wants.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        BOUNDS_S
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, b)| {
                acc += self.counts.get(i).copied().unwrap_or(0);
                (b, acc)
            })
            .collect()
    }

    /// (upper bound, count in that bucket alone) pairs, +Inf last: what the
    /// prometheus-client encoder wants (it accumulates them itself).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS_S
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, b)| (b, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// The smallest bucket bound below which at least `q` of the
    /// observations fall (an upper estimate, as histogram_quantile's).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil() as u64;
        self.cumulative()
            .into_iter()
            .find(|&(_, c)| c >= want)
            .map(|(b, _)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(50)); // exactly on the first bound
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(7200));
        let c = h.cumulative();
        assert_eq!(c[0], (0.000_05, 1));
        assert_eq!(c[4], (0.005, 2));
        assert_eq!(c[15], (3600.0, 2));
        assert_eq!(c[16].1, 3);
        assert!(c[16].0.is_infinite());
        assert_eq!(h.count, 3);
        assert!((h.sum_seconds() - 7200.00205).abs() < 1e-9);
        assert_eq!(h.quantile_bound(0.5), Some(0.005));
    }
}
