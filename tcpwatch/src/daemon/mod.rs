//! The daemon's runtime: the probe's events, the sampler thread's censuses
//! and counters, and the kernel's own account every tick go into the
//! engine, which only this event loop touches; each tick it publishes one
//! [`Snapshot`] on a watch channel for everyone who serves or shows it.
pub mod config;
pub mod recorder;
pub mod sampler;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tcpwatch_core::{
    config::{Config, Detect},
    detect::{Change, Detector},
    engine::{Engine, EngineConfig, Input, KernelSample},
    metrics::{ControlCounters, Info},
    model::{Accounting, Transition},
    snapshot::Snapshot,
    sockets::OpenPairs,
    view::trace::Clock,
};
use tokio::sync::{mpsc, watch};

use self::{
    config::Reload,
    recorder::Recorder,
    sampler::{Sampler, Scope},
};
use crate::{
    host::{
        clock::{monotonic_ns, wall_clock},
        netns, usage,
    },
    probe::{capture::Capture, loader::LoadOptions, signals::SignalReader},
};

/// How often, at most, namespaces the engine just met are censused outside
/// the rounds.
const FIRST_SEEN_EVERY: Duration = Duration::from_millis(200);

/// First-seen namespaces kept while the sampler is busy, at most.
const FIRST_SEEN_PENDING: usize = 64;

/// Events read from the ring buffer per wake-up, at most.
const BATCH: usize = 8192;

/// Everything the runtime needs to know; `cmd::daemon` builds it from the
/// configuration file and the command line.
#[derive(Clone)]
pub struct Options {
    pub probe: LoadOptions,
    pub scope: Scope,
    /// The settings in force (file, then flags); the live ones change on
    /// SIGHUP.
    pub config: Config,
    /// What SIGHUP re-reads.
    pub reload: Reload,
    /// Write every input to this recording.
    pub record_to: Option<PathBuf>,
}

/// What the sampler thread reads before each census.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SamplerSettings {
    interval: Duration,
    budget_pct: f64,
    owners_every: u32,
    max_netns: usize,
    time_wait_fill: f64,
}

impl SamplerSettings {
    fn of(c: &Config) -> SamplerSettings {
        SamplerSettings {
            interval: Duration::from_secs_f64(c.daemon.interval),
            budget_pct: c.daemon.census_budget,
            owners_every: c.daemon.owners_every,
            max_netns: c.limits.max_netns,
            time_wait_fill: c.detect.time_wait_fill,
        }
    }
}

/// What the daemon reports when it stops.
pub struct Outcome {
    pub accounting: Accounting,
    pub delivered: u64,
    pub engine_transitions: u64,
    /// Breaks in sockets' chains of transitions the engine followed.
    pub chain_breaks: u64,
    /// Followed sockets that vanished from a census while believed open.
    pub sockets_vanished: u64,
    /// Lines written to the recording, if any.
    pub recorded: Option<(PathBuf, u64)>,
    /// The counts-only mode: `delivered` is what the counts added up to.
    pub counts_only: bool,
}

/// A running daemon's publishing side, handed to whoever serves snapshots.
pub struct Started {
    pub hook: String,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The control socket's counters, published with each snapshot.
    pub control: Arc<ControlStats>,
    /// The Alertmanager sink's, when one runs (see `Options::sink`).
    pub sink: Arc<crate::serve::alertmanager::SinkStats>,
}

/// What the control socket did, for the metrics (written here, read by the
/// daemon at each tick).
#[derive(Debug, Default)]
pub struct ControlStats {
    pub clients: AtomicU64,
    pub refused: AtomicU64,
    pub bad_requests: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_missed: AtomicU64,
}

