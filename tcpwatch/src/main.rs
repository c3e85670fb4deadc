//! The tcpwatch command line: parses, wires edges to the core, prints.
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tcpwatch::{
    core::config,
    probe::loader::{ConnectChoice, HookChoice, LoadOptions},
};

#[macro_use]
mod cmd;

const EXAMPLES: &str = "\
Examples:
  tcpwatch trace                      every TCP state transition, live
  tcpwatch trace --port 443           only connections with local or remote port 443
  tcpwatch trace --state close-wait   transitions into or out of CLOSE-WAIT
  tcpwatch trace --json --duration 60 > t.jsonl
                                      one minute as JSON lines
  tcpwatch trace --netns /run/netns/blue --count 100
  tcpwatch states -p                  sockets per state, then per listener with queues
  tcpwatch states --json              the same census as one JSON object
  tcpwatch daemon                     metrics on http://127.0.0.1:19100/metrics
  tcpwatch daemon --all-netns --metrics-addr 0.0.0.0:19100
  tcpwatch record --duration 60 t.rec one minute of everything the engine sees
  tcpwatch replay t.rec               the same engine, from the recording
  tcpwatch top                        live view (the daemon's, or the probe here as root)
  tcpwatch top --once                 one screen as text
  tcpwatch alerts --follow            alerts as they fire and resolve, as JSON lines
  tcpwatch snapshot --follow 5        five ticks of the running daemon, as JSON lines
  tcpwatch config default > /etc/tcpwatch/tcpwatch.toml
  tcpwatch config check /etc/tcpwatch/tcpwatch.toml

Exit codes: 0 done, 1 error, 2 bad usage or configuration, 3 transitions lost in the kernel,
69 kernel cannot run the probe, 77 not permitted (needs root or CAP_BPF+CAP_PERFMON).";

#[derive(Parser, Debug)]
#[command(
    name = "tcpwatch",
    version,
    about = "TCP state transitions from the kernel, counted without loss and attributed to their owners",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every TCP state transition as it happens (a better tcpstates).
    Trace(cmd::trace::TraceArgs),
    /// Count TCP sockets per state, listener and process, now (a better `ss -s`).
    States(cmd::states::StatesArgs),
    /// Run the engine: transitions, census and kernel counters, served as Prometheus metrics.
    Daemon(cmd::daemon::DaemonArgs),
    /// Run the engine and write everything it consumes to a recording.
    Record(cmd::daemon::RecordArgs),
    /// Feed a recording to the engine and print (or serve) the result.
    Replay(cmd::replay::ReplayArgs),
    /// Watch TCP live: sockets by state, transitions, listeners, processes.
    Top(cmd::top::TopArgs),
    /// The running daemon's alerts: active and recently resolved, or followed.
    Alerts(cmd::alerts::AlertsArgs),
    /// Print the running daemon's snapshot as JSON (from its control socket).
    Snapshot(cmd::snapshot::SnapshotArgs),
    /// Print the default configuration, or check a configuration file.
    Config(cmd::config::ConfigArgs),
    /// The bench's floor: a program on the same hook that only counts.
    #[command(hide = true)]
    Floor(cmd::floor::FloorArgs),
    /// Write man pages and shell completions into a directory (packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Directory for man/ (man1 pages) and completions/ (bash, zsh, fish).
    dir: std::path::PathBuf,
}

/// Man pages (one per command, as `git` ships them) and completions.
fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let man = args.dir.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cli.clone(), &man)?;
    let completions = args.dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cli.clone(), "tcpwatch", &completions)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of every command that loads the probe.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Kernel hook: tp_btf with a recursion catcher, or the classic
    /// tracepoint [default: auto].
    #[arg(long, value_enum)]
    hook: Option<HookChoice>,
    /// Each CPU's ring buffer in KiB, rounded up to a power of two
    /// [default: 4 MiB shared out between CPUs, at least 256 KiB each].
    #[arg(long, value_name = "KIB", value_parser = in_range(config::range::RING_KIB))]
    ring_kib: Option<u32>,
    /// Show the verifier's log when the kernel rejects a program, and debug logs.
    #[arg(short, long)]
    verbose: bool,
    /// Audit with a perf counter of the tracepoint's firings (the witness,
    /// host-wide): firings the kernel ran no program for are counted as
    /// lost. Costs ~370 ns per transition; off by default.
    #[arg(long, conflicts_with = "no_witness")]
    witness: bool,
    /// No witness, even if the configuration file asks for one.
    #[arg(long)]
    no_witness: bool,
    /// Fault injection (test builds only): the programs act as if the
    /// kernel never ran them for every N-th armed firing on each CPU.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true, value_name = "N")]
    simulate_not_run_every: Option<u16>,
}

