//! What tcpwatch tells an Alertmanager (`POST /api/v2/alerts`), and when:
//! the whole current list, as Prometheus sends it. Firing alerts carry an
//! `endsAt` a few resend intervals ahead (so a dead daemon's alerts expire
//! by themselves); resolved ones their resolution time, re-sent for a
//! while so a resolution lost in transit still arrives. Pure: the sender
//! (`serve::alertmanager`) does the HTTP.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{Alert, AlertKey, Alerts};
use crate::view::trace::{Clock, rfc3339};

const NS_PER_S: f64 = 1e9;

/// Seconds a resolved alert keeps being sent (a resolution lost in
/// transit still arrives).
pub const KEEP_RESOLVED_S: f64 = 300.0;

/// One alert as Alertmanager's API takes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// How the list is built.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// This host, as the `instance` label.
    pub instance: String,
    /// Seconds between re-sends of an unchanged list.
    pub resend_s: f64,
    /// Seconds a resolved alert keeps being sent.
    pub keep_resolved_s: f64,
}

fn labels(a: &Alert, instance: &str) -> std::collections::BTreeMap<String, String> {
    let mut l = std::collections::BTreeMap::new();
    l.insert("alertname".into(), a.key.name.clone());
    l.insert("severity".into(), a.severity.label().into());
    l.insert("instance".into(), instance.into());
    l.insert("netns".into(), a.key.netns.to_string());
    l.insert("job".into(), "tcpwatch".into());
    for (k, v) in a.key.subject_labels() {
        l.insert(k.into(), v);
    }
    l
}

fn evidence(a: &Alert) -> String {
    a.evidence
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn item(a: &Alert, ends_ns: u64, clock: &Clock, p: &Policy) -> AmAlert {
    let mut ann = std::collections::BTreeMap::new();
    ann.insert("summary".into(), a.summary.clone());
    ann.insert(
        "description".into(),
        format!("{} Evidence: {}.", a.description, evidence(a)),
    );
    AmAlert {
        labels: labels(a, &p.instance),
        annotations: ann,
        starts_at: rfc3339(clock.unix_ns(a.since_ns)),
        ends_at: rfc3339(clock.unix_ns(ends_ns)),
        generator_url: format!("tcpwatch://{}/alerts", p.instance),
    }
}

/// What the sink has to tell Alertmanager: the firing alerts, and those
/// that stopped firing since (however many resolved at once, and whatever
/// the detector's recent list still holds), kept `KEEP_RESOLVED_S`.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    firing: BTreeMap<(AlertKey, u64), Alert>,
    resolved: BTreeMap<(AlertKey, u64), Alert>,
}

impl Outbox {
    /// Takes a snapshot's alerts at `now_ns`; whether the list changed.
    pub fn update(&mut self, alerts: &Alerts, now_ns: u64) -> bool {
        let now_firing: BTreeMap<(AlertKey, u64), Alert> = alerts
            .active
            .iter()
            .map(|a| ((a.key.clone(), a.since_ns), a.clone()))
            .collect();
        let mut changed = now_firing.len() != self.firing.len()
            || now_firing
                .iter()
                .any(|(k, a)| self.firing.get(k).is_none_or(|b| b.severity != a.severity));
        // What fired before and does not now: resolved, at the detector's
        // time when it still lists it, else now.
        for (k, mut a) in std::mem::take(&mut self.firing) {
            if !now_firing.contains_key(&k) {
                a.resolved_ns = alerts.resolved_at(&a).or(Some(now_ns));
                // One entry per label set: the latest resolution.
                self.resolved
                    .retain(|_, r| !(r.key == a.key && r.severity == a.severity));
                self.resolved.insert(k, a);
                changed = true;
            }
        }
        self.firing = now_firing;
        let keep = (KEEP_RESOLVED_S * NS_PER_S) as u64;
        let before = self.resolved.len();
        self.resolved
            .retain(|_, a| now_ns.saturating_sub(a.resolved_ns.unwrap_or(now_ns)) <= keep);
        changed || before != self.resolved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.firing.is_empty() && self.resolved.is_empty()
    }

    /// The list to post at `now_ns`. A resolved alert whose labels fire
    /// again is left out: Alertmanager would take the later entry.
    pub fn payload(&self, clock: &Clock, now_ns: u64, p: &Policy) -> Vec<AmAlert> {
        let ahead = (4.0 * p.resend_s * NS_PER_S) as u64;
        let firing: Vec<AmAlert> = self
            .firing
            .values()
            .map(|a| item(a, now_ns + ahead, clock, p))
            .collect();
        let mut out: Vec<AmAlert> = self
            .resolved
            .values()
            .map(|a| item(a, a.resolved_ns.unwrap_or(now_ns), clock, p))
            .filter(|r| !firing.iter().any(|f| f.labels == r.labels))
            .collect();
        out.extend(firing);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Severity, Subject};

    const S: u64 = 1_000_000_000;