impl ControlStats {
    pub fn bump(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub fn read(&self) -> ControlCounters {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ControlCounters {
            clients: r(&self.clients),
            refused: r(&self.refused),
            bad_requests: r(&self.bad_requests),
            snapshots_sent: r(&self.snapshots_sent),
            snapshots_missed: r(&self.snapshots_missed),
        }
    }
}

/// When the next census starts, `spent` (CPU) after this one started: one
/// interval, or longer so that the census uses at most `budget_pct` of a core.
pub fn census_delay(interval: Duration, spent: Duration, budget_pct: f64) -> Duration {
    interval.max(budget_time(spent, budget_pct))
}

/// The wall time that `spent` CPU takes up of a budget of `budget_pct` of
/// a core.
fn budget_time(spent: Duration, budget_pct: f64) -> Duration {
    spent.mul_f64(100.0 / budget_pct)
}

/// `f`'s result, and the CPU it cost this thread and the namespace helper
/// threads it ran.
fn cpu_of<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let before = netns::thread_cpu_with_helpers_ns();
    let out = f();
    let spent = netns::thread_cpu_with_helpers_ns().saturating_sub(before);
    (out, Duration::from_nanos(spent))
}

/// Runs the daemon until `stop` resolves. `started` is called once the probe
/// is up, with the snapshot channel (metrics and other servers attach
/// there); a failure to start is returned before it is called.
pub async fn run(
    opts: Options,
    stop: impl std::future::Future<Output = ()>,
    started: impl FnOnce(Started) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    // SIGHUP reloads; it never ends the daemon, not even while it starts
    // (its default action would).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    // The recording is created only after the probe is up, so a run that
    // cannot load leaves no empty file behind.
    let mut capture = Capture::start(&opts.probe).context("cannot start the probe")?;
    let clock = wall_clock();
    let mut recorder = match &opts.record_to {
        Some(path) => Some(Recorder::create(path, clock, capture.short())?),
        None => None,
    };
    let mut running = opts.config.clone();
    let mut info = Info {
        hook: Some(capture.short().into()),
        counts_only: capture.counts_only(),
        max_listeners: running.limits.max_ports,
        control: None,
        usage: usage::myself(),
        scope: opts.probe.netns,
        alertmanager: None,
    };
    let mut engine = Engine::new(EngineConfig::from_limits(&running.limits));
    let mut detector = Detector::default();
    detector.stale_after_ns = stale_after(&running);
    let mut seq = 0;
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::new(
        seq,
        clock,
        info.clone(),
        engine.view(),
    )));
    let control = Arc::new(ControlStats::default());
    let sink = Arc::new(crate::serve::alertmanager::SinkStats::default());
    started(Started {
        hook: capture.describe(),
        snapshots: snap_rx,
        control: control.clone(),
        sink: sink.clone(),
    })?;

    let (settings, settings_rx) = watch::channel(SamplerSettings::of(&running));
    let SamplerThread {
        handle: sampler,
        mut samples,
        stop: sampler_stop,
        first_seen,
    } = spawn_sampler(opts.scope.clone(), settings_rx, capture.take_signals())
        .context("starting the census thread")?;
    let mut tick = ticker(&running);
    let mut pending: Vec<u32> = Vec::new();
    let mut seeded: HashSet<u32> = HashSet::new();
    let mut unchecked: HashMap<u32, OpenPairs> = HashMap::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = hangup.recv() => {
                if let Some(new) = reload(&opts.reload, &running) {
                    engine.set_config(EngineConfig::from_limits(&new.limits));
                    info.max_listeners = new.limits.max_ports;
                    if new.daemon.interval != running.daemon.interval {
                        tick = ticker(&new);
                        detector.stale_after_ns = stale_after(&new);
                    }
                    settings.send_replace(SamplerSettings::of(&new));
                    running = new;
                }
            }
            r = capture.ready() => {
                r.context("reading the ring buffer")?;
                drain(&mut capture, &mut engine, &mut recorder)?;
                // New namespaces are censused at once (bounded; never waited
                // for); what the sampler cannot take yet waits for the next.
                if let Some(tx) = &first_seen {
                    pending.extend(engine.take_first_seen());
                    pending.truncate(FIRST_SEEN_PENDING);
                    if !pending.is_empty()
                        && let Err(std::sync::mpsc::TrySendError::Full(back)) =
                            tx.try_send(std::mem::take(&mut pending))
                    {
                        pending = back;
                    }
                }
            }
            Some((inputs, open)) = samples.recv() => {
                seed_listeners(&mut capture, &mut seeded, &inputs);
                let inputs = with_forgotten_counts(&mut capture, inputs)?;
                apply(&mut engine, &mut recorder, inputs)?;
                queue_open(&mut unchecked, open);
            }
            _ = tick.tick() => {
                // Once per interval at most: each check is a pass over
                // every followed socket, whatever the number of censuses.
                check_vanished(&mut capture, &mut unchecked, &mut engine, &mut recorder)?;
                read_counts(&mut capture, &mut engine, &mut recorder)?;
                let k = kernel_sample(&capture)?;
                apply(&mut engine, &mut recorder, [k, Input::Tick { ts_ns: monotonic_ns() }])?;
                if let Some(r) = &mut recorder {
                    r.flush()?;
                }
                seq += 1;
                info.control = Some(control.read());
                info.usage = usage::myself();
                if !running.alertmanager.url.is_empty() {
                    info.alertmanager = Some(sink.read());
                }
                publish(&snap_tx, seq, clock, &info, &engine, &mut detector, &running.detect);
            }
        }
    }
    sampler_stop.store(true, Ordering::Relaxed);
    samples.close();
    // What the census thread had sent is taken in, so the last censuses
    // follow the ones before them.
    while let Ok((inputs, open)) = samples.try_recv() {
        let inputs = with_forgotten_counts(&mut capture, inputs)?;
        apply(&mut engine, &mut recorder, inputs)?;
        queue_open(&mut unchecked, open);
    }
    let last = last_censuses(
        &mut capture,
        move || sampler.join().ok(),
        |c| drain(c, &mut engine, &mut recorder),
        std::future::pending(),
    )
    .await?;
    if last.missed > 0 {
        tracing::warn!(
            missed = last.missed,
            "stopping: {} of the last censuses were not taken (past their {} s limit or the namespace cap, the namespace gone, or failed): a socket there whose last transitions were lost may go unnamed",
            last.missed,
            LAST_CENSUSES.as_secs()
        );
    }
    let mut batch = Vec::new();
    capture.stop(&mut batch).await?;
    for t in &batch {
        apply_transition(&mut engine, &mut recorder, t)?;
    }
    // Detached: the counts are final.
    read_counts(&mut capture, &mut engine, &mut recorder)?;
    // Everything is followed now: the censuses still waiting, then the
    // two last ones, in the order they were taken.
    check_vanished(&mut capture, &mut unchecked, &mut engine, &mut recorder)?;
    for round in last.rounds {
        queue_open(&mut unchecked, round);
        check_vanished(&mut capture, &mut unchecked, &mut engine, &mut recorder)?;
    }
    if !unchecked.is_empty() {
        // The stop's drain ended before all was read: naming would guess.
        tracing::warn!(
            namespaces = unchecked.len(),
            "stopping: the last censuses were not checked for vanished sockets (the ring buffer was not read to its end)"
        );
    }
    let k = kernel_sample(&capture)?;
    apply(&mut engine, &mut recorder, [k])?;
    publish(
        &snap_tx,
        seq + 1,
        clock,
        &info,
        &engine,
        &mut detector,
        &running.detect,
    );
    let recorded = match &mut recorder {
        Some(r) => {
            r.flush()?;
            Some((r.path().to_owned(), r.lines()))
        }
        None => None,
    };
    Ok(Outcome {
        accounting: capture.counters()?.summary(),
        delivered: capture.delivered(),
        engine_transitions: engine.view().stats.transitions,
        chain_breaks: engine.view().stats.chain_breaks,
        sockets_vanished: engine.view().stats.sockets_vanished,
        recorded,
        counts_only: capture.counts_only(),
    })
}

