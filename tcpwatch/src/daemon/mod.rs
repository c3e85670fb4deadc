//! The daemon's runtime: the sampler thread (census and counters), the
//! event loop that feeds the engine, and the snapshot it publishes.
pub mod sampler;
