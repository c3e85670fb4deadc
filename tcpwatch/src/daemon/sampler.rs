//! The periodic half of the daemon's input: a socket census and the kernel's
//! TCP counters of every namespace in scope, as engine inputs. Runs on its
//! own thread (netlink and procfs block); the event path never waits for it.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use tcpwatch_common::state::TCP_LISTEN;
use tcpwatch_core::{
    census::{Census, TimeWait, TimeWaitPeer, summarize},
    engine::{CensusSample, CountersSample, Input},
    model::Owner,
    sockets::OpenPairs,
};

use crate::host::{census, clock::monotonic_ns, counters, netns};

/// Which namespaces the census and counters cover.
#[derive(Clone, Debug)]
pub enum Scope {
    /// The daemon's own.
    Own,
    /// One namespace, held open for the run (its inode stays its own).
    One(std::sync::Arc<netns::Pinned>),
    /// Every namespace found (processes' and /run/netns), at most `max`.
    All { max: usize },
}

/// A namespace to census: a path that opens it (None: the daemon's own)
/// and its inode.
type Target = (Option<PathBuf>, Option<u32>);

/// Lower first: the host's own namespace, named ones (`ip netns`), those of
/// root's processes, then any user's; within each, those that had a
/// listener first. Any user can make namespaces with listeners in bulk, so
/// that never lifts one above root's.
fn rank(n: &netns::NamespaceRef, own: Option<u32>, with_listeners: &HashSet<u32>) -> u8 {
    let listening = u8::from(!with_listeners.contains(&n.inode));
    if Some(n.inode) == own {
        0
    } else if n.name.is_some() {
        1 + listening
    } else if n.root {
        3 + listening
    } else {
        5 + listening
    }
}

/// Socket inode -> owner, refreshed by a full /proc scan every
/// `every`-th census (it costs ~60 ms per 10,000 sockets here, too much for
/// each second); in between, sockets new since the last scan count as
/// unattributed in the per-process census. A listener nobody is known to
/// own brings the scan forward (at most every other census): a new service
/// is named within seconds, and the census's CPU budget, which the scan is
/// charged to, still bounds what a user opening listeners can cost.
struct OwnerCache {
    map: HashMap<u64, Owner>,
    every: u32,
    runs: u64,
    last_scan: Option<u64>,
    /// Listeners the last scan found no owner for (a process /proc hides):
    /// they do not bring the next scan forward again.
    ownerless: HashSet<u64>,
}

/// Censuses between two scans brought forward by an unowned listener.
const UNOWNED_LISTENER_SCAN_GAP: u64 = 2;

impl OwnerCache {
    fn owners(
        &mut self,
        inodes: &HashSet<u64>,
        listeners: &[u64],
    ) -> (&HashMap<u64, Owner>, Option<u64>) {
        let unowned = listeners
            .iter()
            .any(|i| !self.map.contains_key(i) && !self.ownerless.contains(i));
        let due = self.runs.is_multiple_of(self.every.max(1) as u64)
            || (unowned
                && self
                    .last_scan
                    .is_none_or(|l| self.runs - l >= UNOWNED_LISTENER_SCAN_GAP));
        if due {
            self.last_scan = Some(self.runs);
        }
        self.runs += 1;
        let mut took = None;
        if due {
            let t = Instant::now();
            match crate::host::owners::socket_owners(inodes) {
                Ok(m) => self.map = m,
                Err(e) => tracing::warn!("socket owners unknown: {e:#}"),
            }
            self.ownerless = listeners
                .iter()
                .filter(|i| !self.map.contains_key(i))
                .copied()
                .collect();
            took = Some(t.elapsed().as_nanos() as u64);
        }
        (&self.map, took)
    }
}

pub struct Sampler {
    scope: Scope,
    owners: OwnerCache,
    /// Namespaces whose last census had a listener: they rank high.
    with_listeners: HashSet<u32>,
    /// The last full round's namespaces, for listeners-only rounds.
    last_targets: Vec<Target>,
    /// Failures so far (a namespace that vanished mid-census, ...).
    pub errors: u64,
    /// List TIME-WAIT destinations once this fraction of the ephemeral
    /// port range is in TIME-WAIT (the detector's threshold).
    pub time_wait_peers_at: Option<f64>,
    /// Per namespace, when its TIME-WAIT destinations were last listed and
    /// what they were: listing tens of thousands of sockets every census
    /// would spend the census budget on it (and delay every namespace's
    /// census), so they are listed at most every `TIME_WAIT_LIST_EVERY`
    /// and carried over in between.
    time_wait_listed: HashMap<Option<u32>, (Instant, Vec<TimeWaitPeer>)>,
}

