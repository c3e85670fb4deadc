//! Project tasks: `cargo xtask setup | test | install | deb | run | bench | loadgen | demo | vm`.
//!
//! Everything a fresh machine needs beyond rustup is installed from here
//! (system packages) or from tcpwatch/build.rs (bpf-linker), so the README's
//! two commands are all a user or CI types.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod deb;
mod demo;
mod install;
mod loadgen;
mod matrix;
mod purity;
mod syn_packet;
mod vm;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the system tools the tests use and build everything once.
    Setup,
    /// Set up, then run every test (unit, kernel and CLI) as root on this
    /// kernel, then the behaviour tests on Debian's 6.1 and 6.12 in qemu.
    Test {
        /// Where the kernel tests run: `host` (this kernel only), `6.1` or
        /// `6.12` (that guest only), or `all` (this kernel, then each guest).
        #[arg(long, default_value = "all", value_parser = ["host", "6.1", "6.12", "all"])]
        kernel: String,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build tcpwatch (release) and install it as PREFIX/sbin/tcpwatch
    /// (default /usr/local/sbin, on root's PATH).
    Install(install::InstallArgs),
    /// Build the Debian package (cargo-deb): binary, unit, configuration,
    /// man pages, completions, Prometheus rules, Grafana dashboards.
    Deb {
        /// Then install it here with dpkg, use it, purge it and check that
        /// nothing is left (root; `cargo xtask test` does this).
        #[arg(long)]
        check: bool,
    },
    /// Build tcpwatch (release) and run it with the given arguments.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Overhead and loss of tcpwatch (and peers with --peers) under loopback churn.
    Bench(bench::BenchArgs),
    /// The bench's load generator (loopback, in a fresh network namespace).
    Loadgen(loadgen::LoadArgs),
    /// Scenarios to watch, in a namespace of their own: `synflood` floods a
    /// listener with spoofed SYNs (with, then without syncookies) while
    /// `tcpwatch top` shows it and its alerts (root, a terminal).
    Demo {
        #[arg(value_parser = ["synflood"])]
        scenario: String,
    },
    /// Boot a Debian kernel (6.1, 6.12) in qemu and run one command in it,
    /// with the host's root read-only: `cargo xtask vm --kernel 6.1 -- uname -r`.
    Vm(vm::VmArgs),
}

/// Commands the tests run, and the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("nft", "nftables"),
    // The daemon tests scrape /metrics with a real HTTP client and check the
    // exposition with Prometheus' own linter.
    ("curl", "curl"),
    ("promtool", "prometheus"),
    // `top` is tested in a real terminal.
    ("tmux", "tmux"),
    // The alert sink is tested against a real Alertmanager.
    ("prometheus-alertmanager", "prometheus-alertmanager"),
];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup(),
        Task::Test { kernel, args } => {
            purity::check(&workspace_root())?;
            setup()?;
            if !is_root() {
                eprintln!(
                    "xtask: WARNING: not root: the kernel tests will be SKIPPED (and fail if CI is set). \
                     Run as root to test the eBPF side."
                );
            }
            // Every skipped test notes itself here; listed at the end, so a
            // skip is never only a line in a passing test's output.
            let skips = workspace_root().join("target/test-skips.log");
            let _ = std::fs::remove_file(&skips);
            // SAFETY: xtask has started no thread yet.
            unsafe { std::env::set_var("TCPWATCH_SKIP_LOG", &skips) };
            if matches!(kernel.as_str(), "host" | "all") {
                // The default members: every host crate (tcpwatch-ebpf only
                // builds for the BPF target, through tcpwatch's build.rs).
                // With the fault-injection object: the accounting tests make
                // the kernel side act as skipped or never run.
                cargo(&["test", "--features", "tcpwatch/fault-injection"], &args)?;
                // The package, installed, used and purged on this machine.
                if is_root() {
                    deb::check(&workspace_root())?;
                } else if std::env::var_os("CI").is_some() {
                    bail!("CI is set but the tests do not run as root: the package check needs it");
                } else {
                    use std::io::Write as _;
                    let mut log = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&skips)?;
                    writeln!(log, "the package check (xtask deb): not root")?;
                }
            }
            if kernel != "host" {
                matrix::run(&workspace_root(), &kernel)?;
            }
            match std::fs::read_to_string(&skips) {
                Ok(list) if !list.trim().is_empty() => eprintln!(
                    "xtask: SKIPPED {} test(s); they did not run:\n{list}",
                    list.lines().count()
                ),
                _ => eprintln!("xtask: every test ran (none skipped)"),
            }
            Ok(())
        }
        Task::Bench(args) => {
            if !is_root() {
                bail!("the bench loads BPF programs and makes namespaces: run it as root");
            }
            setup()?;
            // The load generator too: a debug build would measure itself.
            cargo(
                &[
                    "build",
                    "--release",
                    "--package",
                    "tcpwatch",
                    "--package",
                    "xtask",
                ],
                &[],
            )?;
            bench::run(args, &workspace_root())
        }
        Task::Loadgen(args) => loadgen::cli(&args),
        Task::Deb { check: false } => deb::build(&workspace_root()).map(drop),
        Task::Deb { check: true } => deb::check(&workspace_root()),
        Task::Demo { .. } => demo::synflood(&workspace_root()),
        Task::Install(args) => {
            cargo(&["build", "--release", "--package", "tcpwatch"], &[])?;
            install::run(&args, &workspace_root())
        }
        Task::Vm(args) => {
            let code = vm::cli(&args, &workspace_root())?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Task::Run { args } => {
            cargo(&["build", "--release", "--package", "tcpwatch"], &[])?;
            let bin = workspace_root().join("target/release/tcpwatch");
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(cmd).is_file())
}

fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|&(_, pkg)| pkg)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing packages {} and not root to install them: apt-get install {}",
                missing.join(" "),
                missing.join(" ")
            );
        }
        apt_install(&missing)?;
    }
    // Builds bpf-linker on first use (tcpwatch/build.rs) and the eBPF object.
    cargo(&["build", "--all-targets"], &[])
}

/// Installs Debian packages (the bench's peers, the tests' tools).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: installing {}", packages.join(" "));
    sh("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    sh("apt-get", &args)
}

fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !status.success() {
        bail!("{cmd} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

pub fn cargo(args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(args);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}
