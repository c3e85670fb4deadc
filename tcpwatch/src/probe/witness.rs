//! A second, independent count of the tracepoint's firings: one perf
//! counting event per CPU on `sock:inet_sock_set_state`, no BPF involved.
//!
//! Why: on this project's machines the kernel sometimes fires the tracepoint
//! and never runs the BPF programs attached to it, without counting a
//! recursion miss (seen as FIN-WAIT-1 -> FIN-WAIT-2 -> CLOSE pairs missing
//! whenever the softirq ran on top of one particular foreign thread; ftrace
//! recorded the event, a perf counting event counted it, the programs'
//! `run_cnt` did not move). Such a loss is invisible to the programs. The
//! witness makes it countable: every firing either ran the main program,
//! was a recursion miss of it, or was not run at all.
//!
//! Only the BTF hook can use it: on the classic hook our own program sits
//! in the perf probe's path and returns 0, which stops perf events from
//! counting (`perf_trace_run_bpf_submit`).
use std::{
    fs::File,
    io,
    io::Read as _,
    os::fd::FromRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use perf_event_open_sys as sys;

/// One counting event per online CPU; the sum is every firing on the host
/// since the witness was opened.
pub struct Witness {
    per_cpu: Vec<File>,
}

impl Witness {
    /// Opens the counters on every online CPU, counting at once.
    /// `tracefs` is where tracefs is mounted (for the tracepoint's id).
    pub fn open(tracefs: &Path) -> io::Result<Witness> {
        let id_path = tracefs.join("events/sock/inet_sock_set_state/id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", id_path.display())))?
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("{}: {e}", id_path.display())))?;
        // A CPU brought online later is not watched.
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| io::Error::new(e.kind(), format!("{what}: {e}")))?;
        let mut per_cpu = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let mut attr = sys::bindings::perf_event_attr {
                type_: sys::bindings::PERF_TYPE_TRACEPOINT,
                size: size_of::<sys::bindings::perf_event_attr>() as u32,
                config: id,
                ..Default::default()
            };
            // SAFETY: `attr` is a valid, fully initialised perf_event_attr
            // whose size field matches; pid -1 with a CPU counts every task
            // on that CPU; no group. The returned fd is ours alone.
            let fd = unsafe {
                sys::perf_event_open(
                    &mut attr,
                    -1,
                    cpu as i32,
                    -1,
                    sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("perf_event_open on CPU {cpu}: {e}"),
                ));
            }
            // SAFETY: a fresh fd we own, closed by the File.
            per_cpu.push(unsafe { File::from_raw_fd(fd) });
        }
        Ok(Witness { per_cpu })
    }

    /// Firings counted so far, all CPUs.
    pub fn fired(&self) -> io::Result<u64> {
        let mut total = 0u64;
        for mut f in &self.per_cpu {
            let mut buf = [0u8; 8];
            f.read_exact(&mut buf)?;
            total += u64::from_ne_bytes(buf);
        }
        Ok(total)
    }
}

/// One consistent reading of the witness against the main program's own
/// count, taken by [`settled_reading`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub fired: u64,
    /// The main program's runs (its `RUNS` counter).
    pub runs: u64,
    /// The main program's `recursion_misses`.
    pub misses: u64,
}

/// Programs seen ahead of the witness by more than this mean the witness is
/// not counting every firing (see [`not_run_between`]); the margin absorbs
/// a firing caught mid-way at a reading that the confirmation of edge
/// readings did not rule out.
pub const BLIND_MARGIN: u64 = 2;

impl Reading {
    /// Firings neither run nor counted as missed, as of this reading,
    /// plus a constant: only differences between readings mean anything.
    pub fn gap(&self) -> i128 {
        self.fired as i128 - self.runs as i128 - self.misses as i128
    }
}

/// Firings between `base` and `now` for which the kernel neither ran the
/// main program nor counted a miss; `Err(deficit)` when the programs ran
/// more often than the witness counted firings. That happens when a BPF
/// program on the *classic* tracepoint returns 0 (tcpwatch's own
/// `--hook classic` program, for one; bpftrace's did not here): the kernel
/// then skips the perf counters for that firing
/// (`perf_trace_run_bpf_submit`), so the witness is blind and its silence
/// proves nothing. (Blindness smaller than real losses cancels against
/// them and goes unseen.)
pub fn not_run_between(base: &Reading, now: &Reading) -> Result<u64, u64> {
    let d = now.gap() - base.gap();
    if d < -(BLIND_MARGIN as i128) {
        return Err(d.unsigned_abs() as u64);
    }
    Ok(d.max(0) as u64)
}

