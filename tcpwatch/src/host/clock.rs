//! The clocks the edges read; the core is handed their readings.
use tcpwatch_core::view::trace::Clock;

/// CLOCK_MONOTONIC now, in ns: the clock of the kernel's event timestamps
/// (`bpf_ktime_get_ns`), so samples taken in user space line up with them.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into; both clocks used here
    // always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic-to-wall-clock offset now, for timestamps of events.
pub fn wall_clock() -> Clock {
    let real = clock_ns(libc::CLOCK_REALTIME) as i128;
    let mono = clock_ns(libc::CLOCK_MONOTONIC) as i128;
    Clock::from_readings(real, mono)
}
