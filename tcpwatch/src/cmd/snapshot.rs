//! `tcpwatch snapshot`: the running daemon's latest snapshot (or the next
//! N with `--follow`), as JSON lines, read from its control socket.
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::bail;
use clap::Args;
use tcpwatch::{
    core::protocol::{Reply, Request},
    serve::control::{Client, DEFAULT_PATH},
};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    socket: PathBuf,
    /// Subscribe and print this many snapshots, one per tick.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    follow: Option<u64>,
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.socket).await?;
    let (first, count) = match args.follow {
        Some(n) => (Request::Subscribe, n),
        None => (Request::Snapshot, 1),
    };
    let mut reply = client.ask(&first).await?;
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        if i > 0 {
            reply = client.next().await?;
        }
        match &reply {
            Reply::Snapshot { .. } => {
                serde_json::to_writer(&mut out, &reply)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            Reply::Error { message } => bail!("the daemon refused: {message}"),
            other => bail!("unexpected reply: {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
