//! Reads the counts-only mode's map (`daemon --counts-only`): transitions
//! per namespace, pair and error at close, per-CPU values summed, turned
//! into what changed by the core. A namespace's keys are deleted once it
//! is gone, so namespaces that come and go cannot fill the map.
use aya::maps::{MapData, PerCpuHashMap};
use tcpwatch_core::counts::{CountsSample, Deltas};

use crate::probe::capture::CaptureError;

pub struct CountReader {
    counts: PerCpuHashMap<MapData, u64, u64>,
    deltas: Deltas,
}

impl CountReader {
    pub(crate) fn new(ebpf: &mut aya::Ebpf) -> Result<CountReader, CaptureError> {
        let counts = ebpf
            .take_map("COUNTS")
            .ok_or(CaptureError::MissingMap("COUNTS"))?;
        let counts = PerCpuHashMap::try_from(counts).map_err(|e| CaptureError::Map("COUNTS", e))?;
        Ok(CountReader {
            counts,
            deltas: Deltas::default(),
        })
    }

    /// What changed since the last reading.
    pub fn read(&mut self, ts_ns: u64) -> Result<CountsSample, CaptureError> {
        let totals = self
            .counts
            .iter()
            .map(|kv| kv.map(|(k, per_cpu)| (k, per_cpu.iter().sum::<u64>())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaptureError::Map("COUNTS", e))?;
        Ok(self.deltas.update(ts_ns, totals))
    }

    /// Keys the kernel's map holds now.
    pub fn keys(&self) -> Result<usize, CaptureError> {
        self.counts
            .keys()
            .try_fold(0, |n, k| k.map(|_| n + 1))
            .map_err(|e| CaptureError::Map("COUNTS", e))
    }

    /// Deletes the keys of namespaces not in `alive` (sorted), each read a
    /// last time just before: what they counted since the last reading. A
    /// transition that lands between that read and the delete is not
    /// counted here (the per-pair kernel count still has it); one after
    /// the delete makes the key anew, counted from zero.
    pub fn forget_outside(
        &mut self,
        ts_ns: u64,
        alive: &[u32],
    ) -> Result<CountsSample, CaptureError> {
        let mut last = Vec::new();
        for key in self.deltas.keys_outside(alive) {
            match self.counts.get(&key, 0) {
                Ok(per_cpu) => last.push((key, per_cpu.iter().sum::<u64>())),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(CaptureError::Map("COUNTS", e)),
            }
        }
        let sample = self.deltas.update(ts_ns, last.iter().copied());
        for (key, _) in last {
            match self.counts.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => self.deltas.forget(key),
                Err(e) => return Err(CaptureError::Map("COUNTS", e)),
            }
        }
        Ok(sample)
    }
}
