//! Detectors of what the traffic does, from rates the detector keeps
//! ([`super::trend`]): reset storms per port against the port's own normal,
//! and processes whose connects keep failing, by errno; and destinations
//! whose TIME-WAIT sockets hold most of the ephemeral ports.
use std::collections::BTreeMap;

use super::{
    AlertKey, Finding, Severity, Subject,
    trend::{self, Series, Trends},
};
use crate::{
    census::Summary,
    config::Detect,
    engine::{Direction, NETNS_OTHER, View},
    model::errno_name,
};

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

/// Resets per port: `rst_storm_rate` per second or more, and at least
/// `rst_storm_factor` times the port's normal.
pub(super) fn reset_storms(view: &View, cfg: &Detect, trends: &Trends, out: &mut Vec<Finding>) {
    for p in &view.ports {
        if p.key.netns == NETNS_OTHER {
            continue;
        }
        let Some(rate) = trends.resets(&p.key) else {
            continue;
        };
        let normal = trends.baseline(&p.key).unwrap_or(0.0);
        if rate < cfg.rst_storm_rate || rate < cfg.rst_storm_factor * normal {
            continue;
        }
        let s = trend::Subject::Port(p.key);
        let sent = trends.rate(&s, Series::ResetsSent).unwrap_or(0.0);
        let received = trends.rate(&s, Series::ResetsReceived).unwrap_or(0.0);
        let (port, dir) = (p.key.port, direction(p.key.direction));
        let why = match (p.key.direction, sent >= received) {
            (Direction::In, true) => format!(
                "This host resets connections to its port {port}: clients keep connecting while nothing listens there (the service is down or restarting), or the server aborts its connections (SO_LINGER 0, closing with unread data, a crash). Check that the service runs and listens (ss -ltn 'sport = :{port}')."
            ),
            (Direction::In, false) => format!(
                "Clients reset their connections to port {port}: they give up (their timeouts are shorter than the server's answers), or a load balancer or firewall resets connections it considers idle. Compare the clients' timeouts with the server's latency; keepalive (60/20/3) keeps idle connections alive through middleboxes."
            ),
            (Direction::Out, false) => format!(
                "Connections from this host to port {port} are reset by the peer: the remote service refuses (not listening) or aborts, or a middlebox drops connections it considers idle. Check the destination; keepalive (60/20/3) for connections idle for long."
            ),
            (Direction::Out, true) => format!(
                "This host resets its own connections to port {port}: the client application aborts them (closing with unread data, SO_LINGER 0) or its processes crash."
            ),
        };
        let mut evidence = BTreeMap::new();
        evidence.insert("resets_per_s".into(), rate);
        evidence.insert("resets_sent_per_s".into(), sent);
        evidence.insert("resets_received_per_s".into(), received);
        evidence.insert("normal_per_s".into(), normal);
        out.push(Finding {
            key: AlertKey {
                name: "RstStorm".into(),
                netns: p.key.netns,
                subject: Subject::Port {
                    port,
                    direction: dir.into(),
                },
            },
            severity: Severity::Warning,
            hold_s: cfg.rst_storm_hold,
            summary: format!(
                "RST storm on port {port} ({dir}, netns {}): {rate:.0} resets/s ({sent:.0} sent, {received:.0} received), normally {normal:.1}/s",
                p.key.netns
            ),
            description: format!(
                "{rate:.0} TCP resets per second on port {port} over the last {} s ({sent:.0}/s sent by this host, {received:.0}/s received), against {normal:.1}/s normally. {why}",
                trend::SPAN_NS / 1_000_000_000
            ),
            evidence,
        });
    }
}

/// What an errno of a failed connect usually means, and what to check.
fn connect_error_advice(errno: u16) -> &'static str {
    match errno {
        111 => {
            "ECONNREFUSED: the destination answered with a reset, so nothing listens on that port (the service is down, restarting, or the port is wrong) or a firewall rejects."
        }
        110 => {
            "ETIMEDOUT: the destination never answered the SYNs (host down, packets dropped by a firewall, or its listener is flooded with syncookies off)."
        }
        113 => {
            "EHOSTUNREACH: no route to the host (its address does not resolve on the link, or a router says it is unreachable)."
        }
        101 => "ENETUNREACH: no route to the destination network.",
        99 => {
            "EADDRNOTAVAIL: no local port is free for the destination (ephemeral ports exhausted, often by TIME-WAIT: see net.ipv4.ip_local_port_range)."
        }
        _ => "See errno(3) for this error.",
    }
}

