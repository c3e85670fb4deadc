//! tcpwatch: TCP state transitions from the kernel, counted without loss and
//! attributed to their owners.
//!
//! Kernel and I/O edges: [`loader`], [`capture`], [`output`], [`netns`].
//! Pure core: [`model`], [`view`]. CLI subcommands live in the binary's
//! `cmd` modules and only wire these together.
pub mod capture;
pub mod census;
pub mod engine;
pub mod layout;
pub mod loader;
pub mod model;
pub mod netns;
pub mod output;
pub mod owners;
pub mod view;
