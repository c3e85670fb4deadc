//! The kernel edge: loads the eBPF programs (checked against the kernel's
//! BTF layout), drains their ring buffer, reads their counters and signal
//! counters, and counts the firings no program ran for (the witness).
pub mod capture;
pub mod counts;
pub mod lane;
pub mod layout;
pub mod loader;
pub mod signals;
pub mod witness;
