//! `tcpwatch daemon` and `tcpwatch record`: read the configuration (file,
//! then flags), start the runtime (`tcpwatch::daemon`) with its metrics
//! endpoint and/or recording, and print its account at the end.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use tcpwatch::{
    core::config::{Config, ConnectHook, range},
    daemon::{
        self, Options,
        config::{Reload, load},
        sampler::Scope,
    },
    host::netns,
    probe::loader::ConnectChoice,
    serve,
};

use crate::{
    EngineArgs, ProbeArgs,
    cmd::{Stop, Why},
};

/// Every setting but `--config`, `-d` and `-v` overrides the configuration
/// file (`tcpwatch config default` prints it with its defaults).
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The configuration file [default: /etc/tcpwatch/tcpwatch.toml when it
    /// exists, else built-in defaults]. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics here [default for `daemon`: 127.0.0.1:19100].
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// No metrics endpoint.
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// The control socket's path [default: /run/tcpwatch/tcpwatch.sock].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// No control socket.
    #[arg(long, conflicts_with = "control_socket")]
    no_control: bool,
    /// Seconds between ticks, censuses and kernel-counter samples [default: 1].
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
    interval: Option<f64>,
    /// Most of one core the census thread may use, in percent: a census that
    /// takes longer (it grows with the sockets: ~120 ms for 100,000; TIME-WAIT
    /// ones are only counted, from /proc/net/sockstat, and cost nothing)
    /// stretches the interval to keep within it [default: 2].
    #[arg(long, value_name = "PERCENT", value_parser = parse_budget)]
    census_budget: Option<f64>,
    /// Scan /proc for socket owners every N censuses (the scan costs ~60 ms
    /// per 10,000 sockets) [default: 10].
    #[arg(long, value_name = "N", value_parser = crate::in_range(range::OWNERS_EVERY))]
    owners_every: Option<u32>,
    /// Every network namespace (processes' and /run/netns), not only the daemon's.
    #[arg(long, conflicts_with = "netns")]
    all_netns: bool,
    /// Count transitions per namespace and state pair in the kernel and
    /// follow no socket: the cost of a bare counter, but no per-port or
    /// per-process transitions, durations or chain checks (BTF hook only).
    #[arg(long)]
    counts_only: bool,
    /// Where connect() calls that fail before a SYN are caught: fexit where
    /// the kernel allows it, else the syscall tracepoint (auto); the
    /// syscall tracepoint, which taxes every system call of every task
    /// (syscall); or not at all (off) [default: auto].
    #[arg(long, value_enum)]
    connect_hook: Option<ConnectChoice>,
    /// One network namespace: inode, /run/netns/NAME, NAME or /proc/PID/ns/net.
    #[arg(long)]
    netns: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Stop after this many seconds.
    #[arg(short = 'd', long, value_name = "SECONDS", value_parser = parse_duration)]
    duration: Option<f64>,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The recording to write (JSON lines, format version 1; see README;
    /// `-`: standard output). Created mode 0600, never through a symlink.
    file: PathBuf,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

fn parse_budget(s: &str) -> Result<f64, String> {
    crate::parse_in(s, range::BUDGET_PCT, "a percentage")
}

fn parse_interval(s: &str) -> Result<f64, String> {
    crate::parse_in(s, range::INTERVAL_S, "a number of seconds")
}

pub(super) fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.01 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds ≥ 0.01")),
    }
}

impl DaemonArgs {
    /// Lays the flags given over a configuration (at start and on SIGHUP).
    fn apply(&self, c: &mut Config) {
        if let Some(a) = self.metrics_addr {
            c.metrics.addr = a;
            c.metrics.enabled = true;
        }
        if self.no_metrics {
            c.metrics.enabled = false;
        }
        if let Some(p) = &self.control_socket {
            c.control.path = p.clone();
            c.control.enabled = true;
        }
        if self.no_control {
            c.control.enabled = false;
        }
        if let Some(v) = self.interval {
            c.daemon.interval = v;
        }
        if let Some(v) = self.census_budget {
            c.daemon.census_budget = v;
        }
        if let Some(v) = self.owners_every {
            c.daemon.owners_every = v;
        }
        if self.all_netns {
            c.daemon.netns = "all".into();
        }
        if self.counts_only {
            c.probe.counts_only = true;
        }
        if let Some(h) = self.connect_hook {
            c.probe.connect_hook = match h {
                ConnectChoice::Auto => ConnectHook::Auto,
                ConnectChoice::Syscall => ConnectHook::Syscall,
                ConnectChoice::Off => ConnectHook::Off,
            };
        }
        if let Some(n) = &self.netns {
            c.daemon.netns = n.clone();
        }
        self.engine.apply(&mut c.limits);
        self.probe.apply(&mut c.probe);
    }
}

pub async fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    run(args, None).await
}

pub async fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    run(args.daemon, Some(args.file)).await
}

