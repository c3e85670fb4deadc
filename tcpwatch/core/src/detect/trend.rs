//! Rates of the engine's cumulative per-key totals, from the views the
//! detector sees (one per tick), and each port's normal reset rate.
//! Bounded: a key not in the current view is forgotten, and the views'
//! tables are bounded by the engine's caps.
use std::collections::{BTreeMap, VecDeque};

use crate::engine::{PortKey, ProcessKey, View};

/// The span rates are taken over.
pub const SPAN_NS: u64 = 10_000_000_000;
/// A rate needs at least this much history.
const MIN_SPAN_NS: u64 = 3_000_000_000;
/// How fast a port's normal follows its rate: a new level becomes the
/// normal over about an hour.
const BASELINE_TAU_S: f64 = 3600.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Series {
    ResetsSent,
    ResetsReceived,
    SynackRetransmits,
    /// CLOSE -> SYN-SENT: connects attempted.
    Connects,
    FailedConnects,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Port(PortKey),
    Process(ProcessKey),
}

#[derive(Clone, Debug, Default)]
struct History {
    /// (time, cumulative total), oldest first, spanning a little over
    /// `SPAN_NS`.
    samples: VecDeque<(u64, u64)>,
    seen_round: u64,
}

impl History {
    fn push(&mut self, now: u64, total: u64) {
        // A total that went down is a key readmitted to the engine's table
        // (counted afresh): its history starts over.
        if self.samples.back().is_some_and(|&(_, t)| total < t) {
            self.samples.clear();
        }
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && self.samples[1].0 + SPAN_NS <= now {
            self.samples.pop_front();
        }
    }

    fn rate(&self) -> Option<f64> {
        let (&(t0, v0), &(t1, v1)) = (self.samples.front()?, self.samples.back()?);
        let dt = t1.checked_sub(t0)?;
        (dt >= MIN_SPAN_NS).then(|| (v1 - v0) as f64 * 1e9 / dt as f64)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Trends {
    series: BTreeMap<(Subject, Series), History>,
    /// Each port's normal reset rate (sent plus received), per second.
    baselines: BTreeMap<PortKey, (f64, u64)>,
    round: u64,
}

impl Trends {
    /// Takes one view's totals. `warm`: past the daemon's warm-up; a port
    /// first measured before it starts from the rate it has (what it does
    /// as the daemon starts is its normal: a restart is no storm), one
    /// first measured later starts from zero.
    pub fn update(&mut self, view: &View, warm: bool) {
        self.round += 1;
        let now = view.now_ns;
        let round = self.round;
        for p in &view.ports {
            let a = &p.activity;
            let subject = Subject::Port(p.key);
            for (series, total) in [
                (Series::ResetsSent, a.resets_sent),
                (Series::ResetsReceived, a.resets_received),
                (Series::SynackRetransmits, a.synack_retransmits),
            ] {
                let h = self.series.entry((subject.clone(), series)).or_default();
                h.push(now, total);
                h.seen_round = round;
            }
        }
        for p in &view.processes {
            let a = &p.activity;
            let connects = a.connects();
            let subject = Subject::Process(p.key.clone());
            for (series, total) in [
                (Series::Connects, connects),
                (Series::FailedConnects, a.failed_connects),
            ] {
                let h = self.series.entry((subject.clone(), series)).or_default();
                h.push(now, total);
                h.seen_round = round;
            }
        }
        self.series.retain(|_, h| h.seen_round == round);
        // Baselines follow the reset rate of every port that has one.
        for p in &view.ports {
            let Some(rate) = self.resets(&p.key) else {
                continue;
            };
            match self.baselines.get_mut(&p.key) {
                Some((b, at)) => {
                    let dt = now.saturating_sub(*at) as f64 / 1e9;
                    *b += (rate - *b) * (dt / BASELINE_TAU_S).min(1.0);
                    *at = now;
                }
                None => {
                    let start = if warm { 0.0 } else { rate };
                    self.baselines.insert(p.key, (start, now));
                }
            }
        }
        let ports: std::collections::BTreeSet<PortKey> = view.ports.iter().map(|p| p.key).collect();
        self.baselines.retain(|k, _| ports.contains(k));
    }

    /// Per second over the last `SPAN_NS`, once there is enough history.
    pub fn rate(&self, subject: &Subject, series: Series) -> Option<f64> {
        self.series.get(&(subject.clone(), series))?.rate()
    }

    /// Resets sent plus received per second on a port.
    pub fn resets(&self, port: &PortKey) -> Option<f64> {
        let s = Subject::Port(*port);
        Some(self.rate(&s, Series::ResetsSent)? + self.rate(&s, Series::ResetsReceived)?)
    }

    /// A port's normal reset rate.
    pub fn baseline(&self, port: &PortKey) -> Option<f64> {
        self.baselines.get(port).map(|(b, _)| *b)
    }
}
