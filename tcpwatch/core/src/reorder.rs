//! Events read from several per-CPU rings, handed on in time order.
//!
//! A socket's transitions can run on different CPUs, so they land in
//! different rings; following a socket (its chain, owner, time in state)
//! needs them in order. Each ring's events are kept sorted by time as they
//! come (they nearly are already: a ring is written in the order its CPU
//! reserved records), and the rings are merged on the way out, smallest
//! time first. The reader says up to when it has seen everything (the
//! watermark, see `probe::capture`); later events wait for the next one.
//! (A first version sorted everything held at each read: 15 % of the
//! daemon's event loop under full churn.)
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

#[derive(Debug)]
pub struct Reorder<T> {
    /// Per ring, sorted by time (equal times in reading order).
    rings: Vec<VecDeque<(u64, T)>>,
    /// The front time of every non-empty ring, for the merge.
    fronts: BinaryHeap<Reverse<(u64, usize)>>,
    watermark: u64,
    held: usize,
}

impl<T> Reorder<T> {
    pub fn new(rings: usize) -> Reorder<T> {
        Reorder {
            rings: (0..rings).map(|_| VecDeque::new()).collect(),
            fronts: BinaryHeap::with_capacity(rings),
            watermark: 0,
            held: 0,
        }
    }

    /// Adds an event of time `ts` read from `ring`; it goes out once a
    /// watermark at or past it is set.
    pub fn push(&mut self, ring: usize, ts: u64, event: T) {
        let q = &mut self.rings[ring];
        self.held += 1;
        if q.back().is_none_or(|(t, _)| *t <= ts) {
            q.push_back((ts, event));
            return;
        }
        // An event a nested program wrote before the one it interrupted
        // goes a little further in.
        let at = q.len() - q.iter().rev().take_while(|(t, _)| *t > ts).count();
        q.insert(at, (ts, event));
    }

    /// Releases every event at or before `watermark` (it never goes back).
    pub fn release(&mut self, watermark: u64) {
        self.watermark = self.watermark.max(watermark);
        self.fronts.clear();
        for (i, q) in self.rings.iter().enumerate() {
            if let Some(&(ts, _)) = q.front() {
                self.fronts.push(Reverse((ts, i)));
            }
        }
    }

    /// The earliest released event of all rings.
    pub fn pop(&mut self) -> Option<T> {
        let &Reverse((ts, ring)) = self.fronts.peek()?;
        if ts > self.watermark {
            return None;
        }
        self.fronts.pop();
        let q = &mut self.rings[ring];
        let (_, event) = q.pop_front()?;
        if let Some(&(next, _)) = q.front() {
            self.fronts.push(Reverse((next, ring)));
        }
        self.held -= 1;
        Some(event)
    }

    /// Whether [`pop`](Self::pop) has an event now.
    pub fn ready(&self) -> bool {
        self.fronts
            .peek()
            .is_some_and(|Reverse((ts, _))| *ts <= self.watermark)
    }

    /// Events read and not popped yet (released or not).
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T>(r: &mut Reorder<T>) -> Vec<T> {
        std::iter::from_fn(|| r.pop()).collect()
    }

    #[test]
    fn events_come_out_in_time_order_up_to_the_watermark() {
        let mut r = Reorder::new(2);
        for (ts, name) in [(10, "a1"), (30, "a2"), (50, "a3")] {
            r.push(0, ts, name);
        }
        for (ts, name) in [(20, "b1"), (40, "b2")] {
            r.push(1, ts, name);
        }
        assert!(!r.ready(), "nothing goes out before a watermark");
        r.release(40);
        assert_eq!(drain(&mut r), ["a1", "b1", "a2", "b2"]);
        assert_eq!(r.held(), 1);
        r.push(1, 45, "b3");
        r.release(u64::MAX);
        assert_eq!(drain(&mut r), ["b3", "a3"]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_ring_out_of_order_is_sorted_and_equal_times_keep_reading_order() {
        let mut r = Reorder::new(2);
        for (ts, i) in [(5, 0), (9, 1), (7, 2), (9, 3)] {
            r.push(0, ts, i);
        }
        r.push(1, 7, 4);
        r.release(100);
        assert_eq!(drain(&mut r), [0, 2, 4, 1, 3]);
    }

    #[test]
    fn the_watermark_never_goes_back() {
        let mut r = Reorder::new(1);
        r.push(0, 10, "a");
        r.release(20);
        r.release(5);
        assert_eq!(drain(&mut r), ["a"]);
    }
}
