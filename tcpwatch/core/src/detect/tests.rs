use std::collections::BTreeMap;

use super::*;
use crate::{
    census::{Listener, Process, Summary},
    engine::{CensusSample, CountersSample, Engine, EngineConfig, Input},
};

const S: u64 = 1_000_000_000;
const NS: u32 = 4026532000;

/// A namespace with one listener on :80 (backlog 128) and nginx, at
/// second `t`, with the given request sockets, accept queue and
/// cumulative counters.
fn sample(e: &mut Engine, t: u64, syn_recv: u64, accq: u32, counters: &[(&str, i64)]) {
    let ts_ns = t * S;
    e.apply(Input::Census(CensusSample {
        ts_ns,
        duration_ns: 1,
        summary: Summary {
            netns: Some(NS),
            total: 1 + syn_recv,
            states: BTreeMap::new(),
            listeners: vec![Listener {
                address: "0.0.0.0".into(),
                port: 80,
                accept_queue: accq,
                backlog: 128,
                syn_recv,
                pid: Some(100),
                comm: Some("nginx".into()),
                states: BTreeMap::new(),
            }],
            processes: vec![],
            listeners_dropped: 0,
            processes_dropped: 0,
            local_port_range: None,
            tw_reuse: None,
            time_wait_peers: vec![],
        },
    }));
    e.apply(Input::Counters(CountersSample {
        ts_ns,
        netns: Some(NS),
        values: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }));
}

fn cfg() -> Detect {
    Detect::default()
}

/// Runs seconds `from..to` of a flood (cookies growing by `cookies`/s and
/// SYN drops by `drops`/s, request sockets at the backlog) or of calm.
fn run(
    d: &mut Detector,
    e: &mut Engine,
    secs: std::ops::Range<u64>,
    flood: Option<(i64, i64)>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for t in secs {
        let (syn, cookies, drops) = match flood {
            Some((c, dr)) => (128, c * t as i64, dr * t as i64),
            None => (0, 0, 0),
        };
        sample(
            e,
            t,
            syn,
            0,
            &[
                ("TcpExt.SyncookiesSent", cookies),
                ("TcpExt.TCPReqQFullDrop", drops),
            ],
        );
        changes.extend(d.evaluate(&e.view(), &cfg()));
    }
    changes
}

fn fired(c: &[Change]) -> Vec<&Alert> {
    c.iter()
        .filter_map(|c| match c {
            Change::Fired(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn resolved(c: &[Change]) -> Vec<&Alert> {
    c.iter()
        .filter_map(|c| match c {
            Change::Resolved(a) => Some(a),
            _ => None,
        })
        .collect()
}

#[test]
fn a_flood_absorbed_by_syncookies_is_a_warning_naming_the_listener_and_resolves() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    assert!(run(&mut d, &mut e, 1..8, None).is_empty(), "calm");
    // Flood from second 8: the first sample has no rate yet, the second
    // does; the condition then holds one second.
    let c = run(&mut d, &mut e, 8..12, Some((3000, 0)));
    let f = fired(&c);
    assert_eq!(f.len(), 1, "{c:?}");
    let a = f[0];
    assert_eq!(a.key.name, "SynFlood");
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(
        a.key.subject,
        Subject::Listener {
            address: "0.0.0.0".into(),
            port: 80
        }
    );
    assert_eq!(a.key.netns, NS);
    assert!(
        a.since_ns <= 10 * S,
        "within 2 s of the first sample with a rate"
    );
    assert_eq!(a.evidence["syncookies_per_s"], 3000.0);
    assert!(
        a.description.contains("nginx (pid 100)"),
        "{}",
        a.description
    );
    assert!(
        a.description.contains("tcp_syncookies"),
        "{}",
        a.description
    );
    assert_eq!(d.alerts().active.len(), 1);
    // The flood stops: cookies stop, request sockets drain.
    let c = run(&mut d, &mut e, 12..30, None);
    let r = resolved(&c);
    assert_eq!(r.len(), 1, "{c:?}");
    assert_eq!(
        r[0].resolved_ns,
        Some(21 * S),
        "10 s after the last second it held"
    );
    assert!(d.alerts().active.is_empty());
    assert_eq!(d.alerts().recent.len(), 1);
}

#[test]
fn dropped_syns_make_it_critical() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    run(&mut d, &mut e, 1..8, None);
    let c = run(&mut d, &mut e, 8..12, Some((0, 2000)));
    let f = fired(&c);
    assert_eq!(f.len(), 1, "{c:?}");
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(f[0].description.contains("dropped"));
}

#[test]
fn nothing_fires_during_warm_up_and_a_full_backlog_alone_is_no_flood() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    // Flooded from the start: rates exist from the second sample, but the
    // warm-up (5 s) holds it back.
    let c = run(&mut d, &mut e, 1..6, Some((3000, 0)));
    assert!(fired(&c).is_empty(), "{c:?}");
    let c = run(&mut d, &mut e, 6..8, Some((3000, 0)));
    assert_eq!(fired(&c).len(), 1, "after the warm-up");
    // Request sockets at the backlog without cookies or drops (a slow
    // legitimate client burst) is not a flood.
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    for t in 1..20 {
        sample(&mut e, t, 128, 0, &[("TcpExt.SyncookiesSent", 0)]);
        assert!(d.evaluate(&e.view(), &cfg()).is_empty());
    }
}

#[test]
fn a_flapping_flood_is_one_alert() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    run(&mut d, &mut e, 1..8, None);
    let mut all = run(&mut d, &mut e, 8..12, Some((3000, 0)));
    for k in 0..4 {
        let s = 12 + k * 6;
        all.extend(run(&mut d, &mut e, s..s + 3, None));
        all.extend(run(&mut d, &mut e, s + 3..s + 6, Some((3000, 0))));
    }
    assert_eq!(fired(&all).len(), 1, "{all:?}");
    assert!(resolved(&all).is_empty());
}

