//! Counts per second over the last minute, for 1 s / 10 s / 60 s rates.
//!
//! Time is whatever the caller says (CLOCK_MONOTONIC nanoseconds of the
//! events, or of a recording), never the wall clock, so a replay gives the
//! same rates as the live run.

/// Seconds kept: the longest rate window.
pub const SPAN: usize = 60;

/// A ring of per-second buckets. Rates are taken over *complete* seconds
/// (the current one is still filling and would read low).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    buckets: [u32; SPAN],
    /// The absolute second the newest bucket holds.
    head: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: [0; SPAN],
            head: 0,
        }
    }
}

impl Window {
    /// Moves the head to `sec`, zeroing the seconds skipped over.
    pub fn advance(&mut self, sec: u64) {
        if sec <= self.head {
            return;
        }
        let steps = (sec - self.head).min(SPAN as u64);
        for i in 1..=steps {
            self.buckets[((self.head + i) % SPAN as u64) as usize] = 0;
        }
        self.head = sec;
    }

    /// Adds `n` at second `sec`. Returns false (and counts nothing) for a
    /// second that already left the window: the caller counts it as late.
    pub fn add(&mut self, sec: u64, n: u32) -> bool {
        self.advance(sec);
        if sec + (SPAN as u64) <= self.head {
            return false;
        }
        let b = &mut self.buckets[(sec % SPAN as u64) as usize];
        *b = b.saturating_add(n);
        true
    }

    /// Sum of the `secs` complete seconds before `now_sec`.
    pub fn sum(&self, now_sec: u64, secs: usize) -> u64 {
        let secs = secs.min(SPAN - 1) as u64;
        let mut total = 0u64;
        for s in now_sec.saturating_sub(secs)..now_sec {
            // Seconds after the head have not happened yet (zero); seconds
            // that fell out of the window are zero too.
            if s > self.head || s + (SPAN as u64) <= self.head {
                continue;
            }
            total += self.buckets[(s % SPAN as u64) as usize] as u64;
        }
        total
    }

    /// Per-second rate over the `secs` complete seconds before `now_sec`.
    pub fn rate(&self, now_sec: u64, secs: usize) -> f64 {
        self.sum(now_sec, secs) as f64 / secs.min(SPAN - 1) as f64
    }

    /// Adds another window's counts second by second (when an evicted key's
    /// activity moves to `other`, so rates still add up).
    pub fn merge_from(&mut self, other: &Window) {
        let head = self.head.max(other.head);
        self.advance(head);
        for s in head.saturating_sub(SPAN as u64 - 1)..=head {
            if s > other.head || s + (SPAN as u64) <= other.head {
                continue;
            }
            let n = other.buckets[(s % SPAN as u64) as usize];
            let b = &mut self.buckets[(s % SPAN as u64) as usize];
            *b = b.saturating_add(n);
        }
    }

    /// Whether nothing happened in the window as seen at `now_sec`.
    pub fn idle(&self, now_sec: u64) -> bool {
        self.sum(now_sec + 1, SPAN - 1) == 0
    }
}

/// The three rates every view shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    pub per_s_1s: f64,
    pub per_s_10s: f64,
    pub per_s_60s: f64,
}

impl Rates {
    pub fn of(w: &Window, now_sec: u64) -> Rates {
        Rates {
            per_s_1s: w.rate(now_sec, 1),
            per_s_10s: w.rate(now_sec, 10),
            // 59 complete seconds is the most a 60-bucket ring holds next to
            // the one still filling.
            per_s_60s: w.rate(now_sec, 59),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_complete_seconds() {
        let mut w = Window::default();
        for s in 100..110 {
            assert!(w.add(s, 5));
        }
        w.add(110, 1000); // still filling: not in any rate
        assert_eq!(w.sum(110, 1), 5);
        assert_eq!(w.sum(110, 10), 50);
        assert_eq!(w.rate(110, 10), 5.0);
        assert_eq!(w.sum(110, 59), 50);
    }

    #[test]
    fn old_seconds_fall_out_and_late_adds_are_refused() {
        let mut w = Window::default();
        w.add(10, 7);
        w.add(75, 1);
        assert_eq!(w.sum(76, 59), 1, "second 10 left the window");
        assert!(!w.add(10, 3), "too late to count in the window");
        assert!(w.add(70, 2), "late but inside the window");
        assert_eq!(w.sum(76, 10), 3);
    }

    #[test]
    fn merging_keeps_per_second_counts() {
        let mut a = Window::default();
        let mut b = Window::default();
        a.add(100, 1);
        b.add(99, 2);
        b.add(101, 4);
        a.merge_from(&b);
        assert_eq!(a.sum(102, 3), 7);
        assert_eq!(a.sum(101, 1), 1);
    }

    #[test]
    fn a_long_gap_clears_everything() {
        let mut w = Window::default();
        w.add(5, 9);
        w.advance(1_000_000);
        assert_eq!(w.sum(1_000_001, 59), 0);
        assert!(w.idle(1_000_000));
    }
}