/// The namespaces covered and the kernel filter for `daemon.netns`.
fn scope(netns_setting: &str, max_netns: usize) -> anyhow::Result<(Scope, Option<u32>)> {
    Ok(match netns_setting {
        "all" => (Scope::All { max: max_netns }, None),
        // The host's (our) namespace only: containers' transitions are
        // filtered in the kernel (and counted as such).
        "own" => (Scope::Own, Some(netns::current()?)),
        spec => {
            let pin = netns::Pinned::open(spec).map_err(super::usage)?;
            let inode = pin.inode;
            (Scope::One(Arc::new(pin)), Some(inode))
        }
    })
}

/// The runtime's options for a daemon inside another command (`top`
/// without a daemon): the configuration file's settings (or defaults), this
/// interval and namespace scope (`all`, `own` or one), nothing served.
pub fn embedded(probe: &ProbeArgs, interval: f64, netns: &str) -> anyhow::Result<Options> {
    let (path, mut cfg) = load(None)?;
    cfg.daemon.interval = interval;
    cfg.daemon.netns = netns.into();
    probe.apply(&mut cfg.probe);
    let (scope, filter) = scope(&cfg.daemon.netns, cfg.limits.max_netns)?;
    Ok(Options {
        probe: probe.load_options(&cfg.probe, filter),
        scope,
        config: cfg,
        reload: Reload {
            path,
            overrides: Arc::new(|_: &mut Config| {}),
        },
        record_to: None,
    })
}

async fn run(args: DaemonArgs, record_to: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (path, mut cfg) = load(args.config.as_deref())?;
    args.apply(&mut cfg);
    // `record` serves metrics only when asked on its command line.
    let serve_metrics = if record_to.is_some() {
        args.metrics_addr.is_some()
    } else {
        cfg.metrics.enabled
    };
    let (scope, filter) = scope(&cfg.daemon.netns, cfg.limits.max_netns)?;
    // Bind before loading the probe: a taken port is a usage error and
    // should not cost a probe load.
    let listener = if serve_metrics {
        Some(serve::metrics::bind(cfg.metrics.addr)?)
    } else {
        None
    };
    // `record` opens a control socket only when asked on its command line.
    let control = if cfg.control.enabled && (record_to.is_none() || args.control_socket.is_some()) {
        Some(serve::control::bind(&cfg.control.path)?)
    } else {
        None
    };
    let overrides = {
        let args = args.clone();
        Arc::new(move |c: &mut Config| args.apply(c))
    };
    let opts = Options {
        // cfg.probe already holds the flags; applying them again is a no-op.
        probe: args.probe.load_options(&cfg.probe, filter),
        scope,
        config: cfg.clone(),
        reload: Reload { path, overrides },
        record_to,
    };
    let mut stop = Stop::new(args.duration)?;
    if opts.record_to.is_some() {
        // A recording from a terminal ends with it, whole (the daemon
        // itself reloads its configuration on SIGHUP instead).
        stop = stop.on_hangup()?;
    }
    let why = Arc::new(std::sync::Mutex::new(None));
    let recording = opts.record_to.clone();
    let out = daemon::run(
        opts,
        {
            let why = why.clone();
            async move {
                let w = stop.wait().await;
                *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
            }
        },
        |started| {
            if let Some(listener) = listener {
                say!(
                    "tcpwatch: metrics on http://{}/metrics",
                    listener.local_addr()?
                );
                serve::metrics::spawn(listener, started.snapshots.clone())
                    .context("starting the metrics thread")?;
            }
            if !cfg.alertmanager.url.is_empty() {
                let (host, port, prefix) = tcpwatch::core::config::parse_am_url(&cfg.alertmanager.url)
                    .map_err(anyhow::Error::msg)?;
                let instance = if cfg.alertmanager.instance.is_empty() {
                    tcpwatch::host::hostname()
                } else {
                    cfg.alertmanager.instance.clone()
                };
                say!(
                    "tcpwatch: alerts to Alertmanager at {} as instance {instance}",
                    cfg.alertmanager.url
                );
                serve::alertmanager::spawn(
                    serve::alertmanager::Target { host, port, prefix },
                    tcpwatch::core::detect::alertmanager::Policy {
                        instance,
                        resend_s: cfg.alertmanager.resend,
                        keep_resolved_s: tcpwatch::core::detect::alertmanager::KEEP_RESOLVED_S,
                    },
                    started.snapshots.clone(),
                    started.sink.clone(),
                )
                .context("starting the Alertmanager sink")?;
            }
            if let Some(c) = &control {
                say!("tcpwatch: control socket at {}", c.path.display());
                serve::control::spawn(
                    c.listener.try_clone()?,
                    started.snapshots.clone(),
                    started.control.clone(),
                )
                .context("starting the control socket thread")?;
            }
            say!(
                "tcpwatch: daemon up via {}; census every {:.2} s (or less often, to stay under {}% of a core){}",
                started.hook,
                cfg.daemon.interval,
                cfg.daemon.census_budget,
                match &recording {
                    Some(p) => format!("; recording to {}", p.display()),
                    None => String::new(),
                }
            );
            Ok(())
        },
    )
    .await?;
    if let Some((path, lines)) = &out.recorded {
        say!("tcpwatch: wrote {lines} lines to {}", path.display());
    }
    let a = &out.accounting;
    let witness = if a.has_witness {
        format!(
            "{} firings the kernel ran no program for (all namespaces)",
            a.not_run
        )
    } else {
        "no witness: firings the kernel runs no program for went uncounted".into()
    };
    // The account in words, as trace gives it, then the machine line.
    if out.counts_only {
        say!(
            "tcpwatch: {} transitions counted in the kernel: {} by namespace and pair, {} in no namespace (the count table full, or counted as their namespace's counts were deleted), {} taken in by the engine",
            a.counted,
            out.delivered,
            a.counted.saturating_sub(out.delivered),
            out.engine_transitions
        );
        say!(
            "tcpwatch: the kernel skipped the counting program {} times (nested runs): {} lost (no catcher in the counts-only mode); {witness}",
            a.kernel_skipped,
            a.unrecovered,
        );
    } else {
        say!(
            "tcpwatch: {} transitions counted in the kernel: {} delivered, {} dropped (ring buffer full), {} taken in by the engine",
            a.counted,
            out.delivered,
            a.ringbuf_full,
            out.engine_transitions
        );
        say!(
            "tcpwatch: the kernel skipped the main program {} times (nested runs); the catcher handled {}; {} lost; {witness}",
            a.kernel_skipped,
            a.caught,
            a.unrecovered,
        );
    }
    // Breaks and vanished sockets the ring buffer's counted drops do not
    // explain (a dropped close leaves its socket to vanish): transitions
    // lost before any program counted them, in scope.
    let named = out.chain_breaks + out.sockets_vanished;
    let unexplained = named.saturating_sub(a.ringbuf_full + a.read_failed);
    super::say_named_losses(out.chain_breaks, out.sockets_vanished, named - unexplained);
    if a.double_counted > 0 || a.nested > 0 {
        say!(
            "tcpwatch: {} transitions may have been counted twice; the main program ran nested {} times",
            a.double_counted,
            a.nested
        );
    }
    say!(
        "tcpwatch-accounting: counted={} emitted={} delivered={} ringbuf_dropped={} engine={} kernel_skipped={} caught={} unrecovered={} not_run={} witness={} double_counted={} nested={} chain_breaks={} sockets_vanished={} bpf_run_time_ns={} bpf_run_cnt={}",
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
        a.double_counted,
        a.nested,
        out.chain_breaks,
        out.sockets_vanished,
        a.bpf_run_time_ns,
        a.bpf_run_cnt,
    );
    let why = *why.lock().unwrap_or_else(|p| p.into_inner());
    Ok(exit_status(a.promise_broken() || unexplained > 0, why))
}

