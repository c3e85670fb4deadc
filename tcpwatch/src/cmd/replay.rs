//! `tcpwatch replay`: a recording fed to the same engine as the live daemon,
//! at recorded speed, faster, or as fast as possible; the result printed (and
//! served as metrics while it plays, to try dashboards and alerts on it).
use std::{
    fs::File,
    io::BufReader,
    net::SocketAddr,
    os::unix::fs::FileTypeExt,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;

use crate::EngineArgs;
use tcpwatch::{
    core::{
        engine::{Engine, Input},
        metrics, record,
        snapshot::Snapshot,
        view::{engine::summary_text, trace::Clock},
    },
    serve,
};
use tokio::sync::watch;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A recording made by `tcpwatch record` (`-`: standard input).
    file: PathBuf,
    /// Playback speed: 1 as recorded, 10 ten times faster, 0 as fast as possible.
    #[arg(long, default_value_t = 0.0, value_parser = parse_speed)]
    speed: f64,
    /// Print the engine's final view as one JSON object.
    #[arg(long)]
    json: bool,
    /// Serve the replayed engine as Prometheus metrics while it plays.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// 0, or 0.001 to 1,000,000: slower than a thousandth would wait past
/// what a timer can say for a recording of any length.
fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v == 0.0 || (0.001..=1_000_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a speed: 0 (as fast as possible), or 0.001 to 1000000 (1 = as recorded)"
        )),
    }
}

fn input_ts(i: &Input) -> u64 {
    match i {
        Input::Transition(t) => t.ts_ns,
        Input::Census(c) | Input::Listeners(c) => c.ts_ns,
        Input::Counters(c) => c.ts_ns,
        Input::Kernel(k) => k.ts_ns,
        Input::Signals(s) => s.ts_ns,
        Input::Counts(c) => c.ts_ns,
        Input::Tick { ts_ns } => *ts_ns,
        Input::Namespaces { ts_ns, .. } | Input::Vanished { ts_ns, .. } => *ts_ns,
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    // `-` is stdin; a FIFO blocks in open() until its writer opens it,
    // which is said, since nothing else would show why replay waits. No
    // signal handler is installed yet, so Ctrl-C ends the wait.
    let input: Box<dyn std::io::Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        if std::fs::metadata(&args.file).is_ok_and(|m| m.file_type().is_fifo()) {
            say!(
                "tcpwatch: {} is a FIFO: waiting for a writer (Ctrl-C to stop)",
                args.file.display()
            );
        }
        Box::new(
            File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        )
    };
    let (header, reader) = record::Reader::new(BufReader::new(input))
        .with_context(|| format!("{}", args.file.display()))?;
    let clock = Clock {
        offset_ns: header.unix_ns - header.monotonic_ns as i128,
    };
    let cfg = args.engine.config();
    let mut engine = Engine::new(cfg);
    let info = metrics::Info {
        hook: header.hook.clone(),
        counts_only: header.hook.as_deref() == Some(metrics::COUNTS_ONLY_HOOK),
        max_listeners: cfg.max_ports,
        ..Default::default()
    };
    // As the live daemon does: a snapshot per recorded tick, for the
    // metrics endpoint (the sender must outlive the replay).
    let (snapshots, snap_rx) = watch::channel(Arc::new(Snapshot::new(
        0,
        clock,
        info.clone(),
        engine.view(),
    )));
    if let Some(addr) = args.metrics_addr {
        let listener = serve::metrics::bind(addr)?;
        say!(
            "tcpwatch: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        serve::metrics::spawn(listener, snap_rx).context("starting the metrics thread")?;
    }
    let started = Instant::now();
    let mut first: Option<u64> = None;
    let mut seq = 0;
    for input in reader {
        let input = match input {
            Ok(i) => i,
            Err(record::RecordError::Cut { line }) => {
                say!(
                    "tcpwatch: warning: {}: line {line} is cut short (the recorder stopped mid-line); replayed the {} lines before it",
                    args.file.display(),
                    line - 1
                );
                break;
            }
            Err(e) => return Err(e).with_context(|| format!("{}", args.file.display())),
        };
        if args.speed > 0.0 {
            let ts = input_ts(&input);
            let t0 = *first.get_or_insert(ts);
            let due = Duration::try_from_secs_f64(ts.saturating_sub(t0) as f64 / 1e9 / args.speed)
                .unwrap_or(Duration::MAX);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let tick = matches!(input, Input::Tick { .. });
        engine.apply(input);
        if tick && args.metrics_addr.is_some() {
            seq += 1;
            snapshots.send_replace(Arc::new(Snapshot::new(
                seq,
                clock,
                info.clone(),
                engine.view(),
            )));
        }
    }
    let view = engine.view();
    if args.json {
        super::print(&format!("{}\n", serde_json::to_string(&view)?))?;
    } else {
        super::print(&summary_text(&view, 10))?;
    }
    Ok(ExitCode::SUCCESS)
}
