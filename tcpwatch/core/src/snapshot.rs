//! What the daemon publishes once per tick: the engine's view with what a
//! reader needs to show it (wall clock, hook, caps). Metrics, the control
//! socket and alert sinks read snapshots; nobody else touches the engine.
//! Serialized with a version, because it travels to other processes.
use serde::{Deserialize, Serialize};

use crate::{detect::Alerts, engine::View, metrics::Info, view::trace::Clock};

/// Bumped on any change a reader of an older version would misread.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// Counts the snapshots of this daemon run from 1 (0: none yet).
    pub seq: u64,
    /// Monotonic to wall-clock time, for the view's timestamps.
    pub clock: Clock,
    pub info: Info,
    pub view: View,
    /// The detectors' active and recently resolved alerts.
    #[serde(default)]
    pub alerts: Alerts,
}

impl Snapshot {
    pub fn new(seq: u64, clock: Clock, info: Info, view: View) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            seq,
            clock,
            info,
            view,
            alerts: Alerts::default(),
        }
    }

    pub fn with_alerts(mut self, alerts: Alerts) -> Snapshot {
        self.alerts = alerts;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};

    #[test]
    fn a_snapshot_round_trips_through_json_with_its_version() {
        let view = Engine::new(EngineConfig::default()).view();
        let s = Snapshot::new(7, Clock { offset_ns: 42 }, Info::default(), view);
        let text = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!((back.version, back.seq, back.clock.offset_ns), (1, 7, 42));
        assert_eq!(
            serde_json::to_value(&back.view).unwrap(),
            serde_json::to_value(&s.view).unwrap()
        );
    }
}
