//! tcpwatch: TCP state transitions from the kernel, counted without loss and
//! attributed to their owners.
//!
//! Kernel and I/O edges: [`loader`], [`capture`], [`census`], [`counters`],
//! [`owners`], [`sampler`], [`output`], [`netns`], the HTTP side of
//! [`metrics`]. Pure core: [`model`], [`engine`], [`record`], [`view`], the
//! encoding side of [`metrics`]. CLI subcommands live in the binary's
//! `cmd` modules and only wire these together.
pub mod capture;
pub mod census;
pub mod counters;
pub mod engine;
pub mod layout;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod output;
pub mod owners;
pub mod record;
pub mod sampler;
pub mod view;
pub mod witness;