#[test]
fn a_full_accept_queue_with_overflows_is_not_a_flood() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    let mut all = Vec::new();
    for t in 1..12 {
        sample(
            &mut e,
            t,
            3,
            129,
            &[("TcpExt.ListenOverflows", 50 * t as i64)],
        );
        all.extend(d.evaluate(&e.view(), &cfg()));
    }
    let f = fired(&all);
    assert_eq!(f.len(), 1, "{all:?}");
    assert_eq!(f[0].key.name, "AcceptQueueOverflow");
    assert!(
        f[0].description.contains("accept()"),
        "{}",
        f[0].description
    );
}

#[test]
fn a_close_wait_leak_names_the_process_once_old_enough() {
    let mut e = Engine::new(EngineConfig::default());
    let mut d = Detector::default();
    let cw = |e: &mut Engine, t: u64, n: u64| {
        e.apply(Input::Census(CensusSample {
            ts_ns: t * S,
            duration_ns: 1,
            summary: Summary {
                netns: Some(NS),
                total: n,
                states: BTreeMap::new(),
                listeners: vec![],
                processes: vec![Process {
                    pid: Some(42),
                    comm: Some("leaky".into()),
                    total: n,
                    states: [("CLOSE-WAIT".to_string(), n)].into(),
                }],
                listeners_dropped: 0,
                processes_dropped: 0,
                local_port_range: None,
                tw_reuse: None,
                time_wait_peers: vec![],
            },
        }));
    };
    // 20 sockets enter CLOSE-WAIT at second 1 and stay.
    for i in 0..20u64 {
        e.transition(&crate::model::Transition {
            ts_ns: S,
            skaddr: 1000 + i,
            netns: Some(NS),
            owner: Some(crate::model::Owner {
                pid: 42,
                tid: 42,
                comm: "leaky".into(),
            }),
            old: crate::model::State::from_raw(1),
            new: crate::model::State::from_raw(8),
            protocol: crate::model::Protocol::Tcp,
            local: "127.0.0.1:7070".parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
            in_old: None,
            caught: false,
            passive: Some(true),
            error: None,
        });
    }
    let mut all = Vec::new();
    for t in 2..70 {
        cw(&mut e, t, 20);
        all.extend(d.evaluate(&e.view(), &cfg()));
        if t < 61 {
            assert!(all.is_empty(), "younger than a minute at {t} s: {all:?}");
        }
    }
    let f = fired(&all);
    assert_eq!(f.len(), 1, "{all:?}");
    assert_eq!(
        f[0].key.subject,
        Subject::Process {
            pid: 42,
            comm: "leaky".into()
        }
    );
    assert!(f[0].summary.contains("20 sockets"), "{}", f[0].summary);
    assert!(f[0].summary.contains("port 7070"), "{}", f[0].summary);
}