/// The stop's last censuses: one `Vec` per round, and how many censuses
/// were not taken (past the limit, cut short, or failed).
pub struct LastCensuses {
    pub rounds: Vec<Vec<OpenPairs>>,
    pub missed: usize,
}

/// At the stop, while the probe is still attached: two censuses in a row
/// of the namespaces with sockets followed open, so a socket whose last
/// transitions were lost is named even when the run ends before two
/// censuses of its own; a socket that closes after them is still
/// delivered. `sampler` gives the censuses' sampler (the daemon joins its
/// census thread, told to stop; `trace` makes one); `drain` delivers what
/// the rings hold, and runs meanwhile; once `cut` resolves (a second
/// signal), no further census begins.
pub async fn last_censuses(
    capture: &mut Capture,
    sampler: impl FnOnce() -> Option<Sampler> + Send + 'static,
    mut drain: impl FnMut(&mut Capture) -> anyhow::Result<()>,
    cut: impl std::future::Future<Output = ()>,
) -> anyhow::Result<LastCensuses> {
    // First follow what came before the stop (a burst just before it is
    // still in the rings), so its sockets are among those checked.
    let stop_ns = monotonic_ns();
    // A read releases what is older than the clocks' slack (1 ms): one
    // made 2 ms after the stop releases everything before it.
    tokio::time::sleep(Duration::from_millis(2)).await;
    follow_until(capture, &mut drain, stop_ns).await?;
    let open = capture.open_netns();
    let stopped = Arc::new(AtomicBool::new(false));
    let asked = open.len();
    let task = tokio::task::spawn_blocking({
        let stopped = stopped.clone();
        move || {
            // The daemon's census thread ends the census it is in first:
            // the limit counts from then, so that census cannot use it up.
            let s = sampler()?;
            if open.is_empty() {
                return Some(Vec::new());
            }
            let until_ns = monotonic_ns() + LAST_CENSUSES.as_nanos() as u64;
            let go_on = || !stopped.load(Ordering::Relaxed) && monotonic_ns() < until_ns;
            Some((0..2).map(|_| s.open_pairs(&open, &go_on)).collect())
        }
    });
    tokio::pin!(task);
    tokio::pin!(cut);
    let rounds: Vec<(Vec<OpenPairs>, usize)> = loop {
        tokio::select! {
            // The census thread, or these censuses, panicked: none taken,
            // all missed.
            r = &mut task => break r.ok().flatten().unwrap_or_else(|| vec![(Vec::new(), asked); 2]),
            _ = &mut cut, if !stopped.load(Ordering::Relaxed) => stopped.store(true, Ordering::Relaxed),
            r = capture.ready() => {
                r.context("reading the ring buffer")?;
                drain(capture)?;
            }
        }
    };
    // A socket replaced by its TIME-WAIT one leaves the census before its
    // own -> CLOSE runs: follow past each census's end by the margin the
    // running check waits for, before the probe is detached.
    let last_done = rounds.iter().flat_map(|r| &r.0).map(|o| o.done_ns).max();
    if let Some(done) = last_done {
        follow_until(capture, &mut drain, done.saturating_add(VANISH_MARGIN_NS)).await?;
    }
    Ok(LastCensuses {
        missed: rounds.iter().map(|r| r.1).sum(),
        rounds: rounds.into_iter().map(|r| r.0).collect(),
    })
}