/// A process whose connects fail at `connect_fail_rate` per second or
/// more, and at least `connect_fail_ratio` of those it attempts.
pub(super) fn failing_connects(view: &View, cfg: &Detect, trends: &Trends, out: &mut Vec<Finding>) {
    for p in &view.processes {
        if p.key.netns == NETNS_OTHER {
            continue;
        }
        let s = trend::Subject::Process(p.key.clone());
        let Some(failed) = trends.rate(&s, Series::FailedConnects) else {
            continue;
        };
        let attempted = trends.rate(&s, Series::Connects).unwrap_or(0.0).max(failed);
        if failed < cfg.connect_fail_rate || failed < cfg.connect_fail_ratio * attempted {
            continue;
        }
        let (pid, comm) = (p.key.pid, p.key.comm.to_string());
        // The errors it failed with so far, most first.
        let mut errors: Vec<(u16, u64)> = p
            .activity
            .connect_errors
            .iter()
            .map(|(&e, &n)| (e, n))
            .collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let named: Vec<String> = errors
            .iter()
            .take(3)
            .map(|(e, n)| format!("{} {n}", errno_name(*e)))
            .collect();
        // Where connects fail in its namespace (any process's).
        let mut dests: Vec<(u16, u64)> = view
            .ports
            .iter()
            .filter(|d| d.key.netns == p.key.netns && d.key.direction == Direction::Out)
            .map(|d| (d.key.port, d.activity.connect_errors.values().sum()))
            .filter(|&(_, n)| n > 0)
            .collect();
        dests.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let dests: Vec<String> = dests
            .iter()
            .take(3)
            .map(|(port, n)| format!("port {port} ({n})"))
            .collect();
        let advice = errors
            .first()
            .map_or("The kernel gave no error: the process closed its sockets while they connected (its own timeout).", |(e, _)| {
                connect_error_advice(*e)
            });
        let mut evidence = BTreeMap::new();
        evidence.insert("failed_per_s".into(), failed);
        evidence.insert("attempted_per_s".into(), attempted);
        for (e, n) in &errors {
            evidence.insert(format!("errno_{e}"), *n as f64);
        }
        out.push(Finding {
            key: AlertKey {
                name: "ConnectFailures".into(),
                netns: p.key.netns,
                subject: Subject::Process {
                    pid,
                    comm: comm.clone(),
                },
            },
            severity: Severity::Warning,
            hold_s: cfg.connect_fail_hold,
            summary: format!(
                "connects failing in {comm} (pid {pid}, netns {}): {failed:.0}/s of {attempted:.0}/s ({})",
                p.key.netns,
                if named.is_empty() { "no error".into() } else { named.join(", ") }
            ),
            description: format!(
                "{comm} (pid {pid}) attempts {attempted:.0} connects per second and {failed:.0} fail (SYN-SENT -> CLOSE). Errors so far: {}. Failing destinations in its namespace: {}. {advice}",
                if named.is_empty() { "none reported".into() } else { named.join(", ") },
                if dests.is_empty() { "not known".into() } else { dests.join(", ") }
            ),
            evidence,
        });
    }
}

/// One local address's TIME-WAIT sockets to one destination at
/// `time_wait_fill` of the ephemeral port range: each holds a port no new
/// connection there can use until it expires (60 s after the close).
pub(super) fn time_wait_pressure(netns: u32, s: &Summary, cfg: &Detect, out: &mut Vec<Finding>) {
    let Some((lo, hi)) = s.local_port_range else {
        return;
    };
    let range = u64::from(hi - lo) + 1;
    for p in &s.time_wait_peers {
        // Where the kernel lets a connect take over a TIME-WAIT socket's
        // port (tcp_tw_reuse 1, or 2 toward loopback), they run out only
        // at a connect rate no alert on their number can tell.
        let loopback = p
            .remote
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback() || a.to_canonical().is_loopback());
        if s.tw_reuse == Some(1) || (s.tw_reuse == Some(2) && loopback) {
            continue;
        }
        let fill = p.sockets as f64 / range as f64;
        if fill < cfg.time_wait_fill {
            continue;
        }
        let mut evidence = BTreeMap::new();
        evidence.insert("time_wait".into(), p.sockets as f64);
        evidence.insert("ephemeral_ports".into(), range as f64);
        evidence.insert("fill".into(), fill);
        let dest = if p.remote.contains(':') {
            format!("[{}]:{}", p.remote, p.port)
        } else {
            format!("{}:{}", p.remote, p.port)
        };
        out.push(Finding {
            key: AlertKey {
                name: "TimeWaitPressure".into(),
                netns,
                subject: Subject::Destination {
                    address: p.remote.clone(),
                    port: p.port,
                },
            },
            severity: Severity::Warning,
            hold_s: 0.0,
            summary: format!(
                "TIME-WAIT pressure toward {dest} (netns {netns}): {} sockets from {}, {:.0} % of the {range} ephemeral ports",
                p.sockets,
                p.local,
                fill * 100.0
            ),
            description: format!(
                "{} connections from {} to {dest} were closed by this host first and sit in TIME-WAIT for 60 s, each holding one of the {range} ephemeral ports ({lo}-{hi}, net.ipv4.ip_local_port_range). When they run out, new connects to {dest} fail with EADDRNOTAVAIL. Usual fixes: reuse connections (keep-alive, a connection pool) instead of one per request, let the server close first, net.ipv4.tcp_tw_reuse=1 for outgoing connections, or a wider ip_local_port_range.",
                p.sockets, p.local
            ),
            evidence,
        });
    }
}
