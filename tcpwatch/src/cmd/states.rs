//! `tcpwatch states`: one census of TCP sockets, counted per state (the
//! answer to `netstat -nat | awk '{print $6}' | sort | uniq -c` and `ss -s`),
//! per listener (`-p`) and per process (`-P`).
use std::{collections::HashSet, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use tcpwatch::{
    core::{
        census::{TimeWait, summarize},
        view::states::{listeners_table, processes_table, states_table},
    },
    host::{census, netns, owners},
};

#[derive(Args, Debug)]
pub struct StatesArgs {
    /// One JSON object: totals per state, listeners, processes.
    #[arg(long)]
    json: bool,
    /// Per listening socket: accept queue, backlog, SYN-RECV, owner.
    #[arg(short = 'p', long = "listeners")]
    listeners: bool,
    /// Per owning process: its sockets by state.
    #[arg(short = 'P', long = "processes")]
    processes: bool,
    /// Another network namespace: /run/netns/NAME, NAME, /proc/PID/ns/net or an inode number.
    #[arg(long)]
    netns: Option<String>,
}

pub fn run(args: StatesArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    // Every socket listed, TIME-WAIT too: one census, so its cost is no
    // concern, and its counts are `ss -tan`'s exactly.
    let listed = TimeWait::Listed;
    let (census, ns) = match &args.netns {
        Some(spec) => {
            let inode = netns::resolve(spec).map_err(super::usage)?;
            let path = netns::path(spec).map_err(super::usage)?;
            let census = census::take_in(&path, None, listed, None).context("socket census")?;
            (census, Some(inode))
        }
        None => (
            census::take(listed, None).context("socket census")?,
            netns::current().ok(),
        ),
    };
    let entries = &census.entries;
    let census_done = started.elapsed();
    let inodes: HashSet<u64> = entries
        .iter()
        .filter(|e| e.inode != 0)
        .map(|e| e.inode as u64)
        .collect();
    let owners = owners::socket_owners(&inodes).unwrap_or_else(|e| {
        tracing::warn!("socket owners unknown: {e}");
        Default::default()
    });
    tracing::debug!(
        sockets = entries.len(),
        census_ms = census_done.as_secs_f64() * 1e3,
        owners_ms = (started.elapsed() - census_done).as_secs_f64() * 1e3,
        "census"
    );
    // SAFETY: geteuid has no preconditions.
    if (args.listeners || args.processes) && unsafe { libc::geteuid() } != 0 {
        say!(
            "tcpwatch: note: the owners of other users' sockets need root to be read; they are shown as - and ?"
        );
    }
    let summary = summarize(ns, &census, &owners);
    if args.json {
        super::print(&format!("{}\n", serde_json::to_string(&summary)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = states_table(&summary);
    if args.listeners {
        text.push('\n');
        text.push_str(&listeners_table(&summary));
    }
    if args.processes {
        text.push('\n');
        text.push_str(&processes_table(&summary));
    }
    super::print(&text)?;
    Ok(ExitCode::SUCCESS)
}