/// How long a reading must stay unchanged to be taken: longer than one
/// firing usually takes from its first probe to its last (~1 µs, a few µs
/// with an interrupt between them).
pub const SETTLE: Duration = Duration::from_micros(20);

/// Takes a [`Reading`] with `programs` reading (runs, misses), trying until
/// `within` has passed. A try reads the witness and the programs, waits
/// [`SETTLE`], and reads both again; it counts only if nothing changed.
/// Equal witness reads alone would not do: one firing runs the programs
/// and the perf probe at different moments, so a firing caught between
/// them would be in one count and not the other. A firing under way at the
/// first read has usually finished by the second and changed one of them;
/// one held up longer (interrupts and softirqs between the probes, a
/// preempted vCPU) is ruled out only by [`confirmed_reading`]. A try costs
/// a read per CPU (each an IPI to that CPU) and two bpf calls, twice.
/// `None` if the tracepoint never paused that long (at full churn on two
/// CPUs most tries fail).
pub fn settled_reading(
    witness: &Witness,
    within: Duration,
    mut programs: impl FnMut() -> io::Result<(u64, u64)>,
) -> io::Result<Option<Reading>> {
    let deadline = Instant::now() + within;
    loop {
        let fired = witness.fired()?;
        let (runs, misses) = programs()?;
        // A spin, not a sleep: timer slack would turn 20 µs into 50+.
        let until = Instant::now() + SETTLE;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        if witness.fired()? == fired && programs()? == (runs, misses) {
            return Ok(Some(Reading {
                fired,
                runs,
                misses,
            }));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Between the two readings of a confirmation: longer than a firing can be
/// held up between its probes by interrupts and the softirqs that follow
/// them (NET_RX gives up after 2 ms).
pub const CONFIRM_SPACING: Duration = Duration::from_millis(10);

/// A settled reading confirmed by a second one [`CONFIRM_SPACING`] later
/// with the same [`Reading::gap`]: a firing caught mid-way at the first has
/// finished by the second and would have changed the gap. For the readings
/// that everything is counted from and to (start and stop), where a
/// mistake would last. Tries until `within` has passed; returns the later.
pub fn confirmed_reading(
    witness: &Witness,
    within: Duration,
    mut programs: impl FnMut() -> io::Result<(u64, u64)>,
) -> io::Result<Option<Reading>> {
    let deadline = Instant::now() + within;
    let mut previous: Option<Reading> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(r) = settled_reading(witness, left, &mut programs)? else {
            return Ok(None);
        };
        if previous.is_some_and(|p| p.gap() == r.gap()) {
            return Ok(Some(r));
        }
        previous = Some(r);
        if Instant::now() + CONFIRM_SPACING >= deadline {
            return Ok(None);
        }
        std::thread::sleep(CONFIRM_SPACING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_run_is_what_fired_beyond_runs_and_misses() {
        let base = Reading {
            fired: 100,
            runs: 90,
            misses: 10,
        };
        let now = Reading {
            fired: 200,
            runs: 187,
            misses: 11,
        };
        assert_eq!(not_run_between(&base, &now), Ok(2));
        // Nothing missing: every firing ran or was a counted miss.
        let exact = Reading {
            fired: 200,
            runs: 189,
            misses: 11,
        };
        assert_eq!(not_run_between(&base, &exact), Ok(0));
    }

    #[test]
    fn a_witness_behind_the_programs_is_blind_not_reassuring() {
        let base = Reading::default();
        // A classic-tracepoint program stopped perf from counting: the
        // programs ran 1,000 times, the witness saw 10 firings.
        let blind = Reading {
            fired: 10,
            runs: 1000,
            misses: 0,
        };
        assert_eq!(not_run_between(&base, &blind), Err(990));
        // Within the margin it is still a reading, and nothing is missing.
        let caught_mid_way = Reading {
            fired: 10,
            runs: 10 + BLIND_MARGIN,
            misses: 0,
        };
        assert_eq!(not_run_between(&base, &caught_mid_way), Ok(0));
    }
}
