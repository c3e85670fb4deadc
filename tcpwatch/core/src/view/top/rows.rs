//! The rows `top` shows, computed from the newest snapshot and the
//! history: per state, per (from, to) pair, per listener, per process, and
//! the footer's account. Plain data; drawing only lays it out.
use std::collections::BTreeMap;

use super::history::{History, Series};
use crate::{
    census::SHOWN,
    engine::{Direction, NETNS_OTHER, NamespaceView},
    model::State,
    snapshot::Snapshot,
};

/// The census states in the kernel's order (SYN-RECV includes request
/// sockets, TIME-WAIT the kernel's timewait sockets).
pub fn state_names() -> Vec<String> {
    SHOWN
        .iter()
        .map(|&s| State::from_raw(s).to_string())
        .collect()
}

/// Series key for "every namespace in view".
pub const ALL: u32 = 0xffff_fffe;

/// The namespace counters `top` follows, with the names it shows.
pub const COUNTERS: [(&str, &str); 4] = [
    ("TcpExt.SyncookiesSent", "cookies"),
    ("TcpExt.ListenDrops", "listen drops"),
    ("TcpExt.ListenOverflows", "accept overflows"),
    ("TcpExt.TCPSynRetrans", "SYN retrans"),
];

#[derive(Clone, Debug, PartialEq)]
pub struct StateRow {
    pub state: String,
    pub count: u64,
    /// Counts over the last samples, oldest first.
    pub trend: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PairRow {
    pub from: State,
    pub to: State,
    pub per_s: f64,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerRow {
    pub netns: u32,
    pub address: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub syn_recv: u64,
    pub backlog: u32,
    pub accept_queue: u32,
    /// Connections its port completed per second (all its listeners).
    pub accepted_per_s: Option<f64>,
    pub states: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProcessRow {
    pub netns: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Sockets it holds now (census), by state.
    pub sockets: u64,
    pub states: BTreeMap<String, u64>,
    pub close_wait: u64,
    /// Its oldest CLOSE-WAIT socket seen entering that state.
    pub close_wait_oldest_s: Option<f64>,
    pub connects_per_s: Option<f64>,
    /// Failed connects since start; unknown (None) in the counts-only
    /// mode, which follows no socket to its owner.
    pub failed: Option<u64>,
    pub failed_per_s: Option<f64>,
    pub transitions_per_s: Option<f64>,
}

/// A namespace-wide counter's rate, for the listeners pane's title.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterRate {
    pub name: &'static str,
    pub per_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Footer {
    pub events_per_s: Option<f64>,
    pub delivered: u64,
    /// (reason, count) for every way a transition can be lost, zeros
    /// included so a clean run says so.
    pub losses: Vec<(&'static str, u64)>,
    pub witness: Option<bool>,
    /// Transitions delivered twice (main program and catcher both ran).
    pub double_counted: u64,
    /// Runs of the main program nested in another (counters may race).
    pub nested: u64,
    pub daemon_cpu_pct: Option<f64>,
    pub daemon_rss: Option<u64>,
    pub hook: Option<String>,
    /// Snapshots skipped because `top` read slower than the daemon ticks.
    pub missed: u64,
}

/// Which namespaces a view covers.
pub fn in_scope(ns: &NamespaceView, scope: Option<u32>) -> bool {
    scope.is_none_or(|s| s == ns.netns)
}

/// Feeds the history from one snapshot.
pub fn record(h: &mut History, snap: &Snapshot) {
    let v = &snap.view;
    h.begin(v.now_ns);
    let names = state_names();
    for ns in &v.namespaces {
        for p in &ns.transitions {
            h.put(
                Series::Pair {
                    netns: ns.netns,
                    from: p.from,
                    to: p.to,
                },
                p.total as f64,
            );
        }
        if let Some(c) = &ns.census {
            for name in &names {
                let n = c.summary.states.get(name).copied().unwrap_or(0) as f64;
                for netns in [ns.netns, ALL] {
                    h.add(
                        Series::State {
                            netns,
                            state: name.clone(),
                        },
                        n,
                    );
                }
            }
        }
        if let Some(counters) = &ns.counters {
            for (name, _) in COUNTERS {
                if let Some(c) = counters.get(name) {
                    h.put(
                        Series::Counter {
                            netns: ns.netns,
                            name,
                        },
                        c.value as f64,
                    );
                }
            }
        }
    }
    for p in &v.ports {
        if p.key.direction == Direction::In {
            h.put(
                Series::Accepted {
                    netns: p.key.netns,
                    port: p.key.port,
                },
                p.activity.established as f64,
            );
        }
    }
    for p in &v.processes {
        let (netns, pid) = (p.key.netns, p.key.pid);
        let connects = p.activity.connects();
        // One pid may appear under several names (a thread renamed): summed.
        h.add(
            Series::ProcTransitions { netns, pid },
            p.activity.transitions as f64,
        );
        h.add(Series::ProcConnects { netns, pid }, connects as f64);
        h.add(
            Series::ProcFailed { netns, pid },
            p.activity.failed_connects as f64,
        );
    }
    if let Some(k) = &v.kernel {
        h.put(Series::Delivered, k.delivered as f64);
    }
    if let Some(u) = &snap.info.usage {
        h.put(Series::DaemonCpu, u.cpu_ns as f64);
    }
    h.end();
}

pub fn states(snap: &Snapshot, h: &History, scope: Option<u32>) -> Vec<StateRow> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for ns in snap.view.namespaces.iter().filter(|n| in_scope(n, scope)) {
        if let Some(c) = &ns.census {
            for (s, n) in &c.summary.states {
                *counts.entry(s.clone()).or_default() += n;
            }
        }
    }
    state_names()
        .into_iter()
        .map(|state| StateRow {
            count: counts.get(&state).copied().unwrap_or(0),
            trend: h.values(&Series::State {
                netns: scope.unwrap_or(ALL),
                state: state.clone(),
            }),
            state,
        })
        .collect()
}

/// Per pair: its rate over the window from the history (over what is
/// known of it, like every other rate on the screen), and its total.
pub fn pairs(snap: &Snapshot, h: &History, scope: Option<u32>, window_s: u64) -> Vec<PairRow> {
    let mut m: BTreeMap<(State, State), (f64, u64)> = BTreeMap::new();
    for ns in snap.view.namespaces.iter().filter(|n| in_scope(n, scope)) {
        for p in &ns.transitions {
            let r = if ns.netns == NETNS_OTHER {
                // `other` takes in an evicted namespace's whole total at
                // once: a difference of totals would be a false spike, so
                // its rates are the engine's own windows.
                Some(match window_s {
                    1 => p.rates.per_s_1s,
                    10 => p.rates.per_s_10s,
                    _ => p.rates.per_s_60s,
                })
            } else {
                h.rate(
                    &Series::Pair {
                        netns: ns.netns,
                        from: p.from,
                        to: p.to,
                    },
                    window_s,
                )
            };
            let e = m.entry((p.from, p.to)).or_default();
            e.0 += r.unwrap_or(0.0);
            e.1 += p.total;
        }
    }
    m.into_iter()
        .map(|((from, to), (per_s, total))| PairRow {
            from,
            to,
            per_s,
            total,
        })
        .collect()
}

pub fn listeners(
    snap: &Snapshot,
    h: &History,
    scope: Option<u32>,
    window_s: u64,
) -> Vec<ListenerRow> {
    let mut rows = Vec::new();
    for ns in snap.view.namespaces.iter().filter(|n| in_scope(n, scope)) {
        let Some(c) = &ns.census else { continue };
        for l in &c.summary.listeners {
            rows.push(ListenerRow {
                netns: ns.netns,
                address: l.address.clone(),
                port: l.port,
                pid: l.pid,
                comm: l.comm.clone(),
                syn_recv: l.syn_recv,
                backlog: l.backlog,
                accept_queue: l.accept_queue,
                // Counts-only: a port's entry holds only its resets and
                // SYN-ACKs, so its accepts are unknown, not 0.
                accepted_per_s: h
                    .rate(
                        &Series::Accepted {
                            netns: ns.netns,
                            port: l.port,
                        },
                        window_s,
                    )
                    .filter(|_| !snap.info.counts_only),
                states: l.states.clone(),
            });
        }
    }
    rows
}

pub fn processes(
    snap: &Snapshot,
    h: &History,
    scope: Option<u32>,
    window_s: u64,
) -> Vec<ProcessRow> {
    let v = &snap.view;
    let cw_state = State::from_raw(tcpwatch_common::state::TCP_CLOSE_WAIT).to_string();
    let mut rows: BTreeMap<(u32, Option<u32>), ProcessRow> = BTreeMap::new();
    let blank = |netns, pid, comm: Option<String>| ProcessRow {
        netns,
        pid,
        comm,
        sockets: 0,
        states: BTreeMap::new(),
        close_wait: 0,
        close_wait_oldest_s: None,
        connects_per_s: None,
        failed: (!snap.info.counts_only).then_some(0),
        failed_per_s: None,
        transitions_per_s: None,
    };
    for ns in v.namespaces.iter().filter(|n| in_scope(n, scope)) {
        let Some(c) = &ns.census else { continue };
        for p in &c.summary.processes {
            let r = rows
                .entry((ns.netns, p.pid))
                .or_insert_with(|| blank(ns.netns, p.pid, p.comm.clone()));
            r.sockets += p.total;
            for (s, n) in &p.states {
                *r.states.entry(s.clone()).or_default() += n;
            }
            r.close_wait = r.states.get(&cw_state).copied().unwrap_or(0);
        }
    }
    for p in v
        .processes
        .iter()
        .filter(|p| scope.is_none_or(|s| s == p.key.netns))
    {
        let (netns, pid) = (p.key.netns, p.key.pid);
        let r = rows
            .entry((netns, Some(pid)))
            .or_insert_with(|| blank(netns, Some(pid), Some(p.key.comm.to_string())));
        // Counts-only: a process's activity holds only connects that failed
        // before a SYN; its connects and transitions stay unknown.
        if snap.info.counts_only {
            continue;
        }
        r.failed = Some(r.failed.unwrap_or(0) + p.activity.failed_connects);
        r.connects_per_s = h.rate(&Series::ProcConnects { netns, pid }, window_s);
        r.failed_per_s = h.rate(&Series::ProcFailed { netns, pid }, window_s);
        r.transitions_per_s = h.rate(&Series::ProcTransitions { netns, pid }, window_s);
    }
    for o in &v.close_wait_open.by_owner {
        if let Some(r) = rows.get_mut(&(o.netns, Some(o.pid))) {
            r.close_wait_oldest_s = Some(o.oldest_s);
        }
    }
    rows.into_values().collect()
}

pub fn counters(
    snap: &Snapshot,
    h: &History,
    scope: Option<u32>,
    window_s: u64,
) -> Vec<CounterRate> {
    COUNTERS
        .iter()
        .map(|&(name, shown)| {
            let mut sum: Option<f64> = None;
            for ns in snap.view.namespaces.iter().filter(|n| in_scope(n, scope)) {
                if let Some(r) = h.rate(
                    &Series::Counter {
                        netns: ns.netns,
                        name,
                    },
                    window_s,
                ) {
                    *sum.get_or_insert(0.0) += r;
                }
            }
            CounterRate {
                name: shown,
                per_s: sum,
            }
        })
        .collect()
}

pub fn footer(snap: &Snapshot, h: &History, window_s: u64, missed: u64) -> Footer {
    let k = snap.view.kernel.as_ref();
    let a = k.map(|k| &k.accounting);
    Footer {
        events_per_s: h.rate(&Series::Delivered, window_s),
        delivered: k.map_or(0, |k| k.delivered),
        losses: a.map_or_else(Vec::new, |a| {
            vec![
                ("ring full", a.ringbuf_full),
                ("skipped", a.unrecovered),
                ("not run", a.not_run),
            ]
        }),
        double_counted: a.map_or(0, |a| a.double_counted),
        nested: a.map_or(0, |a| a.nested),
        witness: a.map(|a| a.has_witness),
        daemon_cpu_pct: h.rate(&Series::DaemonCpu, window_s).map(|ns| ns / 1e7),
        daemon_rss: snap.info.usage.map(|u| u.rss_bytes),
        hook: snap.info.hook.clone(),
        missed,
    }
}

/// A namespace as the header names it.
pub fn netns_name(n: u32) -> String {
    match n {
        0 => "unknown".into(),
        NETNS_OTHER => "other".into(),
        n => n.to_string(),
    }
}