/// Drains until every transition up to `until_ns` has been followed, or
/// for `LAST_CATCH_UP` at most.
async fn follow_until(
    capture: &mut Capture,
    drain: &mut impl FnMut(&mut Capture) -> anyhow::Result<()>,
    until_ns: u64,
) -> anyhow::Result<()> {
    let patience = tokio::time::sleep(LAST_CATCH_UP);
    tokio::pin!(patience);
    loop {
        drain(capture)?;
        if capture.followed_to() >= until_ns {
            return Ok(());
        }
        tokio::select! {
            _ = &mut patience => return Ok(()),
            r = capture.ready() => r.context("reading the ring buffer")?,
        }
    }
}

/// Of the stop's censuses, those every followed transition has passed
/// (with the margin), to check; and how many are not.
pub fn checkable(capture: &Capture, rounds: Vec<Vec<OpenPairs>>) -> (Vec<Vec<OpenPairs>>, usize) {
    let followed_to = capture.followed_to();
    let mut unchecked = 0;
    let rounds = rounds
        .into_iter()
        .map(|round| {
            let (due, late): (Vec<_>, Vec<_>) = round
                .into_iter()
                .partition(|o| followed_past(o, followed_to));
            unchecked += late.len();
            due
        })
        .collect();
    (rounds, unchecked)
}