#[test]
fn alerts_followed_at_once_are_bounded() {
    let mut e = Engine::new(EngineConfig::default());
    let mut d = Detector::default();
    let listeners = |n: u16| -> Vec<Listener> {
        (0..n)
            .map(|p| Listener {
                address: "0.0.0.0".into(),
                port: 1000 + p,
                accept_queue: 0,
                backlog: 1,
                syn_recv: 1,
                pid: None,
                comm: None,
                states: BTreeMap::new(),
            })
            .collect()
    };
    for t in 1..10u64 {
        e.apply(Input::Census(CensusSample {
            ts_ns: t * S,
            duration_ns: 1,
            summary: Summary {
                netns: Some(NS),
                total: 0,
                states: BTreeMap::new(),
                listeners: listeners(1000),
                processes: vec![],
                listeners_dropped: 0,
                processes_dropped: 0,
                local_port_range: None,
                tw_reuse: None,
                time_wait_peers: vec![],
            },
        }));
        e.apply(Input::Counters(CountersSample {
            ts_ns: t * S,
            netns: Some(NS),
            values: [("TcpExt.SyncookiesSent".to_string(), 100 * t as i64)].into(),
        }));
        d.evaluate(&e.view(), &cfg());
    }
    let a = d.alerts();
    assert_eq!(a.active.len(), ACTIVE_MAX);
    assert!(a.dropped > 0);
}

#[test]
fn a_flood_that_starts_dropping_syns_is_a_new_critical_alert() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    run(&mut d, &mut e, 1..8, None);
    run(&mut d, &mut e, 8..12, Some((3000, 0)));
    // Cookies turned off mid-flood: SYNs are dropped.
    let mut changes = Vec::new();
    for t in 12..14u64 {
        sample(
            &mut e,
            t,
            128,
            0,
            &[
                ("TcpExt.SyncookiesSent", 3000 * 11),
                ("TcpExt.TCPReqQFullDrop", 2000 * (t as i64 - 11)),
            ],
        );
        changes.extend(d.evaluate(&e.view(), &cfg()));
    }
    assert_eq!(resolved(&changes).len(), 1, "{changes:?}");
    assert_eq!(resolved(&changes)[0].severity, Severity::Warning);
    assert_eq!(fired(&changes).len(), 1);
    assert_eq!(fired(&changes)[0].severity, Severity::Critical);
    assert_eq!(d.alerts().active.len(), 1);
}

#[test]
fn a_namespace_no_longer_censused_resolves_its_alert() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    run(&mut d, &mut e, 1..8, None);
    run(&mut d, &mut e, 8..12, Some((3000, 0)));
    assert_eq!(d.alerts().active.len(), 1);
    // No more censuses: only time passes.
    let mut changes = Vec::new();
    for t in 12..60u64 {
        e.apply(Input::Tick { ts_ns: t * S });
        changes.extend(d.evaluate(&e.view(), &cfg()));
    }
    assert_eq!(resolved(&changes).len(), 1, "{changes:?}");
}

/// One second of resets on port 9 ("in": sent for a closed port), `n` of
/// them, read as the sampler reads the probe's counters.
fn resets(d: &mut Detector, e: &mut Engine, t: u64, sent: u64, received: u64) -> Vec<Change> {
    use crate::signals::{SignalDelta, SignalKind, SignalsSample};
    let mut deltas = Vec::new();
    for (kind, count) in [
        (SignalKind::ResetSent, sent),
        (SignalKind::ResetReceived, received),
    ] {
        if count > 0 {
            deltas.push(SignalDelta {
                netns: NS,
                kind,
                port: 9,
                direction: crate::engine::Direction::In,
                count,
                pid: 0,
                comm: None,
                errno: 0,
            });
        }
    }
    e.apply(Input::Signals(SignalsSample {
        ts_ns: t * S,
        deltas,
        unkeyed: 0,
        unreadable: 0,
    }));
    d.evaluate(&e.view(), &cfg())
}

