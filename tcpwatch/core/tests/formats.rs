//! Every output format, as a reviewed snapshot (insta), from the committed
//! recording made on a real kernel (tests/data/basic.rec): trace lines as
//! text and JSON, the states tables and JSON, the metrics exposition, the
//! engine summary and a control-socket snapshot reply. A change to any of
//! them shows up here as a diff to accept or fix.
use std::sync::Arc;

use tcpwatch_core::{
    census::Summary,
    engine::{Engine, EngineConfig, Input},
    metrics::{Info, render},
    model::Transition,
    record::{Header, Reader},
    view::{
        engine::summary_text,
        states::{listeners_table, processes_table, states_table},
        trace::{Clock, TextColumns, json_line},
    },
};

// Compiled in: the core's tests open no files either.
const BASIC: &str = include_str!("../../tests/data/basic.rec");

fn inputs() -> (Header, Vec<Input>) {
    let (header, reader) = Reader::new(BASIC.as_bytes()).unwrap();
    (header, reader.map(Result::unwrap).collect())
}

fn clock(h: &Header) -> Clock {
    Clock {
        offset_ns: h.unix_ns - h.monotonic_ns as i128,
    }
}

fn transitions(inputs: &[Input]) -> Vec<&Transition> {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::Transition(t) => Some(t),
            _ => None,
        })
        .take(12)
        .collect()
}

/// The busiest census of the recording (most sockets).
fn census(inputs: &[Input]) -> &Summary {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::Census(c) => Some(&c.summary),
            _ => None,
        })
        .max_by_key(|s| (s.total, s.listeners.len()))
        .unwrap()
}

#[test]
fn trace_text() {
    let (h, inputs) = inputs();
    let mut cols = TextColumns::new(false);
    let mut out = format!("{}\n", cols.header());
    for t in transitions(&inputs) {
        out.push_str(&cols.line(t, &clock(&h)));
        out.push('\n');
    }
    insta::assert_snapshot!(out);
}

#[test]
fn trace_json() {
    let (h, inputs) = inputs();
    let out: Vec<String> = transitions(&inputs)
        .into_iter()
        .map(|t| json_line(t, &clock(&h)))
        .collect();
    insta::assert_snapshot!(out.join("\n"));
}

#[test]
fn states_tables() {
    let (_, inputs) = inputs();
    let s = census(&inputs);
    insta::assert_snapshot!(format!(
        "{}\n{}\n{}",
        states_table(s),
        listeners_table(s),
        processes_table(s)
    ));
}

#[test]
fn states_json() {
    let (_, inputs) = inputs();
    insta::assert_snapshot!(serde_json::to_string_pretty(census(&inputs)).unwrap());
}

fn replayed() -> (Header, Engine) {
    let (h, inputs) = inputs();
    let mut e = Engine::new(EngineConfig::default());
    for i in inputs {
        e.apply(i);
    }
    (h, e)
}

#[test]
fn metrics_exposition() {
    let (h, e) = replayed();
    let info = Info {
        hook: h.hook.clone(),
        max_listeners: 64,
        ..Default::default()
    };
    let text = render(e.view(), clock(&h), &info).replace(env!("CARGO_PKG_VERSION"), "VERSION");
    insta::assert_snapshot!(text);
}

#[test]
fn engine_summary() {
    let (_, e) = replayed();
    insta::assert_snapshot!(summary_text(&e.view(), 10));
}

#[test]
fn control_socket_snapshot_reply() {
    use tcpwatch_core::{protocol::Reply, snapshot::Snapshot};
    let (h, e) = replayed();
    let reply = Reply::Snapshot {
        missed: 0,
        snapshot: Arc::new(Snapshot::new(1, clock(&h), Info::default(), e.view())),
    };
    let v: serde_json::Value = serde_json::to_value(&reply).unwrap();
    insta::assert_snapshot!(serde_json::to_string_pretty(&v).unwrap());
}
