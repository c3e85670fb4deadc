use std::time::Duration;

use tcpwatch_common::TcpState::{self, *};

use super::*;
use crate::model::{Owner, Protocol};

const S: u64 = NS_PER_S;

fn t(ts_ns: u64, sk: u64, old: TcpState, new: TcpState, local: &str, remote: &str) -> Transition {
    Transition {
        ts_ns,
        skaddr: sk,
        netns: Some(4026531840),
        owner: Some(Owner {
            pid: 42,
            tid: 42,
            comm: "app".into(),
        }),
        old: State::Known(old),
        new: State::Known(new),
        protocol: Protocol::Tcp,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        in_old: Some(Duration::from_micros(40)),
        caught: false,
        passive: None,
        error: None,
    }
}

/// One loopback connection to :8080, client closes first: the ten
/// transitions the kernel tests see, plus the listener opening.
fn connection(engine: &mut Engine, at: u64, n: u64) {
    let c = "127.0.0.1:40000";
    let s = "127.0.0.1:8080";
    let (cl, sv) = (1000 + 2 * n, 1001 + 2 * n);
    for x in [
        t(at, cl, Close, SynSent, "127.0.0.1:0", s),
        t(at, cl, SynSent, Established, c, s),
        t(at, sv, Listen, SynRecv, s, c),
        t(at, sv, SynRecv, Established, s, c),
        t(at, cl, Established, FinWait1, c, s),
        t(at, sv, Established, CloseWait, s, c),
        t(at, sv, CloseWait, LastAck, s, c),
        t(at, cl, FinWait1, FinWait2, c, s),
        t(at, cl, FinWait2, Close, c, s),
        t(at, sv, LastAck, Close, s, c),
    ] {
        engine.transition(&x);
    }
}

fn listen(engine: &mut Engine, at: u64) {
    engine.transition(&t(at, 1, Close, Listen, "127.0.0.1:8080", "0.0.0.0:0"));
}

fn port(v: &View, port: u16, direction: Direction) -> &KeyView<PortKey> {
    v.ports
        .iter()
        .find(|p| p.key.port == port && p.key.direction == direction)
        .unwrap_or_else(|| panic!("no {port} {direction:?} in {:?}", v.ports))
}

#[test]
fn a_connection_is_counted_per_pair_per_port_side_and_process() {
    let mut e = Engine::new(EngineConfig::default());
    listen(&mut e, 10 * S);
    connection(&mut e, 10 * S, 0);
    let v = e.view();
    let totals = v.transitions_total();
    assert_eq!(totals.values().sum::<u64>(), 11);
    assert_eq!(
        totals[&(State::Known(SynSent), State::Known(Established))],
        1
    );
    // Server side and listener under :8080 in, client under :8080 out; the
    // client's ephemeral port 40000 appears nowhere.
    let inbound = port(&v, 8080, Direction::In);
    assert_eq!(inbound.activity.transitions, 6);
    assert_eq!(inbound.activity.established, 1);
    let outbound = port(&v, 8080, Direction::Out);
    assert_eq!(outbound.activity.transitions, 5);
    assert!(v.ports.iter().all(|p| p.key.port != 40000));
    assert_eq!(v.processes.len(), 1);
    assert_eq!(v.processes[0].activity.transitions, 11);
    assert_eq!(v.durations.connect.count, 1);
    assert_eq!(v.durations.accept_handshake.count, 1);
    assert_eq!(v.durations.close_wait.count, 1);
    assert_eq!(v.durations.fin_wait2.count, 1);
    assert_eq!(v.close_wait_open.sockets, 0, "left CLOSE-WAIT");
}

#[test]
fn failed_connects_and_aborts_are_told_apart() {
    let mut e = Engine::new(EngineConfig::default());
    let s = "127.0.0.1:9";
    e.transition(&t(S, 7, Close, SynSent, "127.0.0.1:0", s));
    e.transition(&t(S, 7, SynSent, Close, "127.0.0.1:5000", s));
    e.transition(&t(S, 8, Established, Close, "127.0.0.1:5001", s));
    let v = e.view();
    let out = port(&v, 9, Direction::Out);
    assert_eq!(out.activity.failed_connects, 1);
    assert_eq!(out.activity.aborted, 1);
    assert_eq!(v.namespaces[0].activity.failed_connects, 1);
    assert_eq!(v.durations.failed_connect.count, 1);
}

