//! `tcpwatch top`'s state: the newest snapshot, a minute of history, and
//! what the operator chose (pane, row, sort, filter, window, namespace,
//! pause, detail). Plain data changed by snapshots and keys; the binary
//! draws it and owns the terminal, so all of this runs in tests as is.
pub mod fmt;
pub mod history;
pub mod rows;

use std::sync::Arc;

use self::history::History;
pub use self::rows::netns_name;
pub use self::rows::{CounterRate, Footer, ListenerRow, PairRow, ProcessRow, StateRow};
use crate::snapshot::Snapshot;

/// A key as `top` understands it (the terminal edge maps its own events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    Backspace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Listeners,
    Processes,
    Transitions,
}

impl Pane {
    const ALL: [Pane; 3] = [Pane::Listeners, Pane::Processes, Pane::Transitions];

    fn index(self) -> usize {
        self as usize
    }

    /// The sort orders it offers, the first the default.
    pub fn sorts(self) -> &'static [&'static str] {
        match self {
            Pane::Listeners => &["SYN-RECV", "accepted/s", "accept queue", "port"],
            Pane::Processes => &["sockets", "CLOSE-WAIT", "connects/s", "failed", "pid"],
            Pane::Transitions => &["rate", "total"],
        }
    }
}

/// The rate window: `1`, `2`, `3` pick 1 s, 10 s, 60 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateWindow {
    S1,
    S10,
    S60,
}

impl RateWindow {
    pub fn secs(self) -> u64 {
        match self {
            RateWindow::S1 => 1,
            RateWindow::S10 => 10,
            RateWindow::S60 => 60,
        }
    }
}

/// What Enter opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Listener {
        netns: u32,
        address: String,
        port: u16,
    },
    Process {
        netns: u32,
        pid: Option<u32>,
    },
}

/// The detail view of one listener or process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detail {
    pub title: String,
    /// No longer in the daemon's tables (closed, exited, or past the caps).
    pub gone: bool,
    pub facts: Vec<(&'static str, String)>,
    /// Its sockets by state now.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Its transitions since the daemon started, most first.
    pub pairs: Vec<(crate::model::State, crate::model::State, u64)>,
    pub trend_name: &'static str,
    pub trend: Vec<u64>,
}

#[derive(Clone, Debug)]
pub struct Top {
    snapshot: Option<Arc<Snapshot>>,
    /// The newest snapshot that arrived while paused.
    held: Option<Arc<Snapshot>>,
    history: History,
    missed: u64,
    /// Where the snapshots come from, for the header.
    pub source: String,
    pub pane: Pane,
    pub window: RateWindow,
    /// None: every namespace the snapshot has.
    pub scope: Option<u32>,
    pub paused: bool,
    pub filter: String,
    /// `/` typed and not yet ended with Enter or Esc.
    pub editing: bool,
    /// The snapshots come from a runtime in this process: its usage is
    /// this process's, `top` included.
    pub in_process: bool,
    pub help: bool,
    pub detail: Option<Target>,
    sort: [usize; 3],
    selected: [usize; 3],
}

impl Top {
    pub fn new(source: impl Into<String>) -> Top {
        Top {
            snapshot: None,
            held: None,
            history: History::default(),
            missed: 0,
            source: source.into(),
            pane: Pane::Listeners,
            window: RateWindow::S10,
            scope: None,
            paused: false,
            filter: String::new(),
            editing: false,
            in_process: false,
            help: false,
            detail: None,
            sort: [0; 3],
            selected: [0; 3],
        }
    }

    /// A snapshot arrived (`missed`: how many the source skipped before it).
    pub fn update(&mut self, snap: Arc<Snapshot>, missed: u64) {
        self.missed += missed;
        if self.paused {
            self.held = Some(snap);
            return;
        }
        // A daemon counts its snapshots from 1: a lower number is a new
        // daemon, whose counters started again; the old history would make
        // rates of the difference.
        if self.snapshot.as_ref().is_some_and(|s| snap.seq < s.seq) {
            self.history = History::default();
        }
        rows::record(&mut self.history, &snap);
        self.snapshot = Some(snap);
    }

