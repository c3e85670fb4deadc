use std::{collections::BTreeMap, time::Duration};

use tcpwatch_common::TcpState::*;

use super::*;
use crate::{
    census::{Listener, Process, Summary},
    engine::{CensusSample, CountersSample, Engine, EngineConfig, Input, KernelSample},
    model::{Accounting, Owner, Protocol, State, Transition},
};

const S: u64 = 1_000_000_000;
const NS: u32 = 4026531840;

fn engine() -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    let tr = |old, new, local: &str, remote: &str| Transition {
        ts_ns: 5 * S,
        skaddr: 1,
        netns: Some(NS),
        owner: Some(Owner {
            pid: 7,
            tid: 7,
            comm: "curl".into(),
        }),
        old: State::Known(old),
        new: State::Known(new),
        protocol: Protocol::Tcp,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        in_old: Some(Duration::from_micros(30)),
        caught: false,
        passive: None,
        error: None,
    };
    e.apply(Input::Transition(tr(
        Close,
        SynSent,
        "127.0.0.1:0",
        "127.0.0.1:443",
    )));
    e.apply(Input::Transition(tr(
        SynSent,
        Established,
        "127.0.0.1:5000",
        "127.0.0.1:443",
    )));
    let listener = |port, syn_recv| Listener {
        address: "0.0.0.0".into(),
        port,
        accept_queue: 1,
        backlog: 128,
        syn_recv,
        pid: Some(9),
        comm: Some("nginx".into()),
        states: Default::default(),
    };
    e.apply(Input::Census(CensusSample {
        ts_ns: 6 * S,
        duration_ns: 2_500_000,
        summary: Summary {
            netns: Some(NS),
            total: 3,
            states: BTreeMap::from([("LISTEN".into(), 3), ("SYN-RECV".into(), 0)]),
            listeners: vec![listener(80, 5), listener(443, 0), listener(8080, 1)],
            processes: vec![Process {
                pid: Some(9),
                comm: Some("nginx".into()),
                total: 3,
                states: BTreeMap::from([("LISTEN".into(), 3)]),
            }],
            listeners_dropped: 0,
            processes_dropped: 0,
            local_port_range: None,
            tw_reuse: None,
            time_wait_peers: vec![],
        },
    }));
    e.apply(Input::Counters(CountersSample {
        ts_ns: 6 * S,
        netns: Some(NS),
        values: BTreeMap::from([
            ("Tcp.ActiveOpens".into(), 12),
            ("Tcp.CurrEstab".into(), 2),
            ("TcpExt.ListenOverflows".into(), 3),
        ]),
    }));
    e.apply(Input::Kernel(KernelSample {
        ts_ns: 6 * S,
        accounting: Accounting {
            counted: 2,
            emitted: 2,
            ..Default::default()
        },
        delivered: 2,
        transitions: vec![(State::Known(Close), State::Known(SynSent), 1)],
    }));
    e
}

fn text() -> String {
    render(
        engine().view(),
        Clock { offset_ns: 0 },
        &Info {
            hook: Some("btf".into()),
            max_listeners: 2,
            ..Default::default()
        },
    )
}

#[test]
fn exposition_has_the_documented_series() {
    let t = text();
    for line in [
        "# TYPE tcpwatch_transitions_total counter",
        "tcpwatch_transitions_total{netns=\"4026531840\",from=\"SYN-SENT\",to=\"ESTABLISHED\"} 1",
        "tcpwatch_sockets{netns=\"4026531840\",state=\"LISTEN\"} 3",
        "tcpwatch_listener_syn_recv{netns=\"4026531840\",address=\"0.0.0.0\",port=\"80\"} 5",
        "tcpwatch_netstat_tcp_active_opens_total{netns=\"4026531840\"} 12",
        "# TYPE tcpwatch_netstat_tcp_curr_estab gauge",
        "tcpwatch_netstat_tcp_ext_listen_overflows_total{netns=\"4026531840\"} 3",
        "tcpwatch_port_transitions_total{netns=\"4026531840\",port=\"443\",direction=\"out\",from=\"CLOSE\",to=\"SYN-SENT\"} 1",
        "tcpwatch_process_transitions_total{netns=\"4026531840\",pid=\"7\",comm=\"curl\",from=\"CLOSE\",to=\"SYN-SENT\"} 1",
        "tcpwatch_connect_duration_seconds_count 1",
        "tcpwatch_connect_duration_seconds_bucket{le=\"5e-05\"} 1",
        "tcpwatch_connect_duration_seconds_bucket{le=\"+Inf\"} 1",
        "tcpwatch_census_duration_seconds{netns=\"4026531840\"} 0.0025",
        "tcpwatch_census_last_timestamp_seconds{netns=\"4026531840\"} 6.0",
        "tcpwatch_events_lost_total{reason=\"ringbuf_full\"} 0",
        "tcpwatch_kernel_transitions_total{from=\"CLOSE\",to=\"SYN-SENT\"} 1",
        "tcpwatch_build_info{version=",
        // No witness in this account: said as 0, and no kernel_not_run.
        "tcpwatch_witness_up 0",
    ] {
        assert!(t.contains(line), "missing {line:?} in\n{t}");
    }
    assert!(
        !t.contains("reason=\"kernel_not_run\""),
        "a count the witness did not take"
    );
}

