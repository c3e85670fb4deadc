//! The engine: transitions, census snapshots and kernel-counter samples in,
//! rates, per-port and per-process activity, durations and the latest
//! census out. Pure (no I/O, no clock of its own): time is what the inputs
//! say, so a recording replayed gives exactly what the live run gave.
//!
//! Everything it keeps is bounded: per-key tables by [`TopK`], namespaces by
//! `max_netns`, open CLOSE-WAIT sockets by `max_open_sockets`; what does not
//! fit is counted, never dropped silently.
pub mod histogram;
pub mod pairs;
pub mod topk;
pub mod window;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tcpwatch_common::state::{
    TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LISTEN,
    TCP_SYN_RECV, TCP_SYN_SENT,
};

pub use self::{
    histogram::Histogram,
    pairs::PairMap,
    topk::TopK,
    window::{Rates, Window},
};
use crate::{
    census::Summary,
    model::{Accounting, Comm, State, Transition},
    signals::{SignalDelta, SignalKind, SignalsSample},
};

pub use crate::counts::CountsSample;

const NS_PER_S: u64 = 1_000_000_000;

/// One census of one namespace, as the engine and recordings see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CensusSample {
    /// CLOCK_MONOTONIC when the census finished.
    pub ts_ns: u64,
    /// What the census (sock_diag, plus the owner scan when it ran) cost.
    pub duration_ns: u64,
    pub summary: Summary,
}

/// The TCP counters of one namespace (`/proc/net/snmp` Tcp, `/proc/net/netstat`
/// TcpExt), raw, keyed "Tcp.ActiveOpens", "TcpExt.ListenOverflows", ...
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountersSample {
    pub ts_ns: u64,
    pub netns: Option<u32>,
    pub values: BTreeMap<String, i64>,
}

/// The kernel side's own account, read from its maps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelSample {
    pub ts_ns: u64,
    pub accounting: Accounting,
    /// Events read from the ring buffer so far.
    pub delivered: u64,
    /// Transitions counted in the kernel per (from, to), all namespaces in
    /// scope, whether delivered or not.
    pub transitions: Vec<(State, State, u64)>,
}

/// Everything the engine consumes. One recording line is one input (a
/// batch of transitions is recorded one per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Transition(Transition),
    Census(CensusSample),
    Counters(CountersSample),
    Kernel(KernelSample),
    /// Time passes with nothing else happening (rates decay).
    Tick {
        ts_ns: u64,
    },
    /// A listeners-only census (LISTEN and request sockets): between full
    /// censuses, which a CPU budget may space out, it keeps the listener
    /// signals (queues, SYN-RECV) fresh.
    Listeners(CensusSample),
    /// A reading of the probe's reset and SYN-ACK counters.
    Signals(SignalsSample),
    /// The counts-only mode's reading of transitions per namespace and
    /// pair (instead of `Transition`s).
    Counts(CountsSample),
    /// The namespaces that exist now (the sampler's enumeration): every
    /// other one the engine keeps is gone and is dropped.
    Namespaces {
        ts_ns: u64,
        alive: Vec<u32>,
    },
    /// Followed sockets (their addresses) a census no longer showed, none
    /// of whose later transitions arrived (`sockets::Follower::vanished`):
    /// each lost at least its transition to CLOSE.
    Vanished {
        ts_ns: u64,
        sockets: Vec<u64>,
        /// Every census begun before this (CLOCK_MONOTONIC ns) is checked.
        #[serde(default)]
        checked_ns: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Ports tracked individually (the rest go to `other`).
    pub max_ports: usize,
    /// Processes tracked individually.
    pub max_processes: usize,
    /// Network namespaces kept apart (the rest share one entry).
    pub max_netns: usize,
    /// Sockets in CLOSE-WAIT whose age is followed.
    pub max_open_sockets: usize,
}

impl EngineConfig {
    /// The caps a configuration file sets; the rest at their defaults.
    pub fn from_limits(l: &crate::config::Limits) -> EngineConfig {
        EngineConfig {
            max_ports: l.max_ports,
            max_processes: l.max_processes,
            max_netns: l.max_netns,
            ..Default::default()
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_ports: 64,
            max_processes: 64,
            max_netns: 256,
            max_open_sockets: 65_536,
        }
    }
}

/// Which way a connection goes, seen from the port it is counted under:
/// `In` for a server's sockets (the local port), `Out` for a client's (the
/// remote port: the service this host connects to). Ephemeral
/// client ports would otherwise swamp every per-port view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortKey {
    /// Network namespace inode, 0 when unknown.
    pub netns: u32,
    pub port: u16,
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub pid: u32,
    pub comm: Comm,
    /// The namespace of the socket (a process with sockets in several
    /// namespaces is one key per namespace; 0 when unknown).
    #[serde(default)]
    pub netns: u32,
}