#[test]
fn rates_are_over_complete_seconds_and_decay_on_ticks() {
    let mut e = Engine::new(EngineConfig::default());
    listen(&mut e, 100 * S);
    for sec in 100..120 {
        for i in 0..10 {
            connection(&mut e, sec * S + i, sec * 100 + i);
        }
    }
    e.apply(Input::Tick { ts_ns: 120 * S });
    let v = e.view();
    let ns = &v.namespaces[0];
    let est = ns
        .transitions
        .iter()
        .find(|p| p.from == State::Known(SynSent) && p.to == State::Known(Established))
        .unwrap();
    assert_eq!(est.total, 200);
    assert_eq!(est.rates.per_s_1s, 10.0);
    assert_eq!(est.rates.per_s_10s, 10.0);
    assert!((est.rates.per_s_60s - 200.0 / 59.0).abs() < 1e-9);
    // Five server-side transitions per connection.
    assert_eq!(port(&v, 8080, Direction::In).rates.per_s_10s, 50.0);
    e.apply(Input::Tick { ts_ns: 200 * S });
    let v = e.view();
    assert!(
        v.namespaces[0]
            .transitions
            .iter()
            .all(|p| p.rates.per_s_60s == 0.0)
    );
    assert_eq!(
        v.transitions_total().values().sum::<u64>(),
        2001,
        "totals stay"
    );
}

#[test]
fn a_sprayed_65535_ports_stay_within_the_caps() {
    let cfg = EngineConfig {
        max_ports: 32,
        max_processes: 16,
        max_netns: 4,
        max_open_sockets: 1000,
    };
    let mut e = Engine::new(cfg);
    for p in 1..=u16::MAX {
        let sec = 1000 + p as u64 / 2000;
        let mut x = t(
            sec * S,
            p as u64,
            SynSent,
            Close,
            "10.0.0.1:1",
            "10.0.0.2:1",
        );
        x.remote.set_port(p);
        x.local.set_port(p);
        x.owner.as_mut().unwrap().pid = p as u32;
        x.owner.as_mut().unwrap().comm = Comm::from(format!("spray{p}").as_str());
        x.netns = Some(p as u32 % 1000);
        e.transition(&x);
        let mut cw = x.clone();
        cw.old = State::Known(Established);
        cw.new = State::Known(CloseWait);
        e.transition(&cw);
    }
    let v = e.view();
    assert!(v.ports.len() <= 32, "{}", v.ports.len());
    assert!(v.processes.len() <= 16);
    assert!(v.namespaces.len() <= 5, "4 plus the overflow entry");
    assert_eq!(v.close_wait_open.sockets, 1000);
    assert_eq!(v.stats.open_sockets_overflow, 65_535 - 1000);
    let tracked: u64 = v.ports.iter().map(|p| p.activity.transitions).sum();
    // Totals of evicted keys leave with them; what is left plus other never
    // exceeds what happened.
    assert!(tracked + v.ports_other.activity.transitions <= 2 * 65_535);
    let all: u64 = v.namespaces.iter().map(|n| n.activity.transitions).sum();
    assert_eq!(all, 2 * 65_535, "namespace totals are exact");
}

#[test]
fn census_listeners_decide_the_direction() {
    let mut e = Engine::new(EngineConfig::default());
    let summary = Summary {
        netns: Some(4026531840),
        total: 1,
        states: BTreeMap::new(),
        listeners: vec![crate::census::Listener {
            address: "0.0.0.0".into(),
            port: 443,
            accept_queue: 0,
            backlog: 128,
            syn_recv: 0,
            pid: None,
            comm: None,
            states: Default::default(),
        }],
        processes: vec![],
        listeners_dropped: 0,
        processes_dropped: 0,
        local_port_range: None,
        tw_reuse: None,
        time_wait_peers: vec![],
    };
    e.apply(Input::Census(CensusSample {
        ts_ns: S,
        duration_ns: 1000,
        summary,
    }));
    e.transition(&t(
        2 * S,
        5,
        Established,
        CloseWait,
        "10.0.0.1:443",
        "10.0.0.9:50000",
    ));
    let v = e.view();
    assert_eq!(port(&v, 443, Direction::In).activity.transitions, 1);
    assert_eq!(v.close_wait_open.sockets, 1);
    assert_eq!(v.close_wait_open.by_port, vec![(443, 1)]);
    e.apply(Input::Tick { ts_ns: 100 * S });
    let v = e.view();
    assert_eq!(v.close_wait_open.older_than_60s, 1);
    assert_eq!(v.close_wait_open.oldest_s, Some(98.0));
    assert_eq!(
        v.close_wait_open.by_owner,
        vec![CloseWaitOwner {
            netns: 4026531840,
            pid: 42,
            sockets: 1,
            oldest_s: 98.0,
            port: 443,
        }],
        "the process that leaks it, and for how long"
    );
}

