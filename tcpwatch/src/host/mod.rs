//! The host edges: what the machine reports besides the probe (socket
//! census over sock_diag, TCP counters from /proc/net, network namespaces,
//! socket owners from /proc, its own usage) and its clocks.
pub mod census;
pub mod clock;
pub mod counters;
pub mod netns;
pub mod owners;
pub mod usage;
