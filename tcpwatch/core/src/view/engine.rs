//! The engine's view as text: what `tcpwatch replay` prints. Pure.
use std::fmt::Write as _;

use crate::engine::{Direction, Histogram, NETNS_OTHER, View};

fn netns_name(n: u32) -> String {
    match n {
        0 => "unknown".into(),
        NETNS_OTHER => "other".into(),
        n => n.to_string(),
    }
}

fn bound(b: Option<f64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b.is_infinite() => ">3600s".into(),
        Some(b) if b < 1.0 => format!("{}ms", b * 1e3),
        Some(b) => format!("{b}s"),
    }
}

/// Per namespace: transitions per pair with rates and the census; then the
/// `top` busiest ports and processes; then durations.
pub fn summary_text(v: &View, top: usize) -> String {
    let mut o = String::new();
    for ns in &v.namespaces {
        let _ = writeln!(
            o,
            "NETNS {}: {} transitions, {} established, {} failed connects, {} aborted",
            netns_name(ns.netns),
            ns.activity.transitions,
            ns.activity.established,
            ns.activity.failed_connects,
            ns.activity.aborted
        );
        if let Some(c) = &ns.census {
            let states: Vec<String> = c
                .summary
                .states
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            let _ = writeln!(
                o,
                "  census: {} sockets ({}) in {:.1} ms",
                c.summary.total,
                states.join(", "),
                c.duration_ns as f64 / 1e6
            );
        }
        let _ = writeln!(
            o,
            "  {:<14} {:<14} {:>10} {:>9} {:>9} {:>9}",
            "FROM", "TO", "TOTAL", "/s 1s", "/s 10s", "/s 60s"
        );
        for p in &ns.transitions {
            let _ = writeln!(
                o,
                "  {:<14} {:<14} {:>10} {:>9.1} {:>9.1} {:>9.1}",
                p.from, p.to, p.total, p.rates.per_s_1s, p.rates.per_s_10s, p.rates.per_s_60s
            );
        }
    }
    let mut ports: Vec<_> = v.ports.iter().collect();
    ports.sort_by(|a, b| {
        b.activity
            .transitions
            .cmp(&a.activity.transitions)
            .then(a.key.cmp(&b.key))
    });
    let _ = writeln!(
        o,
        "PORT  DIR NETNS        TRANSITIONS ESTABLISHED FAILED ABORTED   /s 10s"
    );
    for p in ports.iter().take(top) {
        let _ = writeln!(
            o,
            "{:<5} {:<3} {:<12} {:>11} {:>11} {:>6} {:>7} {:>8.1}",
            p.key.port,
            match p.key.direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
            netns_name(p.key.netns),
            p.activity.transitions,
            p.activity.established,
            p.activity.failed_connects,
            p.activity.aborted,
            p.rates.per_s_10s
        );
    }
    let other = &v.ports_other;
    if other.activity.transitions > 0 {
        let _ = writeln!(
            o,
            "other (ports beyond the {} tracked) {:>11}",
            other.cap, other.activity.transitions
        );
    }
    let mut procs: Vec<_> = v.processes.iter().collect();
    procs.sort_by(|a, b| {
        b.activity
            .transitions
            .cmp(&a.activity.transitions)
            .then(a.key.cmp(&b.key))
    });
    let _ = writeln!(
        o,
        "PID     COMM             TRANSITIONS ESTABLISHED FAILED ABORTED"
    );
    for p in procs.iter().take(top) {
        let _ = writeln!(
            o,
            "{:<7} {:<16} {:>11} {:>11} {:>6} {:>7}",
            p.key.pid,
            crate::view::top::fmt::comm(Some(&p.key.comm.to_str())),
            p.activity.transitions,
            p.activity.established,
            p.activity.failed_connects,
            p.activity.aborted
        );
    }
    let _ = writeln!(o, "DURATION            COUNT   p50 ≤   p99 ≤");
    let d = &v.durations;
    let rows: [(&str, &Histogram); 5] = [
        ("connect", &d.connect),
        ("accept handshake", &d.accept_handshake),
        ("failed connect", &d.failed_connect),
        ("CLOSE-WAIT", &d.close_wait),
        ("FIN-WAIT-2", &d.fin_wait2),
    ];
    for (name, h) in rows {
        let _ = writeln!(
            o,
            "{:<18} {:>6} {:>7} {:>7}",
            name,
            h.count,
            bound(h.quantile_bound(0.5)),
            bound(h.quantile_bound(0.99))
        );
    }
    let cw = &v.close_wait_open;
    let _ = writeln!(
        o,
        "CLOSE-WAIT now: {} sockets followed, {} older than 60 s{}",
        cw.sockets,
        cw.older_than_60s,
        cw.oldest_s
            .map_or(String::new(), |s| format!(", oldest {s:.1} s"))
    );
    o
}
