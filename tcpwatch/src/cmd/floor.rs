//! `tcpwatch floor` (hidden): what any program on tcpwatch's hook costs at
//! least, for the bench. It attaches a program that only bumps a per-CPU
//! counter (with `--keyed`, a count per namespace and state pair: the least
//! an in-kernel aggregation costs), says so, and at SIGINT or SIGTERM prints
//! the count.
use std::process::ExitCode;

use clap::Args;
use tcpwatch::probe::loader::Floor;

#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Count per network namespace and state pair in a per-CPU hash
    #[arg(long)]
    keyed: bool,
}

pub async fn run(args: FloorArgs) -> anyhow::Result<ExitCode> {
    let floor = Floor::attach(args.keyed)?;
    say!("tcpwatch floor: attached (Ctrl-C to stop)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("tcpwatch-floor: counted={}", floor.counted()?);
    Ok(ExitCode::SUCCESS)
}