    fn alert(resolved: Option<u64>) -> Alert {
        Alert {
            key: AlertKey {
                name: "SynFlood".into(),
                netns: 4026531840,
                subject: Subject::Listener {
                    address: "0.0.0.0".into(),
                    port: 80,
                },
            },
            severity: Severity::Warning,
            summary: "SYN flood on 0.0.0.0:80".into(),
            description: "The listener ...".into(),
            evidence: [("syn_recv".to_string(), 128.0)].into(),
            since_ns: 10 * S,
            resolved_ns: resolved,
        }
    }

    fn policy() -> Policy {
        Policy {
            instance: "web-1".into(),
            resend_s: 60.0,
            keep_resolved_s: 300.0,
        }
    }

    fn outbox(alerts: &Alerts, now: u64) -> Outbox {
        let mut o = Outbox::default();
        o.update(alerts, now);
        o
    }

    #[test]
    fn a_firing_alert_ends_four_resends_ahead_with_its_labels_and_evidence() {
        let alerts = Alerts {
            active: vec![alert(None)],
            ..Default::default()
        };
        let clock = Clock { offset_ns: 0 };
        let p = outbox(&alerts, 20 * S).payload(&clock, 20 * S, &policy());
        assert_eq!(p.len(), 1);
        let a = &p[0];
        assert_eq!(a.labels["alertname"], "SynFlood");
        assert_eq!(a.labels["severity"], "warning");
        assert_eq!(a.labels["instance"], "web-1");
        assert_eq!(a.labels["port"], "80");
        assert_eq!(a.labels["netns"], "4026531840");
        assert_eq!(a.starts_at, "1970-01-01T00:00:10.000000Z");
        assert_eq!(a.ends_at, "1970-01-01T00:04:20.000000Z", "20 s + 4 x 60 s");
        assert!(a.annotations["description"].contains("syn_recv=128"));
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains("\"startsAt\"") && json.contains("\"generatorURL\""),
            "{json}"
        );
    }

    #[test]
    fn a_resolved_alert_is_sent_with_its_end_for_a_while_then_no_more() {
        let clock = Clock { offset_ns: 0 };
        let mut o = outbox(
            &Alerts {
                active: vec![alert(None)],
                ..Default::default()
            },
            20 * S,
        );
        let resolved = Alerts {
            recent: vec![alert(Some(30 * S))],
            ..Default::default()
        };
        assert!(o.update(&resolved, 31 * S), "a resolution is a change");
        let p = o.payload(&clock, 40 * S, &policy());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].ends_at, "1970-01-01T00:00:30.000000Z");
        assert!(!o.update(&resolved, 40 * S), "nothing new");
        assert!(o.update(&resolved, 331 * S), "it leaves the list");
        assert!(o.payload(&clock, 331 * S, &policy()).is_empty());
    }

    #[test]
    fn resolutions_are_sent_however_many_the_recent_list_dropped() {
        // 40 alerts fire, then all resolve in one tick; the detector's
        // recent list (32) no longer has some of them.
        let many: Vec<Alert> = (0..40)
            .map(|i| {
                let mut a = alert(None);
                a.key.subject = Subject::Listener {
                    address: "0.0.0.0".into(),
                    port: 1000 + i,
                };
                a
            })
            .collect();
        let mut o = outbox(
            &Alerts {
                active: many.clone(),
                ..Default::default()
            },
            20 * S,
        );
        assert!(o.update(&Alerts::default(), 30 * S));
        let p = o.payload(&Clock { offset_ns: 0 }, 30 * S, &policy());
        assert_eq!(p.len(), 40);
        assert!(p.iter().all(|a| a.ends_at == "1970-01-01T00:00:30.000000Z"));
    }

    #[test]
    fn a_refired_alert_is_sent_firing_only_and_a_new_severity_resolves_the_old() {
        let clock = Clock { offset_ns: 0 };
        let mut o = outbox(
            &Alerts {
                active: vec![alert(None)],
                ..Default::default()
            },
            20 * S,
        );
        o.update(&Alerts::default(), 30 * S);
        // Fires again (a new alert: a later since) within the keep time.
        let mut again = alert(None);
        again.since_ns = 40 * S;
        o.update(
            &Alerts {
                active: vec![again.clone()],
                ..Default::default()
            },
            40 * S,
        );
        let p = o.payload(&clock, 41 * S, &policy());
        assert_eq!(p.len(), 1, "the same labels once, firing: {p:?}");
        assert_eq!(p[0].starts_at, "1970-01-01T00:00:40.000000Z");
        // Escalated: the detector resolves the warning and fires a
        // critical; both label sets go out.
        let mut critical = again.clone();
        critical.severity = Severity::Critical;
        critical.since_ns = 45 * S;
        assert!(o.update(
            &Alerts {
                active: vec![critical],
                ..Default::default()
            },
            45 * S
        ));
        let p = o.payload(&clock, 45 * S, &policy());
        let sev: Vec<&str> = p.iter().map(|a| a.labels["severity"].as_str()).collect();
        assert_eq!(sev, ["warning", "critical"], "{p:?}");
        assert_eq!(p[0].ends_at, "1970-01-01T00:00:45.000000Z");
    }
}