/// What the engine keeps per port, per process and per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub transitions: u64,
    /// Connections that reached ESTABLISHED.
    pub established: u64,
    /// Connects that failed (SYN-SENT -> CLOSE: refused, timed out,
    /// unreachable).
    pub failed_connects: u64,
    /// Connections closed without the orderly FIN exchange (reset or
    /// aborted: SYN-RECV, ESTABLISHED, CLOSE-WAIT or FIN-WAIT-1 -> CLOSE).
    pub aborted: u64,
    /// Per (from, to). A list of `[from, to, count]` in JSON.
    pub pairs: PairMap<u64>,
    /// Failed connects by the errno the kernel closed them with (those
    /// with none, a connect aborted by its own process, are not here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connect_errors: BTreeMap<u16, u64>,
    /// Other closes with an error, by errno (ECONNRESET: a reset
    /// received; ETIMEDOUT: retransmissions or keepalive gave up; EPIPE).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub close_errors: BTreeMap<u16, u64>,
    /// Resets sent and received, and SYN-ACKs retransmitted (the probe's
    /// signal counters; see `crate::signals`).
    #[serde(default)]
    pub resets_sent: u64,
    #[serde(default)]
    pub resets_received: u64,
    #[serde(default)]
    pub synack_retransmits: u64,
}

impl topk::Merge for Activity {
    fn merge(&mut self, from: &Activity) {
        self.transitions += from.transitions;
        self.established += from.established;
        self.failed_connects += from.failed_connects;
        self.aborted += from.aborted;
        for (pair, n) in from.pairs.iter() {
            *self.pairs.entry(*pair) += *n;
        }
        for (e, n) in &from.connect_errors {
            *self.connect_errors.entry(*e).or_default() += n;
        }
        for (e, n) in &from.close_errors {
            *self.close_errors.entry(*e).or_default() += n;
        }
        self.resets_sent += from.resets_sent;
        self.resets_received += from.resets_received;
        self.synack_retransmits += from.synack_retransmits;
    }
}

impl Activity {
    fn count(&mut self, t: &Transition) {
        self.count_n(t.old, t.new, t.error, 1);
    }

    /// `n` transitions `old -> new` that closed with `error` (if any).
    #[inline]
    fn count_n(&mut self, old: State, new: State, error: Option<u16>, n: u64) {
        self.transitions += n;
        *self.pairs.entry((old, new)) += n;
        match kind(old, new) {
            Kind::Established => self.established += n,
            Kind::FailedConnect => self.failed_connects += n,
            Kind::Aborted => self.aborted += n,
            Kind::Other => {}
        }
        if let Some(e) = error {
            let errors = if old.raw() == TCP_SYN_SENT {
                &mut self.connect_errors
            } else {
                &mut self.close_errors
            };
            *errors.entry(e).or_default() += n;
        }
    }

    /// Connects attempted: CLOSE -> SYN-SENT.
    pub fn connects(&self) -> u64 {
        self.pairs
            .iter()
            .filter(|((from, to), _)| from.raw() == TCP_CLOSE && to.raw() == TCP_SYN_SENT)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Adds a reading's signal delta.
    fn signal(&mut self, d: &SignalDelta) {
        let n = d.count;
        match d.kind {
            SignalKind::ResetSent => self.resets_sent += n,
            SignalKind::ResetReceived => self.resets_received += n,
            SignalKind::SynackRetransmit => self.synack_retransmits += n,
            SignalKind::ConnectFailed => {
                // No transition counted it.
                self.failed_connects += n;
                *self.connect_errors.entry(d.errno).or_default() += n;
            }
            SignalKind::ConnectErrno => *self.connect_errors.entry(d.errno).or_default() += n,
        }
    }
}

enum Kind {
    Established,
    FailedConnect,
    Aborted,
    Other,
}

fn kind(old: State, new: State) -> Kind {
    let (State::Known(old), State::Known(new)) = (old, new) else {
        return Kind::Other;
    };
    match (old as u8, new as u8) {
        (_, TCP_ESTABLISHED) => Kind::Established,
        (TCP_SYN_SENT, TCP_CLOSE) => Kind::FailedConnect,
        (TCP_SYN_RECV | TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_FIN_WAIT1, TCP_CLOSE) => {
            Kind::Aborted
        }
        _ => Kind::Other,
    }
}

/// Time spent in a state, by the transition that left it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// SYN-SENT -> ESTABLISHED: the client's handshake.
    pub connect: Histogram,
    /// SYN-RECV -> ESTABLISHED: the server's wait for the final ACK.
    pub accept_handshake: Histogram,
    /// SYN-SENT -> CLOSE: how long a failed connect took (µs: refused
    /// nearby; seconds: timed out).
    pub failed_connect: Histogram,
    /// CLOSE-WAIT -> anything: how long the owner took to close after the
    /// peer did.
    pub close_wait: Histogram,
    /// FIN-WAIT-2 -> anything: how long the peer took to send its FIN.
    pub fin_wait2: Histogram,
}

