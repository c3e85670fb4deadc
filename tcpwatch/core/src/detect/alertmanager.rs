//! What tcpwatch tells an Alertmanager (`POST /api/v2/alerts`), and when:
//! the whole current list, as Prometheus sends it. Firing alerts carry an
//! `endsAt` a few resend intervals ahead (so a dead daemon's alerts expire
//! by themselves); resolved ones their resolution time, re-sent for a
//! while so a resolution lost in transit still arrives. Pure: the sender
//! (`serve::alertmanager`) does the HTTP.
use std::collections::BTreeSet;

use serde::Serialize;

use super::{Alert, AlertKey, Alerts, Severity, Subject};
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
    l.insert(
        "severity".into(),
        match a.severity {
            Severity::Warning => "warning".into(),
            Severity::Critical => "critical".into(),
        },
    );
    l.insert("instance".into(), instance.into());
    l.insert("netns".into(), a.key.netns.to_string());
    l.insert("job".into(), "tcpwatch".into());
    match &a.key.subject {
        Subject::Listener { address, port } => {
            l.insert("address".into(), address.clone());
            l.insert("port".into(), port.to_string());
        }
        Subject::Process { pid, comm } => {
            l.insert("pid".into(), pid.to_string());
            l.insert("comm".into(), comm.clone());
        }
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

/// The list to send at `now_ns` (CLOCK_MONOTONIC, as the alerts' times).
pub fn payload(alerts: &Alerts, clock: &Clock, now_ns: u64, p: &Policy) -> Vec<AmAlert> {
    let ahead = (4.0 * p.resend_s * NS_PER_S) as u64;
    let keep = (p.keep_resolved_s * NS_PER_S) as u64;
    let item = |a: &Alert, ends_ns: u64| {
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
    };
    let mut out: Vec<AmAlert> = alerts
        .active
        .iter()
        .map(|a| item(a, now_ns + ahead))
        .collect();
    for a in &alerts.recent {
        if let Some(r) = a.resolved_ns
            && now_ns.saturating_sub(r) <= keep
        {
            out.push(item(a, r));
        }
    }
    out
}

/// What the list says, for telling a change from a re-send: each alert
/// and whether it is resolved.
pub fn state(alerts: &Alerts) -> BTreeSet<(AlertKey, u64, bool)> {
    alerts
        .active
        .iter()
        .map(|a| (a.key.clone(), a.since_ns, false))
        .chain(
            alerts
                .recent
                .iter()
                .map(|a| (a.key.clone(), a.since_ns, true)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_firing_alert_ends_four_resends_ahead_with_its_labels_and_evidence() {
        let alerts = Alerts {
            active: vec![alert(None)],
            ..Default::default()
        };
        let clock = Clock { offset_ns: 0 };
        let p = payload(&alerts, &clock, 20 * S, &policy());
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
        let alerts = Alerts {
            recent: vec![alert(Some(30 * S))],
            ..Default::default()
        };
        let clock = Clock { offset_ns: 0 };
        let p = payload(&alerts, &clock, 40 * S, &policy());
        assert_eq!(p[0].ends_at, "1970-01-01T00:00:30.000000Z");
        assert!(payload(&alerts, &clock, 331 * S, &policy()).is_empty());
    }

    #[test]
    fn the_state_changes_when_an_alert_resolves() {
        let firing = Alerts {
            active: vec![alert(None)],
            ..Default::default()
        };
        let resolved = Alerts {
            recent: vec![alert(Some(30 * S))],
            ..Default::default()
        };
        assert_ne!(state(&firing), state(&resolved));
        assert_eq!(state(&firing), state(&firing.clone()));
    }
}