#[test]
fn a_reset_storm_on_a_port_fires_against_its_normal_and_resolves() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    let mut c = Vec::new();
    // A port that normally sends 5 resets a second (below the floor) for
    // a minute: nothing.
    for t in 1..60 {
        c.extend(resets(&mut d, &mut e, t, 5, 0));
    }
    assert!(c.is_empty(), "{c:?}");
    // 500/s: at 10 times its normal and over the floor, for the hold.
    for t in 60..75 {
        c.extend(resets(&mut d, &mut e, t, 500, 0));
    }
    let f = fired(&c);
    assert_eq!(f.len(), 1, "{c:?}");
    let a = f[0];
    assert_eq!(a.key.name, "RstStorm");
    assert_eq!(
        a.key.subject,
        Subject::Port {
            port: 9,
            direction: "in".into()
        }
    );
    assert!(
        a.since_ns >= 65 * S && a.since_ns <= 70 * S,
        "{}",
        a.since_ns
    );
    assert!(
        a.description.contains("nothing listens"),
        "{}",
        a.description
    );
    let active = &d.alerts().active[0];
    assert!(
        active.evidence["resets_sent_per_s"] > 100.0,
        "{:?}",
        active.evidence
    );
    assert_eq!(active.evidence["resets_received_per_s"], 0.0);
    assert!(
        active.evidence["normal_per_s"] < 10.0,
        "{:?}",
        active.evidence
    );
    // Back to normal: resolves once the 10 s rate is down and clear for
    // resolve_after.
    let mut c = Vec::new();
    for t in 75..100 {
        c.extend(resets(&mut d, &mut e, t, 5, 0));
    }
    assert_eq!(resolved(&c).len(), 1, "{c:?}");
}

#[test]
fn a_port_that_always_resets_this_much_is_no_storm_after_a_restart() {
    // The daemon starts while the port already resets 200 a second: its
    // normal, not a storm.
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    let mut c = Vec::new();
    for t in 1..60 {
        c.extend(resets(&mut d, &mut e, t, 100, 100));
    }
    assert!(c.is_empty(), "{c:?}");
}

/// Second `t` of a process (pid 300, "client") that attempts `tries`
/// connects, `fails` of them refused.
fn connects(d: &mut Detector, e: &mut Engine, t: u64, tries: u64, fails: u64) -> Vec<Change> {
    use crate::model::{Comm, Owner, Protocol, State, Transition};
    use tcpwatch_common::TcpState;
    let tr = |i: u64, old, new, error| Transition {
        ts_ns: t * S + i * 1000,
        skaddr: 0x1000 + i,
        netns: Some(NS),
        owner: Some(Owner {
            pid: 300,
            tid: 300,
            comm: Comm::from("client"),
        }),
        old: State::Known(old),
        new: State::Known(new),
        protocol: Protocol::Tcp,
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: "10.0.0.2:5432".parse().unwrap(),
        in_old: None,
        caught: false,
        passive: Some(false),
        error,
    };
    for i in 0..tries {
        e.transition(&tr(i, TcpState::Close, TcpState::SynSent, None));
        if i < fails {
            e.transition(&tr(i, TcpState::SynSent, TcpState::Close, Some(111)));
        } else {
            e.transition(&tr(i, TcpState::SynSent, TcpState::Established, None));
        }
    }
    e.apply(Input::Tick {
        ts_ns: t * S + S / 2,
    });
    d.evaluate(&e.view(), &cfg())
}

