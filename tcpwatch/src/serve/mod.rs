//! What the daemon serves to others: the metrics endpoint and the control
//! socket, each on a thread of its own, reading published snapshots.
pub mod control;
pub mod metrics;