/// Asked to stop by a signal (an operator, systemd), the daemon has done
/// its job: losses are in its log and metrics, not a failed stop for the
/// service manager. A timed run (`-d`, scripts and tests) exits 3 on loss.
fn exit_status(lost: bool, why: Option<Why>) -> ExitCode {
    match (lost, why) {
        (true, Some(Why::Signal)) => {
            tracing::warn!(
                "transitions were lost during this run (see the accounting line and tcpwatch_events_lost_total)"
            );
            ExitCode::SUCCESS
        }
        (true, _) => ExitCode::from(3),
        (false, _) => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DaemonArgs,
    }

    #[test]
    fn budgets_outside_their_range_are_refused() {
        assert!(parse_budget("0").is_err() && parse_budget("101").is_err());
        assert!(parse_budget("1e-300").is_err() && parse_budget("NaN").is_err());
        assert_eq!(parse_budget("2.5"), Ok(2.5));
        assert!(parse_interval("1e300").is_err() && parse_interval("0").is_err());
    }

    #[test]
    fn flags_override_the_file_and_only_the_flags_given() {
        let file = Config::parse(
            "[daemon]\ninterval = 5\nowners_every = 3\n[limits]\nmax_ports = 9\nmax_processes = 7\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "x",
            "--interval",
            "0.5",
            "--max-ports",
            "100",
            "--no-metrics",
        ]);
        let mut c = file.clone();
        cli.args.apply(&mut c);
        assert_eq!(c.daemon.interval, 0.5);
        assert_eq!(c.daemon.owners_every, 3, "not given: the file's");
        assert_eq!(c.limits.max_ports, 100);
        assert_eq!(c.limits.max_processes, 7);
        assert!(!c.metrics.enabled);
        assert_eq!(c.probe, file.probe);
    }

    #[test]
    fn a_signal_stop_is_success_and_a_timed_run_reports_loss() {
        assert_eq!(exit_status(true, Some(Why::Signal)), ExitCode::SUCCESS);
        assert_eq!(exit_status(true, Some(Why::Duration)), ExitCode::from(3));
        assert_eq!(exit_status(false, Some(Why::Duration)), ExitCode::SUCCESS);
    }
}
