//! tcpwatch's pure core: what the kernel and host edges report, as data,
//! and everything computed from it. No I/O, no clock, no kernel: time comes
//! with the inputs, so a recording replayed gives what the live run gave,
//! and every test here runs anywhere without root.
//!
//! [`model`] (transitions, accounting), [`chains`] (losses named by
//! sockets' broken chains of transitions), [`census`] (sockets and their
//! summary), [`counters`] (the kernel's TCP MIB counters by name), [`counts`] (the
//! counts-only mode's per-namespace pair counts),
//! [`engine`] (rates, per-port and per-process activity), [`detect`]
//! (alerts from the engine's view), [`snapshot`]
//! (what the daemon publishes each tick), [`view`] (trace
//! lines, tables), [`metrics`] (the Prometheus exposition), [`record`] (the
//! recording format), [`signals`] (the probe's reset and SYN-ACK counters).
pub mod census;
pub mod chains;
pub mod config;
pub mod counters;
pub mod counts;
pub mod detect;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod record;
pub mod reorder;
pub mod signals;
pub mod snapshot;
pub mod sockets;
pub mod totals;
pub mod view;
