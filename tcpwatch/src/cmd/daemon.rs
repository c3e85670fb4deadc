//! `tcpwatch daemon` and `tcpwatch record`: parse, start the runtime
//! (`tcpwatch::daemon`) with its metrics endpoint and/or recording, and
//! print its account at the end.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tcpwatch::{
    daemon::{self, Options, sampler::Scope},
    host::netns,
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

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.01 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds ≥ 0.01")),
    }
}

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

async fn run(
    args: DaemonArgs,
    metrics_addr: Option<SocketAddr>,
    record_to: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let engine = args.engine.config();
    let (scope, filter) = if args.all_netns {
        (
            Scope::All {
                max: engine.max_netns,
            },
            None,
        )
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
    let listener = metrics_addr.map(serve::metrics::bind).transpose()?;
    let opts = Options {
        probe: args.probe.load_options(filter),
        engine,
        scope,
        interval: Duration::from_secs_f64(args.interval),
        census_budget: args.census_budget,
        owners_every: args.owners_every,
        record_to,
    };
    let mut stop = Stop::new(args.duration)?;
    let (interval, budget) = (args.interval, args.census_budget);
    let recording = opts.record_to.clone();
    let out = daemon::run(opts, async move { stop.wait().await }, |started| {
        if let Some(listener) = listener {
            eprintln!(
                "tcpwatch: metrics on http://{}/metrics",
                listener.local_addr()?
            );
            serve::metrics::spawn(listener, started.snapshots.clone())
                .context("starting the metrics thread")?;
        }
        eprintln!(
            "tcpwatch: daemon up via {}; census every {interval:.2} s (or less often, to stay under {budget}% of a core){}",
            started.hook,
            match &recording {
                Some(p) => format!("; recording to {}", p.display()),
                None => String::new(),
            }
        );
        Ok(())
    })
    .await?;
    if let Some((path, lines)) = &out.recorded {
        eprintln!("tcpwatch: wrote {lines} lines to {}", path.display());
    }
    let a = &out.accounting;
    eprintln!(
        "tcpwatch-accounting: counted={} emitted={} delivered={} ringbuf_dropped={} engine={} kernel_skipped={} caught={} unrecovered={} not_run={} witness={} nested={} bpf_run_time_ns={} bpf_run_cnt={}",
        a.counted,
        a.emitted,
        out.delivered,
        a.ringbuf_full,
        out.engine_transitions,
        a.kernel_skipped,
        a.caught,
        a.unrecovered,
        a.not_run,
        u8::from(a.has_witness),
        a.nested,
        a.bpf_run_time_ns,
        a.bpf_run_cnt,
    );
    Ok(if a.promise_broken() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_outside_their_range_are_refused() {
        assert!(parse_budget("0").is_err() && parse_budget("101").is_err());
        assert!(parse_budget("1e-300").is_err() && parse_budget("NaN").is_err());
        assert_eq!(parse_budget("2.5"), Ok(2.5));
    }
}