impl Durations {
    fn observe(&mut self, t: &Transition) {
        let (Some(d), State::Known(old), State::Known(new)) = (t.in_old, t.old, t.new) else {
            return;
        };
        let h = match (old as u8, new as u8) {
            (TCP_SYN_SENT, TCP_ESTABLISHED) => &mut self.connect,
            (TCP_SYN_RECV, TCP_ESTABLISHED) => &mut self.accept_handshake,
            (TCP_SYN_SENT, TCP_CLOSE) => &mut self.failed_connect,
            (TCP_CLOSE_WAIT, _) => &mut self.close_wait,
            (TCP_FIN_WAIT2, _) => &mut self.fin_wait2,
            _ => return,
        };
        h.observe(d);
    }
}

/// A socket that entered CLOSE-WAIT and has not left it (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
struct OpenCloseWait {
    since_ns: u64,
    port: u16,
    pid: Option<u32>,
    netns: u32,
}

#[derive(Clone, Debug, Default)]
struct PairStats {
    total: u64,
    window: Window,
}

#[derive(Clone, Debug)]
struct Namespace {
    pairs: PairMap<PairStats>,
    activity: Activity,
    census: Option<CensusSample>,
    counters: Option<CountersSample>,
    prev_counters: Option<CountersSample>,
    /// Ports with a listener: from the last census, plus LISTEN transitions
    /// since. A bitmap, so its size does not depend on what is sprayed.
    listening: Box<[u64; 1024]>,
    /// The newest input about it: a namespace enumerated as gone before
    /// this is not gone (the enumeration was older).
    last_seen_ns: u64,
    /// The sampler's round of its last census (see `Engine::round`).
    census_round: u64,
    /// When the listeners in `census` were last refreshed.
    listeners_ts_ns: Option<u64>,
    /// A transition of it has been seen. An entry made by the probe's
    /// signals alone (resets, failed connects: any namespace on the host)
    /// may outlive its namespace, whose inode a new one then reuses; the
    /// new one's first transition still asks for its census at once.
    transitions_seen: bool,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            pairs: PairMap::default(),
            activity: Activity::default(),
            census: None,
            counters: None,
            prev_counters: None,
            listening: Box::new([0; 1024]),
            last_seen_ns: 0,
            census_round: 0,
            listeners_ts_ns: None,
            transitions_seen: false,
        }
    }
}

