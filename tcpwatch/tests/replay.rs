//! Replays of the committed recordings (tests/data/*.rec, made by
//! tests/data/make-recordings.sh on a real kernel): no root needed. The same
//! recording must give the same numbers every time, the numbers the
//! recorded scenario implies, and the same screen.
use std::{fs::File, io::BufReader, process::Command};

use tcpwatch::core::{
    engine::{Engine, EngineConfig, View},
    record::Reader,
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");
const BASIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/basic.rec");

fn replay(path: &str) -> View {
    let (_, reader) = Reader::new(BufReader::new(File::open(path).unwrap())).unwrap();
    let mut engine = Engine::new(EngineConfig::default());
    for input in reader {
        engine.apply(input.unwrap());
    }
    engine.view()
}

#[test]
fn basic_recording_has_the_scenarios_numbers() {
    let v = replay(BASIC);
    assert_eq!(v.namespaces.len(), 1);
    let ns = &v.namespaces[0];
    // 20 orderly + 3 reset + 2 held connections, 3 refused connects, one
    // listener (see make-recordings.sh).
    assert_eq!(ns.activity.established, 2 * 25);
    assert_eq!(ns.activity.failed_connects, 3);
    assert_eq!(ns.activity.aborted, 2 * 3);
    assert_eq!(v.close_wait_open.sockets, 2, "the two held connections");
    let census = ns.census.as_ref().unwrap();
    assert_eq!(census.summary.states["TIME-WAIT"], 20);
    assert_eq!(census.summary.states["CLOSE-WAIT"], 2);
    assert_eq!(census.summary.listeners.len(), 1);
    assert_eq!(census.summary.listeners[0].port, 8080);
    // Every transition the kernel counted was recorded.
    let k = v.kernel.as_ref().unwrap();
    assert_eq!(k.accounting.counted, v.stats.transitions);
    assert!(k.accounting.lossless());
    let counters = ns.counters.as_ref().unwrap();
    assert_eq!(
        counters["Tcp.ActiveOpens"].value, 28,
        "25 connects + 3 refused"
    );
    assert_eq!(counters["Tcp.PassiveOpens"].value, 25);
}

#[test]
fn replaying_twice_gives_identical_results() {
    let run = || {
        let out = Command::new(BIN)
            .args(["replay", "--json", BASIC])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let (a, b) = (run(), run());
    assert!(!a.is_empty());
    assert_eq!(a, b);
    // And the library agrees with the command.
    let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(
        v,
        serde_json::to_value(replay(BASIC)).unwrap(),
        "tcpwatch replay --json is the engine's view"
    );
}

#[test]
fn replay_screen() {
    let out = Command::new(BIN).args(["replay", BASIC]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    insta::assert_snapshot!(text);
}

#[test]
fn replay_refuses_what_is_not_a_recording() {
    let out = Command::new(BIN)
        .args([
            "replay",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/proc_net_snmp"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a tcpwatch recording"), "{err}");
}
