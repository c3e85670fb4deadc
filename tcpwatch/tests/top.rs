//! `top`'s screens, drawn with ratatui's TestBackend from snapshots
//! replayed out of recordings made on a real kernel
//! (tests/data/make-top-recordings.sh): an idle host, a busy web server, a
//! CLOSE-WAIT leak and a SYN flood, at 80x24, 120x40 and 200x60; plus huge
//! numbers, empty tables, the detail view, help, and the app loop driven
//! through its event channel. No root needed.
use std::{fs::File, io::BufReader, sync::Arc, time::Duration};

use ratatui::{Terminal, backend::TestBackend};
use tcpwatch::{
    core::{
        config::Detect,
        detect::Detector,
        engine::{Engine, EngineConfig, Input},
        metrics::{Info, Usage},
        record::Reader,
        snapshot::Snapshot,
        view::{
            top::{Key, Top},
            trace::Clock,
        },
    },
    tui::{self, Event},
};
use tokio::sync::mpsc;

const SIZES: [(u16, u16); 3] = [(80, 24), (120, 40), (200, 60)];

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}.rec", env!("CARGO_MANIFEST_DIR"))
}

/// The snapshots a daemon would have published while recording: one per
/// tick, as the runtime does, with a made-up but steady CPU and RSS.
fn snapshots(name: &str) -> Vec<Arc<Snapshot>> {
    let (header, reader) = Reader::new(BufReader::new(File::open(data(name)).unwrap())).unwrap();
    let clock = Clock {
        offset_ns: header.unix_ns - header.monotonic_ns as i128,
    };
    let mut engine = Engine::new(EngineConfig::default());
    // The daemon's detectors, as it runs them each tick; a one-second
    // warm-up, since the recordings last four.
    let mut detector = Detector::default();
    let detect = Detect {
        warmup: 1.0,
        ..Detect::default()
    };
    let mut out = Vec::new();
    for input in reader {
        let input = input.unwrap();
        let tick = matches!(input, Input::Tick { .. });
        engine.apply(input);
        if tick {
            let seq = out.len() as u64 + 1;
            let info = Info {
                hook: header.hook.clone(),
                max_listeners: 64,
                usage: Some(Usage {
                    cpu_ns: seq * 15_000_000,
                    rss_bytes: 25 << 20,
                }),
                ..Default::default()
            };
            let view = engine.view();
            detector.evaluate(&view, &detect);
            out.push(Arc::new(
                Snapshot::new(seq, clock, info, view).with_alerts(detector.alerts()),
            ));
        }
    }
    assert!(out.len() >= 4, "{name}: {} ticks", out.len());
    out
}

fn top_of(snaps: &[Arc<Snapshot>]) -> Top {
    let mut top = Top::new("recording");
    for s in snaps {
        top.update(s.clone(), 0);
    }
    top
}

fn screen(top: &Top, (w, h): (u16, u16)) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| tui::draw::draw(f, top)).unwrap();
    tui::screen_text(term.backend().buffer())
}

fn check_all_sizes(name: &str, top: &Top) {
    for size in SIZES {
        let text = screen(top, size);
        assert_eq!(text.lines().count(), size.1 as usize);
        assert!(
            text.lines().all(|l| l.chars().count() <= size.0 as usize),
            "{name} {size:?}: a line is wider than the screen"
        );
        insta::assert_snapshot!(format!("{name}_{}x{}", size.0, size.1), text);
    }
}

#[test]
fn idle_host() {
    let top = top_of(&snapshots("top-idle"));
    let text = screen(&top, (120, 40));
    assert!(text.contains("127.0.0.1:8080"), "{text}");
    assert!(text.contains("lost: none (witness on)"), "{text}");
    check_all_sizes("idle", &top);
}

#[test]
fn busy_web_server() {
    let top = top_of(&snapshots("top-busy"));
    let l = top.listeners();
    let l = l
        .iter()
        .find(|l| l.port == 8080)
        .expect("the server's listener");
    assert_eq!(
        l.comm.as_deref(),
        Some("python3"),
        "attributed, not unknown"
    );
    assert!(l.accepted_per_s.unwrap() > 20.0, "{:?}", l.accepted_per_s);
    let p = top.processes();
    assert!(
        p.iter().any(|p| p.failed.is_some_and(|n| n > 0)),
        "the refused connects to :9 are counted"
    );
    check_all_sizes("busy", &top);
}

#[test]
fn close_wait_leak() {
    let top = top_of(&snapshots("top-closewait"));
    let procs = top.processes();
    // Sockets accepted after the last owner scan are not attributed yet
    // (the scan runs every few censuses); together they are all there.
    let all: u64 = procs.iter().map(|p| p.close_wait).sum();
    assert_eq!(all, 40, "every connection the server never closed");
    let leaker = procs.iter().max_by_key(|p| p.close_wait).unwrap();
    assert_eq!(leaker.comm.as_deref(), Some("python3"));
    assert!(leaker.close_wait_oldest_s.unwrap() > 2.0, "{leaker:?}");
    let text = screen(&top, (120, 40));
    assert!(text.contains("CLOSE-WAIT      40"), "{text}");
    check_all_sizes("closewait", &top);
}