/// How often a namespace's TIME-WAIT sockets are listed by destination,
/// at most: they live 60 s, and a listing of the ~28,000 a churning
/// namespace holds costs ~100 ms of the census budget.
const TIME_WAIT_LIST_EVERY: Duration = Duration::from_secs(30);

/// One namespace's census, before owners are known.
struct Raw {
    netns: Option<u32>,
    census: Census,
    census_ns: u64,
    /// When the dump started: the census shows the sockets of that moment
    /// (a later socket may or may not be in it, an earlier one is).
    taken_ns: u64,
    counters: Option<std::collections::BTreeMap<String, i64>>,
    counters_ns: u64,
}

impl Sampler {
    pub fn new(scope: Scope, owner_scan_every: u32) -> Sampler {
        Sampler {
            scope,
            owners: OwnerCache {
                map: HashMap::new(),
                every: owner_scan_every,
                runs: 0,
                last_scan: None,
                ownerless: HashSet::new(),
            },
            errors: 0,
            time_wait_peers_at: None,
            time_wait_listed: HashMap::new(),
            with_listeners: HashSet::new(),
            last_targets: Vec::new(),
        }
    }

    /// The namespaces to census, and (for `All`) every one that exists.
    fn targets(&self) -> (Vec<Target>, Option<Vec<u32>>) {
        match &self.scope {
            Scope::Own => (vec![(None, netns::current().ok())], None),
            Scope::One(pin) => (vec![(Some(pin.path()), Some(pin.inode))], None),
            Scope::All { max } => {
                let own = netns::current().ok();
                let all = netns::all();
                let alive: Vec<u32> = all.iter().map(|n| n.inode).collect();
                let mut v: Vec<_> = all
                    .into_iter()
                    .map(|n| {
                        let rank = rank(&n, own, &self.with_listeners);
                        if Some(n.inode) == own {
                            (rank, None, own)
                        } else {
                            (rank, Some(n.path), Some(n.inode))
                        }
                    })
                    .collect();
                // The cap keeps the host's, then named ones, then root's
                // (see `rank`): namespaces any user can make in bulk
                // (unshare -rn) come last.
                v.sort_by_key(|(rank, _, inode)| (*rank, *inode));
                v.truncate(*max);
                (v.into_iter().map(|(_, p, i)| (p, i)).collect(), Some(alive))
            }
        }
    }

    /// One round: a census and a counter sample per namespace in scope.
    /// A reloaded configuration's owner-scan period.
    pub fn set_owners_every(&mut self, every: u32) {
        self.owners.every = every;
    }

    /// A reloaded configuration's namespace cap (`All` only).
    pub fn set_max_netns(&mut self, max_netns: usize) {
        if let Scope::All { max } = &mut self.scope {
            *max = max_netns;
        }
    }

    /// A listeners-only round over the last full round's namespaces:
    /// cheap enough for every interval, whatever the budget does to full
    /// censuses. Owners come from the cache, never a new /proc scan.
    pub fn sample_listeners(&mut self) -> Vec<Input> {
        let mut out = Vec::new();
        for (path, inode) in &self.last_targets {
            let taken_ns = monotonic_ns();
            let t = Instant::now();
            let census = match path {
                None => census::take_listening(),
                Some(p) => census::take_listening_in(p),
            };
            match census {
                Ok(census) => out.push(Input::Listeners(CensusSample {
                    ts_ns: taken_ns,
                    duration_ns: t.elapsed().as_nanos() as u64,
                    summary: summarize(*inode, &census, &self.owners.map),
                })),
                Err(e) => {
                    self.errors += 1;
                    tracing::debug!(?inode, error = ?e, "listeners census failed");
                }
            }
        }
        out
    }