/// The engine's cardinality caps (daemon, record, replay); for the daemon
/// they override the configuration file.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Namespaces kept apart; the rest are summed as "other" [default: 256].
    #[arg(long, value_parser = in_range(config::range::NETNS_CAP))]
    max_netns: Option<usize>,
    /// Ports tracked one by one (busiest first; the rest are "other")
    /// [default: 64].
    #[arg(long, value_parser = in_range(config::range::CAP))]
    max_ports: Option<usize>,
    /// Processes tracked one by one (busiest first; the rest are "other")
    /// [default: 64].
    #[arg(long, value_parser = in_range(config::range::CAP))]
    max_processes: Option<usize>,
}

impl EngineArgs {
    /// Lays the flags given over `limits`.
    pub fn apply(&self, limits: &mut config::Limits) {
        if let Some(n) = self.max_netns {
            limits.max_netns = n;
        }
        if let Some(n) = self.max_ports {
            limits.max_ports = n;
        }
        if let Some(n) = self.max_processes {
            limits.max_processes = n;
        }
    }

    /// The caps for a run without a configuration file (replay).
    pub fn config(&self) -> tcpwatch::core::engine::EngineConfig {
        let mut limits = config::Limits::default();
        self.apply(&mut limits);
        tcpwatch::core::engine::EngineConfig::from_limits(&limits)
    }
}

impl ProbeArgs {
    /// Lays the flags given over `probe`.
    pub fn apply(&self, probe: &mut config::Probe) {
        if let Some(h) = self.hook {
            probe.hook = match h {
                HookChoice::Auto => config::Hook::Auto,
                HookChoice::Btf => config::Hook::Btf,
                HookChoice::Classic => config::Hook::Classic,
            };
        }
        if let Some(k) = self.ring_kib {
            probe.ring_kib = Some(k);
        }
        if self.witness {
            probe.witness = true;
        }
        if self.no_witness {
            probe.witness = false;
        }
    }

    /// What the loader is asked for: `probe` (defaults or a file) with the
    /// flags on top.
    pub fn load_options(&self, probe: &config::Probe, netns: Option<u32>) -> LoadOptions {
        let mut probe = probe.clone();
        self.apply(&mut probe);
        LoadOptions {
            hook: match probe.hook {
                config::Hook::Auto => HookChoice::Auto,
                config::Hook::Btf => HookChoice::Btf,
                config::Hook::Classic => HookChoice::Classic,
            },
            netns,
            ring_bytes: probe.ring_kib.map(|k| k.saturating_mul(1024)),
            verbose: self.verbose,
            witness: probe.witness,
            counts_only: probe.counts_only,
            connect: match probe.connect_hook {
                config::ConnectHook::Auto => ConnectChoice::Auto,
                config::ConnectHook::Syscall => ConnectChoice::Syscall,
                config::ConnectHook::Off => ConnectChoice::Off,
            },
            #[cfg(feature = "fault-injection")]
            simulate_not_run_every: self.simulate_not_run_every.unwrap_or(0),
            ..LoadOptions::default()
        }
    }
}

/// A flag's value within a configuration range (`core::config::range`), so
/// the file and the command line accept the same values.
pub fn parse_in<T>(s: &str, range: std::ops::RangeInclusive<T>, what: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match s.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not {what} from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// `parse_in` as a clap value parser.
fn in_range<T>(range: std::ops::RangeInclusive<T>) -> impl Fn(&str) -> Result<T, String> + Clone
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Clone + Send + Sync + 'static,
{
    move |s| parse_in(s, range.clone(), "a value")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon's log says what it does (start-up, reloads) at info; the
    // one-shot commands speak only of trouble.
    let level = match &cli.command {
        Command::Trace(a) if a.probe.verbose => "debug",
        Command::Daemon(a) if a.probe.verbose => "debug",
        Command::Record(a) if a.daemon.probe.verbose => "debug",
        Command::Daemon(_) | Command::Record(_) => "info",
        // Logs would scribble over the screen (TCPWATCH_LOG still applies).
        Command::Top(_) => "off",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Escape codes only for a person at a terminal, not for log files
        // and scripts that parse the fields.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TCPWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("tcpwatch: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => cmd::trace::run(args).await,
            Command::States(args) => cmd::states::run(args),
            Command::Daemon(args) => cmd::daemon::daemon(args).await,
            Command::Record(args) => cmd::daemon::record(args).await,
            Command::Replay(args) => cmd::replay::run(args).await,
            Command::Config(args) => cmd::config::run(args),
            Command::Snapshot(args) => cmd::snapshot::run(args).await,
            Command::Top(args) => cmd::top::run(args).await,
            Command::Alerts(args) => cmd::alerts::run(args).await,
            Command::Floor(args) => cmd::floor::run(args).await,
            Command::Generate(args) => generate(args),
        }
    });
    match result {
        Ok(code) => code,
        // Nobody is reading: nothing to say.
        Err(e) if e.is::<cmd::ClosedPipe>() => ExitCode::from(cmd::EXIT_CLOSED_PIPE),
        Err(e) => {
            say!("tcpwatch: {e:#}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
