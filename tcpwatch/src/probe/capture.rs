//! The event source: drains the per-CPU ring buffers from tokio in batches,
//! in time order, and reads
//! the lossless counters. The only module that touches BPF maps; everything
//! else sees [`Transition`]s and [`KernelCounters`].
use std::{
    cell::{Cell, RefCell},
    io,
    os::fd::AsFd,
    task::Poll,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;

use tcpwatch_common::{
    EventHeader, PROG_MAIN, STATS_LEN, Stats, TransitionEvent, kind, listener_key, stat, stat_index,
};

use tcpwatch_core::{
    counts::CountsSample,
    model::{KernelCounters, Owner, ProgCounters, Slot, Transition, stats_slot},
    reorder::Reorder,
    sockets::{Follower, OpenPairs, Vanished},
};

use crate::{
    host::owners,
    probe::{
        counts::CountReader,
        lane::Lanes,
        loader::{self, Hook, LoadError, LoadOptions, Loaded},
        signals::SignalReader,
        witness::{self, Reading, Witness},
    },
};

/// How long to look for a witness reading: a confirmed one at arming and
/// at stop, where failing leaves the run without a witness (said so, never
/// a count it did not take); a settled one on each counters() call, where
/// failing keeps the previous value.
const WITNESS_EDGE_WITHIN: Duration = Duration::from_secs(1);
const WITNESS_SAMPLE_WITHIN: Duration = Duration::from_millis(2);

/// At stop, how long to wait for records emitted before the detach.
const STOP_DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// How often the ring buffers are read when the kernel has not woken us.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How soon to read again while records are held back for time order: a
/// held record goes out once the clock has passed it by the slack.
const HELD_RECHECK: Duration = Duration::from_millis(2);

/// Slack between the kernel's event clock (`bpf_ktime_get_ns`, the fast
/// monotonic clock) and CLOCK_MONOTONIC read here, taken off the watermark.
const CLOCK_SLACK_NS: u64 = 1_000_000;

pub struct Capture {
    loaded: Loaded,
    /// Each CPU's ring, by CPU index.
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    /// The main program's lanes, if it writes there (the rings then carry
    /// the catcher's events and the lanes' doorbells).
    lanes: Option<Lanes>,
    /// Records read from the rings: each CPU's ring is in its own order,
    /// and a socket moves between CPUs.
    reorder: Reorder<TransitionEvent>,
    /// Records a ring holds at most: a read of that many from one ring has
    /// read everything that was in it when the read began.
    ring_records: usize,
    /// At stop: everything left is released, there is nothing later.
    flush: bool,
    /// The last read of the rings stopped at a ring's capacity: more may
    /// be waiting without a wakeup to say so, until a read that did not.
    capped: bool,
    stats: PerCpuArray<MapData, Stats>,
    /// Records of an unexpected size (an object built from other sources).
    malformed: u64,
    /// Lane doorbells read from the rings.
    doorbells: u64,
    /// The main program's `recursion_misses` before arming: skips of runs
    /// that did nothing, not transitions we missed.
    misses_before_arming: u64,
    /// The main program's `recursion_misses` when it was disarmed at stop:
    /// later misses are of runs that did nothing.
    misses_at_disarm: Option<u64>,
    /// The perf counter of the tracepoint's firings with its reading at
    /// arming, or why there is none: never opened, or given up on (blind,
    /// unreadable, or no settled reading at stop).
    witness: RefCell<Result<(Witness, Reading), String>>,
    /// Firings not run since arming, as published: never goes down (it is a
    /// counter), and a value is published only once the next reading does
    /// not contradict it (a firing caught mid-way at one reading shows for
    /// that reading only). At stop, the confirmed final count.
    witness_not_run: Cell<u64>,
    /// The previous sample's gap (see `witness::Reading::gap`).
    witness_last_gap: Cell<Option<i128>>,
    delivered: u64,
    /// Transitions read from the lanes (the rest came through the rings).
    from_lanes: u64,
    /// The last drain stopped at its limit: more events may be waiting
    /// without a wakeup to say so.
    more: bool,
    /// The last read's watermark (see `read_rings`), and the one up to
    /// which every transition has been delivered (and followed).
    watermark: u64,
    followed_to: u64,
    /// The signal counters' reader, until someone takes it.
    signals: Option<SignalReader>,
    /// Each socket's owner, side and time in its state, completed here on
    /// every delivered transition (the kernel sends the owner only where
    /// it ran the transition).
    sockets: Follower,
    /// The counts-only mode's reader of per-namespace pair counts.
    counts: Option<CountReader>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the eBPF object lacks map {0}")]
    MissingMap(&'static str),
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("watching the ring buffer: {0}")]
    Io(#[from] io::Error),
    #[error("reading program info of {0}: {1}")]
    ProgInfo(&'static str, io::Error),
}

impl Capture {
    /// Loads, attaches and starts capturing. Needs a tokio runtime.
    pub fn start(opts: &LoadOptions) -> Result<Capture, CaptureError> {
        let mut loaded = loader::load(opts)?;
        // Loading parsed the kernel's BTF: tens of MB of short-lived
        // allocations. Hand the freed heap back, so a long-lived tracer does
        // not keep it resident (measured: daemon RSS 41 MB -> 15 MB).
        // SAFETY: malloc_trim only releases free memory; no pointer changes.
        unsafe { libc::malloc_trim(0) };
        let ring_records =
            loaded.config.wakeup_bytes as usize * 4 / (size_of::<TransitionEvent>() + 8);
        let stats = loaded
            .ebpf
            .take_map("STATS")
            .ok_or(CaptureError::MissingMap("STATS"))?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| CaptureError::Map("STATS", e))?;
        let signals = SignalReader::new(&mut loaded.ebpf)?;
        let lanes = loaded.lanes.take();
        let rings = std::mem::take(&mut loaded.rings)
            .into_iter()
            .map(|ring| {
                // SAFETY: RingBuf owns its map fd and returns that same fd
                // from as_raw_fd for as long as it lives; the AsyncFd owns
                // the RingBuf.
                unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                    .map_err(io::Error::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // After attaching and before arming, so the scan of every process's
        // fds cannot delay the first drain of the ring buffer. A listener
        // opened or closed between the scan and the arming is not seen by
        // either: its port's owner may be stale until it listens again.
        let mut sockets = Follower::default();
        match owners::listeners() {
            Ok(found) => {
                // The probe keys listeners by the netns it can read (0 if none).
                let netns = if loaded.config.netns_readable != 0 {
                    crate::host::netns::current().unwrap_or(0)
                } else {
                    0
                };
                seed_listeners(&mut loaded, &mut sockets, netns, &found)?;
            }
            Err(e) => tracing::warn!("owners of existing listeners unknown: {e}"),
        }
        let main = loaded.transition_programs()[0];
        let counts = if loaded.counts_only {
            Some(CountReader::new(&mut loaded.ebpf)?)
        } else {
            None
        };
        let witness = if opts.witness {
            open_witness(&loaded, &stats)
        } else {
            Err("off; --witness audits with one".into())
        };
        match &witness {
            // Off by default: said at exit and in the metrics, not warned.
            Err(_) if !opts.witness => {}
            Err(why) => tracing::warn!("no witness counter: {why}"),
            Ok(_) => {}
        }
        let misses_before_arming = match &witness {
            Ok((_, base)) => base.misses,
            Err(_) => prog_info(&loaded, main)?.recursion_misses,
        };
        loaded.set_armed(true)?;
        Ok(Capture {
            loaded,
            // A source per ring and per lane: each is in time order on its
            // own (a lane has one writer; a ring's writers rarely
            // interleave), and the merge puts them together. (Put in one
            // queue, every catcher record scanned past the lane's later
            // ones: quadratic with --simulate-skip, seen stalling a read.)
            reorder: Reorder::new(rings.len() + lanes.as_ref().map_or(0, Lanes::cpus)),
            rings,
            lanes,
            ring_records,
            flush: false,
            capped: false,
            stats,
            malformed: 0,
            doorbells: 0,
            misses_before_arming,
            misses_at_disarm: None,
            witness: RefCell::new(witness),
            witness_not_run: Cell::new(0),
            witness_last_gap: Cell::new(None),
            delivered: 0,
            from_lanes: 0,
            more: false,
            watermark: 0,
            followed_to: 0,
            signals: Some(signals),
            sockets,
            counts,
        })
    }

    /// Listeners of namespace `netns` that a census found (port, how many
    /// listen on it, their owner if one): ports the probe has not seen
    /// start listening (older than the daemon, in another namespace) then
    /// count their connections' resets on the server's side, and their
    /// children get their owner. What the probe already follows is kept.
    pub fn seed_listeners(
        &mut self,
        netns: u32,
        found: &[(u16, u64, Option<Owner>)],
    ) -> Result<(), CaptureError> {
        // Without a readable namespace every key is 0: the own one's, seeded
        // at start.
        if self.loaded.config.netns_readable == 0 {
            return Ok(());
        }
        seed_listeners(&mut self.loaded, &mut self.sockets, netns, found)
    }

    /// The reader of the signal counters (resets, SYN-ACK retransmits), for
    /// whoever samples them; None once taken.
    pub fn take_signals(&mut self) -> Option<SignalReader> {
        self.signals.take()
    }

    /// Why there is no witness counter, if there is none.
    pub fn witness_unavailable(&self) -> Option<String> {
        self.witness.borrow().as_ref().err().cloned()
    }

    /// Whether the capture has been stopped (the programs disarmed).
    fn stopped(&self) -> bool {
        self.misses_at_disarm.is_some()
    }

    /// A witness reading with the base it counts from, checked for
    /// blindness: confirmed at the edges (`edge`), settled otherwise.
    /// `None` if there is no witness, no reading came in time, or it was
    /// given up just now (a read failed, or it is blind).
    fn witness_reading(&self, edge: bool) -> Option<(Reading, Reading)> {
        let (result, base) = match &*self.witness.borrow() {
            Ok((w, base)) => {
                let programs = || main_runs_and_misses(&self.loaded, &self.stats);
                let result = if edge {
                    witness::confirmed_reading(w, WITNESS_EDGE_WITHIN, programs)
                } else {
                    witness::settled_reading(w, WITNESS_SAMPLE_WITHIN, programs)
                };
                (result, *base)
            }
            Err(_) => return None,
        };
        let r = match result {
            Ok(r) => r?,
            Err(e) => {
                self.give_up_witness(format!("reading it failed: {e}"));
                return None;
            }
        };
        if let Err(deficit) = witness::not_run_between(&base, &r) {
            self.give_up_witness(format!(
                "it fell {deficit} firings behind the programs: a BPF program on the classic \
                 tracepoint that returns 0 (a --hook classic tracer, for one) stops perf from \
                 counting, so it cannot see what they miss"
            ));
            return None;
        }
        Some((base, r))
    }

    /// Takes a settled witness reading and publishes what it and the
    /// previous one agree on.
    fn witness_sample(&self) {
        let Some((base, r)) = self.witness_reading(false) else {
            return;
        };
        // The smaller of two readings' gaps: a firing caught mid-way raises
        // one reading's gap by one, never two in a row.
        let gap = self
            .witness_last_gap
            .replace(Some(r.gap()))
            .map_or(base.gap(), |g| g.min(r.gap()));
        let agreed = (gap - base.gap()).max(0) as u64;
        self.witness_not_run
            .set(self.witness_not_run.get().max(agreed));
    }

    fn give_up_witness(&self, why: String) {
        tracing::warn!("witness counter given up: {why}");
        *self.witness.borrow_mut() = Err(why);
    }

    pub fn hook(&self) -> Hook {
        self.loaded.hook
    }

    /// The hook and mode in words (see `Loaded::describe`).
    pub fn describe(&self) -> String {
        self.loaded.describe()
    }

    /// The hook and mode as a label (see `Loaded::short`).
    pub fn short(&self) -> &'static str {
        self.loaded.short()
    }

    /// Whether this is the counts-only mode: no transition events, counts
    /// per namespace and pair instead ([`read_counts`](Self::read_counts)).
    pub fn counts_only(&self) -> bool {
        self.counts.is_some()
    }

    /// The counts-only mode's counts since the last reading (`None` in the
    /// per-event mode); what they add up to is counted as delivered.
    pub fn read_counts(&mut self, ts_ns: u64) -> Result<Option<CountsSample>, CaptureError> {
        let Some(c) = &mut self.counts else {
            return Ok(None);
        };
        let sample = c.read(ts_ns)?;
        self.delivered += sample.total();
        Ok(Some(sample))
    }

    /// The counts-only mode: keys the kernel's count table holds now.
    pub fn count_keys(&self) -> Result<Option<usize>, CaptureError> {
        self.counts.as_ref().map(CountReader::keys).transpose()
    }

    /// The counts-only mode: deletes the counts of namespaces not in
    /// `alive` (sorted), giving what they counted since the last reading.
    pub fn forget_counts(
        &mut self,
        ts_ns: u64,
        alive: &[u32],
    ) -> Result<Option<CountsSample>, CaptureError> {
        let Some(c) = &mut self.counts else {
            return Ok(None);
        };
        let sample = c.forget_outside(ts_ns, alive)?;
        self.delivered += sample.total();
        Ok(Some(sample))
    }

    /// Appends up to `max` events, waiting until there are some.
    ///
    /// Reads first and waits only when the ring is empty: the kernel wakes
    /// us only while its backlog is past a mark, so after a burst the rest
    /// is read at once, not one batch per wakeup. Waiting also ends every
    /// [`POLL_INTERVAL`], which bounds the latency of a trickle of events.
    pub async fn next_batch(&mut self, out: &mut Vec<Transition>, max: usize) -> io::Result<()> {
        while self.drain_into(out, max) == 0 {
            self.ready().await?;
        }
        Ok(())
    }

    /// Resolves when events may be waiting: at once when the last
    /// [`drain_each`](Self::drain_each) stopped at its limit, else on the
    /// kernel's wakeup of any ring or after [`POLL_INTERVAL`] ([`HELD_RECHECK`]
    /// while records are held back for time order). Cancel-safe.
    pub async fn ready(&mut self) -> io::Result<()> {
        if self.more {
            return Ok(());
        }
        let within = if self.reorder.held() > 0 {
            HELD_RECHECK
        } else {
            POLL_INTERVAL
        };
        let rings = &mut self.rings;
        let woken = std::future::poll_fn(|cx| {
            let mut any = false;
            for ring in rings.iter_mut() {
                if let Poll::Ready(guard) = ring.poll_read_ready_mut(cx) {
                    // Edge-triggered: cleared before the read that follows,
                    // so a wakeup that comes after that read is not lost.
                    guard?.clear_ready();
                    any = true;
                }
            }
            if any {
                Poll::Ready(Ok::<(), io::Error>(()))
            } else {
                Poll::Pending
            }
        });
        if let Ok(woken) = tokio::time::timeout(within, woken).await {
            woken?;
        }
        Ok(())
    }

    /// Lends up to `max` events, in time order, to `f`, one by one, without
    /// waiting; stops at `f`'s first error. Each event is completed with
    /// its socket's owner, side and time in state before `f` sees it.
    pub fn drain_each<E>(
        &mut self,
        max: usize,
        mut f: impl FnMut(&Transition) -> Result<(), E>,
    ) -> Result<usize, E> {
        if !self.reorder.ready() {
            self.capped = self.read_rings();
        }
        let mut n = 0;
        let mut result = Ok(());
        while n < max {
            let Some(event) = self.reorder.pop() else {
                break;
            };
            // Built where it stays, and lent: moving a Transition (~150
            // bytes) is a memcpy call, which was 6-10 % of the event
            // thread's time.
            let mut t = Transition::from_raw(&event);
            self.sockets.follow(&mut t);
            n += 1;
            if let Err(e) = f(&t) {
                result = Err(e);
                break;
            }
        }
        self.delivered += n as u64;
        self.more = self.reorder.ready() || self.capped;
        if !self.more {
            // Nothing released is left and the last read was whole.
            self.followed_to = self.watermark;
        }
        result.map(|()| n)
    }

    /// Every transition stamped before this (CLOCK_MONOTONIC ns) has been
    /// delivered and followed: the last drain emptied what the last whole
    /// read of the rings released.
    pub fn followed_to(&self) -> u64 {
        self.followed_to
    }

    /// The followed sockets these censuses should have shown and did not
    /// (see `Follower::vanished`); only once `followed_to` is past each
    /// census's end.
    pub fn vanished(&mut self, found: &[OpenPairs]) -> Vec<Vanished> {
        self.sockets.vanished(found)
    }

    /// Namespaces with sockets followed in a state a census must show.
    pub fn open_netns(&self) -> Vec<u32> {
        self.sockets.open_netns()
    }

    /// Reads every ring once and releases what is surely complete; true if
    /// a ring had more than one read takes.
    ///
    /// A transition's record is in its ring before any later transition of
    /// the same socket runs (the program runs inside the state change,
    /// under the socket's lock). So once every ring has been read past what
    /// it held at a moment T, every record of a socket up to its last one
    /// stamped before T is in hand, whatever CPUs they ran on: the records
    /// up to T (less the clocks' slack) go out sorted by time, later ones
    /// wait for the next read. (The slack also covers a record reserved and
    /// not yet submitted, which stops a ring's read: a program interrupted
    /// between the two for over 1 ms could still reorder a socket's
    /// transitions; its chain then counts a break, never silently.)
    fn read_rings(&mut self) -> bool {
        let watermark = if self.flush {
            u64::MAX
        } else {
            crate::host::clock::monotonic_ns().saturating_sub(CLOCK_SLACK_NS)
        };
        let mut capped = false;
        let rings = self.rings.len();
        for (i, ring) in self.rings.iter_mut().enumerate() {
            if let Some(lanes) = self.lanes.as_mut().filter(|l| i < l.cpus()) {
                let (reorder, malformed) = (&mut self.reorder, &mut self.malformed);
                let from_lanes = &mut self.from_lanes;
                let source = rings + i;
                let n = lanes.read(i, |event| {
                    if header_is::<TransitionEvent>(
                        event.header.kind,
                        event.header.size,
                        kind::TRANSITION,
                    ) {
                        *from_lanes += 1;
                        reorder.push(source, event.ts_ns, event);
                    } else {
                        *malformed += 1;
                    }
                });
                capped |= n == lanes.slots();
            }
            let n = read_ring(
                ring.get_mut(),
                i,
                self.ring_records,
                &mut self.malformed,
                &mut self.doorbells,
                &mut self.reorder,
            );
            capped |= n == self.ring_records;
        }
        self.reorder.release(watermark);
        self.watermark = watermark;
        capped
    }

    /// Appends whatever is in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Transition>) -> usize {
        self.drain_into(out, usize::MAX)
    }

    /// Appends up to `max` events now in the ring buffer, without waiting.
    fn drain_into(&mut self, out: &mut Vec<Transition>, max: usize) -> usize {
        let Ok(n) = self.drain_each(max, |t| {
            out.push(t.clone());
            Ok::<_, std::convert::Infallible>(())
        });
        n
    }

    /// Events read from the ring buffer so far; in the counts-only mode,
    /// the transitions its readings of the counts added up to.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Transitions read from the main program's lanes so far (0 without
    /// lanes); the others came through the ring buffers.
    pub fn read_from_lanes(&self) -> u64 {
        self.from_lanes
    }

    /// Doorbells of the lanes read so far (each rung as a lane filled to a
    /// quarter).
    pub fn doorbells(&self) -> u64 {
        self.doorbells
    }

    /// Ring-buffer records that were not events of our layout.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Detaches the programs, then reads what was left in the ring buffer,
    /// so that afterwards `delivered` is final and comparable with the
    /// kernel's `emitted` counter.
    pub async fn stop(&mut self, out: &mut Vec<Transition>) -> Result<(), CaptureError> {
        // Disarm first: both programs stop acting at once, so the catcher
        // never handles transitions merely because the main program is
        // already gone.
        self.loaded.set_armed(false)?;
        let main = self.loaded.transition_programs()[0];
        self.misses_at_disarm = Some(prog_info(&self.loaded, main)?.recursion_misses);
        // The witness's last word while the programs are still attached:
        // after detaching, every firing would look like one not run.
        let last = self.witness_reading(true);
        let witness_left = self.witness.borrow().is_ok();
        match last {
            Some((base, r)) => self
                .witness_not_run
                .set((r.gap() - base.gap()).max(0) as u64),
            // Without its last word the witness would claim a count it did
            // not take: say so instead.
            None if witness_left => self
                .give_up_witness("the tracepoint never paused for a confirmed last reading".into()),
            None => {}
        }
        self.loaded.detach()?;
        // Nothing later can come: release all that is read from now on.
        self.flush = true;
        // A record reserved just before detaching may still be committed by
        // the CPU that reserved it: read until everything the programs
        // emitted has been read (or found malformed), waiting for the ring
        // between reads, never longer than STOP_DRAIN_WITHIN.
        let deadline = tokio::time::Instant::now() + STOP_DRAIN_WITHIN;
        loop {
            self.drain_now(out);
            let emitted = self.counters()?.summary().emitted;
            if self.delivered + self.malformed >= emitted {
                break;
            }
            // Checked here too: `ready` returns at once while the last read
            // left records behind, and a timeout only fires on a wait.
            if tokio::time::Instant::now() >= deadline
                || tokio::time::timeout_at(deadline, self.ready())
                    .await
                    .is_err()
            {
                tracing::warn!(
                    emitted,
                    read = self.delivered + self.malformed,
                    "stopping: the ring buffer still lacks records its programs emitted"
                );
                break;
            }
        }
        Ok(())
    }

    /// Reads the per-CPU counters and the programs' kernel statistics.
    pub fn counters(&self) -> Result<KernelCounters, CaptureError> {
        let mut main = ProgCounters::new();
        let mut catcher = ProgCounters::new();
        // One lookup: every CPU's counters.
        let per_cpu = self
            .stats
            .get(&0, 0)
            .map_err(|e| CaptureError::Map("STATS", e))?;
        for index in 0..STATS_LEN {
            let sum: u64 = per_cpu.iter().map(|s| s.slots[index as usize]).sum();
            let Some((prog, slot)) = stats_slot(index) else {
                continue;
            };
            let p = if prog == PROG_MAIN {
                &mut main
            } else {
                &mut catcher
            };
            match slot {
                Slot::Transition(old, new) => {
                    p.transitions[old as usize * 16 + new as usize] = sum;
                }
                Slot::Stat(which) => p.stats[which as usize] = sum,
            }
        }
        let names = self.loaded.transition_programs();
        let fill = |name: &'static str, p: &mut ProgCounters| -> Result<(), CaptureError> {
            let info = prog_info(&self.loaded, name)?;
            p.recursion_misses = info.recursion_misses;
            p.run_cnt = info.run_cnt;
            p.run_time_ns = info.run_time_ns;
            Ok(())
        };
        fill(names[0], &mut main)?;
        // Only the armed window's skips: before arming and after disarming
        // the catcher does not act, so a skip then is of a run that would
        // have done nothing, not a lost transition.
        main.recursion_misses = main
            .recursion_misses
            .min(self.misses_at_disarm.unwrap_or(u64::MAX))
            .saturating_sub(self.misses_before_arming);
        let catcher = match names.get(1) {
            Some(&name) => {
                fill(name, &mut catcher)?;
                Some(catcher)
            }
            None => None,
        };
        if !self.stopped() {
            self.witness_sample();
        }
        let not_run = self
            .witness
            .borrow()
            .is_ok()
            .then(|| self.witness_not_run.get());
        Ok(KernelCounters {
            main,
            catcher,
            not_run,
        })
    }
}

/// Opens the witness and takes its reading at arming (BTF hook only: see
/// the witness module). Any failure is a reason, not an error: tracing goes
/// on without it.
fn open_witness(
    loaded: &Loaded,
    stats: &PerCpuArray<MapData, Stats>,
) -> Result<(Witness, Reading), String> {
    if loaded.hook != Hook::Btf {
        return Err("the classic tracepoint hook has none".into());
    }
    let tracefs = loader::ensure_tracefs().map_err(|e| e.to_string())?;
    let w = Witness::open(&tracefs).map_err(|e| e.to_string())?;
    let base = witness::confirmed_reading(&w, WITNESS_EDGE_WITHIN, || {
        main_runs_and_misses(loaded, stats)
    })
    .map_err(|e| e.to_string())?
    .ok_or("the tracepoint never paused for a confirmed first reading")?;
    Ok((w, base))
}

/// The main program's runs (summed over CPUs) and its `recursion_misses`.
fn main_runs_and_misses(
    loaded: &Loaded,
    stats: &PerCpuArray<MapData, Stats>,
) -> io::Result<(u64, u64)> {
    let runs_at = stat_index(PROG_MAIN, stat::RUNS) as usize;
    let runs: u64 = stats
        .get(&0, 0)
        .map_err(io::Error::other)?
        .iter()
        .map(|s| s.slots[runs_at])
        .sum();
    let main = loaded.transition_programs()[0];
    let misses = prog_info(loaded, main)
        .map_err(io::Error::other)?
        .recursion_misses;
    Ok((runs, misses))
}

/// Reads up to `max` records of one ring into `into` (counting in
/// `malformed` records of another kind or of the wrong size for theirs);
/// returns the records read.
fn read_ring(
    ring: &mut RingBuf<MapData>,
    index: usize,
    max: usize,
    malformed: &mut u64,
    doorbells: &mut u64,
    into: &mut Reorder<TransitionEvent>,
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        n += 1;
        if !is_transition(&item) {
            if is_lane_wake(&item) {
                *doorbells += 1;
            } else {
                *malformed += 1;
            }
            continue;
        }
        // SAFETY: the record is exactly one TransitionEvent (checked
        // above), written by the eBPF program from the same shared
        // definition, and every bit pattern is valid for its plain integer
        // fields; read_unaligned makes no alignment assumption.
        let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TransitionEvent>()) };
        into.push(index, event.ts_ns, event);
    }
    n
}

