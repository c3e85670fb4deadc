//! `tcpwatch top`: the live view. The model (`tcpwatch_core::view::top`)
//! takes snapshots and keys; [`draw`] lays it out; [`run`] joins them to a
//! terminal and an event channel, both handed in, so tests drive the whole
//! app with ratatui's `TestBackend` and replayed snapshots.
pub mod draw;
pub mod source;
pub mod terminal;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ratatui::{Terminal, backend::Backend, buffer::Buffer};
use tcpwatch_core::{
    snapshot::Snapshot,
    view::top::{Action, Key, Top},
};
use tokio::sync::mpsc;

/// What reaches the app.
#[derive(Debug)]
pub enum Event {
    /// A snapshot, and how many the source skipped before it.
    Snapshot(Arc<Snapshot>, u64),
    /// The source's state changed (connected, lost, reconnecting): the
    /// header says it.
    Source(String),
    Key(Key),
    /// The terminal changed size.
    Resize,
    /// The source ended for good (the in-process daemon failed).
    Failed(String),
}

/// Snapshots held between two refreshes at most (a refresh of a minute
/// at a 10 ms tick would hold 6,000).
const PENDING_MAX: usize = 120;

/// Runs until `q` (or the channel closes): keys redraw at once, snapshots
/// at most every `refresh`; the first screen is drawn at once.
pub async fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    top: &mut Top,
    events: &mut mpsc::Receiver<Event>,
    refresh: Duration,
) -> anyhow::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A snapshot goes to the model only when it is drawn at once: keys then
    // act on what the screen shows (the selected row). Between refreshes
    // they wait, all of them, for the history.
    let mut pending: Vec<(Arc<Snapshot>, u64)> = Vec::new();
    let mut last_draw: Option<Instant> = None;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                match ev {
                    Event::Snapshot(s, missed) => {
                        if pending.len() >= PENDING_MAX {
                            let (_, m) = pending.remove(0);
                            top.count_missed(m + 1);
                        }
                        pending.push((s, missed));
                        if last_draw.is_some_and(|t| t.elapsed() < refresh) {
                            continue;
                        }
                        for (s, missed) in pending.drain(..) {
                            top.update(s, missed);
                        }
                    }
                    Event::Source(s) => top.source = s,
                    Event::Key(k) => {
                        if top.key(k) == Action::Quit {
                            return Ok(());
                        }
                    }
                    Event::Resize => terminal.autoresize()?,
                    Event::Failed(e) => anyhow::bail!(e),
                }
                terminal.draw(|f| draw::draw(f, top))?;
                last_draw = Some(Instant::now());
            }
            _ = tick.tick() => {
                if !pending.is_empty() {
                    for (s, missed) in pending.drain(..) {
                        top.update(s, missed);
                    }
                    terminal.draw(|f| draw::draw(f, top))?;
                    last_draw = Some(Instant::now());
                }
            }
        }
    }
}

/// One screen as text (`--once`, tests): each row's symbols, trailing
/// blanks trimmed.
pub fn screen_text(buf: &Buffer) -> String {
    let w = buf.area.width as usize;
    let mut out = String::new();
    for row in buf.content().chunks(w.max(1)) {
        let line: String = row.iter().map(|c| c.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