#[test]
fn a_process_whose_connects_are_refused_is_named_with_the_error() {
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    let mut c = Vec::new();
    // Healthy: 100 connects a second, 2 refused.
    for t in 1..30 {
        c.extend(connects(&mut d, &mut e, t, 100, 2));
    }
    assert!(c.is_empty(), "{c:?}");
    // Its destination goes down: 40 a second, all refused.
    for t in 30..50 {
        c.extend(connects(&mut d, &mut e, t, 40, 40));
    }
    let f = fired(&c);
    assert_eq!(f.len(), 1, "{c:?}");
    let a = f[0];
    assert_eq!(a.key.name, "ConnectFailures");
    assert_eq!(
        a.key.subject,
        Subject::Process {
            pid: 300,
            comm: "client".into()
        }
    );
    assert!(a.summary.contains("ECONNREFUSED"), "{}", a.summary);
    assert!(a.description.contains("port 5432"), "{}", a.description);
    assert!(
        a.description.contains("nothing listens"),
        "{}",
        a.description
    );
    // Firing needs the 10 s rate to pass half of the attempts and then
    // the hold: between 10 and 25 s after the outage began.
    assert!(
        a.since_ns >= 40 * S && a.since_ns <= 55 * S,
        "{}",
        a.since_ns
    );
}

#[test]
fn time_wait_to_one_destination_near_the_port_range_is_pressure() {
    use crate::census::TimeWaitPeer;
    let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
    let census = |e: &mut Engine, t: u64, tw: u64| {
        e.apply(Input::Census(CensusSample {
            ts_ns: t * S,
            duration_ns: 1,
            summary: Summary {
                netns: Some(NS),
                total: tw,
                states: BTreeMap::new(),
                listeners: vec![],
                processes: vec![],
                listeners_dropped: 0,
                processes_dropped: 0,
                local_port_range: Some((40000, 40199)),
                tw_reuse: None,
                time_wait_peers: vec![TimeWaitPeer {
                    local: "10.0.0.1".into(),
                    remote: "10.0.0.2".into(),
                    port: 5432,
                    sockets: tw,
                }],
            },
        }));
    };
    let mut c = Vec::new();
    // 99 of 200 ports: below half.
    for t in 1..10 {
        census(&mut e, t, 99);
        c.extend(d.evaluate(&e.view(), &cfg()));
    }
    assert!(c.is_empty(), "{c:?}");
    census(&mut e, 10, 150);
    let c = d.evaluate(&e.view(), &cfg());
    let f = fired(&c);
    assert_eq!(f.len(), 1, "{c:?}");
    assert_eq!(f[0].key.name, "TimeWaitPressure");
    assert_eq!(
        f[0].key.subject,
        Subject::Destination {
            address: "10.0.0.2".into(),
            port: 5432
        }
    );
    assert!(f[0].summary.contains("75 %"), "{}", f[0].summary);
    assert!(f[0].description.contains("EADDRNOTAVAIL"));
}

#[test]
fn time_wait_whose_ports_the_kernel_reuses_is_no_pressure() {
    use crate::census::TimeWaitPeer;
    for (reuse, remote, fires) in [
        (Some(1), "10.0.0.2", false),
        (Some(2), "127.0.0.1", false),
        (Some(2), "::ffff:127.0.0.1", false),
        (Some(2), "10.0.0.2", true),
        (Some(0), "127.0.0.1", true),
        (None, "127.0.0.1", true),
    ] {
        let (mut d, mut e) = (Detector::default(), Engine::new(EngineConfig::default()));
        let mut c = Vec::new();
        for t in 1..10 {
            e.apply(Input::Census(CensusSample {
                ts_ns: t * S,
                duration_ns: 1,
                summary: Summary {
                    netns: Some(NS),
                    total: 150,
                    states: BTreeMap::new(),
                    listeners: vec![],
                    processes: vec![],
                    listeners_dropped: 0,
                    processes_dropped: 0,
                    local_port_range: Some((40000, 40199)),
                    tw_reuse: reuse,
                    time_wait_peers: vec![TimeWaitPeer {
                        local: "10.0.0.1".into(),
                        remote: remote.into(),
                        port: 5432,
                        sockets: 150,
                    }],
                },
            }));
            c.extend(d.evaluate(&e.view(), &cfg()));
        }
        assert_eq!(
            !fired(&c).is_empty(),
            fires,
            "tw_reuse {reuse:?} to {remote}: {c:?}"
        );
    }
}
