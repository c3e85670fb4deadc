//! `tcpwatch replay`: a recording fed to the same engine as the live daemon,
//! at recorded speed, faster, or as fast as possible; the result printed (and
//! served as metrics while it plays, to try dashboards and alerts on it).
use std::{
    fs::File,
    io::BufReader,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;

use crate::EngineArgs;
use tcpwatch::{
    core::{
        engine::{Engine, Input},
        metrics, record,
        view::{engine::summary_text, trace::Clock},
    },
    serve,
};

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A recording made by `tcpwatch record`.
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

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a speed (0 = as fast as possible, 1 = as recorded)"
        )),
    }
}

fn input_ts(i: &Input) -> u64 {
    match i {
        Input::Transition(t) => t.ts_ns,
        Input::Census(c) => c.ts_ns,
        Input::Counters(c) => c.ts_ns,
        Input::Kernel(k) => k.ts_ns,
        Input::Tick { ts_ns } => *ts_ns,
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let (header, reader) = record::Reader::new(BufReader::new(file))
        .with_context(|| format!("{}", args.file.display()))?;
    let clock = Clock {
        offset_ns: header.unix_ns - header.monotonic_ns as i128,
    };
    let cfg = args.engine.config();
    let engine = Arc::new(Mutex::new(Engine::new(cfg)));
    if let Some(addr) = args.metrics_addr {
        let listener = serve::metrics::bind(addr).await?;
        let engine = engine.clone();
        let info = metrics::Info {
            hook: header.hook.clone(),
            max_listeners: cfg.max_ports,
        };
        eprintln!(
            "tcpwatch: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        tokio::spawn(serve::metrics::serve(
            listener,
            Arc::new(move || metrics::render(engine.lock().expect("engine").view(), clock, &info)),
        ));
    }
    let started = Instant::now();
    let mut first: Option<u64> = None;
    for input in reader {
        let input = input.with_context(|| format!("{}", args.file.display()))?;
        if args.speed > 0.0 {
            let ts = input_ts(&input);
            let t0 = *first.get_or_insert(ts);
            let due = Duration::from_secs_f64(ts.saturating_sub(t0) as f64 / 1e9 / args.speed);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        engine.lock().expect("engine").apply(input);
    }
    let view = engine.lock().expect("engine").view();
    if args.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        print!("{}", summary_text(&view, 10));
    }
    Ok(ExitCode::SUCCESS)
}
