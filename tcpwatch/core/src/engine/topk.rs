//! A keyed table with a hard cap: the busiest keys are tracked exactly, the
//! rest share one `other` slot. An attacker spraying 65,535 ports (or
//! process names) fills at most `cap` slots and a fixed-size sketch.
//!
//! Admission: while there is room, any key. When full, a new key takes the
//! slot of the least active tracked key (fewest transitions in the last ten
//! complete seconds) once the sketch says it has been busier than that in
//! the current ten-second period, and seen at least three times in it (a
//! spray of one-off keys never churns the table). Keys admitted less than ten seconds ago
//! are not evicted, so a spray cannot churn the table faster than `cap`
//! keys per ten seconds, and a busy key pushes out the junk in at most that.
//!
//! Per-key totals count from the key's admission; an evicted key's totals
//! and per-second activity move to `other`, so the totals of all slots
//! never go down and their rates always add up to the global rate.
use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use super::window::Window;

/// Seconds a newcomer must prove itself over, and is protected for.
const PERIOD_S: u64 = 10;

/// Hits in the current period a newcomer needs, at least, to take a slot
/// from a tracked key once the table is full.
const ADMIT_MIN_HITS: u64 = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct Slot<V> {
    pub window: Window,
    pub value: V,
    /// Second of admission.
    pub since_sec: u64,
}

impl<V: Default> Slot<V> {
    fn new(since_sec: u64) -> Self {
        Slot {
            window: Window::default(),
            value: V::default(),
            since_sec,
        }
    }
}

/// Count-min sketch of untracked keys' hits in the current period.
/// Deterministic hashing (SipHash with fixed keys), so replays agree.
#[derive(Clone, Debug)]
struct Sketch {
    rows: Vec<[u32; Sketch::WIDTH]>,
    period: u64,
}

impl Sketch {
    const WIDTH: usize = 1024;
    const DEPTH: u64 = 4;

    fn new() -> Self {
        Sketch {
            rows: vec![[0; Self::WIDTH]; Self::DEPTH as usize],
            period: 0,
        }
    }

    /// Adds one hit of `key` at second `sec`; returns its estimated hits
    /// this period (never less than the truth).
    fn hit<K: Hash>(&mut self, key: &K, sec: u64) -> u32 {
        let period = sec / PERIOD_S;
        if period != self.period {
            self.period = period;
            for row in &mut self.rows {
                row.fill(0);
            }
        }
        let mut est = u32::MAX;
        for (i, row) in self.rows.iter_mut().enumerate() {
            let mut h = DefaultHasher::new();
            (i as u64, key).hash(&mut h);
            let c = &mut row[(h.finish() % Self::WIDTH as u64) as usize];
            *c = c.saturating_add(1);
            est = est.min(*c);
        }
        est
    }
}

#[derive(Clone, Debug)]
pub struct TopK<K, V> {
    cap: usize,
    tracked: BTreeMap<K, Slot<V>>,
    pub other: Slot<V>,
    sketch: Sketch,
    /// Least active evictable key and its activity, valid for one second.
    weakest: Option<(u64, Option<(K, u64)>)>,
    pub admitted: u64,
    pub evicted: u64,
}

/// What an evicted key leaves to `other`: its totals, so that the sum over
/// all keys and `other` never goes down (Prometheus reads a drop as a
/// counter reset).
pub trait Merge {
    fn merge(&mut self, from: &Self);
}

impl Merge for u64 {
    fn merge(&mut self, from: &u64) {
        *self += from;
    }
}

