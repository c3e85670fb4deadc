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
            control: None,
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
        "tcpwatch_process_transitions_total{comm=\"curl\",from=\"CLOSE\",to=\"SYN-SENT\"} 1",
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
    ] {
        assert_eq!(snake(kernel), ours);
    }
}