#[test]
fn syn_flood() {
    let top = top_of(&snapshots("top-synflood"));
    let l = top.listeners();
    let l = l.iter().find(|l| l.port == 8080).unwrap();
    assert!(
        l.syn_recv >= u64::from(l.backlog),
        "half-open at the backlog: {l:?}"
    );
    let (active, _) = top.alerts();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].key.name, "SynFlood");
    assert_eq!(
        active[0].severity,
        tcpwatch::core::detect::Severity::Warning,
        "syncookies absorbed it"
    );
    assert!(screen(&top, (120, 40)).contains("WARN SYN flood on 0.0.0.0:8080"));
    check_all_sizes("synflood", &top);
}

#[test]
fn details_and_help() {
    let mut top = top_of(&snapshots("top-closewait"));
    top.key(Key::Tab);
    top.key(Key::Enter);
    let text = screen(&top, (120, 40));
    assert!(text.contains("CLOSE-WAIT (oldest)"), "{text}");
    insta::assert_snapshot!("closewait_process_detail_120x40", text);
    top.key(Key::Esc);
    top.key(Key::BackTab);
    top.key(Key::Enter);
    insta::assert_snapshot!("closewait_listener_detail_120x40", screen(&top, (120, 40)));
    top.key(Key::Esc);
    top.key(Key::Char('?'));
    insta::assert_snapshot!("help_80x24", screen(&top, (80, 24)));
}

#[test]
fn huge_numbers_and_empty_tables_fit_their_columns() {
    let snaps = snapshots("top-busy");
    let mut big = (*snaps[snaps.len() - 1]).clone();
    for ns in &mut big.view.namespaces {
        if let Some(c) = &mut ns.census {
            for n in c.summary.states.values_mut() {
                *n = u64::MAX / 3;
            }
            for l in &mut c.summary.listeners {
                l.syn_recv = u64::MAX;
                l.backlog = u32::MAX;
                l.accept_queue = u32::MAX;
                l.comm = Some("a-very-long-name-x".into());
            }
            for p in &mut c.summary.processes {
                p.total = u64::MAX;
            }
        }
        for p in &mut ns.transitions {
            p.total = u64::MAX;
        }
    }
    let mut top = top_of(&snaps);
    top.update(Arc::new(big), u64::MAX / 2);
    for size in SIZES {
        let text = screen(&top, size);
        assert!(text.contains("6.15E"), "{text}");
        assert!(!text.contains("184467"), "a raw 20-digit number: {text}");
    }
    insta::assert_snapshot!("huge_120x40", screen(&top, (120, 40)));

    let empty = Snapshot::new(
        1,
        Clock { offset_ns: 0 },
        Info::default(),
        Engine::new(EngineConfig::default()).view(),
    );
    let mut top = Top::new("recording");
    top.update(Arc::new(empty), 0);
    insta::assert_snapshot!("empty_80x24", screen(&top, (80, 24)));
    insta::assert_snapshot!("no_snapshot_80x24", screen(&Top::new("daemon"), (80, 24)));
}

/// The whole app, terminal and source injected: snapshots and keys in, the
/// frame out, `q` ends it.
#[tokio::test]
async fn the_app_runs_on_events_and_quits_on_q() {
    let (tx, mut rx) = mpsc::channel(64);
    for s in snapshots("top-closewait") {
        tx.send(Event::Snapshot(s, 0)).await.unwrap();
    }
    tx.send(Event::Source("daemon lost (test); retrying".into()))
        .await
        .unwrap();
    for k in [Key::Tab, Key::Char('s'), Key::Enter] {
        tx.send(Event::Key(k)).await.unwrap();
    }
    let mut term = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let mut top = Top::new("test");
    let quit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Event::Key(Key::Char('q'))).await.unwrap();
        tx
    });
    tokio::time::timeout(
        Duration::from_secs(10),
        tui::run(&mut term, &mut top, &mut rx, Duration::from_nanos(1)),
    )
    .await
    .expect("q ends the app")
    .unwrap();
    let _tx = quit.await.unwrap();
    let text = tui::screen_text(term.backend().buffer());
    assert!(text.contains("daemon lost (test); retrying"), "{text}");
    assert!(text.contains("process "), "Enter opened the detail: {text}");
    assert!(text.contains("CLOSE-WAIT (oldest)"), "{text}");
}

#[tokio::test]
async fn a_failed_source_ends_the_app_with_its_reason() {
    let (tx, mut rx) = mpsc::channel(4);
    tx.send(Event::Failed("the probe stopped".into()))
        .await
        .unwrap();
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let e = tui::run(
        &mut term,
        &mut Top::new("t"),
        &mut rx,
        Duration::from_millis(10),
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "the probe stopped");
}

#[test]
fn a_terminal_smaller_than_80x24_still_draws_without_panicking() {
    let mut top = top_of(&snapshots("top-busy"));
    for size in [(79, 23), (40, 12), (20, 5), (1, 1)] {
        let text = screen(&top, size);
        assert_eq!(text.lines().count(), size.1 as usize);
    }
    top.key(Key::Char('?'));
    top.key(Key::Enter);
    for size in [(30, 8), (1, 1)] {
        screen(&top, size);
    }
}