impl<K: Ord + Hash + Clone, V: Default + Merge> TopK<K, V> {
    pub fn new(cap: usize) -> Self {
        TopK {
            cap,
            tracked: BTreeMap::new(),
            other: Slot::new(0),
            sketch: Sketch::new(),
            weakest: None,
            admitted: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.tracked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Tracked keys in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Slot<V>)> {
        self.tracked.iter()
    }

    /// Records one hit of `key` at second `sec`, applying `update` to the
    /// key's value (or to `other`'s). Returns whether the key is tracked.
    pub fn record(&mut self, key: &K, sec: u64, update: impl FnOnce(&mut V)) -> bool {
        // One lookup for a tracked key, the common case (this runs per
        // transition, twice).
        if let Some(slot) = self.tracked.get_mut(key) {
            slot.window.add(sec, 1);
            update(&mut slot.value);
            return true;
        }
        if !self.admit(key, sec) {
            self.other.window.add(sec, 1);
            update(&mut self.other.value);
            return false;
        }
        let slot = self.tracked.get_mut(key).expect("just admitted");
        slot.window.add(sec, 1);
        update(&mut slot.value);
        true
    }

    fn admit(&mut self, key: &K, sec: u64) -> bool {
        if self.cap == 0 {
            return false;
        }
        if self.tracked.len() < self.cap {
            self.tracked.insert(key.clone(), Slot::new(sec));
            self.admitted += 1;
            self.weakest = None;
            return true;
        }
        let est = self.sketch.hit(key, sec) as u64;
        let Some((victim, activity)) = self.weakest(sec) else {
            return false;
        };
        // A key seen once or twice is not worth a series: without this, a
        // spray of one-off names (a process renamed per connect) would
        // churn every slot once its ten protected seconds are over.
        if est <= activity || est < ADMIT_MIN_HITS {
            return false;
        }
        if let Some(old) = self.tracked.remove(&victim) {
            self.other.window.merge_from(&old.window);
            self.other.value.merge(&old.value);
            self.evicted += 1;
        }
        self.tracked.insert(key.clone(), Slot::new(sec));
        self.admitted += 1;
        self.weakest = None;
        true
    }

    /// Forgets the keys `gone` says no longer exist (a deleted namespace's
    /// ports): their series end, nothing moves to `other`.
    pub fn forget(&mut self, gone: impl Fn(&K) -> bool) {
        let before = self.tracked.len();
        self.tracked.retain(|k, _| !gone(k));
        if self.tracked.len() != before {
            self.weakest = None;
        }
    }

    /// A new cap (a reloaded configuration). Shrinking evicts the least
    /// active keys, newest protection or not, into `other`, as admission
    /// would; growing only makes room.
    pub fn set_cap(&mut self, cap: usize, sec: u64) {
        self.cap = cap;
        while self.tracked.len() > cap {
            let victim = self
                .tracked
                .iter()
                // The current second counts too: a reload must not drop the busiest.
                .map(|(k, s)| (s.window.sum(sec + 1, PERIOD_S as usize), k))
                .min()
                .map(|(_, k)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(old) = self.tracked.remove(&victim) {
                self.other.window.merge_from(&old.window);
                self.other.value.merge(&old.value);
                self.evicted += 1;
            }
        }
        self.weakest = None;
    }

    /// The least active key old enough to be evicted (ties: the smallest
    /// key, for determinism), cached for the rest of second `sec`.
    fn weakest(&mut self, sec: u64) -> Option<(K, u64)> {
        if let Some((at, w)) = &self.weakest
            && *at == sec
        {
            return w.clone();
        }
        let w = self
            .tracked
            .iter()
            .filter(|(_, s)| s.since_sec + PERIOD_S <= sec)
            .map(|(k, s)| (k, s.window.sum(sec, PERIOD_S as usize)))
            .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(k, n)| (k.clone(), n));
        self.weakest = Some((sec, w.clone()));
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smaller_cap_keeps_the_busiest_and_moves_the_rest_to_other() {
        let mut t: TopK<u16, u64> = TopK::new(4);
        for (key, hits) in [(1u16, 5), (2, 50), (3, 1), (4, 20)] {
            for _ in 0..hits {
                t.record(&key, 100, |v| *v += 1);
            }
        }
        t.set_cap(2, 100);
        let kept: Vec<u16> = t.iter().map(|(k, _)| *k).collect();
        assert_eq!(kept, [2, 4]);
        assert_eq!(t.evicted, 2);
        assert_eq!(t.other.value, 6, "the evicted keys' totals, once");
        assert_eq!(t.other.window.sum(101, 10), 6, "the evicted keys' activity");
        t.set_cap(8, 100);
        t.record(&9, 100, |v| *v += 1);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_spray_fills_at_most_cap_slots() {
        let mut t: TopK<u16, u64> = TopK::new(64);
        for port in 0..=u16::MAX {
            t.record(&port, 1000 + port as u64 / 10_000, |v| *v += 1);
        }
        assert_eq!(t.len(), 64);
        let tracked: u64 = t.iter().map(|(_, s)| s.value).sum();
        assert_eq!(tracked + t.other.value, 65_536, "every hit counted once");
    }

    #[test]
    fn a_busy_newcomer_displaces_the_idlest_old_key() {
        let mut t: TopK<u16, u64> = TopK::new(2);
        // Two keys, one busy and one nearly idle, for 20 s.
        for s in 0..20 {
            for _ in 0..100 {
                t.record(&1, s, |v| *v += 1);
            }
            if s == 0 {
                t.record(&2, s, |v| *v += 1);
            }
        }
        // A third key, busier than key 2's last ten seconds (zero): admitted
        // at its third hit (one-off keys never are), key 2 evicted, key 1
        // kept.
        assert!(!t.record(&3, 20, |v| *v += 1));
        assert!(!t.record(&3, 20, |v| *v += 1));
        assert!(t.record(&3, 20, |v| *v += 1));
        let keys: Vec<u16> = t.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![1, 3]);
        assert_eq!(t.evicted, 1);
        // Key 2's activity moved to other, with key 3's two hits before it
        // was admitted; rates still add up.
        assert_eq!(t.other.window.sum(21, 59), 3);
    }

    #[test]
    fn newcomers_are_protected_so_a_spray_cannot_churn() {
        let mut t: TopK<u32, u64> = TopK::new(8);
        for k in 0..8 {
            t.record(&k, 100, |v| *v += 1);
        }
        // Within the protection period every new key goes to other.
        for k in 8..10_000 {
            assert!(!t.record(&k, 105, |v| *v += 1));
        }
        assert_eq!(t.evicted, 0);
        assert_eq!(t.other.value, 9_992);
    }

    #[test]
    fn cap_zero_tracks_nothing() {
        let mut t: TopK<u8, u64> = TopK::new(0);
        assert!(!t.record(&1, 0, |v| *v += 1));
        assert_eq!(t.other.value, 1);
    }
}
