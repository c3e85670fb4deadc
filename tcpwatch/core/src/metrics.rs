//! The engine's view in the Prometheus text exposition format, through the
//! prometheus-client crate's encoder, and the small HTTP server that serves
//! it. Encoding is a pure function of the view (tested without root); the
//! server is an I/O edge with hard limits, because it listens on a socket of
//! a root daemon.
use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    counters,
    engine::{Direction, NETNS_OTHER, View},
    model::errno_name,
    snapshot::Snapshot,
    view::trace::Clock,
};

/// The hook label (`build_info`, recordings' headers) of the counts-only
/// mode, from which a replay knows the mode too.
pub const COUNTS_ONLY_HOOK: &str = "tp_btf counts-only";

/// What the exposition says about the daemon itself.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Info {
    pub hook: Option<String>,
    /// Listeners exported per namespace (the rest are summed into `other`).
    pub max_listeners: usize,
    /// The control socket's own counters, where it runs.
    #[serde(default)]
    pub control: Option<ControlCounters>,
    /// The daemon's own CPU and memory when the snapshot was taken.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The namespace the daemon is limited to (`--netns`); None: all.
    #[serde(default)]
    pub scope: Option<u32>,
    /// The Alertmanager sink's counters, where it runs.
    #[serde(default)]
    pub alertmanager: Option<SinkCounters>,
    /// The counts-only mode: no socket is followed, so what only following
    /// sockets gives (durations, CLOSE-WAIT ages, owners, chain breaks,
    /// vanished sockets) is left out, never shown as zero.
    #[serde(default)]
    pub counts_only: bool,
}

/// What the Alertmanager sink did since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkCounters {
    pub posts_ok: u64,
    pub posts_failed: u64,
    pub alerts_sent: u64,
}

/// A process's CPU time so far and its resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub cpu_ns: u64,
    pub rss_bytes: u64,
}

/// What the control socket did since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlCounters {
    pub clients: u64,
    pub refused: u64,
    pub bad_requests: u64,
    pub snapshots_sent: u64,
    /// Snapshots a subscriber did not get because it was still reading the
    /// one before (it gets the newest instead).
    pub snapshots_missed: u64,
}

type Labels = Vec<(&'static str, String)>;

fn netns_label(n: u32) -> String {
    if n == NETNS_OTHER {
        "other".into()
    } else {
        n.to_string()
    }
}

struct Family<'a, T> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    series: Vec<(Labels, T)>,
}

impl<'a, T> Family<'a, T> {
    fn new(name: &'a str, help: &'a str, kind: MetricType) -> Self {
        Family {
            name,
            help,
            kind,
            series: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, v: T) {
        self.series.push((labels, v));
    }
}

/// A sample: counts print as integers, measurements as floats.
#[derive(Clone, Copy, Debug)]
enum Val {
    Int(i64),
    Float(f64),
}

impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::Int(v.min(i64::MAX as u64) as i64)
    }
}

impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::Int(v.into())
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}

impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::Float(v)
    }
}

impl Family<'_, Val> {
    fn add(&mut self, labels: Labels, v: impl Into<Val>) {
        self.push(labels, v.into());
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        if self.series.is_empty() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.series {
            let mut f = m.encode_family(labels)?;
            match (self.kind, *v) {
                // Kernel counters are never negative; a negative one would
                // be a parse bug, shown as 0 rather than wrapped.
                (MetricType::Counter, Val::Int(i)) => {
                    f.encode_counter::<NoLabelSet, u64, u64>(&(i.max(0) as u64), None)?
                }
                (MetricType::Counter, Val::Float(x)) => {
                    f.encode_counter::<NoLabelSet, f64, f64>(&x, None)?
                }
                (_, Val::Int(i)) => f.encode_gauge(&i)?,
                (_, Val::Float(x)) => f.encode_gauge(&x)?,
            }
        }
        Ok(())
    }
}

