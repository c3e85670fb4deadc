//! `tcpwatch floor` (hidden): what any program on tcpwatch's hook costs at
//! least, for the bench. It attaches a program that only bumps a per-CPU
//! counter, says so, and at SIGINT or SIGTERM prints the count.
use std::process::ExitCode;

use tcpwatch::probe::loader::Floor;

pub async fn run() -> anyhow::Result<ExitCode> {
    let floor = Floor::attach()?;
    say!("tcpwatch floor: attached (Ctrl-C to stop)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("tcpwatch-floor: counted={}", floor.counted()?);
    Ok(ExitCode::SUCCESS)
}
