//! The probe's per-key totals (signals, the counts-only mode's counts)
//! only grow while their key lives; user space reads them as what changed
//! since the previous reading.
use std::{collections::HashMap, hash::Hash};

/// The previous reading of every key (as many as the probe's map holds).
#[derive(Debug)]
pub struct Totals<K> {
    last: HashMap<K, u64>,
}

impl<K> Default for Totals<K> {
    fn default() -> Self {
        Totals {
            last: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash> Totals<K> {
    /// How much `key`'s total grew since its previous reading. A key seen
    /// for the first time, or whose total went down (deleted and made
    /// again in between), counts from zero.
    pub fn change(&mut self, key: K, total: u64) -> u64 {
        match self.last.insert(key, total) {
            Some(before) if before <= total => total - before,
            _ => total,
        }
    }

    /// The key was deleted from the probe's map.
    pub fn forget(&mut self, key: &K) {
        self.last.remove(key);
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.last.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_counts_and_a_restarted_or_forgotten_key_counts_from_zero() {
        let mut t = Totals::default();
        assert_eq!(t.change('a', 5), 5);
        assert_eq!(t.change('a', 5), 0);
        assert_eq!(t.change('a', 9), 4);
        // Deleted and made again between two readings.
        assert_eq!(t.change('a', 2), 2);
        t.forget(&'a');
        assert_eq!(t.keys().count(), 0);
        assert_eq!(t.change('a', 3), 3);
    }
}