impl Namespace {
    /// `n` transitions of `pair` at `ts_ns`, in second `sec`; false when
    /// that second is no longer in the window (the caller counts them late).
    fn count_pair(&mut self, pair: (State, State), n: u64, ts_ns: u64, sec: u64) -> bool {
        self.last_seen_ns = self.last_seen_ns.max(ts_ns);
        let p = self.pairs.entry(pair);
        p.total += n;
        // A second holds far fewer than 2^32 transitions.
        p.window.add(sec, u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Takes in an evicted namespace's transitions (as `other` does), so
    /// the totals over all namespaces never go down.
    fn absorb(&mut self, gone: &Namespace) {
        for (pair, p) in gone.pairs.iter() {
            let mine = self.pairs.entry(*pair);
            mine.total += p.total;
            mine.window.merge_from(&p.window);
        }
        topk::Merge::merge(&mut self.activity, &gone.activity);
    }

    /// A census's listeners are the truth about which ports listen;
    /// transitions only add the ones opened since.
    fn listeners_seen(&mut self, listeners: &[crate::census::Listener], ts_ns: u64) {
        self.listening.fill(0);
        for l in listeners {
            self.set_listening(l.port, true);
        }
        self.listeners_ts_ns = Some(ts_ns);
    }

    fn is_listening(&self, port: u16) -> bool {
        self.listening[port as usize / 64] & (1 << (port % 64)) != 0
    }

    fn set_listening(&mut self, port: u16, on: bool) {
        let bit = 1u64 << (port % 64);
        if on {
            self.listening[port as usize / 64] |= bit;
        } else {
            self.listening[port as usize / 64] &= !bit;
        }
    }
}

/// First-seen namespaces remembered between two `take_first_seen` calls.
const FIRST_SEEN_MAX: usize = 32;

/// Namespace key used when `max_netns` is reached.
pub const NETNS_OTHER: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct Engine {
    cfg: EngineConfig,
    now_ns: u64,
    namespaces: BTreeMap<u32, Namespace>,
    /// Sampler rounds seen (`Input::Namespaces`); a namespace censused in
    /// the current one is ranked within the cap and keeps its place.
    round: u64,
    /// See `take_first_seen`.
    first_seen: Vec<u32>,
    ports: TopK<PortKey, Activity>,
    processes: TopK<ProcessKey, Activity>,
    durations: Durations,
    /// Looked up on every close (a few times per connection): hashed with
    /// foldhash, not the standard SipHash, which was 5 % of the event
    /// thread's time under full churn. Keys are kernel socket addresses,
    /// which no client chooses, and the seed is random per process.
    close_wait: HashMap<u64, OpenCloseWait, foldhash::fast::RandomState>,
    kernel: Option<KernelSample>,
    /// Each socket's chain of transitions: a break names a lost one.
    chains: crate::chains::Chains,
    stats: EngineStats,
}

/// The engine's own account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    pub transitions: u64,
    /// Transitions older than the rate windows when they arrived (counted in
    /// totals, not in rates).
    pub late: u64,
    /// Transitions whose owner the kernel could not tell.
    pub unattributed: u64,
    pub censuses: u64,
    pub counter_samples: u64,
    /// Namespaces beyond `max_netns`, folded into one.
    pub netns_overflow: u64,
    /// Namespaces known only from transitions that made room for one the
    /// sampler censuses (their counts moved to `other`).
    #[serde(default)]
    pub netns_evicted: u64,
    /// Namespaces dropped because they no longer exist.
    #[serde(default)]
    pub netns_gone: u64,
    /// CLOSE-WAIT sockets not followed because `max_open_sockets` was full.
    pub open_sockets_overflow: u64,
    /// Resets and SYN-ACK retransmits the probe counted without a port
    /// (its map full), and those it could not read (cumulative).
    #[serde(default)]
    pub signals_unkeyed: u64,
    #[serde(default)]
    pub signals_unreadable: u64,
    /// Transitions that did not continue their socket's chain (its last
    /// state): each names at least one lost transition of that socket.
    #[serde(default)]
    pub chain_breaks: u64,
    /// Followed sockets a census no longer showed while their last known
    /// state said open: each names at least one lost transition (its last
    /// ones), which no chain break can.
    #[serde(default)]
    pub sockets_vanished: u64,
    /// Censuses begun before this (CLOCK_MONOTONIC ns) have been checked
    /// for vanished sockets (0: none yet).
    #[serde(default)]
    pub vanish_checked_ns: u64,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            now_ns: 0,
            namespaces: BTreeMap::new(),
            round: 1,
            first_seen: Vec::new(),
            ports: TopK::new(cfg.max_ports),
            processes: TopK::new(cfg.max_processes),
            durations: Durations::default(),
            close_wait: HashMap::default(),
            kernel: None,
            chains: crate::chains::Chains::default(),
            stats: EngineStats::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// New caps (a reloaded configuration), in force from now: tables over
    /// their new cap give up their least active keys to `other`.
    pub fn set_config(&mut self, cfg: EngineConfig) {
        let sec = self.now_ns / NS_PER_S;
        self.ports.set_cap(cfg.max_ports, sec);
        self.processes.set_cap(cfg.max_processes, sec);
        self.cfg = cfg;
    }

    /// The newest time the engine has seen.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn apply(&mut self, input: Input) {
        match input {
            Input::Transition(t) => self.transition(&t),
            Input::Census(c) => self.census(c),
            Input::Listeners(c) => self.listeners(c),
            Input::Counters(c) => self.counters(c),
            Input::Kernel(k) => self.kernel(k),
            Input::Signals(s) => self.signals(s),
            Input::Counts(c) => self.counts(&c),
            Input::Tick { ts_ns } => self.tick(ts_ns),
            Input::Namespaces { ts_ns, alive } => self.namespaces_alive(ts_ns, &alive),
            Input::Vanished {
                ts_ns,
                sockets,
                checked_ns,
            } => {
                self.tick(ts_ns);
                self.stats.sockets_vanished += sockets.len() as u64;
                self.stats.vanish_checked_ns = self.stats.vanish_checked_ns.max(checked_ns);
                // Closed unseen: no longer a CLOSE-WAIT socket aging.
                for sk in sockets {
                    self.close_wait.remove(&sk);
                }
            }
        }
    }

    fn tick(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }

    /// Whether one more namespace may be kept apart (`other` does not
    /// count against the cap).
    fn has_room(&self) -> bool {
        let other = usize::from(self.namespaces.contains_key(&NETNS_OTHER));
        self.namespaces.len() - other < self.cfg.max_netns
    }

    /// Where a namespace's data goes: its own entry while it has one or
    /// there is room, else `other` (counted).
    fn key_for(&mut self, netns: u32) -> u32 {
        if self.namespaces.contains_key(&netns) || self.has_room() {
            netns
        } else {
            self.stats.netns_overflow += 1;
            NETNS_OTHER
        }
    }