    /// Snapshots dropped before they reached the model.
    pub fn count_missed(&mut self, n: u64) {
        self.missed += n;
    }

    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn sort_name(&self, pane: Pane) -> &'static str {
        pane.sorts()[self.sort[pane.index()]]
    }

    pub fn selected(&self, pane: Pane) -> usize {
        self.selected[pane.index()]
    }

    /// Whether the rows come from more than one namespace (the tables then
    /// say which).
    pub fn many_namespaces(&self) -> bool {
        self.scope.is_none()
            && self
                .snapshot
                .as_ref()
                .is_some_and(|s| s.view.namespaces.len() > 1)
    }

    /// The namespace scope as the header says it.
    pub fn scope_name(&self) -> String {
        match (
            self.scope,
            self.snapshot.as_ref().and_then(|s| s.info.scope),
        ) {
            (Some(n), _) => format!("netns {}", netns_name(n)),
            (None, Some(d)) => format!("netns {} (the only one watched)", netns_name(d)),
            (None, None) => "all namespaces".into(),
        }
    }

    fn matches(&self, hay: &str) -> bool {
        self.filter.is_empty() || hay.to_lowercase().contains(&self.filter.to_lowercase())
    }

    pub fn states(&self) -> Vec<StateRow> {
        self.snapshot
            .as_ref()
            .map_or_else(Vec::new, |s| rows::states(s, &self.history, self.scope))
    }

    pub fn pairs(&self) -> Vec<PairRow> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let mut v: Vec<PairRow> = rows::pairs(s, &self.history, self.scope, self.window.secs())
            .into_iter()
            .filter(|p| self.matches(&format!("{} {}", p.from, p.to)))
            .collect();
        match self.sort_name(Pane::Transitions) {
            "total" => v.sort_by_key(|p| std::cmp::Reverse(p.total)),
            _ => v.sort_by(|a, b| b.per_s.total_cmp(&a.per_s).then(b.total.cmp(&a.total))),
        }
        v
    }

    pub fn listeners(&self) -> Vec<ListenerRow> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let mut v: Vec<ListenerRow> =
            rows::listeners(s, &self.history, self.scope, self.window.secs())
                .into_iter()
                .filter(|l| {
                    self.matches(&format!(
                        "{}:{} {} {}",
                        fmt::address(&l.address),
                        l.port,
                        fmt::pid(l.pid),
                        fmt::comm(l.comm.as_deref())
                    ))
                })
                .collect();
        let key = |l: &ListenerRow| (l.port, l.address.clone(), l.netns);
        match self.sort_name(Pane::Listeners) {
            "accepted/s" => v.sort_by(|a, b| {
                b.accepted_per_s
                    .unwrap_or(0.0)
                    .total_cmp(&a.accepted_per_s.unwrap_or(0.0))
                    .then(key(a).cmp(&key(b)))
            }),
            "accept queue" => v.sort_by(|a, b| {
                b.accept_queue
                    .cmp(&a.accept_queue)
                    .then(key(a).cmp(&key(b)))
            }),
            "port" => v.sort_by_key(key),
            _ => v.sort_by(|a, b| b.syn_recv.cmp(&a.syn_recv).then(key(a).cmp(&key(b)))),
        }
        v
    }

    pub fn processes(&self) -> Vec<ProcessRow> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let mut v: Vec<ProcessRow> =
            rows::processes(s, &self.history, self.scope, self.window.secs())
                .into_iter()
                .filter(|p| {
                    self.matches(&format!(
                        "{} {}",
                        fmt::pid(p.pid),
                        fmt::comm(p.comm.as_deref())
                    ))
                })
                .collect();
        // The unowned bucket (TIME-WAIT, orphans) sorts last among equals.
        let key = |p: &ProcessRow| (p.pid.is_none(), p.pid, p.netns);
        let f = |r: Option<f64>| r.unwrap_or(0.0);
        match self.sort_name(Pane::Processes) {
            "CLOSE-WAIT" => {
                v.sort_by(|a, b| b.close_wait.cmp(&a.close_wait).then(key(a).cmp(&key(b))))
            }
            "connects/s" => v.sort_by(|a, b| {
                f(b.connects_per_s)
                    .total_cmp(&f(a.connects_per_s))
                    .then(key(a).cmp(&key(b)))
            }),
            "failed" => v.sort_by(|a, b| b.failed.cmp(&a.failed).then(key(a).cmp(&key(b)))),
            "pid" => v.sort_by_key(key),
            _ => v.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(key(a).cmp(&key(b)))),
        }
        v
    }

    /// Active alerts in scope (critical first), and how many resolved
    /// recently.
    pub fn alerts(&self) -> (Vec<crate::detect::Alert>, usize) {
        let Some(s) = &self.snapshot else {
            return (Vec::new(), 0);
        };
        let mut active: Vec<_> = s
            .alerts
            .active
            .iter()
            .filter(|a| self.scope.is_none_or(|n| n == a.key.netns))
            .cloned()
            .collect();
        active.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.since_ns.cmp(&b.since_ns))
        });
        (active, s.alerts.recent.len())
    }

    pub fn counters(&self) -> Vec<CounterRate> {
        self.snapshot.as_ref().map_or_else(Vec::new, |s| {
            rows::counters(s, &self.history, self.scope, self.window.secs())
        })
    }

    pub fn footer(&self) -> Footer {
        self.snapshot.as_ref().map_or_else(Footer::default, |s| {
            rows::footer(s, &self.history, self.window.secs(), self.missed)
        })
    }

    /// What the detail view shows for the open target; None when nothing
    /// is open. A target gone from the tables is said to be gone.
    pub fn detail(&self) -> Option<Detail> {
        let target = self.detail.as_ref()?;
        let snap = self.snapshot.as_ref()?;
        let v = &snap.view;
        let w = self.window.secs();
        let mut d = Detail::default();
        match target {
            Target::Listener {
                netns,
                address,
                port,
            } => {
                d.title = format!("listener {address}:{port}  netns {}", netns_name(*netns));
                let Some(l) = self
                    .listeners_unfiltered()
                    .into_iter()
                    .find(|l| l.netns == *netns && l.address == *address && l.port == *port)
                else {
                    d.gone = true;
                    return Some(d);
                };
                d.facts = vec![
                    (
                        "owner",
                        format!("{} {}", fmt::pid(l.pid), fmt::comm(l.comm.as_deref())),
                    ),
                    (
                        "SYN-RECV / backlog",
                        format!("{} / {}", l.syn_recv, l.backlog),
                    ),
                    ("accept queue", l.accept_queue.to_string()),
                    ("accepted/s", fmt::rate(l.accepted_per_s)),
                ];
                d.states = l.states;
                if let Some(p) = v.ports.iter().find(|p| {
                    p.key.netns == *netns
                        && p.key.port == *port
                        && p.key.direction == crate::engine::Direction::In
                }) {
                    d.facts
                        .push(("established", fmt::count(p.activity.established)));
                    d.facts.push(("aborted", fmt::count(p.activity.aborted)));
                    d.pairs = p
                        .activity
                        .pairs
                        .iter()
                        .map(|(&(a, b), &n)| (a, b, n))
                        .collect();
                }
                d.trend_name = "accepted per tick";
                d.trend = self.history.deltas(&history::Series::Accepted {
                    netns: *netns,
                    port: *port,
                });
            }
            Target::Process { netns, pid } => {
                d.title = format!("process {}  netns {}", fmt::pid(*pid), netns_name(*netns));
                let Some(p) = rows::processes(snap, &self.history, self.scope, w)
                    .into_iter()
                    .find(|p| p.netns == *netns && p.pid == *pid)
                else {
                    d.gone = true;
                    return Some(d);
                };
                d.title = format!(
                    "process {} {}  netns {}",
                    fmt::pid(*pid),
                    fmt::comm(p.comm.as_deref()),
                    netns_name(*netns)
                );
                d.facts = vec![
                    ("sockets", fmt::count(p.sockets)),
                    (
                        "CLOSE-WAIT (oldest)",
                        format!(
                            "{} ({})",
                            p.close_wait,
                            p.close_wait_oldest_s.map_or("-".into(), fmt::age)
                        ),
                    ),
                    ("connects/s", fmt::rate(p.connects_per_s)),
                    ("failed connects", p.failed.map_or("-".into(), fmt::count)),
                    ("transitions/s", fmt::rate(p.transitions_per_s)),
                ];
                let listening: Vec<String> = self
                    .listeners_unfiltered()
                    .iter()
                    .filter(|l| l.netns == *netns && l.pid.is_some() && l.pid == *pid)
                    .map(|l| format!("{}:{}", l.address, l.port))
                    .collect();
                if !listening.is_empty() {
                    d.facts.push(("listens on", listening.join(" ")));
                }
                d.states = p.states;
                let mut pairs: std::collections::BTreeMap<_, u64> = Default::default();
                for k in v
                    .processes
                    .iter()
                    .filter(|k| k.key.netns == *netns && Some(k.key.pid) == *pid)
                {
                    for (&pair, &n) in k.activity.pairs.iter() {
                        *pairs.entry(pair).or_default() += n;
                    }
                }
                d.pairs = pairs.into_iter().map(|((a, b), n)| (a, b, n)).collect();
                if let Some(pid) = pid {
                    d.trend_name = "transitions per tick";
                    d.trend = self.history.deltas(&history::Series::ProcTransitions {
                        netns: *netns,
                        pid: *pid,
                    });
                }
            }
        }
        d.pairs
            .sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        Some(d)
    }

    fn listeners_unfiltered(&self) -> Vec<ListenerRow> {
        self.snapshot.as_ref().map_or_else(Vec::new, |s| {
            rows::listeners(s, &self.history, self.scope, self.window.secs())
        })
    }

    fn rows_in(&self, pane: Pane) -> usize {
        match pane {
            Pane::Listeners => self.listeners().len(),
            Pane::Processes => self.processes().len(),
            Pane::Transitions => self.pairs().len(),
        }
    }

    /// The selected row's index, within the rows there are now.
    pub fn selected_in(&self, pane: Pane, rows: usize) -> usize {
        self.selected[pane.index()].min(rows.saturating_sub(1))
    }

    fn move_by(&mut self, delta: isize) {
        let n = self.rows_in(self.pane);
        let i = &mut self.selected[self.pane.index()];
        let cur = (*i).min(n.saturating_sub(1)) as isize;
        *i = (cur + delta).clamp(0, n.saturating_sub(1) as isize) as usize;
    }

    fn open_detail(&mut self) {
        let i = self.selected_in(self.pane, self.rows_in(self.pane));
        self.detail = match self.pane {
            Pane::Listeners => self.listeners().get(i).map(|l| Target::Listener {
                netns: l.netns,
                address: l.address.clone(),
                port: l.port,
            }),
            Pane::Processes => self.processes().get(i).map(|p| Target::Process {
                netns: p.netns,
                pid: p.pid,
            }),
            Pane::Transitions => None,
        };
    }

    fn namespaces(&self) -> Vec<u32> {
        self.snapshot.as_ref().map_or_else(Vec::new, |s| {
            s.view.namespaces.iter().map(|n| n.netns).collect()
        })
    }

    /// One key. Help and filter editing take keys first; Ctrl-C always quits.
    pub fn key(&mut self, k: Key) -> Action {
        if k == Key::Ctrl('c') {
            return Action::Quit;
        }
        if self.editing {
            match k {
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => {
                    self.filter.push(c)
                }
                _ => {}
            }
            self.selected = [0; 3];
            return Action::Continue;
        }
        if self.help {
            if matches!(k, Key::Char('q')) {
                return Action::Quit;
            }
            self.help = false;
            return Action::Continue;
        }
        match k {
            Key::Char('q') => return Action::Quit,
            Key::Esc if self.detail.is_some() => self.detail = None,
            Key::Esc if !self.filter.is_empty() => self.filter.clear(),
            Key::Esc => return Action::Quit,
            Key::Char('?') => self.help = true,
            Key::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            Key::Char('s') => {
                let p = self.pane.index();
                self.sort[p] = (self.sort[p] + 1) % self.pane.sorts().len();
            }
            Key::Tab | Key::Right | Key::Char('l') => {
                self.pane = Pane::ALL[(self.pane.index() + 1) % 3];
            }
            Key::BackTab | Key::Left | Key::Char('h') => {
                self.pane = Pane::ALL[(self.pane.index() + 2) % 3];
            }
            Key::Down | Key::Char('j') => self.move_by(1),
            Key::Up | Key::Char('k') => self.move_by(-1),
            Key::PageDown => self.move_by(10),
            Key::PageUp => self.move_by(-10),
            Key::Home | Key::Char('g') => self.selected[self.pane.index()] = 0,
            Key::End | Key::Char('G') => self.move_by(isize::MAX / 2),
            Key::Char('1') => self.window = RateWindow::S1,
            Key::Char('2') => self.window = RateWindow::S10,
            Key::Char('3') => self.window = RateWindow::S60,
            Key::Char(' ') | Key::Char('p') => {
                self.paused = !self.paused;
                if !self.paused
                    && let Some(s) = self.held.take()
                {
                    self.update(s, 0);
                }
            }
            Key::Char('n') => {
                let all = self.namespaces();
                self.scope = match self.scope {
                    None => all.first().copied(),
                    Some(cur) => all.iter().skip_while(|&&n| n != cur).nth(1).copied(),
                };
                self.selected = [0; 3];
            }
            Key::Enter => self.open_detail(),
            _ => {}
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