#[test]
fn counter_rates_come_from_consecutive_samples() {
    let mut e = Engine::new(EngineConfig::default());
    let sample = |ts_ns, v| {
        Input::Counters(CountersSample {
            ts_ns,
            netns: Some(1),
            values: BTreeMap::from([("Tcp.ActiveOpens".to_string(), v)]),
        })
    };
    e.apply(sample(10 * S, 100));
    assert_eq!(
        e.view().namespaces[0].counters.as_ref().unwrap()["Tcp.ActiveOpens"].per_s,
        None
    );
    e.apply(sample(12 * S, 300));
    let v = e.view();
    let c = &v.namespaces[0].counters.as_ref().unwrap()["Tcp.ActiveOpens"];
    assert_eq!(c.value, 300);
    assert_eq!(c.per_s, Some(100.0));
}

#[test]
fn inputs_survive_serde_and_replay_identically() {
    let mut inputs = vec![];
    let mut probe = Engine::new(EngineConfig::default());
    listen(&mut probe, S);
    inputs.push(Input::Transition(t(
        S,
        1,
        Close,
        Listen,
        "127.0.0.1:8080",
        "0.0.0.0:0",
    )));
    let mut unknown = t(2 * S, 9, Established, Close, "[::1]:1", "[::1]:2");
    unknown.old = State::Unknown(14);
    unknown.owner = None;
    unknown.in_old = None;
    inputs.push(Input::Transition(unknown));
    inputs.push(Input::Tick { ts_ns: 3 * S });
    let text: Vec<String> = inputs
        .iter()
        .map(|i| serde_json::to_string(i).unwrap())
        .collect();
    assert!(text[1].contains("\"old\":\"STATE-14\""), "{}", text[1]);
    let back: Vec<Input> = text
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, inputs);
    let run = |inputs: &[Input]| {
        let mut e = Engine::new(EngineConfig::default());
        for i in inputs {
            e.apply(i.clone());
        }
        serde_json::to_string(&e.view()).unwrap()
    };
    assert_eq!(run(&inputs), run(&back));
}

fn census_of(netns: u32, at: u64, established: u64) -> Input {
    let mut states = BTreeMap::new();
    states.insert("ESTABLISHED".to_string(), established);
    Input::Census(CensusSample {
        ts_ns: at,
        duration_ns: 1,
        summary: Summary {
            netns: Some(netns),
            total: established,
            states,
            listeners: vec![],
            processes: vec![],
            listeners_dropped: 0,
            processes_dropped: 0,
            local_port_range: None,
            tw_reuse: None,
            time_wait_peers: vec![],
        },
    })
}

fn in_ns(netns: u32, at: u64) -> Transition {
    Transition {
        netns: Some(netns),
        ..t(at, 7, Close, SynSent, "127.0.0.1:0", "127.0.0.1:80")
    }
}

fn netns_keys(e: &Engine) -> Vec<u32> {
    e.view().namespaces.iter().map(|n| n.netns).collect()
}

#[test]
fn a_namespace_that_is_gone_leaves_the_view_at_the_next_round() {
    let mut e = Engine::new(EngineConfig::default());
    e.transition(&in_ns(10, S));
    assert!(e.view().ports.iter().any(|p| p.key.netns == 10));
    e.apply(census_of(11, S, 2));
    assert_eq!(netns_keys(&e), [10, 11]);
    e.apply(Input::Namespaces {
        ts_ns: 2 * S,
        alive: vec![11],
    });
    assert_eq!(netns_keys(&e), [11]);
    assert_eq!(e.view().stats.netns_gone, 1);
    assert!(
        e.view().processes.iter().all(|p| p.key.netns != 10),
        "its processes' series end too"
    );
    assert!(
        e.view().ports.iter().all(|p| p.key.netns != 10),
        "its ports go with it"
    );
}

#[test]
fn an_enumeration_older_than_a_namespaces_news_does_not_drop_it() {
    let mut e = Engine::new(EngineConfig::default());
    // Listed at 5 s without namespace 10, which made a transition at 6 s.
    e.transition(&in_ns(10, 6 * S));
    e.apply(Input::Namespaces {
        ts_ns: 5 * S,
        alive: vec![],
    });
    assert_eq!(netns_keys(&e), [10]);
    e.apply(Input::Namespaces {
        ts_ns: 7 * S,
        alive: vec![],
    });
    assert!(netns_keys(&e).is_empty());
}

