//! `tcpwatch top`: the live view. A client of the running daemon's control
//! socket when there is one (group `tcpwatch`, no root), else the daemon's
//! runtime in this process (root). `--once` prints one screen, `--json`
//! one snapshot.
use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use ratatui::{Terminal, backend::TestBackend};
use tcpwatch::{
    serve::control::{Client, DEFAULT_PATH, GROUP},
    tui::{self, Event, source, terminal},
};
use tcpwatch_core::{
    snapshot::Snapshot,
    view::top::{Key, Top},
};
use tokio::sync::mpsc;

use crate::{ProbeArgs, cmd::NotPermitted};

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    socket: PathBuf,
    /// Seconds between screen refreshes (without a daemon, also between
    /// the engine's ticks).
    #[arg(short = 'd', long = "delay", value_name = "SECONDS", default_value_t = 1.0,
          value_parser = parse_delay)]
    delay: f64,
    /// Print one screen as text and exit (scripts, bug reports).
    #[arg(long, conflicts_with = "json")]
    once: bool,
    /// Print one snapshot as JSON and exit.
    #[arg(long)]
    json: bool,
    /// `--once`: the screen's size [default: the terminal's, else 120x40].
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_size)]
    size: Option<(u16, u16)>,
    /// Run the probe here even when a daemon is running (root).
    #[arg(long)]
    standalone: bool,
    /// Without a daemon: `all` namespaces, the `own` one, or one (inode,
    /// NAME, /run/netns/NAME, /proc/PID/ns/net).
    #[arg(long, value_name = "NS", default_value = "all")]
    netns: String,
    #[command(flatten)]
    probe: ProbeArgs,
}

fn parse_delay(s: &str) -> Result<f64, String> {
    crate::parse_in(s, 0.1..=3600.0, "a number of seconds")
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not COLSxROWS with at least 80x24 (and at most 1000x1000)");
    let (c, r) = s.split_once('x').ok_or_else(bad)?;
    let (c, r): (u16, u16) = (c.parse().map_err(|_| bad())?, r.parse().map_err(|_| bad())?);
    if (80..=1000).contains(&c) && (24..=1000).contains(&r) {
        Ok((c, r))
    } else {
        Err(bad())
    }
}

/// Snapshots `--once` and `--json` wait for: by the third, the sampler's
/// first census is in and rates span a full interval.
const ONE_SHOT_SNAPSHOTS: usize = 3;

pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let interactive = !args.once && !args.json;
    if interactive && !std::io::stdout().is_terminal() {
        anyhow::bail!(crate::cmd::Usage(
            "top draws on a terminal; use --once (text) or --json with a pipe or file".into()
        ));
    }
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut stop_embedded = None;
    let daemon = if args.standalone {
        Err("--standalone".to_string())
    } else {
        match connect(&args.socket).await {
            Ok(c) => Ok(c),
            Err(Reach::Denied) => anyhow::bail!(NotPermitted(format!(
                "not permitted to reach the daemon at {}: ask to be added to group {GROUP}, or run `sudo tcpwatch top`",
                args.socket.display()
            ))),
            Err(Reach::Hung) => anyhow::bail!(
                "the daemon at {} did not answer within {} s",
                args.socket.display(),
                HELLO_WITHIN.as_secs()
            ),
            Err(Reach::Absent) => Err(format!("no daemon at {}", args.socket.display())),
        }
    };
    let label = match daemon {
        Ok(client) => {
            source::from_daemon(args.socket.clone(), client, tx.clone());
            format!("daemon at {}", args.socket.display())
        }
        Err(why) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                anyhow::bail!(NotPermitted(format!(
                    "{why}, and running the probe here needs root: start the daemon (`sudo tcpwatch daemon`) and join group {GROUP}, or run `sudo tcpwatch top`"
                )));
            }
            let opts = crate::cmd::daemon::embedded(&args.probe, args.delay, &args.netns)?;
            stop_embedded = Some(source::in_process(opts, tx.clone()).await?);
            format!("in-process ({why})")
        }
    };
    let mut top = Top::new(label);
    top.in_process = stop_embedded.is_some();
    let result = if interactive {
        interactive_run(top, tx, &mut rx, Duration::from_secs_f64(args.delay)).await
    } else {
        one_shot(&args, top, &mut rx).await
    };
    if let Some(stop) = stop_embedded {
        let _ = stop.send(());
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// How long a daemon may take to answer hello before `top` gives up on it.
const HELLO_WITHIN: Duration = Duration::from_secs(3);

/// Why the daemon could not be used.
enum Reach {
    /// No socket, or nobody listening: run in-process instead.
    Absent,
    /// The socket's mode keeps this user out.
    Denied,
    /// It accepted and never said hello.
    Hung,
}

async fn connect(path: &std::path::Path) -> Result<Client, Reach> {
    match tokio::time::timeout(HELLO_WITHIN, Client::connect(path)).await {
        Err(_) => Err(Reach::Hung),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) if denied(&e) => Err(Reach::Denied),
        Ok(Err(_)) => Err(Reach::Absent),
    }
}