/// Whether a record is a whole transition event: by its header's kind and
/// size.
fn is_transition(record: &[u8]) -> bool {
    is_record::<TransitionEvent>(record, kind::TRANSITION)
}

/// Whether a record is a lane's doorbell: a header alone, which only woke
/// us.
fn is_lane_wake(record: &[u8]) -> bool {
    is_record::<EventHeader>(record, kind::LANE_WAKE)
}

/// Whether `record` is one whole `T` of kind `of`, by its header.
fn is_record<T>(record: &[u8], of: u16) -> bool {
    let Some(h) = record.get(..size_of::<EventHeader>()) else {
        return false;
    };
    let kind_of = u16::from_ne_bytes([h[0], h[1]]);
    let size = u16::from_ne_bytes([h[2], h[3]]);
    header_is::<T>(kind_of, size, of) && record.len() == usize::from(size)
}

/// Whether a header says one whole `T` of kind `of` (a ring's record read
/// from its bytes, a lane's slot from its fields).
fn header_is<T>(kind_of: u16, size: u16, of: u16) -> bool {
    kind_of == of && usize::from(size) == size_of::<T>()
}

/// The part of `struct bpf_prog_info` we read, via BPF_OBJ_GET_INFO_BY_FD
/// (aya's ProgramInfo does not expose `recursion_misses`).
struct ProgInfo {
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

fn prog_info(loaded: &Loaded, name: &'static str) -> Result<ProgInfo, CaptureError> {
    use std::os::fd::AsRawFd;
    let prog = loaded
        .ebpf
        .program(name)
        .ok_or_else(|| CaptureError::ProgInfo(name, io::Error::other("no such program")))?;
    let fd = prog
        .fd()
        .map_err(|e| CaptureError::ProgInfo(name, io::Error::other(e)))?;
    let raw_fd = fd.as_fd().as_raw_fd();
    // SAFETY: bpf_prog_info is plain data; all-zero is its documented
    // initial state for BPF_OBJ_GET_INFO_BY_FD.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // The `info` member of union bpf_attr (stable UAPI), padded to the size
    // of the union so the kernel's check of trailing bytes passes.
    let mut attr = [0u8; 128];
    let head = InfoAttr {
        bpf_fd: raw_fd as u32,
        info_len: size_of::<aya_obj::generated::bpf_prog_info>() as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: InfoAttr is 16 bytes of plain data copied into the front of a
    // zeroed 128-byte buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&head as *const InfoAttr).cast::<u8>(),
            attr.as_mut_ptr(),
            size_of::<InfoAttr>(),
        )
    };
    // SAFETY: the attr buffer and the info struct it points to outlive the
    // call; the kernel writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            attr.as_mut_ptr(),
            attr.len() as libc::c_long,
        )
    };
    if rc != 0 {
        return Err(CaptureError::ProgInfo(name, io::Error::last_os_error()));
    }
    Ok(ProgInfo {
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

/// Tells the probe and the follower which ports listened before the probe
/// saw them, so signals of their connections count on the server's side.
fn seed_listeners(
    loaded: &mut Loaded,
    sockets: &mut Follower,
    netns: u32,
    found: &[(u16, u64, Option<Owner>)],
) -> Result<(), CaptureError> {
    for (port, _, owner) in found {
        sockets.seed_listener((netns != 0).then_some(netns), *port, *owner);
    }
    let map = loaded
        .ebpf
        .map_mut("LISTENERS")
        .ok_or(CaptureError::MissingMap("LISTENERS"))?;
    let mut map: BpfHashMap<_, u64, u64> =
        BpfHashMap::try_from(map).map_err(|e| CaptureError::Map("LISTENERS", e))?;
    for &(port, listening, _) in found {
        // BPF_NOEXIST: an entry the probe made is fresher than ours.
        match map.insert(&listener_key(netns, port), &listening, 1) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(CaptureError::Map("LISTENERS", e)),
        }
    }
    Ok(())
}