/// Delivers what the rings hold now to the engine (and the recording).
fn drain(
    capture: &mut Capture,
    engine: &mut Engine,
    recorder: &mut Option<Recorder>,
) -> anyhow::Result<()> {
    capture.drain_each(BATCH, |t| apply_transition(engine, recorder, t))?;
    Ok(())
}

/// How long the stop waits for the transitions before it to be followed.
const LAST_CATCH_UP: Duration = Duration::from_secs(1);

/// How long after the catch-up (and the census in progress, the daemon's)
/// the stop's last censuses may still begin: with those, well within the
/// systemd unit's 30 s TimeoutStopSec, past which the account and the
/// recording's end would be lost.
const LAST_CENSUSES: Duration = Duration::from_secs(5);

/// Listener data older than this is stale to the detectors: a few
/// intervals (listeners are refreshed every interval).
fn stale_after(c: &Config) -> u64 {
    Duration::from_secs_f64((3.0 * c.daemon.interval).max(5.0)).as_nanos() as u64
}

fn ticker(c: &Config) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(c.daemon.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The configuration SIGHUP asks for, with its live parts on top of
/// `running`; None (said in the log) when there is nothing to apply.
fn reload(r: &Reload, running: &Config) -> Option<Config> {
    match r.read() {
        Ok(None) => {
            tracing::warn!("SIGHUP: no configuration file to reload (start with --config)");
            None
        }
        Err(e) => {
            tracing::error!("SIGHUP: {e}; keeping the running configuration");
            None
        }
        Ok(Some(wanted)) => {
            let later = wanted.needs_restart(running);
            if !later.is_empty() {
                tracing::warn!(
                    "SIGHUP: {} changed in the file and take effect only after a restart",
                    later.join(", ")
                );
            }
            // Only the live parts change; the rest stays as it runs.
            let mut new = running.clone();
            new.daemon.interval = wanted.daemon.interval;
            new.daemon.census_budget = wanted.daemon.census_budget;
            new.daemon.owners_every = wanted.daemon.owners_every;
            new.limits = wanted.limits;
            new.detect = wanted.detect;
            tracing::info!(
                interval = new.daemon.interval,
                census_budget = new.daemon.census_budget,
                owners_every = new.daemon.owners_every,
                max_ports = new.limits.max_ports,
                max_processes = new.limits.max_processes,
                max_netns = new.limits.max_netns,
                "SIGHUP: configuration reloaded"
            );
            Some(new)
        }
    }
}

/// Evaluates the detectors on the engine's view (logging what fired and
/// resolved) and publishes both.
fn publish(
    tx: &watch::Sender<Arc<Snapshot>>,
    seq: u64,
    clock: Clock,
    info: &Info,
    e: &Engine,
    detector: &mut Detector,
    detect: &Detect,
) {
    let view = e.view();
    for change in detector.evaluate(&view, detect) {
        match change {
            Change::Fired(a) => tracing::warn!(
                alertname = a.key.name,
                severity = ?a.severity,
                "alert: {}",
                a.summary
            ),
            Change::Resolved(a) => {
                tracing::info!(alertname = a.key.name, "resolved: {}", a.summary)
            }
        }
    }
    tx.send_replace(Arc::new(
        Snapshot::new(seq, clock, info.clone(), view).with_alerts(detector.alerts()),
    ));
}

fn apply_transition(
    engine: &mut Engine,
    recorder: &mut Option<Recorder>,
    t: &Transition,
) -> anyhow::Result<()> {
    if let Some(r) = recorder {
        r.write_transition(t)?;
    }
    engine.transition(t);
    Ok(())
}

/// How far past a census's end every transition must have been followed
/// before its check: a socket leaves the established hash just before its
/// transition to CLOSE (TIME-WAIT's hash dance), so a dump can miss a
/// socket whose close is stamped microseconds after the dump's end.
const VANISH_MARGIN_NS: u64 = 100_000_000;

/// Whether every transition up to `o`'s census end and the margin has
/// been followed: only then may the census name a socket.
fn followed_past(o: &OpenPairs, followed_to: u64) -> bool {
    o.done_ns.saturating_add(VANISH_MARGIN_NS) < followed_to
}

/// Censuses waiting for their check, at most (one per namespace: a newer
/// one replaces an older one not yet checked, which only delays a name).
const UNCHECKED_MAX: usize = 4_096;

fn queue_open(unchecked: &mut HashMap<u32, OpenPairs>, open: Vec<OpenPairs>) {
    for o in open {
        if unchecked.len() < UNCHECKED_MAX || unchecked.contains_key(&o.netns) {
            unchecked.insert(o.netns, o);
        }
    }
}

/// Checks the censuses whose end (and margin) every followed transition
/// has passed for sockets they should have shown (see
/// `Follower::vanished`), and counts those in the engine.
fn check_vanished(
    capture: &mut Capture,
    unchecked: &mut HashMap<u32, OpenPairs>,
    engine: &mut Engine,
    recorder: &mut Option<Recorder>,
) -> anyhow::Result<()> {
    let followed_to = capture.followed_to();
    let due_netns: Vec<u32> = unchecked
        .values()
        .filter(|o| followed_past(o, followed_to))
        .map(|o| o.netns)
        .collect();
    // Most ticks: nothing waiting, or nothing due yet.
    if due_netns.is_empty() {
        return Ok(());
    }
    let due: Vec<OpenPairs> = due_netns
        .iter()
        .filter_map(|n| unchecked.remove(n))
        .collect();
    let gone = capture.vanished(&due);
    for v in gone.iter().take(8) {
        tracing::debug!(
            skaddr = v.skaddr,
            netns = v.netns,
            state = v.state,
            "socket vanished"
        );
    }
    // Applied after every check, so its progress shows even with nothing
    // named (`tcpwatch_vanish_checked_timestamp_seconds`).
    apply(
        engine,
        recorder,
        [Input::Vanished {
            ts_ns: monotonic_ns(),
            sockets: gone.iter().map(|v| v.skaddr).collect(),
            checked_ns: checked_through(&due, unchecked),
        }],
    )
}

/// The time before which every census has been checked: the newest just
/// checked, but not past one still waiting.
fn checked_through(due: &[OpenPairs], left: &HashMap<u32, OpenPairs>) -> u64 {
    let newest = due.iter().map(|o| o.taken_ns).max().unwrap_or(0);
    match left.values().map(|o| o.taken_ns).min() {
        Some(waiting) => newest.min(waiting.saturating_sub(1)),
        None => newest,
    }
}

/// Namespaces whose listeners were given to the probe, kept at most (any
/// user can make namespaces in bulk; past this, as before any census).
const SEEDED_NETNS: usize = 16_384;

/// Gives the probe the listeners of each namespace at its first census:
/// those older than the probe (or than its sight of the namespace) are in
/// none of its tables. Once per namespace, so a listener closed since then
/// is never brought back; a namespace gone leaves the set. A failure is
/// logged, never fatal: those ports then count as before.
fn seed_listeners(capture: &mut Capture, seeded: &mut HashSet<u32>, inputs: &[Input]) {
    for input in inputs {
        match input {
            Input::Census(s) | Input::Listeners(s) => {
                if let Some(netns) = s.summary.netns
                    && seeded.len() < SEEDED_NETNS
                    && seeded.insert(netns)
                    && let Err(e) = capture.seed_listeners(netns, &s.summary.listening_ports())
                {
                    tracing::warn!("listeners of netns {netns} not given to the probe: {e}");
                }
            }
            Input::Namespaces { alive, .. } => {
                let alive: HashSet<&u32> = alive.iter().collect();
                seeded.retain(|n| alive.contains(n));
            }
            _ => {}
        }
    }
}

fn apply(
    engine: &mut Engine,
    recorder: &mut Option<Recorder>,
    inputs: impl IntoIterator<Item = Input>,
) -> anyhow::Result<()> {
    for input in inputs {
        if let Some(r) = recorder {
            r.write(&input)?;
        }
        engine.apply(input);
    }
    Ok(())
}

/// The counts-only mode: what the kernel counted per namespace and pair
/// since the last reading, into the engine (nothing in the per-event mode).
fn read_counts(
    capture: &mut Capture,
    engine: &mut Engine,
    recorder: &mut Option<Recorder>,
) -> anyhow::Result<()> {
    if let Some(c) = capture
        .read_counts(monotonic_ns())
        .context("reading the counts")?
    {
        apply(engine, recorder, [Input::Counts(c)])?;
    }
    Ok(())
}

/// The counts-only mode: before the engine drops the namespaces a round
/// no longer found, their counts are read a last time and deleted from the
/// kernel's map, so namespaces that come and go cannot fill it.
fn with_forgotten_counts(capture: &mut Capture, inputs: Vec<Input>) -> anyhow::Result<Vec<Input>> {
    if !capture.counts_only() {
        return Ok(inputs);
    }
    let mut out = Vec::with_capacity(inputs.len() + 1);
    for input in inputs {
        if let Input::Namespaces { ts_ns, alive } = &input
            // Stamped just before the round, or the engine would take the
            // reading for a sign of life and keep the namespace a round more.
            && let Some(c) = capture
                .forget_counts(ts_ns.saturating_sub(1), alive)
                .context("deleting the counts of namespaces gone")?
        {
            out.push(Input::Counts(c));
        }
        out.push(input);
    }
    Ok(out)
}

fn kernel_sample(capture: &Capture) -> anyhow::Result<Input> {
    let counters = capture.counters()?;
    Ok(Input::Kernel(KernelSample {
        ts_ns: monotonic_ns(),
        accounting: counters.summary(),
        delivered: capture.delivered(),
        transitions: counters
            .transitions()
            .into_iter()
            .map(|((a, b), n)| (a, b, n))
            .collect(),
    }))
}

/// The sampler thread: census + counters every interval, within its CPU
/// budget. Its channel is bounded and only it waits on it, never the event
/// path.
struct SamplerThread {
    /// Gives the sampler back when the thread ends.
    handle: JoinHandle<Sampler>,
    samples: mpsc::Receiver<(Vec<Input>, Vec<OpenPairs>)>,
    stop: Arc<AtomicBool>,
    /// Namespaces the engine just met, for an immediate census (`All`).
    first_seen: Option<std::sync::mpsc::SyncSender<Vec<u32>>>,
}

fn spawn_sampler(
    scope: Scope,
    settings: watch::Receiver<SamplerSettings>,
    signals: Option<SignalReader>,
) -> std::io::Result<SamplerThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(Vec<Input>, Vec<OpenPairs>)>(4);
    let (first_seen, fresh) = std::sync::mpsc::sync_channel::<Vec<u32>>(4);
    let first_seen = matches!(scope, Scope::All { .. }).then_some(first_seen);
    let sampler = Sampler::new(scope, settings.borrow().owners_every);
    let handle = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("tcpwatch-census".into())
            .spawn(move || census_loop(sampler, signals, settings, fresh, tx, stop))?
    };
    Ok(SamplerThread {
        handle,
        samples: rx,
        stop,
        first_seen,
    })
}

