//! The host edges: what the machine reports besides the probe (socket
//! census over sock_diag, TCP counters from /proc/net, network namespaces,
//! socket owners from /proc, its own usage) and its clocks.
pub mod census;
pub mod clock;
pub mod counters;
pub mod netns;
pub mod owners;
pub mod usage;

/// This host's name (the kernel's, as `hostname` prints it), for labels.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && tcpwatch_core::config::valid_instance(h))
        .unwrap_or_else(|| "localhost".into())
}