/// The registry's collector must own what it encodes: a shared snapshot.
#[derive(Debug)]
struct ViewCollector(Arc<Snapshot>);

impl Collector for ViewCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (v, clock, about) = (&self.0.view, self.0.clock, &self.0.info);
        let c = MetricType::Counter;
        let g = MetricType::Gauge;

        let mut info = Family::new("tcpwatch_build_info", "tcpwatch version and kernel hook", g);
        info.add(
            vec![
                ("version", env!("CARGO_PKG_VERSION").into()),
                ("hook", about.hook.clone().unwrap_or_else(|| "none".into())),
            ],
            1u64,
        );
        info.encode(&mut enc)?;

        if let Some(cc) = &about.control {
            for (name, help, n) in [
                (
                    "tcpwatch_control_clients",
                    "Clients the control socket accepted",
                    cc.clients,
                ),
                (
                    "tcpwatch_control_refused",
                    "Control socket connections refused (client caps)",
                    cc.refused,
                ),
                (
                    "tcpwatch_control_bad_requests",
                    "Control socket clients dropped for a bad frame or request",
                    cc.bad_requests,
                ),
                (
                    "tcpwatch_control_snapshots_sent",
                    "Snapshots sent to control socket clients",
                    cc.snapshots_sent,
                ),
                (
                    "tcpwatch_control_snapshots_missed",
                    "Snapshots subscribers did not get because they were still reading the previous one",
                    cc.snapshots_missed,
                ),
            ] {
                let mut f = Family::new(name, help, c);
                f.add(vec![], n);
                f.encode(&mut enc)?;
            }
        }

        // Alerts: one series per active alert (absent once resolved, as
        // Prometheus' own ALERTS series), and how many were dropped.
        let mut alerts = Family::new(
            "tcpwatch_alert_active",
            "An alert of tcpwatch's detectors is firing (1), by alert and subject",
            g,
        );
        for a in &self.0.alerts.active {
            let mut labels: Labels = vec![
                ("alertname", a.key.name.clone()),
                ("severity", a.severity.label().into()),
                ("netns", netns_label(a.key.netns)),
            ];
            labels.extend(a.key.subject_labels());
            alerts.add(labels, 1u64);
        }
        alerts.encode(&mut enc)?;
        if let Some(am) = &about.alertmanager {
            let mut posts = Family::new(
                "tcpwatch_alertmanager_posts",
                "Posts of the alert list to Alertmanager, by result",
                c,
            );
            posts.add(vec![("result", "ok".into())], am.posts_ok);
            posts.add(vec![("result", "failed".into())], am.posts_failed);
            posts.encode(&mut enc)?;
            let mut sent = Family::new(
                "tcpwatch_alertmanager_alerts_sent",
                "Alerts in the lists Alertmanager accepted",
                c,
            );
            sent.add(vec![], am.alerts_sent);
            sent.encode(&mut enc)?;
        }
        let mut dropped = Family::new(
            "tcpwatch_alert_conditions_dropped",
            "Alert conditions not followed because the most active alerts were",
            c,
        );
        dropped.add(vec![], self.0.alerts.dropped);
        dropped.encode(&mut enc)?;

        let mut tr = Family::new(
            "tcpwatch_transitions",
            "TCP state transitions delivered to tcpwatch, by namespace",
            c,
        );
        let mut failed = Family::new(
            "tcpwatch_failed_connects",
            "Connects that failed (SYN-SENT -> CLOSE), by namespace",
            c,
        );
        let mut aborted = Family::new(
            "tcpwatch_aborted_connections",
            "Connections closed without the FIN exchange (reset or aborted), by namespace",
            c,
        );
        let mut connect_errors = Family::new(
            "tcpwatch_connect_errors",
            "Failed connects by the error the kernel closed them with (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH...), by namespace",
            c,
        );
        let mut close_errors = Family::new(
            "tcpwatch_close_errors",
            "Other closes with an error (ECONNRESET: reset received; ETIMEDOUT: retransmissions or keepalive gave up; EPIPE), by namespace",
            c,
        );
        let mut resets = Family::new(
            "tcpwatch_resets",
            "TCP resets (RST) sent and received, by namespace",
            c,
        );
        let mut synacks = Family::new(
            "tcpwatch_synack_retransmits",
            "SYN-ACKs retransmitted by listeners (handshakes the client never completed), by namespace",
            c,
        );
        let mut sockets = Family::new(
            "tcpwatch_sockets",
            "TCP sockets per state at the last census (request sockets count as SYN-RECV)",
            g,
        );
        let mut l_acc = Family::new(
            "tcpwatch_listener_accept_queue",
            "Connections waiting for accept() on a listener",
            g,
        );
        let mut l_backlog = Family::new(
            "tcpwatch_listener_backlog",
            "A listener's accept queue limit (listen() backlog)",
            g,
        );
        let mut l_syn = Family::new(
            "tcpwatch_listener_syn_recv",
            "Half-open request sockets (SYN-RECV) of a listener",
            g,
        );
        let mut p_sockets = Family::new(
            "tcpwatch_process_sockets",
            "TCP sockets per owning command and state at the last owner scan",
            g,
        );
        let mut census_dur = Family::new(
            "tcpwatch_census_duration_seconds",
            "What the last census of a namespace took",
            g,
        );
        let mut census_ts = Family::new(
            "tcpwatch_census_last_timestamp_seconds",
            "Unix time of the last census of a namespace",
            g,
        );
        let mut listeners_ts = Family::new(
            "tcpwatch_listeners_last_timestamp_seconds",
            "Unix time the listener gauges of a namespace were last refreshed (every interval, between full censuses)",
            g,
        );
        let mut kc = Vec::<Family<Val>>::new();
        let mut kc_names = Vec::<(String, String)>::new();
        for ns in &v.namespaces {
            let netns = netns_label(ns.netns);
            for p in &ns.transitions {
                tr.add(
                    vec![
                        ("netns", netns.clone()),
                        ("from", p.from.to_string()),
                        ("to", p.to.to_string()),
                    ],
                    p.total,
                );
            }
            failed.add(vec![("netns", netns.clone())], ns.activity.failed_connects);
            aborted.add(vec![("netns", netns.clone())], ns.activity.aborted);
            for (fam, errors) in [
                (&mut connect_errors, &ns.activity.connect_errors),
                (&mut close_errors, &ns.activity.close_errors),
            ] {
                for (&e, &n) in errors {
                    fam.add(
                        vec![("netns", netns.clone()), ("error", errno_name(e).into())],
                        n,
                    );
                }
            }
            resets.add(
                vec![("netns", netns.clone()), ("side", "sent".into())],
                ns.activity.resets_sent,
            );
            resets.add(
                vec![("netns", netns.clone()), ("side", "received".into())],
                ns.activity.resets_received,
            );
            synacks.add(
                vec![("netns", netns.clone())],
                ns.activity.synack_retransmits,
            );
            if let Some(census) = &ns.census {
                let s = &census.summary;
                for (state, n) in &s.states {
                    sockets.add(vec![("netns", netns.clone()), ("state", state.clone())], *n);
                }
                // The busiest listeners, by half-open plus queued; the rest
                // summed, so a host with thousands of listeners stays bounded.
                let mut ls: Vec<_> = s.listeners.iter().collect();
                ls.sort_by(|a, b| {
                    (b.syn_recv + b.accept_queue as u64)
                        .cmp(&(a.syn_recv + a.accept_queue as u64))
                        .then((a.port, &a.address).cmp(&(b.port, &b.address)))
                });
                let mut rest = (0u64, 0u64, 0u64, false);
                for (i, l) in ls.iter().enumerate() {
                    if i >= about.max_listeners {
                        rest.0 += l.accept_queue as u64;
                        rest.1 += l.backlog as u64;
                        rest.2 += l.syn_recv;
                        rest.3 = true;
                        continue;
                    }
                    let labels = vec![
                        ("netns", netns.clone()),
                        ("address", l.address.clone()),
                        ("port", l.port.to_string()),
                    ];
                    l_acc.add(labels.clone(), l.accept_queue);
                    l_backlog.add(labels.clone(), l.backlog);
                    l_syn.add(labels, l.syn_recv);
                }
                if rest.3 {
                    let labels = vec![
                        ("netns", netns.clone()),
                        ("address", "other".into()),
                        ("port", "other".into()),
                    ];
                    l_acc.add(labels.clone(), rest.0);
                    l_backlog.add(labels.clone(), rest.1);
                    l_syn.add(labels, rest.2);
                }
                // Per command (pids come and go; commands are what users
                // alert on), bounded by the census's own process list.
                let mut by_comm: std::collections::BTreeMap<(String, String), u64> =
                    Default::default();
                for (i, p) in s.processes.iter().enumerate() {
                    let comm = if i < about.max_listeners {
                        p.comm.clone().unwrap_or_else(|| "unknown".into())
                    } else {
                        "other".into()
                    };
                    for (state, n) in &p.states {
                        *by_comm.entry((comm.clone(), state.clone())).or_default() += n;
                    }
                }
                for ((comm, state), n) in by_comm {
                    p_sockets.add(
                        vec![("netns", netns.clone()), ("comm", comm), ("state", state)],
                        n,
                    );
                }
                census_dur.add(
                    vec![("netns", netns.clone())],
                    census.duration_ns as f64 / 1e9,
                );
                census_ts.add(
                    vec![("netns", netns.clone())],
                    clock.unix_ns(census.ts_ns) as f64 / 1e9,
                );
                if let Some(ts) = ns.listeners_ts_ns {
                    listeners_ts.add(
                        vec![("netns", netns.clone())],
                        clock.unix_ns(ts) as f64 / 1e9,
                    );
                }
            }
            if let Some(values) = &ns.counters {
                for (name, cv) in values {
                    let metric = format!("tcpwatch_netstat_{}", snake(name));
                    let idx = match kc_names.iter().position(|(m, _)| *m == metric) {
                        Some(i) => i,
                        None => {
                            kc_names.push((metric, name.clone()));
                            kc.push(Family::new(
                                "",
                                "",
                                if counters::is_gauge(name) { g } else { c },
                            ));
                            kc.len() - 1
                        }
                    };
                    kc[idx].add(vec![("netns", netns.clone())], cv.value);
                }
            }
        }
        for f in [
            &tr,
            &failed,
            &aborted,
            &connect_errors,
            &close_errors,
            &resets,
            &synacks,
            &sockets,
            &l_acc,
            &l_backlog,
            &l_syn,
            &p_sockets,
            &census_dur,
            &census_ts,
            &listeners_ts,
        ] {
            f.encode(&mut enc)?;
        }
        for (mut f, (metric, name)) in kc.into_iter().zip(&kc_names) {
            let help = format!("Kernel counter {name} (/proc/net/snmp or /proc/net/netstat)");
            f.name = metric;
            f.help = &help;
            f.encode(&mut enc)?;
        }

        // Per port and per process, bounded by the engine's tables.
        let mut port_tr = Family::new(
            "tcpwatch_port_transitions",
            "Transitions per service port (local port when listening, else remote) and direction, busiest ports; counted since the port entered the table",
            c,
        );
        for p in &v.ports {
            for (&(from, to), &n) in &p.activity.pairs {
                port_tr.add(
                    vec![
                        ("netns", netns_label(p.key.netns)),
                        ("port", p.key.port.to_string()),
                        (
                            "direction",
                            match p.key.direction {
                                Direction::In => "in".into(),
                                Direction::Out => "out".into(),
                            },
                        ),
                        ("from", from.to_string()),
                        ("to", to.to_string()),
                    ],
                    n,
                );
            }
        }
        for (&(from, to), &n) in &v.ports_other.activity.pairs {
            port_tr.add(
                vec![
                    ("netns", "other".into()),
                    ("port", "other".into()),
                    ("direction", "other".into()),
                    ("from", from.to_string()),
                    ("to", to.to_string()),
                ],
                n,
            );
        }
        port_tr.encode(&mut enc)?;
        port_signals(&mut enc, v, about.counts_only)?;
        let mut proc_tr = Family::new(
            "tcpwatch_process_transitions",
            "Transitions per owning process (netns, pid, comm), busiest processes; counted since the process entered the table; an evicted process's counts move to comm=\"other\"",
            c,
        );
        for p in &v.processes {
            for (&(from, to), &n) in &p.activity.pairs {
                proc_tr.add(
                    vec![
                        ("netns", netns_label(p.key.netns)),
                        ("pid", p.key.pid.to_string()),
                        ("comm", p.key.comm.to_string()),
                        ("from", from.to_string()),
                        ("to", to.to_string()),
                    ],
                    n,
                );
            }
        }
        for (&(from, to), &n) in &v.processes_other.activity.pairs {
            proc_tr.add(
                vec![
                    ("netns", String::new()),
                    ("pid", String::new()),
                    ("comm", "other".into()),
                    ("from", from.to_string()),
                    ("to", to.to_string()),
                ],
                n,
            );
        }
        proc_tr.encode(&mut enc)?;

        // What only following sockets gives; absent in the counts-only mode.
        let per_socket = !about.counts_only;
        for (name, help, h) in [
            (
                "tcpwatch_connect_duration_seconds",
                "Client handshakes: time in SYN-SENT before ESTABLISHED",
                &v.durations.connect,
            ),
            (
                "tcpwatch_accept_handshake_duration_seconds",
                "Server handshakes: time in SYN-RECV before ESTABLISHED",
                &v.durations.accept_handshake,
            ),
            (
                "tcpwatch_failed_connect_duration_seconds",
                "Failed connects: time in SYN-SENT before CLOSE",
                &v.durations.failed_connect,
            ),
            (
                "tcpwatch_close_wait_duration_seconds",
                "Time in CLOSE-WAIT before the owner closed",
                &v.durations.close_wait,
            ),
            (
                "tcpwatch_fin_wait2_duration_seconds",
                "Time in FIN-WAIT-2 before the peer's FIN",
                &v.durations.fin_wait2,
            ),
        ]
        .into_iter()
        .filter(|_| per_socket)
        {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            m.encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count, &h.buckets(), None)?;
        }

        let mut g1 = |name: &str, help: &str, kind, val: Val| -> fmt::Result {
            let mut f = Family::new(name, help, kind);
            f.add(vec![], val);
            f.encode(&mut enc)
        };
        if per_socket {
            g1(
                "tcpwatch_close_wait_open_sockets",
                "Sockets seen entering CLOSE-WAIT and not leaving it",
                g,
                Val::from(v.close_wait_open.sockets),
            )?;
            g1(
                "tcpwatch_close_wait_oldest_seconds",
                "Age of the oldest socket still in CLOSE-WAIT",
                g,
                Val::from(v.close_wait_open.oldest_s.unwrap_or(0.0)),
            )?;
            g1(
                "tcpwatch_transitions_unattributed",
                "Transitions whose owning process the kernel could not tell",
                c,
                Val::from(v.stats.unattributed),
            )?;
        }
        g1(
            "tcpwatch_engine_late_transitions",
            "Transitions older than the rate windows on arrival",
            c,
            Val::from(v.stats.late),
        )?;
        g1(
            "tcpwatch_port_table_evictions",
            "Ports evicted from the per-port table for busier ones",
            c,
            Val::from(v.ports_other.evicted),
        )?;
        g1(
            "tcpwatch_process_table_evictions",
            "Processes evicted from the per-process table for busier ones",
            c,
            Val::from(v.processes_other.evicted),
        )?;
        g1(
            "tcpwatch_netns_overflow",
            "Events of namespaces beyond --max-netns, folded into netns=\"other\"",
            c,
            Val::from(v.stats.netns_overflow),
        )?;
        g1(
            "tcpwatch_netns_evicted",
            "Namespaces known only from transitions that made room for one the census covers (their counts moved to netns=\"other\")",
            c,
            Val::from(v.stats.netns_evicted),
        )?;
        g1(
            "tcpwatch_netns_gone",
            "Namespaces dropped from the metrics because they no longer exist",
            c,
            Val::from(v.stats.netns_gone),
        )?;
        g1(
            "tcpwatch_signals_unattributed",
            "Resets and SYN-ACK retransmits counted in the kernel without their port and namespace (its table was full): in no tcpwatch_resets series",
            c,
            Val::from(v.stats.signals_unkeyed),
        )?;
        g1(
            "tcpwatch_signals_unreadable",
            "Resets and SYN-ACK retransmits whose socket or packet the probe could not read: in no tcpwatch_resets series",
            c,
            Val::from(v.stats.signals_unreadable),
        )?;
        if per_socket {
            g1(
                "tcpwatch_chain_breaks",
                "Transitions whose old state was not the state their socket last went to: each names at least one lost transition of that socket, in the daemon's scope (ring buffer drops show here too)",
                c,
                Val::from(v.stats.chain_breaks),
            )?;
            g1(
                "tcpwatch_sockets_vanished",
                "Sockets followed in an open state that a census of their namespace no longer showed, with none of their later transitions seen: each names at least one lost transition (its last), in the daemon's scope",
                c,
                Val::from(v.stats.sockets_vanished),
            )?;
        }
        if per_socket && v.stats.vanish_checked_ns != 0 {
            g1(
                "tcpwatch_vanish_checked_timestamp_seconds",
                "Unix time before which every census has been checked for vanished sockets: a check that stops (the event loop behind) shows here",
                g,
                Val::Float(clock.unix_ns(v.stats.vanish_checked_ns) as f64 / 1e9),
            )?;
        }
        if let Some(k) = &v.kernel {
            let a = &k.accounting;
            g1(
                "tcpwatch_kernel_counted_transitions",
                "Transitions counted by the eBPF programs (delivered or not)",
                c,
                Val::from(a.counted),
            )?;
            g1(
                "tcpwatch_events_delivered",
                "Transition events read from the ring buffer (counts-only mode: transitions read from the kernel's counts per namespace and pair)",
                c,
                Val::from(k.delivered),
            )?;
            let mut lost = Family::new(
                "tcpwatch_events_lost",
                "Transitions lost, by reason: counted but not delivered (ringbuf_full, read_failed), skipped by the kernel and not caught, or never run by the kernel (kernel_not_run: seen only by a perf counter of the tracepoint, all namespaces; absent without that counter)",
                c,
            );
            for (reason, n) in [
                ("ringbuf_full", a.ringbuf_full),
                ("read_failed", a.read_failed),
                ("kernel_skipped_uncaught", a.unrecovered),
            ] {
                lost.add(vec![("reason", reason.into())], n);
            }
            if a.has_witness {
                lost.add(vec![("reason", "kernel_not_run".into())], a.not_run);
            }
            lost.encode(&mut enc)?;
            // Whether kernel_not_run is being counted: a witness given up
            // (blinded, failed) is a 0 here, never a silently missing series.
            let mut up = Family::new(
                "tcpwatch_witness_up",
                "1 while the perf witness counts firings the kernel ran no program for (events_lost_total, reason kernel_not_run); 0 when off or given up",
                g,
            );
            up.add(vec![], u64::from(a.has_witness));
            up.encode(&mut enc)?;
            let mut kt = Family::new(
                "tcpwatch_kernel_transitions",
                "TCP state transitions counted in the kernel, delivered or not (all namespaces in scope)",
                c,
            );
            for (from, to, n) in &k.transitions {
                kt.add(vec![("from", from.to_string()), ("to", to.to_string())], *n);
            }
            kt.encode(&mut enc)?;
            let mut g2 = |name: &str, help: &str, val: u64| -> fmt::Result {
                let mut f = Family::new(name, help, c);
                f.add(vec![], val);
                f.encode(&mut enc)
            };
            g2(
                "tcpwatch_kernel_skipped",
                "Runs of the main program the kernel skipped (nested on a CPU)",
                a.kernel_skipped,
            )?;
            g2(
                "tcpwatch_kernel_caught",
                "Skipped runs the catcher program handled",
                a.caught,
            )?;
            g2(
                "tcpwatch_kernel_filtered",
                "Transitions outside the namespace scope",
                a.filtered,
            )?;
        }
        Ok(())
    }
}