#[test]
fn a_censused_namespace_takes_the_place_of_one_seen_only_in_transitions() {
    let mut e = Engine::new(EngineConfig {
        max_netns: 2,
        ..Default::default()
    });
    // A local user's namespaces fill the table with transitions only.
    e.transition(&in_ns(20, S));
    e.transition(&in_ns(21, S));
    e.transition(&in_ns(22, S));
    assert_eq!(netns_keys(&e), [20, 21, NETNS_OTHER]);
    assert_eq!(e.view().stats.netns_overflow, 1);
    // Root's namespace, chosen by the sampler, gets in anyway; the one it
    // displaced is counted in `other`, so no total goes down.
    let total = |e: &Engine| e.view().transitions_total().values().sum::<u64>();
    let before = total(&e);
    e.apply(census_of(99, 2 * S, 5));
    let keys = netns_keys(&e);
    assert!(
        keys.contains(&99) && keys.contains(&NETNS_OTHER),
        "{keys:?}"
    );
    assert_eq!(e.view().stats.netns_evicted, 1);
    assert_eq!(total(&e), before);
}

#[test]
fn censuses_past_the_cap_add_up_in_other_each_round() {
    let mut e = Engine::new(EngineConfig {
        max_netns: 1,
        ..Default::default()
    });
    for round in 1..=2 {
        e.apply(Input::Namespaces {
            ts_ns: round * S,
            alive: vec![1, 2, 3],
        });
        e.apply(census_of(1, round * S, 1));
        e.apply(census_of(2, round * S, 10));
        e.apply(census_of(3, round * S, 100));
        let v = e.view();
        let other = v
            .namespaces
            .iter()
            .find(|n| n.netns == NETNS_OTHER)
            .and_then(|n| n.census.as_ref())
            .expect("other has a census");
        // Namespaces 2 and 3, this round only.
        assert_eq!(other.summary.states["ESTABLISHED"], 110, "round {round}");
        assert_eq!(other.summary.total, 110);
    }
}

#[test]
fn a_child_stays_inbound_after_its_listener_closed() {
    let mut e = Engine::new(EngineConfig::default());
    let s = "127.0.0.1:8080";
    let c = "127.0.0.1:40000";
    // As the probe reports them: each socket's side from its first
    // transition on.
    let side = |x: Transition, passive| Transition {
        passive: Some(passive),
        ..x
    };
    listen(&mut e, S);
    e.transition(&side(t(S, 20, Close, SynSent, "127.0.0.1:0", s), false));
    e.transition(&side(t(S, 21, Listen, SynRecv, s, c), true));
    e.transition(&side(t(S, 21, SynRecv, Established, s, c), true));
    e.transition(&side(t(S, 20, SynSent, Established, c, s), false));
    // The listener goes first; its children live on.
    e.transition(&t(2 * S, 1, Listen, Close, s, "0.0.0.0:0"));
    e.transition(&side(t(3 * S, 20, Established, FinWait1, c, s), false));
    e.transition(&side(t(3 * S, 21, Established, CloseWait, s, c), true));
    e.transition(&side(t(3 * S, 21, CloseWait, LastAck, s, c), true));
    e.transition(&side(t(3 * S, 20, FinWait1, FinWait2, c, s), false));
    e.transition(&side(t(3 * S, 20, FinWait2, Close, c, s), false));
    e.transition(&side(t(3 * S, 21, LastAck, Close, s, c), true));
    let v = e.view();
    // Server side: every transition under 8080 "in", nothing under the
    // client's ephemeral port 40000.
    assert_eq!(port(&v, 8080, Direction::In).activity.transitions, 2 + 5);
    assert_eq!(port(&v, 8080, Direction::Out).activity.transitions, 5);
    assert!(v.ports.iter().all(|p| p.key.port != 40000), "{:?}", v.ports);
}