#[test]
fn a_witness_at_work_is_up_with_its_count() {
    let mut e = engine();
    e.apply(Input::Kernel(KernelSample {
        ts_ns: 7 * S,
        accounting: Accounting {
            has_witness: true,
            not_run: 2,
            ..Default::default()
        },
        delivered: 0,
        transitions: vec![],
    }));
    let t = render(e.view(), Clock { offset_ns: 0 }, &Info::default());
    assert!(t.contains("tcpwatch_witness_up 1"), "{t}");
    assert!(t.contains("tcpwatch_events_lost_total{reason=\"kernel_not_run\"} 2"));
}

#[test]
fn listeners_beyond_the_cap_are_summed_into_other() {
    let t = text();
    // Busiest two (80: 5+1, 8080: 1+1) kept; 443 (0+1) summed into other.
    assert!(t.contains("port=\"8080\"} 1"), "{t}");
    assert!(
        t.contains(
            "tcpwatch_listener_backlog{netns=\"4026531840\",address=\"other\",port=\"other\"} 128"
        ),
        "{t}"
    );
    assert!(!t.contains("port=\"443\"} "), "{t}");
}

#[test]
fn every_family_is_declared_once_and_named_by_convention() {
    let t = text();
    let mut seen = std::collections::HashSet::new();
    for line in t.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(seen.insert(name.to_string()), "{name} declared twice");
        assert!(name.starts_with("tcpwatch_"), "{name}");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name}: counters and only counters end in _total"
        );
    }
    assert!(seen.len() > 20, "{seen:?}");
}

#[test]
fn kernel_counter_names_become_snake_case() {
    for (kernel, ours) in [
        ("Tcp.ActiveOpens", "tcp_active_opens"),
        (
            "TcpExt.TCPReqQFullDoCookies",
            "tcp_ext_tcp_req_q_full_do_cookies",
        ),
        ("TcpExt.DelayedACKLocked", "tcp_ext_delayed_ack_locked"),
        ("TcpExt.SyncookiesSent", "tcp_ext_syncookies_sent"),
        (
            "TcpExt.IPReversePathFilter",
            "tcp_ext_ip_reverse_path_filter",
        ),
        ("Tcp.InCsumErrors", "tcp_in_csum_errors"),
        // The names a plain camel-case split got wrong.
        ("TcpExt.DelayedACKs", "tcp_ext_delayed_acks"),
        ("TcpExt.TCPSpuriousRTOs", "tcp_ext_tcp_spurious_rtos"),
        ("TcpExt.TCPACKSkippedPAWS", "tcp_ext_tcp_ack_skipped_paws"),
        ("TcpExt.TCPHPHits", "tcp_ext_tcp_hp_hits"),
        ("TcpExt.TCPHPAcks", "tcp_ext_tcp_hp_acks"),
        ("TcpExt.TCPDSACKOfoSent", "tcp_ext_tcp_dsack_ofo_sent"),
        ("TcpExt.TCPMD5NotFound", "tcp_ext_tcp_md5_not_found"),
        ("TcpExt.TCPSYNChallenge", "tcp_ext_tcp_syn_challenge"),
        ("TcpExt.TCPTSReorder", "tcp_ext_tcp_ts_reorder"),
        ("TcpExt.TCPOFOQueue", "tcp_ext_tcp_ofo_queue"),
        ("TcpExt.TCPChallengeACK", "tcp_ext_tcp_challenge_ack"),
        ("TcpExt.PFMemallocDrop", "tcp_ext_pf_memalloc_drop"),
        ("TcpExt.TWRecycled", "tcp_ext_tw_recycled"),
        ("TcpExt.TSEcrRejected", "tcp_ext_ts_ecr_rejected"),
        ("TcpExt.TCPWqueueTooBig", "tcp_ext_tcp_wqueue_too_big"),
        ("TcpExt.TCPRcvQDrop", "tcp_ext_tcp_rcv_q_drop"),
        ("TcpExt.TCPDeliveredCE", "tcp_ext_tcp_delivered_ce"),
        ("TcpExt.TCPMTUPFail", "tcp_ext_tcp_mtup_fail"),
        ("TcpExt.ListenOverflows", "tcp_ext_listen_overflows"),
    ] {
        assert_eq!(snake(kernel), ours, "{kernel}");
    }
}