    /// The entry of a namespace transitions or signals came from; one met
    /// for the first time is reported by `take_first_seen`, and so is one
    /// known only from signals when its first transition comes.
    fn namespace(&mut self, netns: u32, transition: bool) -> &mut Namespace {
        let key = self.key_for(netns);
        let ns = self.namespaces.entry(key).or_default();
        let first = if transition {
            // Not for one the sampler already censused: that census would
            // be charged to its budget and delay the full rounds.
            !std::mem::replace(&mut ns.transitions_seen, true) && ns.census.is_none()
        } else {
            ns.last_seen_ns == 0 && !ns.transitions_seen && ns.census.is_none()
        };
        if first && key != NETNS_OTHER && key != 0 && self.first_seen.len() < FIRST_SEEN_MAX {
            self.first_seen.push(key);
        }
        ns
    }

    /// Namespaces first seen since the last call (at most a few dozen): the
    /// daemon censuses them at once, so one that lives less than an
    /// interval still has its census and counters taken.
    pub fn take_first_seen(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.first_seen)
    }

    /// A namespace the sampler chose to census (it ranks the host's, named
    /// ones, and those with listeners or of root's processes first) takes
    /// the place of one known only from transitions when the table is full:
    /// a burst of namespaces from any local user cannot keep it out.
    fn censused_key(&mut self, netns: u32) -> u32 {
        if !self.namespaces.contains_key(&netns) && !self.has_room() {
            // Censused this round means ranked within the cap this round.
            let round = self.round;
            let victim = self
                .namespaces
                .iter()
                .filter(|(k, ns)| **k != NETNS_OTHER && **k != 0 && ns.census_round < round)
                .min_by_key(|(k, ns)| (ns.census_round, ns.last_seen_ns, **k))
                .map(|(k, _)| *k);
            if let Some(v) = victim
                && let Some(gone) = self.namespaces.remove(&v)
            {
                self.stats.netns_evicted += 1;
                self.namespaces
                    .entry(NETNS_OTHER)
                    .or_default()
                    .absorb(&gone);
            }
        }
        self.key_for(netns)
    }

    /// Drops the namespaces that no longer exist (and their series); one
    /// that reappears starts afresh.
    fn namespaces_alive(&mut self, ts_ns: u64, alive: &[u32]) {
        self.tick(ts_ns);
        let mut gone = Vec::new();
        self.namespaces.retain(|k, ns| {
            let keep = *k == NETNS_OTHER
                || *k == 0
                || ns.last_seen_ns >= ts_ns
                || alive.binary_search(k).is_ok();
            if !keep {
                gone.push(*k);
            }
            keep
        });
        if !gone.is_empty() {
            // `gone` is in key order (a BTreeMap's). Their processes'
            // series end too (a process's key includes its namespace).
            self.ports.forget(|p| gone.binary_search(&p.netns).is_ok());
            self.processes
                .forget(|p| gone.binary_search(&p.netns).is_ok());
        }
        self.stats.netns_gone += gone.len() as u64;
        self.round += 1;
        // A new round of censuses: `other` sums this round's afresh.
        if let Some(o) = self.namespaces.get_mut(&NETNS_OTHER) {
            o.census = None;
        }
    }

    pub fn transition(&mut self, t: &Transition) {
        self.tick(t.ts_ns);
        self.stats.transitions += 1;
        self.stats.chain_breaks += u64::from(self.chains.follow(t));
        let sec = t.ts_ns / NS_PER_S;
        let netns = t.netns.unwrap_or(0);
        let (old, new) = (t.old.raw(), t.new.raw());

        let ns = self.namespace(netns, true);
        let in_window = ns.count_pair((t.old, t.new), 1, t.ts_ns, sec);
        ns.activity.count(t);
        if new == TCP_LISTEN {
            ns.set_listening(t.local.port(), true);
        }
        let on_listening_port = old == TCP_LISTEN
            || new == TCP_LISTEN
            || (t.local.port() != 0 && ns.is_listening(t.local.port()));
        if old == TCP_LISTEN && new == TCP_CLOSE {
            // Another listener may share the port (SO_REUSEPORT); the next
            // census sets it again if so.
            ns.set_listening(t.local.port(), false);
        }
        if !in_window {
            self.stats.late += 1;
        }

        // The kernel says a socket's side where it happens (the probe
        // carries it per socket), so a child stays "in" after its listener
        // closed; a socket older than the probe falls back to whether its
        // local port has a listener.
        let inbound = match t.passive {
            // A listener's own transitions are its port's.
            _ if old == TCP_LISTEN && new == TCP_CLOSE => true,
            Some(passive) => passive,
            None => on_listening_port,
        };
        let key = if inbound {
            PortKey {
                netns,
                port: t.local.port(),
                direction: Direction::In,
            }
        } else {
            PortKey {
                netns,
                port: t.remote.port(),
                direction: Direction::Out,
            }
        };
        self.ports.record(&key, sec, |a| a.count(t));
        match &t.owner {
            Some(o) => {
                let key = ProcessKey {
                    pid: o.pid,
                    comm: o.comm,
                    netns,
                };
                self.processes.record(&key, sec, |a| a.count(t));
            }
            None => self.stats.unattributed += 1,
        }
        self.durations.observe(t);
        self.follow_close_wait(t, key.port);
    }

    /// Transitions counted in the kernel per namespace and pair (the
    /// counts-only mode): what `transition` keeps per namespace, nothing per
    /// port, process or socket. A reading's counts fall in its second.
    pub fn counts(&mut self, c: &CountsSample) {
        self.tick(c.ts_ns);
        let sec = c.ts_ns / NS_PER_S;
        for pc in &c.counts {
            self.stats.transitions += pc.n;
            let ns = self.namespace(pc.netns, true);
            let in_window = ns.count_pair((pc.old, pc.new), pc.n, c.ts_ns, sec);
            ns.activity.count_n(pc.old, pc.new, pc.error, pc.n);
            if !in_window {
                self.stats.late += pc.n;
            }
        }
    }

    fn follow_close_wait(&mut self, t: &Transition, port: u16) {
        if t.new.raw() == TCP_CLOSE_WAIT {
            if self.close_wait.len() < self.cfg.max_open_sockets {
                self.close_wait.insert(
                    t.skaddr,
                    OpenCloseWait {
                        since_ns: t.ts_ns,
                        port,
                        pid: t.owner.as_ref().map(|o| o.pid),
                        netns: t.netns.unwrap_or(0),
                    },
                );
            } else {
                self.stats.open_sockets_overflow += 1;
            }
        } else if t.old.raw() == TCP_CLOSE_WAIT || t.new.raw() == TCP_CLOSE {
            // Leaving CLOSE-WAIT, or closing (the address may be reused).
            self.close_wait.remove(&t.skaddr);
        }
    }

    pub fn census(&mut self, c: CensusSample) {
        self.tick(c.ts_ns);
        self.stats.censuses += 1;
        let netns = c.summary.netns.unwrap_or(0);
        let key = self.censused_key(netns);
        let round = self.round;
        let ns = self.namespaces.entry(key).or_default();
        ns.last_seen_ns = ns.last_seen_ns.max(c.ts_ns);
        ns.census_round = round;
        if key == NETNS_OTHER && netns != NETNS_OTHER {
            // Past the cap: the namespaces in `other` add up (per round),
            // none replaces another's census; their listeners and
            // processes are not kept apart.
            let mut c = c;
            c.summary.netns = Some(NETNS_OTHER);
            c.summary.listeners.clear();
            c.summary.processes.clear();
            match &mut ns.census {
                Some(o) => {
                    o.summary.add(&c.summary);
                    o.ts_ns = o.ts_ns.max(c.ts_ns);
                    o.duration_ns += c.duration_ns;
                }
                None => ns.census = Some(c),
            }
            return;
        }
        ns.listeners_seen(&c.summary.listeners, c.ts_ns);
        ns.census = Some(c);
    }

    /// Refreshes a censused namespace's listeners, their queues and its
    /// LISTEN and SYN-RECV counts; owners stay those of the full census.
    pub fn listeners(&mut self, c: CensusSample) {
        self.tick(c.ts_ns);
        let Some(ns) = c.summary.netns.and_then(|n| self.namespaces.get_mut(&n)) else {
            return;
        };
        let Some(census) = &mut ns.census else {
            return;
        };
        if census.ts_ns > c.ts_ns {
            return;
        }
        let s = &mut census.summary;
        for state in [TCP_LISTEN, TCP_SYN_RECV] {
            let name = State::from_raw(state).to_string();
            let fresh = c.summary.states.get(&name).copied().unwrap_or(0);
            let old = s.states.insert(name, fresh).unwrap_or(0);
            s.total = s.total - old.min(s.total) + fresh;
        }
        let syn_recv = State::from_raw(TCP_SYN_RECV).to_string();
        // The full census's owners, by listening address.
        let owners: HashMap<(&str, u16), &crate::census::Listener> = s
            .listeners
            .iter()
            .map(|l| ((l.address.as_str(), l.port), l))
            .collect();
        let listeners = c
            .summary
            .listeners
            .iter()
            .map(|l| {
                let mut l = l.clone();
                if let Some(o) = owners.get(&(l.address.as_str(), l.port)) {
                    if l.pid.is_none() {
                        l.pid = o.pid;
                        l.comm = o.comm.clone();
                    }
                    // Its other sockets as the full census saw them; the
                    // half-open ones fresh.
                    let fresh = l.states.get(&syn_recv).copied();
                    l.states = o.states.clone();
                    l.states.remove(&syn_recv);
                    if let Some(n) = fresh {
                        l.states.insert(syn_recv.clone(), n);
                    }
                }
                l
            })
            .collect();
        s.listeners = listeners;
        ns.listeners_seen(&c.summary.listeners, c.ts_ns);
        ns.last_seen_ns = ns.last_seen_ns.max(c.ts_ns);
    }

    pub fn counters(&mut self, c: CountersSample) {
        self.tick(c.ts_ns);
        self.stats.counter_samples += 1;
        let netns = c.netns.unwrap_or(0);
        let key = self.key_for(netns);
        if key != netns {
            // Cumulative counters of different namespaces cannot share one
            // series (it would jump between them): past the cap, dropped.
            return;
        }
        let ns = self.namespaces.entry(key).or_default();
        ns.last_seen_ns = ns.last_seen_ns.max(c.ts_ns);
        ns.prev_counters = ns.counters.replace(c);
    }

    /// Credits each port and namespace with its resets and SYN-ACK
    /// retransmits since the previous reading.
    pub fn signals(&mut self, s: SignalsSample) {
        self.tick(s.ts_ns);
        let sec = s.ts_ns / NS_PER_S;
        for d in &s.deltas {
            let ns = self.namespace(d.netns, false);
            ns.last_seen_ns = ns.last_seen_ns.max(s.ts_ns);
            ns.activity.signal(d);
            let key = PortKey {
                netns: d.netns,
                port: d.port,
                direction: d.direction,
            };
            self.ports.record(&key, sec, |a| a.signal(d));
            if let Some(comm) = d.comm {
                let key = ProcessKey {
                    pid: d.pid,
                    comm,
                    netns: d.netns,
                };
                self.processes.record(&key, sec, |a| a.signal(d));
            }
        }
        self.stats.signals_unkeyed = s.unkeyed;
        self.stats.signals_unreadable = s.unreadable;
    }

    pub fn kernel(&mut self, k: KernelSample) {
        self.tick(k.ts_ns);
        self.kernel = Some(k);
    }

    /// Everything the views, metrics and recordings' checks read, at the
    /// engine's current time. Deterministic: ordered by key.
    pub fn view(&self) -> View {
        let now_sec = self.now_ns / NS_PER_S;
        let namespaces = self
            .namespaces
            .iter()
            .map(|(&netns, ns)| NamespaceView {
                netns,
                transitions: ns
                    .pairs
                    .iter()
                    .map(|(&(from, to), p)| PairView {
                        from,
                        to,
                        total: p.total,
                        rates: Rates::of(&p.window, now_sec),
                    })
                    .collect(),
                activity: ns.activity.clone(),
                census: ns.census.clone(),
                listeners_ts_ns: ns.listeners_ts_ns.or(ns.census.as_ref().map(|c| c.ts_ns)),
                counters: ns.counters.as_ref().map(|cur| {
                    cur.values
                        .iter()
                        .map(|(name, &value)| {
                            let per_s = ns.prev_counters.as_ref().and_then(|prev| {
                                let before = *prev.values.get(name)?;
                                let dt = cur.ts_ns.checked_sub(prev.ts_ns)?;
                                (dt > 0)
                                    .then(|| (value - before) as f64 * NS_PER_S as f64 / dt as f64)
                            });
                            (name.clone(), CounterView { value, per_s })
                        })
                        .collect()
                }),
            })
            .collect();
        let oldest = self.close_wait.values().map(|o| o.since_ns).min();
        View {
            now_ns: self.now_ns,
            namespaces,
            ports: key_views(&self.ports, now_sec),
            ports_other: other_view(&self.ports, now_sec),
            processes: key_views(&self.processes, now_sec),
            processes_other: other_view(&self.processes, now_sec),
            durations: self.durations.clone(),
            close_wait_open: CloseWaitView {
                sockets: self.close_wait.len() as u64,
                oldest_s: oldest.map(|t| self.now_ns.saturating_sub(t) as f64 / 1e9),
                older_than_60s: self
                    .close_wait
                    .values()
                    .filter(|o| self.now_ns.saturating_sub(o.since_ns) > 60 * NS_PER_S)
                    .count() as u64,
                by_port: {
                    let mut m: BTreeMap<u16, u64> = BTreeMap::new();
                    for o in self.close_wait.values() {
                        *m.entry(o.port).or_default() += 1;
                    }
                    // Bounded like the other per-port tables: the busiest.
                    let mut v: Vec<(u16, u64)> = m.into_iter().collect();
                    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    v.truncate(self.cfg.max_ports);
                    v
                },
                by_pid_known: self.close_wait.values().filter(|o| o.pid.is_some()).count() as u64,
                by_owner: self.close_wait_by_owner(),
            },
            kernel: self.kernel.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl Engine {
    /// Followed CLOSE-WAIT sockets per owning process, most first, as many
    /// as the process table holds.
    fn close_wait_by_owner(&self) -> Vec<CloseWaitOwner> {
        // (sockets, oldest since, its port) per (netns, pid).
        let mut m: HashMap<(u32, u32), (u64, u64, u16)> = HashMap::new();
        for o in self.close_wait.values() {
            if let Some(pid) = o.pid {
                let e = m.entry((o.netns, pid)).or_insert((0, u64::MAX, 0));
                e.0 += 1;
                if o.since_ns < e.1 {
                    (e.1, e.2) = (o.since_ns, o.port);
                }
            }
        }
        let mut v: Vec<CloseWaitOwner> = m
            .into_iter()
            .map(|((netns, pid), (sockets, since, port))| CloseWaitOwner {
                netns,
                pid,
                sockets,
                oldest_s: self.now_ns.saturating_sub(since) as f64 / 1e9,
                port,
            })
            .collect();
        v.sort_by(|a, b| {
            b.sockets
                .cmp(&a.sockets)
                .then((a.netns, a.pid).cmp(&(b.netns, b.pid)))
        });
        v.truncate(self.cfg.max_processes);
        v
    }
}

fn key_views<K: Ord + std::hash::Hash + Clone>(
    t: &TopK<K, Activity>,
    now_sec: u64,
) -> Vec<KeyView<K>> {
    t.iter()
        .map(|(k, s)| KeyView {
            key: k.clone(),
            rates: Rates::of(&s.window, now_sec),
            since_ns: s.since_sec * NS_PER_S,
            activity: s.value.clone(),
        })
        .collect()
}

fn other_view<K: Ord + std::hash::Hash + Clone>(t: &TopK<K, Activity>, now_sec: u64) -> OtherView {
    OtherView {
        rates: Rates::of(&t.other.window, now_sec),
        activity: t.other.value.clone(),
        tracked: t.len(),
        cap: t.cap(),
        admitted: t.admitted,
        evicted: t.evicted,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairView {
    pub from: State,
    pub to: State,
    pub total: u64,
    pub rates: Rates,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterView {
    pub value: i64,
    /// Change per second since the previous sample.
    pub per_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceView {
    /// Inode; 0 unknown, `NETNS_OTHER` for namespaces beyond the cap.
    pub netns: u32,
    pub transitions: Vec<PairView>,
    pub activity: Activity,
    pub census: Option<CensusSample>,
    /// When the census's listeners were last refreshed (listeners-only
    /// censuses between full ones).
    #[serde(default)]
    pub listeners_ts_ns: Option<u64>,
    pub counters: Option<BTreeMap<String, CounterView>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyView<K> {
    pub key: K,
    pub rates: Rates,
    /// Counted since (the key's admission into the table).
    pub since_ns: u64,
    pub activity: Activity,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OtherView {
    pub rates: Rates,
    pub activity: Activity,
    pub tracked: usize,
    pub cap: usize,
    pub admitted: u64,
    pub evicted: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloseWaitView {
    /// Sockets seen entering CLOSE-WAIT and not leaving it.
    pub sockets: u64,
    pub oldest_s: Option<f64>,
    pub older_than_60s: u64,
    /// (port, sockets), busiest first.
    pub by_port: Vec<(u16, u64)>,
    pub by_pid_known: u64,
    /// Per owning process (the busiest, as many as `max_processes`).
    #[serde(default)]
    pub by_owner: Vec<CloseWaitOwner>,
}

/// One process's followed CLOSE-WAIT sockets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloseWaitOwner {
    pub netns: u32,
    pub pid: u32,
    pub sockets: u64,
    /// How long the oldest has waited for its owner to close it.
    pub oldest_s: f64,
    /// The oldest one's port (its service's, as ports are counted).
    #[serde(default)]
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub now_ns: u64,
    pub namespaces: Vec<NamespaceView>,
    pub ports: Vec<KeyView<PortKey>>,
    pub ports_other: OtherView,
    pub processes: Vec<KeyView<ProcessKey>>,
    pub processes_other: OtherView,
    pub durations: Durations,
    pub close_wait_open: CloseWaitView,
    pub kernel: Option<KernelSample>,
    pub stats: EngineStats,
}

impl View {
    /// Delivered transitions per (from, to), summed over namespaces.
    pub fn transitions_total(&self) -> BTreeMap<(State, State), u64> {
        let mut m = BTreeMap::new();
        for ns in &self.namespaces {
            for p in &ns.transitions {
                *m.entry((p.from, p.to)).or_default() += p.total;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests;
