//! Tests against the real kernel: they load tcpwatch's eBPF programs and
//! make real loopback connections. Root is required; in CI (CI set) a test
//! that cannot load BPF fails, elsewhere it is skipped with a loud notice.
mod alerts;
mod census;
mod churn;
mod cli;
mod common;
mod counts;
mod daemon;
mod failures;
mod floor;
mod grafana;
mod netns;
mod service;
mod synflood;
mod top;
mod transitions;
