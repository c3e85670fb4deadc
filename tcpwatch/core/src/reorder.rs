//! Events read from several per-CPU rings, handed on in time order.
//!
//! A socket's transitions can run on different CPUs, so they land in
//! different rings; following a socket (its chain, owner, time in state)
//! needs them in order. The reader says up to when it has seen everything
//! (the watermark, see `probe::capture`); events up to it are released
//! sorted by time, later ones are held for the next read.
use std::collections::VecDeque;

#[derive(Debug)]
pub struct Reorder<T> {
    /// Read, not yet released: (time, order of reading, event).
    held: Vec<(u64, u64, T)>,
    ready: VecDeque<T>,
    seq: u64,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            held: Vec::new(),
            ready: VecDeque::new(),
            seq: 0,
        }
    }
}

impl<T> Reorder<T> {
    /// Holds an event of time `ts` until a watermark at or past it.
    pub fn push(&mut self, ts: u64, event: T) {
        self.held.push((ts, self.seq, event));
        self.seq += 1;
    }

    /// Releases every held event at or before `watermark`, in time order
    /// (equal times in the order they were read).
    pub fn release(&mut self, watermark: u64) {
        // Each ring is read in (nearly) time order: the sort merges runs.
        self.held.sort_unstable_by_key(|&(ts, seq, _)| (ts, seq));
        let upto = self.held.partition_point(|&(ts, _, _)| ts <= watermark);
        self.ready
            .extend(self.held.drain(..upto).map(|(_, _, e)| e));
    }

    /// The next released event.
    pub fn pop(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// Released events not popped yet.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Events held back (later than the last watermark).
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_order_up_to_the_watermark() {
        let mut r = Reorder::default();
        // Two rings read one after the other, each in its own order.
        for (ts, name) in [(10, "a1"), (30, "a2"), (50, "a3"), (20, "b1"), (40, "b2")] {
            r.push(ts, name);
        }
        r.release(40);
        let out: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(out, ["a1", "b1", "a2", "b2"]);
        assert_eq!(r.held(), 1);
        r.push(45, "b3");
        r.release(u64::MAX);
        let out: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(out, ["b3", "a3"]);
        assert_eq!((r.held(), r.ready()), (0, 0));
    }

    #[test]
    fn equal_times_keep_the_order_they_were_read_in() {
        let mut r = Reorder::default();
        for (i, ts) in [5, 5, 3, 5].into_iter().enumerate() {
            r.push(ts, i);
        }
        r.release(5);
        let out: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(out, [2, 0, 1, 3]);
    }
}
