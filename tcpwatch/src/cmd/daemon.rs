//! `tcpwatch daemon` and `tcpwatch record`: the live engine. Transitions
//! from the probe, a census and the kernel counters every interval from the
//! sampler thread, the kernel's own account every tick; served as
//! Prometheus metrics and/or written to a recording.
use std::{
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use tcpwatch::{
    core::{
        engine::{Engine, Input, KernelSample},
        metrics,
        model::Transition,
        record,
    },
    daemon::sampler::{Sampler, Scope},
    host::{
        clock::{monotonic_ns, wall_clock},
        netns,
    },
    probe::capture::Capture,
    serve,
};

use crate::{EngineArgs, ProbeArgs, cmd::Stop};

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Serve Prometheus metrics here (default for `daemon`: 127.0.0.1:19100).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// No metrics endpoint.
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// Seconds between censuses and kernel-counter samples.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS",
          value_parser = parse_interval)]
    interval: f64,
    /// Most of one core the census thread may use, in percent: a census that
    /// takes longer (it grows with the sockets: ~120 ms for 100,000; TIME-WAIT
    /// ones are only counted, from /proc/net/sockstat, and cost nothing)
    /// stretches the interval to keep within it.
    #[arg(long, default_value_t = 2.0, value_name = "PERCENT",
          value_parser = parse_budget)]
    census_budget: f64,
    /// Scan /proc for socket owners every N censuses (the scan costs ~60 ms
    /// per 10,000 sockets).
    #[arg(long, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    owners_every: u32,
    /// Every network namespace (processes' and /run/netns), not only the daemon's.
    #[arg(long, conflicts_with = "netns")]
    all_netns: bool,
    /// One network namespace: inode, /run/netns/NAME, NAME or /proc/PID/ns/net.
    #[arg(long)]
    netns: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Stop after this many seconds.
    #[arg(short = 'd', long, value_name = "SECONDS", value_parser = parse_interval)]
    duration: Option<f64>,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The recording to write (JSON lines, format version 1; see README).
    file: PathBuf,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

fn parse_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        // At least 0.01 %: the interval is stretched by 100/budget, and a
        // vanishing budget would stretch it past any duration.
        Ok(v) if (0.01..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a percentage from 0.01 to 100")),
    }
}

/// When the next census starts, `spent` (CPU) after this one started: one
/// interval, or longer so that the census uses at most `budget_pct` of a core.
fn census_delay(interval: Duration, spent: Duration, budget_pct: f64) -> Duration {
    interval.max(spent.mul_f64(100.0 / budget_pct))
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.01 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds ≥ 0.01")),
    }
}

/// Events read from the ring buffer per wake-up, at most.
const BATCH: usize = 8192;

pub async fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let addr = match (args.no_metrics, args.metrics_addr) {
        (true, _) => None,
        (false, Some(a)) => Some(a),
        (false, None) => Some(
            serve::metrics::DEFAULT_ADDR
                .parse()
                .expect("default address"),
        ),
    };
    run(args, addr, None).await
}

pub async fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let addr = args.daemon.metrics_addr;
    run(args.daemon, addr, Some(args.file)).await
}

struct Recorder {
    writer: record::Writer<File>,
    path: PathBuf,
}