    /// A full round: the enumeration (for `All`), then a census and a
    /// counter sample per namespace in scope; and each census's full
    /// sockets, for the event loop's check of vanished ones (not recorded:
    /// the check needs the live sockets, a replay has none).
    pub fn sample(&mut self) -> (Vec<Input>, Vec<OpenPairs>) {
        // Before the enumeration: what the engine saw after this is newer
        // than the list, and is not dropped by it.
        let enumerated_ns = monotonic_ns();
        let (targets, alive) = self.targets();
        let mut out = Vec::new();
        if let Some(mut alive) = alive {
            alive.sort_unstable();
            out.push(Input::Namespaces {
                ts_ns: enumerated_ns,
                alive,
            });
        }
        self.last_targets = targets.clone();
        let raws = self.take(&targets);
        let inodes: HashSet<u64> = raws
            .iter()
            .flat_map(|r| r.census.entries.iter())
            .filter(|e| e.inode != 0)
            .map(|e| e.inode as u64)
            .collect();
        let listeners: Vec<u64> = raws
            .iter()
            .flat_map(|r| r.census.entries.iter())
            .filter(|e| e.state == TCP_LISTEN && e.inode != 0)
            .map(|e| e.inode as u64)
            .collect();
        let (owners, scan_ns) = self.owners.owners(&inodes, &listeners);
        self.with_listeners.clear();
        for r in &raws {
            if let Some(n) = r.netns
                && r.census.entries.iter().any(|e| e.state == TCP_LISTEN)
            {
                self.with_listeners.insert(n);
            }
        }
        let mut open = Vec::new();
        push_inputs(&mut out, &mut open, raws, owners, scan_ns.unwrap_or(0));
        (out, open)
    }

    /// Namespaces the engine has just seen for the first time (`All`
    /// only): a census and counters at once, so one that lives less than
    /// an interval is sampled too. At most `FIRST_SEEN_ROUND` of them;
    /// owners from the cache.
    pub fn sample_first_seen(&mut self, inodes: &[u32]) -> (Vec<Input>, Vec<OpenPairs>) {
        if !matches!(self.scope, Scope::All { .. }) || inodes.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let targets: Vec<Target> = netns::all()
            .into_iter()
            .filter(|n| inodes.contains(&n.inode))
            .take(FIRST_SEEN_ROUND)
            .map(|n| (Some(n.path), Some(n.inode)))
            .collect();
        let raws = self.take(&targets);
        let (mut out, mut open) = (Vec::new(), Vec::new());
        push_inputs(&mut out, &mut open, raws, &self.owners.map, 0);
        (out, open)
    }

    fn take(&mut self, targets: &[Target]) -> Vec<Raw> {
        let mut raws = Vec::new();
        // Only the namespaces still there keep their listing.
        self.time_wait_listed
            .retain(|ns, _| targets.iter().any(|(_, inode)| inode == ns));
        for (path, inode) in targets {
            let taken_ns = monotonic_ns();
            let t = Instant::now();
            let listed = self.time_wait_listed.get(inode).cloned();
            let due = listed
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= TIME_WAIT_LIST_EVERY);
            let peers_at = self.time_wait_peers_at.filter(|_| due);
            // The daemon only counts TIME-WAIT sockets: listing them is
            // most of a census's cost under churn.
            let mut entries = full_census(path.as_deref(), *inode, peers_at);
            if let Ok(c) = &mut entries {
                // Listed (they reached the threshold): remembered, and not
                // listed again for a while; below it, checked every census.
                if peers_at.is_some() && !c.time_wait_peers.is_empty() {
                    self.time_wait_listed
                        .insert(*inode, (Instant::now(), c.time_wait_peers.clone()));
                } else if let Some((_, peers)) = listed {
                    c.time_wait_peers = peers;
                }
            }
            let census_ns = t.elapsed().as_nanos() as u64;
            let counters = match path {
                None => counters::read_current(),
                Some(p) => counters::read_in(p),
            };
            let counters_ns = monotonic_ns();
            let counters = match counters {
                Ok(c) => Some(c),
                Err(e) => {
                    self.errors += 1;
                    tracing::debug!(?inode, error = ?e, "kernel counters unread");
                    None
                }
            };
            match entries {
                Ok(census) => raws.push(Raw {
                    netns: *inode,
                    census,
                    census_ns,
                    taken_ns,
                    counters,
                    counters_ns,
                }),
                Err(e) => {
                    // Namespaces come and go; one that vanished is not news.
                    self.errors += 1;
                    tracing::debug!(?inode, error = ?e, "census failed");
                }
            }
        }
        raws
    }
}

/// A full census (TIME-WAIT only counted) of the namespace at `path`
/// (None: the daemon's own), refused if its inode is no longer `inode`.
fn full_census(
    path: Option<&std::path::Path>,
    inode: Option<u32>,
    peers_at: Option<f64>,
) -> Result<Census, census::CensusError> {
    match path {
        None => census::take(TimeWait::Counted, peers_at),
        Some(p) => census::take_in(p, inode, TimeWait::Counted, peers_at),
    }
}