fn denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

async fn interactive_run(
    mut top: Top,
    tx: mpsc::Sender<Event>,
    rx: &mut mpsc::Receiver<Event>,
    refresh: Duration,
) -> anyhow::Result<()> {
    // Signals end it like `q` does, so the terminal is restored.
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::hangup(),
        tokio::signal::unix::SignalKind::interrupt(),
    ] {
        let mut sig = tokio::signal::unix::signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if sig.recv().await.is_some() {
                let _ = tx.send(Event::Key(Key::Ctrl('c'))).await;
            }
        });
    }
    let (mut term, restore) = terminal::enter().context("setting up the terminal")?;
    terminal::spawn_keys(tx).context("reading keys")?;
    let r = tui::run(&mut term, &mut top, rx, refresh).await;
    drop(restore);
    r
}

async fn one_shot(
    args: &TopArgs,
    mut top: Top,
    rx: &mut mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    let mut got: Vec<Arc<Snapshot>> = Vec::new();
    let mut missed = 0;
    while got.len() < ONE_SHOT_SNAPSHOTS {
        match rx.recv().await {
            Some(Event::Snapshot(s, m)) => {
                missed += m;
                got.push(s);
            }
            Some(Event::Failed(e)) => anyhow::bail!(e),
            Some(Event::Source(s)) if s.starts_with("daemon lost") => anyhow::bail!(s),
            Some(_) => {}
            None => anyhow::bail!("the snapshot source ended"),
        }
    }
    let last = got.last().expect("two snapshots");
    if args.json {
        super::print(&format!("{}\n", serde_json::to_string(&**last)?))?;
        return Ok(());
    }
    let (cols, rows) = args.size.unwrap_or_else(|| {
        ratatui::crossterm::terminal::size()
            .ok()
            .filter(|&(c, r)| c >= 80 && r >= 24 && std::io::stdout().is_terminal())
            .unwrap_or((120, 40))
    });
    for (i, s) in got.iter().enumerate() {
        top.update(s.clone(), if i == 0 { missed } else { 0 });
    }
    let mut term = Terminal::new(TestBackend::new(cols, rows))?;
    term.draw(|f| tui::draw::draw(f, &top))?;
    super::print(&tui::screen_text(term.backend().buffer()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_delays_have_ranges() {
        assert_eq!(parse_size("120x40"), Ok((120, 40)));
        assert!(parse_size("79x24").is_err() && parse_size("80x9").is_err());
        assert!(parse_size("x").is_err() && parse_size("99999x99999").is_err());
        assert!(parse_delay("0").is_err() && parse_delay("1e300").is_err());
        assert_eq!(parse_delay("0.5"), Ok(0.5));
    }
}