impl Recorder {
    fn write(&mut self, input: &Input) -> anyhow::Result<()> {
        self.writer
            .write(input)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn write_transition(&mut self, t: &Transition) -> anyhow::Result<()> {
        self.writer
            .write_transition(t)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// What the ring buffer holds now (up to a batch) into the engine and the
/// recording, each event by reference where it was read: at hundreds of
/// thousands of events per second, moving each into a batch or an `Input`
/// costs more than the engine's own work.
fn apply_ring(
    engine: &Mutex<Engine>,
    recorder: &mut Option<Recorder>,
    capture: &mut Capture,
) -> anyhow::Result<()> {
    let mut engine = engine.lock().expect("engine lock");
    capture.drain_each(BATCH, |t| apply_transition(&mut engine, recorder, t))?;
    Ok(())
}

/// The events read at stop.
fn apply_transitions(
    engine: &Mutex<Engine>,
    recorder: &mut Option<Recorder>,
    batch: &mut Vec<Transition>,
) -> anyhow::Result<()> {
    let mut engine = engine.lock().expect("engine lock");
    for t in batch.drain(..) {
        apply_transition(&mut engine, recorder, &t)?;
    }
    Ok(())
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

fn apply(
    engine: &Mutex<Engine>,
    recorder: &mut Option<Recorder>,
    inputs: impl IntoIterator<Item = Input>,
) -> anyhow::Result<()> {
    let mut engine = engine.lock().expect("engine lock");
    for input in inputs {
        if let Some(r) = recorder {
            r.write(&input)?;
        }
        engine.apply(input);
    }
    Ok(())
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

async fn run(
    args: DaemonArgs,
    metrics_addr: Option<SocketAddr>,
    record_to: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cfg = args.engine.config();
    let (scope, filter) = if args.all_netns {
        (Scope::All { max: cfg.max_netns }, None)
    } else if let Some(spec) = &args.netns {
        let inode = netns::resolve(spec)?;
        (
            Scope::One {
                path: netns::path(spec)?,
                inode,
            },
            Some(inode),
        )
    } else {
        // The host's (our) namespace only: containers' transitions are
        // filtered in the kernel (and counted as such) unless --all-netns.
        (Scope::Own, Some(netns::current()?))
    };
    // Bind before loading the probe: a taken port is a usage error and
    // should not cost a probe load.
    let listener = match metrics_addr {
        Some(a) => Some(serve::metrics::bind(a).await?),
        None => None,
    };
    let mut recorder = match &record_to {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create the recording {}", path.display()))?;
            Some((file, path.clone()))
        }
        None => None,
    };

    let mut capture =
        Capture::start(&args.probe.load_options(filter)).context("cannot start the probe")?;
    let clock = wall_clock();
    let hook = capture.hook();
    let mut recorder = match recorder.take() {
        Some((file, path)) => {
            let now = monotonic_ns();
            let header = record::Header::new(now, clock.unix_ns(now), Some(hook.short().into()));
            Some(Recorder {
                writer: record::Writer::new(file, &header)?,
                path,
            })
        }
        None => None,
    };
    let engine = Arc::new(Mutex::new(Engine::new(cfg)));

    if let Some(listener) = listener {
        let engine = engine.clone();
        let info = metrics::Info {
            hook: Some(hook.short().into()),
            max_listeners: cfg.max_ports,
        };
        let render = Arc::new(move || {
            let view = engine.lock().expect("engine lock").view();
            metrics::render(view, clock, &info)
        });
        eprintln!(
            "tcpwatch: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        tokio::spawn(serve::metrics::serve(listener, render));
    }

    // The sampler thread: census + counters every interval. Its channel is
    // bounded, and only it waits on it, never the event path.
    let interval = Duration::from_secs_f64(args.interval);
    let budget = args.census_budget;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Input>>(4);
    let sampler = {
        let stop = stop.clone();
        let mut sampler = Sampler::new(scope, args.owners_every);
        std::thread::Builder::new()
            .name("tcpwatch-census".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let cpu = netns::thread_cpu_with_helpers_ns();
                    let inputs = sampler.sample();
                    let spent = Duration::from_nanos(
                        netns::thread_cpu_with_helpers_ns().saturating_sub(cpu),
                    );
                    next += census_delay(interval, spent, budget);
                    if tx.blocking_send(inputs).is_err() {
                        break;
                    }
                    // Sleep in short steps so a stop is seen quickly.
                    while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                        std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
                    }
                    // A census slower than the interval: start the next now,
                    // not a burst of catch-ups.
                    next = next.max(Instant::now());
                }
            })?
    };
    eprintln!(
        "tcpwatch: daemon up via {hook}; census every {:.2} s (or less often, to stay under {budget}% of a core){}",
        args.interval,
        match &record_to {
            Some(p) => format!("; recording to {}", p.display()),
            None => String::new(),
        }
    );

    let mut stop_at = Stop::new(args.duration)?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop_at.wait() => break,
            r = capture.ready() => {
                r.context("reading the ring buffer")?;
                apply_ring(&engine, &mut recorder, &mut capture)?;
            }
            Some(inputs) = rx.recv() => apply(&engine, &mut recorder, inputs)?,
            _ = tick.tick() => {
                let k = kernel_sample(&capture)?;
                apply(&engine, &mut recorder, [k, Input::Tick { ts_ns: monotonic_ns() }])?;
                if let Some(r) = &mut recorder {
                    r.writer.flush()?;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    rx.close();
    let mut batch = Vec::new();
    capture.stop(&mut batch).await?;
    apply_transitions(&engine, &mut recorder, &mut batch)?;
    let k = kernel_sample(&capture)?;
    apply(&engine, &mut recorder, [k])?;
    if let Some(r) = &mut recorder {
        r.writer.flush()?;
        eprintln!(
            "tcpwatch: wrote {} lines to {}",
            r.writer.lines(),
            r.path.display()
        );
    }
    let _ = sampler.join();
    let accounting = capture.counters()?.summary();
    let view = engine.lock().expect("engine lock").view();
    eprintln!(
        "tcpwatch-accounting: counted={} emitted={} delivered={} ringbuf_dropped={} engine={} kernel_skipped={} caught={} unrecovered={} not_run={} witness={} nested={} bpf_run_time_ns={} bpf_run_cnt={}",
        accounting.counted,
        accounting.emitted,
        capture.delivered(),
        accounting.ringbuf_full,
        view.stats.transitions,
        accounting.kernel_skipped,
        accounting.caught,
        accounting.unrecovered,
        accounting.not_run,
        u8::from(accounting.has_witness),
        accounting.nested,
        accounting.bpf_run_time_ns,
        accounting.bpf_run_cnt,
    );
    Ok(if accounting.promise_broken() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
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
        assert!(parse_budget("0").is_err() && parse_budget("101").is_err());
        assert!(parse_budget("1e-300").is_err() && parse_budget("NaN").is_err());
        assert_eq!(parse_budget("2.5"), Ok(2.5));
    }
}