/// Namespaces censused at once when first seen, per round at most.
const FIRST_SEEN_ROUND: usize = 16;

/// Namespaces a last census at a stop covers, at most, in the order of a
/// round's ranking (any user can make namespaces in bulk; the stop must
/// not wait on them).
const FINAL_ROUND: usize = 64;

impl Sampler {
    /// The full sockets of each namespace of `inodes` that is in scope (at
    /// most `FINAL_ROUND`), and nothing else of its census: for the check
    /// of vanished sockets at a stop (the daemon's, `trace`'s). A census
    /// begins only while `go_on` says so (one begun runs to its end); also
    /// returned: how many of `inodes` (distinct) were not taken, for that,
    /// because they failed, or because they are no longer in scope (gone,
    /// past the caps).
    pub fn open_pairs(&self, inodes: &[u32], go_on: &dyn Fn() -> bool) -> (Vec<OpenPairs>, usize) {
        // The scope's own namespaces, ranked and capped as for a round.
        let (targets, _) = self.targets();
        let mut pairs = Vec::new();
        for (path, inode) in targets
            .into_iter()
            .filter_map(|(path, inode)| Some((path, inode.filter(|i| inodes.contains(i))?)))
            .take(FINAL_ROUND)
        {
            if !go_on() {
                continue;
            }
            let taken_ns = monotonic_ns();
            match full_census(path.as_deref(), Some(inode), None) {
                Ok(c) => pairs.push(OpenPairs::of(inode, taken_ns, monotonic_ns(), &c.entries)),
                Err(e) => tracing::debug!(inode, error = ?e, "last census failed"),
            }
        }
        let missed = inodes.len().saturating_sub(pairs.len());
        (pairs, missed)
    }
}

/// Censuses (summarized with `owners`) and counter samples as inputs, and
/// the full sockets of each census of a known namespace.
fn push_inputs(
    out: &mut Vec<Input>,
    open: &mut Vec<OpenPairs>,
    raws: Vec<Raw>,
    owners: &HashMap<u64, Owner>,
    scan_ns: u64,
) {
    for r in raws {
        if let Some(netns) = r.netns {
            let done_ns = r.taken_ns + r.census_ns;
            open.push(OpenPairs::of(netns, r.taken_ns, done_ns, &r.census.entries));
        }
        let summary = summarize(r.netns, &r.census, owners);
        out.push(Input::Census(CensusSample {
            ts_ns: r.taken_ns,
            duration_ns: r.census_ns + scan_ns,
            summary,
        }));
        if let Some(values) = r.counters {
            out.push(Input::Counters(CountersSample {
                ts_ns: r.counters_ns,
                netns: r.netns,
                values,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(inode: u32, name: Option<&str>, root: bool) -> netns::NamespaceRef {
        netns::NamespaceRef {
            inode,
            path: PathBuf::from("/x"),
            name: name.map(String::from),
            root,
        }
    }

    #[test]
    fn the_stops_censuses_begin_only_while_told_to_go_on() {
        let own = netns::current().expect("this process's namespace");
        let s = Sampler::new(Scope::Own, 10);
        let (pairs, missed) = s.open_pairs(&[own], &|| true);
        assert_eq!((pairs.len(), missed), (1, 0));
        let (pairs, missed) = s.open_pairs(&[own], &|| false);
        assert_eq!((pairs.len(), missed), (0, 1));
        // A namespace out of scope (gone, past the caps) is counted as
        // missed, never dropped silently.
        let (pairs, missed) = s.open_pairs(&[own, own.wrapping_add(1)], &|| true);
        assert_eq!((pairs.len(), missed), (1, 1));
    }

    #[test]
    fn a_users_listening_namespaces_never_rank_above_roots() {
        let listening: HashSet<u32> = [3, 4].into();
        let r = |n: &netns::NamespaceRef| rank(n, Some(1), &listening);
        let (own, named, root, root_l, user, user_l) = (
            ns(1, None, true),
            ns(2, Some("blue"), true),
            ns(5, None, true),
            ns(3, None, true),
            ns(6, None, false),
            ns(4, None, false),
        );
        let order = [
            r(&own),
            r(&named),
            r(&root_l),
            r(&root),
            r(&user_l),
            r(&user),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
}
