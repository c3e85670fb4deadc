//! Reads the probe's signal counters (resets sent and received, SYN-ACK
//! retransmits per port): per-CPU values summed, turned into deltas by the
//! core. Owned by the sampler thread, so walking the map (as many entries
//! as ports met, at most its size) never delays the ring buffer's reader.
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use tcpwatch_common::{SignalKey, SignalStats};
use tcpwatch_core::signals::{Deltas, SignalsSample};

use crate::probe::capture::CaptureError;

pub struct SignalReader {
    counts: PerCpuHashMap<MapData, SignalKey, u64>,
    stats: PerCpuArray<MapData, SignalStats>,
    deltas: Deltas,
}

impl SignalReader {
    pub(crate) fn new(ebpf: &mut aya::Ebpf) -> Result<SignalReader, CaptureError> {
        let counts = ebpf
            .take_map("SIGNALS")
            .ok_or(CaptureError::MissingMap("SIGNALS"))?;
        let counts =
            PerCpuHashMap::try_from(counts).map_err(|e| CaptureError::Map("SIGNALS", e))?;
        let stats = ebpf
            .take_map("SIGNAL_STATS")
            .ok_or(CaptureError::MissingMap("SIGNAL_STATS"))?;
        let stats =
            PerCpuArray::try_from(stats).map_err(|e| CaptureError::Map("SIGNAL_STATS", e))?;
        Ok(SignalReader {
            counts,
            stats,
            deltas: Deltas::default(),
        })
    }

    /// What changed since the last reading. An entry that cannot be read
    /// (deleted meanwhile: never, the probe does not delete) is skipped.
    pub fn read(&mut self, ts_ns: u64) -> Result<SignalsSample, CaptureError> {
        let started = std::time::Instant::now();
        let totals: Vec<(SignalKey, u64)> = self
            .counts
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
            .collect();
        tracing::debug!(
            keys = totals.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "signal table read"
        );
        let deltas = self.deltas.update(totals);
        let stats = self
            .stats
            .get(&0, 0)
            .map_err(|e| CaptureError::Map("SIGNAL_STATS", e))?;
        let sum = |f: fn(&SignalStats) -> u64| stats.iter().map(f).sum();
        Ok(SignalsSample {
            ts_ns,
            deltas,
            unkeyed: sum(|s| s.unkeyed.iter().sum()),
            unreadable: sum(|s| s.read_failed.iter().sum()),
        })
    }
}