/// "TcpExt.TCPReqQFullDoCookies" -> "tcpext_tcp_req_q_full_do_cookies":
/// Prometheus names are snake_case (promtool insists); the kernel's own
/// name stays in the HELP text.
fn snake(name: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for part in name.split('.') {
        words.extend(camel_words(part));
    }
    words.join("_")
}

/// The acronyms of the kernel's MIB names, so that an upper-case run splits
/// at them ("TCPHPHits" is TCP, HP, Hits) and never inside one.
const ACRONYMS: [&str; 26] = [
    "DSACK", "MTUP", "PAWS", "SACK", "TCP", "ACK", "SYN", "FIN", "RST", "RTO", "OFO", "MD5", "MTU",
    "ECN", "PLB", "TLP", "TSO", "GSO", "URG", "HP", "TS", "TW", "IP", "AO", "CE", "PF",
];

/// "DelayedACKs" -> delayed, acks; "TCPReqQFullDoCookies" -> tcp, req, q,
/// full, do, cookies.
fn camel_words(s: &str) -> Vec<String> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_ascii_uppercase() || c[i].is_ascii_digit() {
            // An upper-case run (digits ride along: MD5). Its last capital
            // starts the next word when a lower-case tail follows, unless
            // that tail is a lone plural "s" (ACKs, RTOs).
            let mut j = i;
            while j < c.len() && (c[j].is_ascii_uppercase() || c[j].is_ascii_digit()) {
                j += 1;
            }
            let tail = c[j..].iter().take_while(|x| x.is_ascii_lowercase()).count();
            let plural = tail == 1 && c[j] == 's';
            let end = if plural {
                j + 1
            } else if tail > 0 && j - i > 1 {
                j - 1
            } else if tail > 0 {
                j + tail
            } else {
                j
            };
            let run: String = c[i..end].iter().collect();
            if tail > 0 && !plural && j - i == 1 {
                out.push(run.to_ascii_lowercase());
            } else {
                out.extend(split_acronyms(&run));
            }
            i = end;
        } else {
            let mut j = i;
            while j < c.len() && !(c[j].is_ascii_uppercase() || c[j].is_ascii_digit()) {
                j += 1;
            }
            out.push(c[i..j].iter().collect::<String>().to_ascii_lowercase());
            i = j;
        }
    }
    out
}

