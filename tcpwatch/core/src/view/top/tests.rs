use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use tcpwatch_common::TcpState::{self, *};

use super::*;
use crate::{
    census::{Listener, Process, Summary},
    engine::{CensusSample, Engine, EngineConfig, Input},
    metrics::{Info, Usage},
    model::{Owner, Protocol, State, Transition},
    view::trace::Clock,
};

const S: u64 = 1_000_000_000;
const NS: u32 = 4026531840;
const OTHER_NS: u32 = 4026532500;

fn t(at: u64, sk: u64, old: TcpState, new: TcpState, l: &str, r: &str, pid: u32) -> Transition {
    Transition {
        ts_ns: at,
        skaddr: sk,
        netns: Some(NS),
        owner: Some(Owner {
            pid,
            tid: pid,
            comm: if pid == 100 { "nginx" } else { "curl" }.into(),
        }),
        old: State::Known(old),
        new: State::Known(new),
        protocol: Protocol::Tcp,
        local: l.parse::<SocketAddr>().unwrap(),
        remote: r.parse::<SocketAddr>().unwrap(),
        in_old: Some(Duration::from_micros(40)),
        caught: false,
        passive: None,
        error: None,
    }
}

fn census(at: u64, netns: u32, syn_recv: u64, close_wait: u64) -> Input {
    let states: BTreeMap<String, u64> = [
        ("LISTEN", 1),
        ("ESTABLISHED", 3),
        ("SYN-RECV", syn_recv),
        ("CLOSE-WAIT", close_wait),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    Input::Census(CensusSample {
        ts_ns: at,
        duration_ns: 1_000,
        summary: Summary {
            netns: Some(netns),
            total: 4 + syn_recv + close_wait,
            states: states.clone(),
            listeners: vec![Listener {
                address: "0.0.0.0".into(),
                port: 8080,
                accept_queue: 2,
                backlog: 511,
                syn_recv,
                pid: Some(100),
                comm: Some("nginx".into()),
                states: [("ESTABLISHED".to_string(), 3)].into(),
            }],
            processes: vec![
                Process {
                    pid: Some(100),
                    comm: Some("nginx".into()),
                    total: 4 + syn_recv + close_wait,
                    states,
                },
                Process {
                    pid: Some(666),
                    comm: Some("\x1b[2Jevil".into()),
                    total: 1,
                    states: [("ESTABLISHED".to_string(), 1)].into(),
                },
            ],
            listeners_dropped: 0,
            processes_dropped: 0,
            local_port_range: None,
            tw_reuse: None,
            time_wait_peers: vec![],
        },
    })
}

/// A busy minute: a connection per 10 ms to :8080 from curl (pid 200),
/// censused each second, with nginx's CLOSE-WAIT growing.
fn busy(seconds: u64) -> Vec<Arc<Snapshot>> {
    let mut e = Engine::new(EngineConfig::default());
    let mut out = Vec::new();
    let mut sk = 1000;
    for sec in 1..=seconds {
        for i in 0..100 {
            let at = sec * S + i * 10_000_000;
            let (c, s) = ("127.0.0.1:40000", "127.0.0.1:8080");
            for x in [
                t(at, sk, Close, SynSent, "127.0.0.1:0", s, 200),
                t(at, sk, SynSent, Established, c, s, 200),
                t(at, sk + 1, Listen, SynRecv, s, c, 100),
                t(at, sk + 1, SynRecv, Established, s, c, 100),
            ] {
                e.transition(&x);
            }
            sk += 2;
        }
        e.transition(&t(
            sec * S + 5,
            sk,
            Established,
            CloseWait,
            "127.0.0.1:8080",
            "127.0.0.1:1",
            100,
        ));
        e.apply(census(sec * S + 999_000_000, NS, 7, sec));
        e.apply(census(sec * S + 999_000_000, OTHER_NS, 0, 0));
        e.apply(Input::Tick {
            ts_ns: sec * S + 999_000_000,
        });
        out.push(Arc::new(Snapshot::new(
            sec,
            Clock { offset_ns: 0 },
            Info {
                usage: Some(Usage {
                    cpu_ns: sec * 30_000_000,
                    rss_bytes: 24 << 20,
                }),
                ..Default::default()
            },
            e.view(),
        )));
    }
    out
}

fn top_after(seconds: u64) -> Top {
    let mut top = Top::new("test");
    for s in busy(seconds) {
        top.update(s, 0);
    }
    top
}

#[test]
fn rows_say_what_the_snapshots_say() {
    let top = top_after(5);
    let states = top.states();
    let est = states.iter().find(|s| s.state == "ESTABLISHED").unwrap();
    assert_eq!(est.count, 6, "two namespaces' censuses summed");
    assert_eq!(est.trend, vec![6; 5]);
    let l = &top.listeners()[0];
    assert_eq!(
        (l.port, l.syn_recv, l.backlog, l.accept_queue),
        (8080, 7, 511, 2)
    );
    assert_eq!(l.accepted_per_s, Some(100.0), "100 accepts a second");
    let p = top.processes();
    let nginx = p
        .iter()
        .find(|p| p.pid == Some(100) && p.netns == NS)
        .unwrap();
    assert_eq!(nginx.close_wait, 5);
    assert_eq!(nginx.close_wait_oldest_s.map(|s| s.round()), Some(5.0));
    let curl = p.iter().find(|p| p.pid == Some(200)).unwrap();
    assert_eq!(curl.connects_per_s, Some(100.0));
    assert_eq!(curl.sockets, 0, "no census sockets: only its activity");
    let top_pair = &top.pairs()[0];
    assert!(top_pair.per_s > 0.0);
    let f = top.footer();
    assert_eq!(
        f.daemon_cpu_pct.map(|c| c.round()),
        Some(3.0),
        "30 ms per second"
    );
    assert_eq!(f.daemon_rss, Some(24 << 20));
}

#[test]
fn keys_move_sort_filter_and_quit() {
    let mut top = top_after(3);
    assert_eq!(top.pane, Pane::Listeners);
    top.key(Key::Tab);
    assert_eq!(top.pane, Pane::Processes);
    top.key(Key::Char('j'));
    top.key(Key::Down);
    assert_eq!(top.selected(Pane::Processes), 2);
    top.key(Key::End);
    let n = top.processes().len();
    assert_eq!(top.selected(Pane::Processes), n - 1);
    top.key(Key::Char('k'));
    assert_eq!(top.selected(Pane::Processes), n - 2);
    top.key(Key::Home);
    assert_eq!(top.selected(Pane::Processes), 0);
    top.key(Key::Char('s'));
    assert_eq!(top.sort_name(Pane::Processes), "CLOSE-WAIT");
    assert_eq!(top.processes()[0].pid, Some(100));
    top.key(Key::BackTab);
    assert_eq!(top.pane, Pane::Listeners);
    assert_eq!(
        top.sort_name(Pane::Listeners),
        "SYN-RECV",
        "sorts are per pane"
    );

    top.key(Key::Char('/'));
    assert!(top.editing);
    for c in "curl".chars() {
        top.key(Key::Char(c));
    }
    top.key(Key::Enter);
    assert!(!top.editing);
    assert_eq!(top.filter, "curl");
    assert!(
        top.processes()
            .iter()
            .all(|p| p.comm.as_deref() == Some("curl"))
    );
    assert!(
        top.listeners().is_empty(),
        "nginx's listener is filtered out"
    );
    assert_eq!(
        top.key(Key::Esc),
        Action::Continue,
        "Esc clears the filter first"
    );
    assert!(top.filter.is_empty());

    top.key(Key::Char('1'));
    assert_eq!(top.window, RateWindow::S1);
    top.key(Key::Char('3'));
    assert_eq!(top.window, RateWindow::S60);

    top.key(Key::Char('?'));
    assert!(top.help);
    top.key(Key::Char('x'));
    assert!(!top.help, "any key closes help");

    assert_eq!(top.key(Key::Char('q')), Action::Quit);
    assert_eq!(top.key(Key::Ctrl('c')), Action::Quit);
    top.key(Key::Char('/'));
    assert_eq!(
        top.key(Key::Char('q')),
        Action::Continue,
        "q is typed in a filter"
    );
    assert_eq!(
        top.key(Key::Ctrl('c')),
        Action::Quit,
        "Ctrl-C quits even there"
    );
    top.key(Key::Esc);
    assert_eq!(top.key(Key::Esc), Action::Quit);
}

#[test]
fn pause_holds_the_screen_and_resumes_at_the_newest() {
    let snaps = busy(4);
    let mut top = Top::new("test");
    top.update(snaps[0].clone(), 0);
    top.key(Key::Char(' '));
    top.update(snaps[1].clone(), 0);
    top.update(snaps[2].clone(), 0);
    assert_eq!(top.snapshot().unwrap().seq, 1, "paused: the screen stays");
    top.key(Key::Char('p'));
    assert_eq!(top.snapshot().unwrap().seq, 3, "resumed at the newest");
}

#[test]
fn namespaces_cycle_and_come_back_to_all() {
    let mut top = top_after(2);
    assert_eq!(top.scope, None);
    assert!(top.many_namespaces(), "rows of two namespaces say which");
    top.key(Key::Char('n'));
    assert_eq!(top.scope, Some(NS));
    assert!(!top.many_namespaces());
    assert_eq!(
        top.states()
            .iter()
            .find(|s| s.state == "ESTABLISHED")
            .unwrap()
            .count,
        3
    );
    top.key(Key::Char('n'));
    assert_eq!(top.scope, Some(OTHER_NS));
    assert!(top.processes().iter().all(|p| p.netns == OTHER_NS));
    top.key(Key::Char('n'));
    assert_eq!(top.scope, None);
    assert_eq!(top.scope_name(), "all namespaces");
}

#[test]
fn enter_opens_a_detail_and_esc_closes_it() {
    let mut top = top_after(3);
    top.key(Key::Enter);
    let d = top.detail().expect("listener detail");
    assert!(d.title.contains("0.0.0.0:8080"), "{}", d.title);
    assert_eq!(d.states["ESTABLISHED"], 3);
    assert!(
        d.pairs
            .iter()
            .any(|&(a, b, n)| a.raw() == 10 && b.raw() == 3 && n == 300),
        "{:?}",
        d.pairs
    );
    assert_eq!(d.trend, vec![100, 100]);
    assert_eq!(top.key(Key::Esc), Action::Continue);
    assert!(top.detail.is_none());

    top.key(Key::Tab);
    top.key(Key::Enter);
    let d = top.detail().expect("process detail");
    assert!(d.title.contains("nginx"), "{}", d.title);
    assert!(
        d.facts
            .iter()
            .any(|(k, v)| *k == "listens on" && v == "0.0.0.0:8080")
    );
}

#[test]
fn an_empty_snapshot_and_no_snapshot_show_empty_tables() {
    let mut top = Top::new("test");
    assert!(top.listeners().is_empty() && top.states().is_empty());
    assert_eq!(top.footer(), Footer::default());
    assert_eq!(top.key(Key::Enter), Action::Continue);
    assert_eq!(top.key(Key::Down), Action::Continue);
    top.update(
        Arc::new(Snapshot::new(
            1,
            Clock { offset_ns: 0 },
            Info::default(),
            Engine::new(EngineConfig::default()).view(),
        )),
        0,
    );
    assert!(top.states().iter().all(|s| s.count == 0));
    assert!(top.processes().is_empty());
}

#[test]
fn a_restarted_daemon_starts_the_history_again() {
    let before = busy(5);
    let after = busy(3);
    let mut top = Top::new("test");
    for s in &before {
        top.update(s.clone(), 0);
    }
    // The new daemon's first snapshots: seq 1 again, counters from zero.
    top.update(after[0].clone(), 0);
    let curl = |top: &Top| {
        top.processes()
            .into_iter()
            .find(|p| p.pid == Some(200))
            .unwrap()
    };
    assert_eq!(
        curl(&top).connects_per_s,
        None,
        "one sample of the new daemon"
    );
    top.update(after[1].clone(), 0);
    top.update(after[2].clone(), 0);
    assert_eq!(curl(&top).connects_per_s, Some(100.0));
}

#[test]
fn enter_opens_the_last_row_when_the_selection_fell_off_the_end() {
    let mut top = top_after(3);
    top.key(Key::Tab);
    top.key(Key::End);
    assert_eq!(top.selected(Pane::Processes), top.processes().len() - 1);
    // The next snapshot has fewer processes than the selected index.
    let mut e = Engine::new(EngineConfig::default());
    e.apply(census(9 * S, NS, 0, 0));
    let fewer = Snapshot::new(9, Clock { offset_ns: 0 }, Info::default(), e.view());
    top.update(Arc::new(fewer), 0);
    assert_eq!(top.processes().len(), 2);
    top.key(Key::Enter);
    assert!(top.detail().is_some(), "the highlighted (last) row opens");
}

#[test]
fn an_ipv6_listener_is_found_as_it_is_written() {
    let mut e = Engine::new(EngineConfig::default());
    let mut c = census(S, NS, 0, 0);
    if let Input::Census(c) = &mut c {
        c.summary.listeners[0].address = "::1".into();
    }
    e.apply(c);
    let mut top = Top::new("test");
    top.update(
        Arc::new(Snapshot::new(
            1,
            Clock { offset_ns: 0 },
            Info::default(),
            e.view(),
        )),
        0,
    );
    top.key(Key::Char('/'));
    for c in "[::1]:8080".chars() {
        top.key(Key::Char(c));
    }
    assert_eq!(top.listeners().len(), 1, "typed as the screen shows it");
}

/// The counts-only mode: the namespace's pairs and rates come from the
/// counts; a process's failed connects are unknown, never 0.
#[test]
fn counts_only_shows_pairs_and_no_per_process_zero() {
    use crate::counts::{CountsSample, PairCount};
    let mut e = Engine::new(EngineConfig::default());
    let mut top = Top::new("test");
    for sec in 1..=3u64 {
        e.apply(census(sec * S, NS, 0, 0));
        e.apply(Input::Counts(CountsSample {
            ts_ns: sec * S + 1,
            counts: vec![
                PairCount {
                    netns: NS,
                    old: State::Known(Close),
                    new: State::Known(SynSent),
                    error: None,
                    n: 50,
                },
                PairCount {
                    netns: NS,
                    old: State::Known(SynSent),
                    new: State::Known(Close),
                    error: Some(111),
                    n: 10,
                },
            ],
        }));
        e.apply(Input::Tick { ts_ns: sec * S + 2 });
        let info = Info {
            counts_only: true,
            ..Default::default()
        };
        top.update(
            Arc::new(Snapshot::new(sec, Clock { offset_ns: 0 }, info, e.view())),
            0,
        );
    }
    let pairs = top.pairs();
    let opens = pairs
        .iter()
        .find(|p| p.from == State::Known(Close) && p.to == State::Known(SynSent))
        .unwrap();
    assert_eq!(opens.total, 150);
    let nginx = top
        .processes()
        .into_iter()
        .find(|p| p.pid == Some(100))
        .unwrap();
    assert_eq!((nginx.sockets, nginx.failed), (4, None));
    let v = e.view();
    let ns = v.namespaces.iter().find(|n| n.netns == NS).unwrap();
    assert_eq!(ns.activity.failed_connects, 30);
    assert_eq!(ns.activity.connect_errors.get(&111), Some(&30));
    assert!(v.processes.is_empty() && v.ports.is_empty());
    // The exposition leaves out what only following sockets tells.
    let text = crate::metrics::render(
        v,
        Clock { offset_ns: 0 },
        &Info {
            counts_only: true,
            ..Default::default()
        },
    );
    assert!(text.contains(&format!(
        "tcpwatch_failed_connects_total{{netns=\"{NS}\"}} 30"
    )));
    for absent in [
        "tcpwatch_connect_duration_seconds",
        "tcpwatch_close_wait_open_sockets",
        "tcpwatch_chain_breaks_total",
        "tcpwatch_sockets_vanished_total",
    ] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
}
