//! `tcpwatch alerts`: the running daemon's active and recently resolved
//! alerts, from its control socket; `--follow` prints each one as it fires
//! and resolves, as JSON lines.
use std::{collections::BTreeMap, io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::bail;
use clap::Args;
use tcpwatch::{
    core::{
        detect::{Alert, AlertKey, Severity, Subject},
        protocol::{Reply, Request},
        snapshot::Snapshot,
        view::top::fmt,
    },
    serve::control::{Client, DEFAULT_PATH},
};

#[derive(Args, Debug)]
pub struct AlertsArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    socket: PathBuf,
    /// The alerts as one JSON object (`active`, `recent`, `dropped`).
    #[arg(long, conflicts_with = "follow")]
    json: bool,
    /// Print every alert as it fires and resolves, one JSON object per line
    /// (`{"event":"fired"|"resolved","alert":{...}}`), until interrupted.
    #[arg(long)]
    follow: bool,
}

fn snapshot_of(reply: Reply) -> anyhow::Result<std::sync::Arc<Snapshot>> {
    match reply {
        Reply::Snapshot { snapshot, .. } => Ok(snapshot),
        Reply::Error { message } => bail!("the daemon refused: {message}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}

pub async fn run(args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.socket).await?;
    let mut out = std::io::stdout().lock();
    if !args.follow {
        let s = snapshot_of(client.ask(&Request::Snapshot).await?)?;
        if args.json {
            serde_json::to_writer(&mut out, &s.alerts)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", text(&s))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Following: what is active when we start is printed as fired; from
    // then on, what appears in the active list fired and what leaves it
    // resolved (at the daemon's time when its recent list still has it),
    // so no resolution is missed however many happen at once.
    let mut reply = client.ask(&Request::Subscribe).await?;
    let mut active: BTreeMap<(AlertKey, u64), Alert> = BTreeMap::new();
    loop {
        let s = snapshot_of(reply)?;
        let now: BTreeMap<(AlertKey, u64), Alert> = s
            .alerts
            .active
            .iter()
            .map(|a| ((a.key.clone(), a.since_ns), a.clone()))
            .collect();
        let before = std::mem::take(&mut active);
        for (k, a) in &now {
            if !before.contains_key(k) {
                event(&mut out, "fired", a)?;
            }
        }
        for (k, mut a) in before {
            if !now.contains_key(&k) {
                a.resolved_ns = s.alerts.resolved_at(&a).or(Some(s.view.now_ns));
                event(&mut out, "resolved", &a)?;
            }
        }
        active = now;
        reply = client.next().await?;
    }
}

fn event(out: &mut impl std::io::Write, what: &str, a: &Alert) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &serde_json::json!({"event": what, "alert": a}))?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn subject(s: &Subject) -> String {
    match s {
        Subject::Listener { address, port } => format!("{}:{port}", fmt::address(address)),
        Subject::Process { pid, comm } => format!("{} (pid {pid})", fmt::comm(Some(comm))),
        Subject::Port { port, direction } => format!("port {port} ({direction})"),
        Subject::Destination { address, port } => format!("to {}:{port}", fmt::address(address)),
    }
}

/// The alerts as a person reads them: active first, with their
/// description, then the recently resolved.
fn text(s: &Snapshot) -> String {
    let age = |since: u64, until: u64| fmt::age(until.saturating_sub(since) as f64 / 1e9);
    let mut o = String::new();
    if s.alerts.active.is_empty() {
        o.push_str("no active alerts\n");
    }
    for a in &s.alerts.active {
        o.push_str(&format!(
            "{} {} {} netns {} for {}\n  {}\n  {}\n",
            match a.severity {
                Severity::Critical => "CRITICAL",
                Severity::Warning => "WARNING",
            },
            a.key.name,
            subject(&a.key.subject),
            a.key.netns,
            age(a.since_ns, s.view.now_ns),
            fmt::comm(Some(&a.summary)),
            fmt::comm(Some(&a.description)),
        ));
    }
    if !s.alerts.recent.is_empty() {
        o.push_str("recently resolved:\n");
    }
    for a in s.alerts.recent.iter().rev() {
        o.push_str(&format!(
            "  {} {} netns {}: lasted {}, resolved {} ago\n",
            a.key.name,
            subject(&a.key.subject),
            a.key.netns,
            age(a.since_ns, a.resolved_ns.unwrap_or(a.since_ns)),
            age(a.resolved_ns.unwrap_or(s.view.now_ns), s.view.now_ns),
        ));
    }
    o
}