/// An upper-case run cut at the known acronyms, longest first; what is not
/// one stays one word ("PFX" -> pfx). A trailing plural "s" stays on the
/// last word.
fn split_acronyms(run: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = run;
    let mut other = String::new();
    while !rest.is_empty() {
        match ACRONYMS.iter().find(|a| rest.starts_with(**a)) {
            Some(a) if rest.len() > a.len() || rest == *a => {
                if !other.is_empty() {
                    out.push(std::mem::take(&mut other).to_ascii_lowercase());
                }
                out.push(a.to_ascii_lowercase());
                rest = &rest[a.len()..];
            }
            _ => {
                let ch = rest.chars().next().expect("not empty");
                other.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
        }
    }
    if !other.is_empty() {
        // "ACKs": the plural belongs to the acronym before it.
        if other == "s" && !out.is_empty() {
            out.last_mut().expect("not empty").push('s');
        } else {
            out.push(other.to_ascii_lowercase());
        }
    }
    out
}

/// The exposition of a snapshot, in the Prometheus text format 0.0.4.
/// Per port: resets sent and received, SYN-ACK retransmits and connect
/// errors, for the ports of the engine's table that have any.
/// In the counts-only mode the per-port and per-process connect errors are
/// left out: there they would hold only the connects that failed before a
/// SYN (counted in the kernel per port and process), not those a
/// transition carried, so their sum would fall short.
fn port_signals(enc: &mut DescriptorEncoder, v: &View, counts_only: bool) -> fmt::Result {
    let c = MetricType::Counter;
    let mut resets = Family::new(
        "tcpwatch_port_resets",
        "Resets sent and received per service port (as tcpwatch_port_transitions counts ports), ports with any",
        c,
    );
    let mut synacks = Family::new(
        "tcpwatch_port_synack_retransmits",
        "SYN-ACKs retransmitted per listening port, ports with any",
        c,
    );
    let mut errors = Family::new(
        "tcpwatch_port_connect_errors",
        "Failed connects per destination port and error, ports with any",
        c,
    );
    let rows = v
        .ports
        .iter()
        .map(|p| {
            let dir = match p.key.direction {
                Direction::In => "in",
                Direction::Out => "out",
            };
            (
                netns_label(p.key.netns),
                p.key.port.to_string(),
                dir,
                &p.activity,
            )
        })
        .chain(std::iter::once((
            "other".to_string(),
            "other".to_string(),
            "other",
            &v.ports_other.activity,
        )));
    for (netns, port, dir, a) in rows {
        let labels = || -> Labels {
            vec![
                ("netns", netns.clone()),
                ("port", port.clone()),
                ("direction", dir.into()),
            ]
        };
        for (side, n) in [("sent", a.resets_sent), ("received", a.resets_received)] {
            if n > 0 {
                let mut l = labels();
                l.push(("side", side.into()));
                resets.add(l, n);
            }
        }
        if a.synack_retransmits > 0 {
            synacks.add(labels(), a.synack_retransmits);
        }
        for (&e, &n) in &a.connect_errors {
            let mut l = labels();
            l.push(("error", errno_name(e).into()));
            errors.add(l, n);
        }
    }
    resets.encode(enc)?;
    synacks.encode(enc)?;
    if counts_only {
        return Ok(());
    }
    errors.encode(enc)?;
    let mut by_process = Family::new(
        "tcpwatch_process_connect_errors",
        "Failed connects per process and error, processes with any",
        c,
    );
    for p in &v.processes {
        for (&e, &n) in &p.activity.connect_errors {
            by_process.add(
                vec![
                    ("netns", netns_label(p.key.netns)),
                    ("pid", p.key.pid.to_string()),
                    ("comm", p.key.comm.to_string()),
                    ("error", errno_name(e).into()),
                ],
                n,
            );
        }
    }
    by_process.encode(enc)
}

pub fn render_snapshot(snapshot: Arc<Snapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ViewCollector(snapshot)));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in
    // the names above, which the tests catch.
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("encoding metrics");
    out
}

/// The exposition of one view (replay, tests): as a snapshot of its own.
pub fn render(view: View, clock: Clock, info: &Info) -> String {
    render_snapshot(Arc::new(Snapshot::new(0, clock, info.clone(), view)))
}

#[cfg(test)]
mod tests;
