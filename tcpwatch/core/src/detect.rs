//! Detection: the classic TCP failure modes, per listener and per process,
//! from what each snapshot's view already holds (census, queues, kernel
//! counter rates, CLOSE-WAIT ages). Pure: time is the view's. Each alert
//! fires after its condition has held for its hold time, resolves after it
//! has been clear for `resolve_after`, and none fires during the warm-up
//! after the daemon starts (counter rates need two samples, and a restart
//! must not look like an event).
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{
    config::Detect,
    engine::{NETNS_OTHER, NamespaceView, View},
};

const NS_PER_S: f64 = 1e9;

/// Resolved alerts kept for `tcpwatch alerts` and `top` (newest last).
pub const RECENT_KEPT: usize = 32;

/// Alerts active at once, at most: keys come from listeners and processes,
/// which any local user can multiply.
pub const ACTIVE_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    /// As the `severity` label says it.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What an alert is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Listener {
        address: String,
        port: u16,
    },
    Process {
        pid: u32,
        comm: String,
    },
    /// A port as the engine counts it ("in": local, "out": remote).
    Port {
        port: u16,
        direction: String,
    },
    /// A remote address and port this host connects to.
    Destination {
        address: String,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    /// `SynFlood`, `AcceptQueueOverflow`, `CloseWaitLeak`, `RstStorm`,
    /// `ConnectFailures`, `TimeWaitPressure`.
    pub name: String,
    pub netns: u32,
    pub subject: Subject,
}