#[test]
fn every_real_kernel_counter_gets_a_distinct_prometheus_name() {
    let mut m = BTreeMap::new();
    crate::counters::parse(include_str!("../../../tests/data/proc_net_snmp"), &mut m).unwrap();
    crate::counters::parse(include_str!("../../../tests/data/proc_net_netstat"), &mut m).unwrap();
    let mut seen = BTreeMap::new();
    for kernel in m.keys() {
        let ours = snake(kernel);
        assert!(
            ours.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !ours.contains("__"),
            "{kernel} -> {ours}"
        );
        if let Some(other) = seen.insert(ours.clone(), kernel.clone()) {
            panic!("{kernel} and {other} both become {ours}");
        }
    }
    assert!(seen.len() > 100);
}

/// Every sample of a family, by its labels.
fn series(text: &str, family: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn process_counters_never_go_down_when_a_process_is_evicted() {
    let mut e = Engine::new(EngineConfig {
        max_processes: 1,
        ..Default::default()
    });
    let from = |pid: u32, sec: u64, n: usize, e: &mut Engine| {
        for i in 0..n {
            e.apply(Input::Transition(Transition {
                ts_ns: sec * S + i as u64,
                skaddr: pid as u64,
                netns: Some(NS),
                owner: Some(Owner {
                    pid,
                    tid: pid,
                    comm: format!("p{pid}").as_str().into(),
                }),
                old: State::Known(Close),
                new: State::Known(SynSent),
                protocol: Protocol::Tcp,
                local: "127.0.0.1:0".parse().unwrap(),
                remote: "127.0.0.1:443".parse().unwrap(),
                in_old: None,
                caught: false,
                passive: None,
                error: None,
            }));
        }
    };
    let render_now = |e: &Engine| render(e.view(), Clock { offset_ns: 0 }, &Info::default());
    from(7, 5, 3, &mut e);
    let before = render_now(&e);
    // Past its ten protected seconds, a busier process takes the slot.
    for sec in 20..23 {
        from(8, sec, 50, &mut e);
    }
    let after = render_now(&e);
    let (b, a) = (
        series(&before, "tcpwatch_process_transitions_total"),
        series(&after, "tcpwatch_process_transitions_total"),
    );
    assert!(b.keys().any(|k| k.contains("pid=\"7\"")), "{before}");
    assert!(
        !a.keys().any(|k| k.contains("pid=\"7\"")),
        "evicted: {after}"
    );
    for (k, v) in &b {
        assert!(a.get(k).is_none_or(|now| now >= v), "{k} went down");
    }
    assert!(a.values().sum::<f64>() >= b.values().sum::<f64>() + 150.0);
    assert_eq!(
        a.get("tcpwatch_process_transitions_total{netns=\"\",pid=\"\",comm=\"other\",from=\"CLOSE\",to=\"SYN-SENT\"}"),
        // pid 7's 3, and pid 8's first 2 (a newcomer is admitted at its
        // third transition).
        Some(&5.0),
        "pid 7's count moved to other: {after}"
    );
}

/// A local user renames a process for every refused connect (3,359 series
/// in 60 s were seen before the caps held over time): over ten minutes of
/// that, the process series stay within what the table admits, and no
/// series, nor their sum, ever goes down.
#[test]
fn a_rename_spray_stays_within_the_caps_over_time_and_no_counter_goes_down() {
    let cap = 8;
    let mut e = Engine::new(EngineConfig {
        max_processes: cap,
        ..Default::default()
    });
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    let mut before: BTreeMap<String, f64> = BTreeMap::new();
    let mut pid = 1000;
    for sec in 1..=600u64 {
        for i in 0..50 {
            pid += 1;
            e.apply(Input::Transition(Transition {
                ts_ns: sec * S + i,
                skaddr: pid as u64,
                netns: Some(NS),
                owner: Some(Owner {
                    pid,
                    tid: pid,
                    comm: format!("x{pid}").as_str().into(),
                }),
                old: State::Known(SynSent),
                new: State::Known(Close),
                protocol: Protocol::Tcp,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:1".parse().unwrap(),
                in_old: None,
                caught: false,
                passive: Some(false),
                error: None,
            }));
        }
        let text = render(e.view(), Clock { offset_ns: 0 }, &Info::default());
        let now = series(&text, "tcpwatch_process_transitions_total");
        for (k, v) in &before {
            assert!(
                now.get(k).is_none_or(|n| n >= v),
                "{k} went down at {sec} s"
            );
        }
        assert!(now.values().sum::<f64>() >= before.values().sum::<f64>());
        seen.extend(now.keys().cloned());
        before = now;
    }
    // The table admits at most `cap` newcomers per ten seconds (a key is
    // protected for ten seconds once in), plus the first fill and `other`.
    eprintln!("rename spray: {} process series in 10 minutes", seen.len());
    let bound = cap + cap * 600 / 10 + 1;
    assert!(
        seen.len() <= bound,
        "{} series in 10 minutes (bound {bound})",
        seen.len()
    );
}