/// How often the signal table is read, at most (the detectors' rates
/// span 10 s).
const SIGNALS_EVERY: Duration = Duration::from_millis(950);

/// The census thread's loop, until `stop` or the event loop is gone.
fn census_loop(
    mut sampler: Sampler,
    mut signals: Option<SignalReader>,
    mut settings: watch::Receiver<SamplerSettings>,
    fresh: std::sync::mpsc::Receiver<Vec<u32>>,
    tx: mpsc::Sender<(Vec<Input>, Vec<OpenPairs>)>,
    stop: Arc<AtomicBool>,
) -> Sampler {
    // Full censuses are spaced by their CPU budget; in between,
    // every interval, a listeners-only one keeps the per-listener
    // signals fresh (they matter most in a flood, exactly when a
    // full census is dearest).
    let mut next = Instant::now();
    let mut next_full = next;
    let mut last_first_seen = next;
    let mut last_signals: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let s = *settings.borrow_and_update();
        sampler.set_owners_every(s.owners_every);
        sampler.set_max_netns(s.max_netns);
        sampler.time_wait_peers_at = Some(s.time_wait_fill);
        let started = Instant::now();
        let (mut inputs, open) = if started >= next_full {
            let (sampled, spent) = cpu_of(|| sampler.sample());
            next_full = started + census_delay(s.interval, spent, s.budget_pct);
            sampled
        } else {
            (sampler.sample_listeners(), Vec::new())
        };
        // At most once a second: a full table is thousands of syscalls.
        if let Some(reader) = &mut signals
            && last_signals.is_none_or(|t: Instant| t.elapsed() >= SIGNALS_EVERY)
        {
            last_signals = Some(Instant::now());
            match reader.read(monotonic_ns()) {
                Ok(sample) => inputs.push(Input::Signals(sample)),
                Err(e) => {
                    // Said once; the rest of the daemon goes on without them.
                    tracing::warn!("reset and SYN-ACK counters unreadable, left out: {e}");
                    signals = None;
                }
            }
        }
        next += s.interval;
        if tx.blocking_send((inputs, open)).is_err() {
            break;
        }
        // Sleep in short steps so a stop is seen quickly, and
        // census namespaces met meanwhile at once (at most one
        // such round per FIRST_SEEN_EVERY, what arrives between
        // merged).
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            // A reload applies now, not after the old interval.
            if settings.has_changed().unwrap_or(false) {
                next = Instant::now();
                next_full = next_full.min(next + s.interval);
                break;
            }
            let step = (next - Instant::now()).min(Duration::from_millis(50));
            let mut inodes = match fresh.recv_timeout(step) {
                Ok(inodes) => inodes,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(step);
                    continue;
                }
            };
            if let Some(wait) = FIRST_SEEN_EVERY.checked_sub(last_first_seen.elapsed()) {
                std::thread::sleep(wait);
            }
            while let Ok(more) = fresh.try_recv() {
                inodes.extend(more);
            }
            inodes.sort_unstable();
            inodes.dedup();
            last_first_seen = Instant::now();
            // Charged to the budget like a full round's census.
            let ((inputs, open), spent) = cpu_of(|| sampler.sample_first_seen(&inodes));
            next_full += budget_time(spent, s.budget_pct);
            if !inputs.is_empty() && tx.blocking_send((inputs, open)).is_err() {
                return sampler;
            }
        }
        // A round slower than the interval: start the next now,
        // not a burst of catch-ups.
        next = next.max(Instant::now());
    }
    sampler
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn census_keeps_within_its_cpu_budget() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Cheap census: the interval.
        assert_eq!(census_delay(s(1), ms(13), 2.0), s(1));
        // 100,000 sockets (~122 ms) at 2%: every 6.1 s.
        assert_eq!(census_delay(s(1), ms(122), 2.0), ms(6100));
        // A generous budget: the interval again.
        assert_eq!(census_delay(s(1), ms(122), 100.0), s(1));
    }
}
