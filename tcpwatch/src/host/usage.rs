//! The process's own CPU time and resident memory, from /proc/self: what
//! `top` shows of the daemon next to what it watches.
use tcpwatch_core::metrics::Usage;

/// This process's usage now; None where /proc cannot say (never fatal).
pub fn myself() -> Option<Usage> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second();
    let page = procfs::page_size();
    Some(Usage {
        cpu_ns: (stat.utime + stat.stime).saturating_mul(1_000_000_000) / ticks.max(1),
        rss_bytes: stat.rss.saturating_mul(page),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_usage() {
        let u = super::myself().expect("/proc/self/stat");
        assert!(u.rss_bytes > 1 << 20, "{u:?}");
    }
}
