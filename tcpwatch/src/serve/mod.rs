//! What the daemon serves to others: the metrics endpoint.
pub mod metrics;
