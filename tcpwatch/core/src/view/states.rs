//! What `tcpwatch states` prints: a census summary as tables (the summary
//! itself is `census::summarize`).
use std::fmt::Write as _;

use crate::{
    census::{SHOWN, Summary},
    model::State,
};

/// The default table: count per state, then the total.
pub fn states_table(s: &Summary) -> String {
    let mut out = String::from("STATE          COUNT\n");
    for raw in SHOWN {
        let name = State::from_raw(raw).to_string();
        let _ = writeln!(
            out,
            "{name:<14} {}",
            s.states.get(&name).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "{:<14} {}", "TOTAL", s.total);
    out
}

/// `-p`: one line per listening socket.
pub fn listeners_table(s: &Summary) -> String {
    let mut out = String::from(
        "ADDRESS                                 PORT  ACCEPTQ BACKLOG SYN-RECV PID     COMM\n",
    );
    for l in &s.listeners {
        let _ = writeln!(
            out,
            "{:<39} {:<5} {:<7} {:<7} {:<8} {:<7} {}",
            l.address,
            l.port,
            l.accept_queue,
            l.backlog,
            l.syn_recv,
            l.pid.map_or("-".into(), |p| p.to_string()),
            crate::view::top::fmt::comm(l.comm.as_deref()),
        );
    }
    out
}

/// `-P`: one line per owning process, its sockets by state.
pub fn processes_table(s: &Summary) -> String {
    let mut out = String::from("PID     COMM             TOTAL  STATES\n");
    for p in &s.processes {
        let states: Vec<String> = p.states.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{:<7} {:<16} {:<6} {}",
            p.pid.map_or("-".into(), |p| p.to_string()),
            crate::view::top::fmt::comm(p.comm.as_deref()),
            p.total,
            states.join(" ")
        );
    }
    out
}