impl AlertKey {
    /// The labels that name its subject: address and port, or pid and comm.
    pub fn subject_labels(&self) -> [(&'static str, String); 2] {
        match &self.subject {
            Subject::Listener { address, port } => {
                [("address", address.clone()), ("port", port.to_string())]
            }
            Subject::Process { pid, comm } => [("pid", pid.to_string()), ("comm", comm.clone())],
            Subject::Port { port, direction } => {
                [("port", port.to_string()), ("direction", direction.clone())]
            }
            Subject::Destination { address, port } => {
                [("address", address.clone()), ("port", port.to_string())]
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub key: AlertKey,
    pub severity: Severity,
    /// One line: what, where.
    pub summary: String,
    /// The states, the likely cause and the usual fix, with the evidence.
    pub description: String,
    /// The numbers the condition was decided on, at the last evaluation.
    pub evidence: BTreeMap<String, f64>,
    /// CLOCK_MONOTONIC when it fired, and when it resolved.
    pub since_ns: u64,
    pub resolved_ns: Option<u64>,
}

/// What the detector publishes with each snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    pub active: Vec<Alert>,
    pub recent: Vec<Alert>,
    /// Conditions not followed because `ACTIVE_MAX` were already.
    #[serde(default)]
    pub dropped: u64,
}

impl Alerts {
    /// When `a` resolved, if the recent list still has it.
    pub fn resolved_at(&self, a: &Alert) -> Option<u64> {
        self.recent
            .iter()
            .find(|r| r.key == a.key && r.since_ns == a.since_ns)
            .and_then(|r| r.resolved_ns)
    }
}

/// Keeps a resolved alert among the recent ones, the oldest making room.
fn remember(recent: &mut VecDeque<Alert>, a: Alert) {
    if recent.len() >= RECENT_KEPT {
        recent.pop_front();
    }
    recent.push_back(a);
}

/// One evaluation's finding for a key.
struct Finding {
    key: AlertKey,
    severity: Severity,
    hold_s: f64,
    summary: String,
    description: String,
    evidence: BTreeMap<String, f64>,
}

impl Finding {
    /// The alert it becomes, firing from `now`.
    fn fire(self, now: u64) -> Alert {
        Alert {
            key: self.key,
            severity: self.severity,
            summary: self.summary,
            description: self.description,
            evidence: self.evidence,
            since_ns: now,
            resolved_ns: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Track {
    /// When the condition started holding (uninterrupted).
    holding_since: u64,
    /// When it was last seen holding.
    last_true: u64,
    alert: Option<Alert>,
}

#[derive(Clone, Debug)]
pub struct Detector {
    /// Census data older than this is not evaluated (the daemon sets a
    /// few intervals).
    pub stale_after_ns: u64,
    started_ns: Option<u64>,
    tracks: BTreeMap<AlertKey, Track>,
    recent: VecDeque<Alert>,
    dropped: u64,
    trends: Trends,
}

/// A change worth a log line.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Fired(Alert),
    Resolved(Alert),
}

fn rate(ns: &NamespaceView, name: &str) -> f64 {
    ns.counters
        .as_ref()
        .and_then(|c| c.get(name))
        .and_then(|c| c.per_s)
        .unwrap_or(0.0)
}

fn findings(view: &View, cfg: &Detect, stale_ns: u64, trends: &Trends) -> Vec<Finding> {
    let mut out = Vec::new();
    traffic::reset_storms(view, cfg, trends, &mut out);
    traffic::failing_connects(view, cfg, trends, &mut out);
    for ns in &view.namespaces {
        if ns.netns == NETNS_OTHER {
            continue;
        }
        let Some(census) = &ns.census else { continue };
        // A namespace no longer sampled (ranked out, or its census failing)
        // keeps its last numbers: they must not keep an alert alive.
        if ns
            .listeners_ts_ns
            .is_none_or(|t| view.now_ns.saturating_sub(t) > stale_ns)
        {
            continue;
        }
        let cookies = rate(ns, "TcpExt.SyncookiesSent");
        let q_cookies = rate(ns, "TcpExt.TCPReqQFullDoCookies");
        let q_drops = rate(ns, "TcpExt.TCPReqQFullDrop");
        let listen_drops = rate(ns, "TcpExt.ListenDrops");
        let overflows = rate(ns, "TcpExt.ListenOverflows");
        for l in &census.summary.listeners {
            let subject = Subject::Listener {
                address: l.address.clone(),
                port: l.port,
            };
            let backlog = f64::from(l.backlog.max(1));
            let fill = l.syn_recv as f64 / backlog;
            let owner = match (&l.pid, &l.comm) {
                (Some(p), Some(c)) => format!("{c} (pid {p})"),
                _ => "an unknown process".into(),
            };
            if fill >= cfg.syn_flood_fill && (cookies + q_cookies + q_drops) > 0.0 {
                // Dropped SYNs: legitimate clients fail too.
                let critical = q_drops > 0.0;
                let mut evidence = BTreeMap::new();
                evidence.insert("syn_recv".into(), l.syn_recv as f64);
                evidence.insert("backlog".into(), f64::from(l.backlog));
                evidence.insert("syncookies_per_s".into(), cookies.max(q_cookies));
                evidence.insert("syn_drops_per_s".into(), q_drops);
                evidence.insert("listen_drops_per_s".into(), listen_drops);
                let port_key = crate::engine::PortKey {
                    netns: ns.netns,
                    port: l.port,
                    direction: crate::engine::Direction::In,
                };
                let synacks = trends
                    .rate(
                        &trend::Subject::Port(port_key),
                        trend::Series::SynackRetransmits,
                    )
                    .unwrap_or(0.0);
                evidence.insert("synack_retransmits_per_s".into(), synacks);
                out.push(Finding {
                    key: AlertKey {
                        name: "SynFlood".into(),
                        netns: ns.netns,
                        subject: subject.clone(),
                    },
                    severity: if critical { Severity::Critical } else { Severity::Warning },
                    hold_s: cfg.syn_flood_hold,
                    summary: format!(
                        "SYN flood on {}:{} (netns {}): {} half-open of backlog {}",
                        l.address, l.port, ns.netns, l.syn_recv, l.backlog
                    ),
                    description: format!(
                        "The listener {}:{} of {owner} holds {} request sockets in SYN-RECV against a backlog of {}: SYNs arrive that never complete the handshake (SYN-ACKs retransmitted: {synacks:.0}/s). {} Usual fixes: keep net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog, and filter the sources upstream.",
                        l.address,
                        l.port,
                        l.syn_recv,
                        l.backlog,
                        if critical {
                            format!("SYNs are being dropped ({q_drops:.0}/s): legitimate clients time out.")
                        } else {
                            format!(
                                "Syncookies absorb it ({:.0}/s sent): legitimate clients are still served.",
                                cookies.max(q_cookies)
                            )
                        }
                    ),
                    evidence,
                });
            } else if l.backlog > 0 && l.accept_queue >= l.backlog && overflows > 0.0 {
                let mut evidence = BTreeMap::new();
                evidence.insert("accept_queue".into(), f64::from(l.accept_queue));
                evidence.insert("backlog".into(), f64::from(l.backlog));
                evidence.insert("listen_overflows_per_s".into(), overflows);
                out.push(Finding {
                    key: AlertKey {
                        name: "AcceptQueueOverflow".into(),
                        netns: ns.netns,
                        subject,
                    },
                    severity: Severity::Warning,
                    hold_s: cfg.accept_overflow_hold,
                    summary: format!(
                        "accept queue full on {}:{} (netns {}): {} waiting, backlog {}",
                        l.address, l.port, ns.netns, l.accept_queue, l.backlog
                    ),
                    description: format!(
                        "Connections to {}:{} complete their handshake but {owner} does not accept() them fast enough: {} wait in the accept queue (backlog {}) and the kernel drops new ones ({overflows:.0}/s ListenOverflows). Not a flood: the handshakes complete. Usual fixes: more accept() workers in the application, a larger listen() backlog and net.core.somaxconn.",
                        l.address, l.port, l.accept_queue, l.backlog
                    ),
                    evidence,
                });
            }
        }
        traffic::time_wait_pressure(ns.netns, &census.summary, cfg, &mut out);
        for p in &census.summary.processes {
            let (Some(pid), Some(comm)) = (p.pid, &p.comm) else {
                continue;
            };
            let n = p.states.get("CLOSE-WAIT").copied().unwrap_or(0);
            if n < cfg.close_wait_min {
                continue;
            }
            let Some(followed) = view
                .close_wait_open
                .by_owner
                .iter()
                .find(|o| o.netns == ns.netns && o.pid == pid)
            else {
                continue;
            };
            let (oldest, port) = (followed.oldest_s, followed.port);
            if oldest < cfg.close_wait_age {
                continue;
            }
            let mut evidence = BTreeMap::new();
            evidence.insert("close_wait".into(), n as f64);
            evidence.insert("oldest_s".into(), oldest);
            evidence.insert("port".into(), f64::from(port));
            out.push(Finding {
                key: AlertKey {
                    name: "CloseWaitLeak".into(),
                    netns: ns.netns,
                    subject: Subject::Process {
                        pid,
                        comm: comm.clone(),
                    },
                },
                severity: Severity::Warning,
                hold_s: 0.0,
                summary: format!(
                    "CLOSE-WAIT leak in {comm} (pid {pid}, netns {}): {n} sockets, oldest {oldest:.0} s on port {port}",
                    ns.netns
                ),
                description: format!(
                    "{comm} (pid {pid}) holds {n} sockets in CLOSE-WAIT, the oldest for {oldest:.0} s (port {port}): their peers closed, and the application never called close(). Each holds a file descriptor and memory until it does. Usual fix: close sockets in the application when a read returns 0 (end of stream), including on error paths."
                ),
                evidence,
            });
        }
    }
    out
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            stale_after_ns: 30_000_000_000,
            started_ns: None,
            tracks: BTreeMap::new(),
            recent: VecDeque::new(),
            dropped: 0,
            trends: Trends::default(),
        }
    }
}

impl Detector {
    /// Evaluates one view; returns what fired and what resolved.
    pub fn evaluate(&mut self, view: &View, cfg: &Detect) -> Vec<Change> {
        let now = view.now_ns;
        let started = *self.started_ns.get_or_insert(now);
        let warm = now.saturating_sub(started) as f64 / NS_PER_S >= cfg.warmup;
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        self.trends.update(view, warm);
        for f in findings(view, cfg, self.stale_after_ns, &self.trends) {
            seen.push(f.key.clone());
            if !self.tracks.contains_key(&f.key) && self.tracks.len() >= ACTIVE_MAX {
                self.dropped += 1;
                continue;
            }
            let t = self.tracks.entry(f.key.clone()).or_insert(Track {
                holding_since: now,
                last_true: now,
                alert: None,
            });
            t.last_true = now;
            let held = now.saturating_sub(t.holding_since) as f64 / NS_PER_S;
            match &mut t.alert {
                // A new severity is a new alert (severity is one of its
                // labels): the old one resolves, the new one fires now.
                Some(a) if a.severity != f.severity => {
                    let mut old = a.clone();
                    old.resolved_ns = Some(now);
                    changes.push(Change::Resolved(old.clone()));
                    remember(&mut self.recent, old);
                    *a = f.fire(now);
                    changes.push(Change::Fired(a.clone()));
                }
                Some(a) => {
                    // The evidence is fresh each evaluation.
                    a.summary = f.summary;
                    a.description = f.description;
                    a.evidence = f.evidence;
                }
                None if warm && held >= f.hold_s => {
                    let a = f.fire(now);
                    changes.push(Change::Fired(a.clone()));
                    t.alert = Some(a);
                }
                None => {}
            }
        }
        // Clear conditions: a firing alert resolves once clear long enough;
        // a condition that never fired is forgotten at once.
        let resolve_ns = (cfg.resolve_after * NS_PER_S) as u64;
        let mut gone = Vec::new();
        for (k, t) in &mut self.tracks {
            if seen.contains(k) {
                continue;
            }
            match &mut t.alert {
                Some(a) if now.saturating_sub(t.last_true) >= resolve_ns => {
                    a.resolved_ns = Some(now);
                    changes.push(Change::Resolved(a.clone()));
                    gone.push(k.clone());
                }
                // Within the resolve delay: a flap keeps the same alert.
                Some(_) => {}
                None => gone.push(k.clone()),
            }
        }
        for k in gone {
            if let Some(Track { alert: Some(a), .. }) = self.tracks.remove(&k)
                && a.resolved_ns.is_some()
            {
                remember(&mut self.recent, a);
            }
        }
        changes
    }

    pub fn alerts(&self) -> Alerts {
        Alerts {
            active: self
                .tracks
                .values()
                .filter_map(|t| t.alert.clone())
                .collect(),
            recent: self.recent.iter().cloned().collect(),
            dropped: self.dropped,
        }
    }
}

pub mod alertmanager;
mod traffic;
mod trend;

use trend::Trends;

#[cfg(test)]
mod tests;