#[test]
fn a_listeners_census_refreshes_queues_between_full_ones_and_keeps_owners() {
    let mut e = Engine::new(EngineConfig::default());
    let listener = |accept_queue, syn_recv, pid: Option<u32>| crate::census::Listener {
        address: "0.0.0.0".into(),
        port: 80,
        accept_queue,
        backlog: 128,
        syn_recv,
        pid,
        comm: pid.map(|_| "nginx".to_string()),
        states: Default::default(),
    };
    let sample = |ts_ns, l: crate::census::Listener, syn: u64| CensusSample {
        ts_ns,
        duration_ns: 1,
        summary: Summary {
            netns: Some(5),
            total: 1 + syn + 40,
            states: [
                ("LISTEN".to_string(), 1),
                ("SYN-RECV".to_string(), syn),
                ("ESTABLISHED".to_string(), 40),
            ]
            .into(),
            listeners: vec![l],
            processes: vec![],
            listeners_dropped: 0,
            processes_dropped: 0,
            local_port_range: None,
            tw_reuse: None,
            time_wait_peers: vec![],
        },
    };
    let mut served = listener(0, 0, Some(9));
    served.states = [("ESTABLISHED".to_string(), 40)].into();
    e.apply(Input::Census(sample(S, served, 0)));
    // A flood starts; the next full census is far off.
    let mut flooded = listener(3, 128, None);
    flooded.states = [("SYN-RECV".to_string(), 128)].into();
    let mut fresh = sample(2 * S, flooded, 128);
    fresh.summary.states.remove("ESTABLISHED");
    fresh.summary.total = 129;
    e.apply(Input::Listeners(fresh));
    let v = e.view();
    let ns = v.namespaces.iter().find(|n| n.netns == 5).unwrap();
    let c = ns.census.as_ref().unwrap();
    assert_eq!(c.ts_ns, S, "the full census's time");
    assert_eq!(ns.listeners_ts_ns, Some(2 * S));
    let mut want = listener(3, 128, Some(9));
    want.states = [
        ("ESTABLISHED".to_string(), 40),
        ("SYN-RECV".to_string(), 128),
    ]
    .into();
    assert_eq!(
        c.summary.listeners,
        vec![want],
        "owner and served sockets from the full census, half-open ones fresh"
    );
    assert_eq!(c.summary.states["SYN-RECV"], 128);
    assert_eq!(c.summary.states["ESTABLISHED"], 40, "from the full census");
    assert_eq!(c.summary.total, 1 + 128 + 40);
}

#[test]
fn new_namespaces_are_reported_once_and_at_most_a_few_dozen() {
    let mut e = Engine::new(EngineConfig::default());
    e.transition(&in_ns(10, S));
    e.transition(&in_ns(10, S));
    e.transition(&in_ns(11, S));
    assert_eq!(e.take_first_seen(), [10, 11]);
    assert!(e.take_first_seen().is_empty());
    for n in 100..200 {
        e.transition(&in_ns(n, S));
    }
    assert_eq!(e.take_first_seen().len(), 32);
}

#[test]
fn a_namespace_known_from_signals_alone_asks_for_its_census_at_its_first_transition() {
    use crate::signals::{SignalDelta, SignalKind, SignalsSample};
    let mut e = Engine::new(EngineConfig::default());
    let reset = |ts_ns| {
        Input::Signals(SignalsSample {
            ts_ns,
            deltas: vec![SignalDelta {
                netns: 10,
                kind: SignalKind::ResetSent,
                port: 9,
                direction: Direction::In,
                count: 1,
                pid: 0,
                comm: None,
                errno: 0,
            }],
            unkeyed: 0,
            unreadable: 0,
        })
    };
    e.apply(reset(S));
    assert_eq!(e.take_first_seen(), [10]);
    e.apply(reset(2 * S));
    assert!(e.take_first_seen().is_empty(), "once");
    // Its namespace went, a new one took its inode: its first transition
    // is news again (seen in CI: a census 10 s late otherwise).
    e.transition(&in_ns(10, 3 * S));
    assert_eq!(e.take_first_seen(), [10]);
    e.transition(&in_ns(10, 4 * S));
    assert!(e.take_first_seen().is_empty());
}

#[test]
fn a_vanished_socket_is_counted_and_no_longer_ages_in_close_wait() {
    let mut e = Engine::new(EngineConfig::default());
    for sk in [5, 6] {
        e.transition(&t(
            S,
            sk,
            Established,
            CloseWait,
            "10.0.0.1:443",
            "10.0.0.9:50000",
        ));
    }
    e.apply(Input::Vanished {
        ts_ns: 2 * S,
        sockets: vec![5],
        checked_ns: S,
    });
    let v = e.view();
    assert_eq!(v.stats.sockets_vanished, 1);
    assert_eq!(v.stats.vanish_checked_ns, S);
    assert_eq!(v.close_wait_open.sockets, 1, "socket 6 is still followed");
}
