//! tcpwatch: TCP state transitions from the kernel, counted without loss and
//! attributed to their owners.
//!
//! The pure core is its own crate, [`tcpwatch_core`] (re-exported as
//! [`core`]); this crate holds the edges around it and the runtime:
//! [`probe`] (the kernel edge: loader, BTF layout, capture, loss witness),
//! [`host`] (sock_diag census, /proc/net counters, namespaces, owners,
//! clocks), [`daemon`] (the runtime that feeds the engine and publishes its
//! snapshots), [`serve`] (what the daemon serves: metrics over HTTP, the
//! control socket), [`tui`] (`top`, the live view: a client of either). The
//! binary's `cmd` modules only parse, wire and print.
pub use tcpwatch_core as core;

pub mod daemon;
pub mod host;
pub mod probe;
pub mod serve;
pub mod tui;
