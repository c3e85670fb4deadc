//! The main program's lanes (see `tcpwatch_common::LanePos`): one ring of
//! events per CPU in a memory-mapped BPF array, read in place. The kernel
//! writes a slot, then moves `head`; we read up to `head`, then move `tail`.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use memmap2::{MmapOptions, MmapRaw};
use tcpwatch_common::{LanePos, TransitionEvent};

pub struct Lanes {
    events: MmapRaw,
    positions: MmapRaw,
    /// The arrays, kept open with their mappings.
    _maps: [MapData; 2],
    /// Events per lane (a power of two).
    slots: usize,
    cpus: usize,
}

/// Bytes the kernel gives each element of an array map.
const fn elem_size<T>() -> usize {
    size_of::<T>().next_multiple_of(8)
}

/// Maps `entries` elements of `T` of array `map` (created with
/// BPF_F_MMAPABLE), shared and writable.
fn map_array<T>(map: &MapData, entries: usize) -> io::Result<MmapRaw> {
    let len = entries
        .checked_mul(elem_size::<T>())
        .ok_or_else(|| io::Error::other("lane array too large"))?;
    MmapOptions::new()
        .len(len)
        .map_raw(map.fd().as_fd().as_raw_fd())
}

impl Lanes {
    /// Maps the lanes of `cpus` CPUs of `slots` events each: `events`
    /// holds `cpus * slots` events, `positions` one `LanePos` per CPU.
    pub fn map(
        events: MapData,
        positions: MapData,
        cpus: usize,
        slots: usize,
    ) -> io::Result<Lanes> {
        assert!(slots.is_power_of_two(), "lane slots come from the loader");
        let total = cpus
            .checked_mul(slots)
            .ok_or_else(|| io::Error::other("lanes too large"))?;
        Ok(Lanes {
            events: map_array::<TransitionEvent>(&events, total)?,
            positions: map_array::<LanePos>(&positions, cpus)?,
            _maps: [events, positions],
            slots,
            cpus,
        })
    }

    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Events one lane holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// CPU `cpu`'s head and tail, as atomics over the shared mapping.
    fn ends(&self, cpu: usize) -> (&AtomicU64, &AtomicU64) {
        assert!(cpu < self.cpus);
        let at = cpu * elem_size::<LanePos>();
        // SAFETY: `at` is within the mapping of `cpus` LanePos (checked
        // above), which lives as long as `self`; head and tail are aligned
        // u64s (the mapping is page-aligned and LanePos is 128 bytes), and
        // the kernel only ever stores whole words to them.
        unsafe {
            let p = self.positions.as_mut_ptr().add(at);
            (
                AtomicU64::from_ptr(p.add(std::mem::offset_of!(LanePos, head)).cast()),
                AtomicU64::from_ptr(p.add(std::mem::offset_of!(LanePos, tail)).cast()),
            )
        }
    }

    /// Reads the events in CPU `cpu`'s lane when the read begins, oldest
    /// first, handing each to `f`; returns how many were read.
    pub fn read(&mut self, cpu: usize, mut f: impl FnMut(TransitionEvent)) -> usize {
        let (head, tail) = self.ends(cpu);
        // Acquire: the slots up to `head` were written before it moved.
        let end = head.load(Ordering::Acquire);
        let start = tail.load(Ordering::Relaxed);
        // The program never gets more than a lane ahead (it checks the
        // tail first); were it to, a read still stays within one lane.
        let n = (end.wrapping_sub(start) as usize).min(self.slots);
        let lane = self.events.as_mut_ptr().cast_const();
        for i in 0..n as u64 {
            let slot = cpu * self.slots + ((start + i) as usize & (self.slots - 1));
            // SAFETY: `slot` is one of this CPU's slots within the mapping,
            // aligned (page-aligned mapping, 104-byte elements of 8-byte
            // alignment); the kernel wrote it before publishing `head` and
            // does not write it again until `tail` passes it. Every bit
            // pattern is a valid TransitionEvent (plain integers).
            let event = unsafe {
                std::ptr::read_volatile(
                    lane.add(slot * elem_size::<TransitionEvent>())
                        .cast::<TransitionEvent>(),
                )
            };
            f(event);
        }
        // Release: our reads of the slots are done before the kernel may
        // reuse them.
        tail.store(start + n as u64, Ordering::Release);
        n
    }
}
