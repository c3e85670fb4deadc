//! The Grafana dashboards against the real thing: Debian's Prometheus,
//! with the shipped rules, scrapes a daemon watching a namespace of the
//! test's own where everything a panel shows happens (connections,
//! refused connects, a socket left in CLOSE-WAIT, a bounded SYN flood);
//! every panel's query, as Grafana sends it once its variables are chosen,
//! must be valid PromQL and return a number.
use std::{
    io::ErrorKind,
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use crate::{
    alerts::{Prometheus, daemon_for, flood, setup, tempdir, until},
    common::{root_available, tool_available},
    daemon::NsWorker,
};

#[path = "../shared/dashboards.rs"]
mod dashboards;

/// Connections closed by the client (their durations, TIME-WAIT on its
/// side), refused connects (errors by errno and by process, resets both
/// ways), and an accepted socket whose peer closed: returned, so it stays
/// in CLOSE-WAIT while the caller holds it.
fn traffic(ns: &NsWorker) -> TcpStream {
    ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        for _ in 0..20 {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = l.accept().unwrap();
            drop(c);
            drop(s);
        }
        // A port nothing listens on (bound, then closed).
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        for _ in 0..5 {
            let e = TcpStream::connect(closed).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        }
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(c);
        s
    })
}

/// The first value of each series an instant query returned, when one is
/// a number (an empty result, or only NaN, is no data).
fn a_number(result: &[serde_json::Value]) -> Option<f64> {
    result
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .find(|v| v.is_finite())
}

#[test]
fn every_dashboard_panel_returns_data_from_a_prometheus_scraping_a_daemon() {
    let test = "every_dashboard_panel_returns_data_from_a_prometheus_scraping_a_daemon";
    if !root_available(test)
        || !tool_available(test, "prometheus", "prometheus")
        || !tool_available(test, "curl", "curl")
    {
        return;
    }
    let ns = NsWorker::new();
    let (_listener, dst) = setup(&ns, true);
    let dir = tempdir::Dir::new("grafana");
    let d = daemon_for(&ns, &dir);
    let prom = Prometheus::start(&[(&d.addr, "host-a")], None);
    // After a first scrape, so rates see the traffic's increase.
    until(
        Instant::now(),
        Duration::from_secs(10),
        "a first scrape",
        || !prom.query("up{instance=\"host-a\"} == 1").is_empty(),
    );
    let _close_wait = traffic(&ns);
    // What an operator picks: this host, all its namespaces; Grafana's
    // rate interval for a 1 s scrape is 4 scrapes, 1m is what the rules use.
    let values = [
        ("datasource", ""),
        ("instance", "host-a"),
        ("netns", ".*"),
        ("__rate_interval", "1m"),
    ];
    let mut queries = Vec::new();
    for (name, d) in dashboards::all() {
        for var in dashboards::variable_names(&d) {
            assert!(
                values.iter().any(|(n, _)| *n == var),
                "{name}: the test picks no value for ${var}"
            );
        }
        for (var, q) in dashboards::variables(&d) {
            let promql = dashboards::label_values_promql(&q);
            queries.push((format!("{name}: ${var}"), promql));
        }
        for (title, expr) in dashboards::queries(&d) {
            queries.push((format!("{name}: {title}"), expr));
        }
    }
    let queries: Vec<(String, String)> = queries
        .into_iter()
        .map(|(what, q)| {
            let q = dashboards::expand(&q, &values).unwrap_or_else(|e| panic!("{what}: {e}"));
            (what, q)
        })
        .collect();
    let worker = &ns;
    std::thread::scope(|s| {
        let flooding = s.spawn(|| flood(worker, dst, 10.0));
        let start = Instant::now();
        // Prometheus answers a query it cannot parse with an error, which
        // `query` fails on; one that parses must also find a number.
        loop {
            let missing: Vec<&(String, String)> = queries
                .iter()
                .filter(|(_, q)| a_number(&prom.query(q)).is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no data within 20 s of the flood's start for:\n{missing:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // The flooded listener's SYN-ACKs count on its port, inbound (the
        // listener is older than the daemon and in another namespace).
        let synacks = prom.query("tcpwatch_port_synack_retransmits_total{instance=\"host-a\"}");
        let port = dst.port().to_string();
        assert!(
            !synacks.is_empty()
                && synacks
                    .iter()
                    .all(|r| r["metric"]["port"] == port.as_str()
                        && r["metric"]["direction"] == "in"),
            "{synacks:?}"
        );
        eprintln!(
            "{test}: all {} queries of the dashboards returned data {:?} after the flood began",
            queries.len(),
            start.elapsed()
        );
        flooding.join().unwrap();
    });
    assert!(d.stop().success());
}
