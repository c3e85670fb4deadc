//! Values per (from, to) state pair, in pair order.
//!
//! A sorted vector rather than a `BTreeMap`: one key sees a handful of
//! distinct pairs (a normal connection's life is ten transitions over ten
//! pairs), and the engine updates three of these per transition (namespace,
//! port, process). Profiled under full churn, the map's node walks were the
//! event thread's largest single cost; a scan of ten entries is cheaper.
//! Unknown states can add pairs (at most 256 × 256), so the worst case is a
//! longer scan, never unbounded memory.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::State;

pub type Pair = (State, State);

/// Entries sorted by `rank(pair)`, which orders pairs as `Pair`'s `Ord`
/// does: the scan compares one integer per entry, not two enums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairMap<V>(Vec<(u32, Pair, V)>);

/// A number per state in `State`'s order: known states by number, unknown
/// ones after all of them.
fn rank_state(s: State) -> u32 {
    match s {
        State::Known(k) => k as u32,
        State::Unknown(v) => 256 + v as u32,
    }
}

fn rank((a, b): Pair) -> u32 {
    rank_state(a) << 16 | rank_state(b)
}

impl<V> Default for PairMap<V> {
    fn default() -> Self {
        PairMap(Vec::new())
    }
}

impl<V: Default> PairMap<V> {
    /// The value of `pair`, inserted as the default if missing.
    pub fn entry(&mut self, pair: Pair) -> &mut V {
        let r = rank(pair);
        let i = match self.0.iter().position(|(k, _, _)| *k >= r) {
            Some(i) if self.0[i].0 == r => i,
            Some(i) => {
                self.0.insert(i, (r, pair, V::default()));
                i
            }
            None => {
                self.0.push((r, pair, V::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].2
    }
}

impl<V> PairMap<V> {
    pub fn get(&self, pair: &Pair) -> Option<&V> {
        let r = rank(*pair);
        self.0.iter().find(|(k, _, _)| *k == r).map(|(_, _, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In pair order, as a `BTreeMap` would give them.
    pub fn iter(&self) -> Iter<'_, V> {
        self.0.iter().map(|(_, p, v)| (p, v))
    }
}

pub type Iter<'a, V> = std::iter::Map<
    std::slice::Iter<'a, (u32, Pair, V)>,
    fn(&'a (u32, Pair, V)) -> (&'a Pair, &'a V),
>;

impl<'a, V> IntoIterator for &'a PairMap<V> {
    type Item = (&'a Pair, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V: Default + std::ops::AddAssign> FromIterator<(Pair, V)> for PairMap<V> {
    fn from_iter<I: IntoIterator<Item = (Pair, V)>>(iter: I) -> Self {
        let mut m = PairMap::default();
        for (p, v) in iter {
            *m.entry(p) += v;
        }
        m
    }
}

/// A list of `[from, to, count]` in JSON (map keys must be strings there).
impl Serialize for PairMap<u64> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|(&(a, b), &n)| (a, b, n)))
    }
}

impl<'de> Deserialize<'de> for PairMap<u64> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<(State, State, u64)>::deserialize(d)?;
        Ok(v.into_iter().map(|(a, b, n)| ((a, b), n)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn keeps_the_order_and_sums_of_a_btreemap() {
        // Every known state and a few unknown ones, in a scrambled order
        // with repeats: the same pairs, order and sums as a BTreeMap.
        let states: Vec<State> = (0..=13u8)
            .chain([200, 14, 255])
            .map(State::from_raw)
            .collect();
        let mut map = PairMap::<u64>::default();
        let mut reference = BTreeMap::<Pair, u64>::new();
        let mut x = 7u32;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let a = states[(x >> 8) as usize % states.len()];
            let b = states[(x >> 20) as usize % states.len()];
            *map.entry((a, b)) += 1;
            *reference.entry((a, b)).or_default() += 1;
        }
        let got: Vec<_> = map.iter().map(|(&p, &n)| (p, n)).collect();
        let want: Vec<_> = reference.into_iter().collect();
        assert_eq!(got, want);
        assert_eq!(map.len(), got.len());
        let (p, n) = got[3];
        assert_eq!(map.get(&p), Some(&n));
    }

    #[test]
    fn json_is_a_list_of_triples_and_merges_repeats_back() {
        let mut m = PairMap::<u64>::default();
        *m.entry((State::from_raw(2), State::from_raw(1))) += 3;
        *m.entry((State::from_raw(1), State::from_raw(4))) += 1;
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"[["ESTABLISHED","FIN-WAIT-1",1],["SYN-SENT","ESTABLISHED",3]]"#
        );
        let twice: PairMap<u64> = serde_json::from_str(
            r#"[["SYN-SENT","ESTABLISHED",3],["ESTABLISHED","FIN-WAIT-1",1],["SYN-SENT","ESTABLISHED",2]]"#,
        )
        .unwrap();
        assert_eq!(
            twice.get(&(State::from_raw(2), State::from_raw(1))),
            Some(&5)
        );
        assert_eq!(twice.len(), 2);
    }
}
