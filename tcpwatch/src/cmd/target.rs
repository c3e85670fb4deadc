//! `--netns` of a live command: the namespace pinned for the whole run
//! (its inode can never be another namespace's while we hold it), or,
//! with `--wait`, awaited while the probe already captures, so what
//! happens in it from its first moment is kept.
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tcpwatch::{core::model::Transition, host::netns};

/// Transitions of namespaces made during a wait, held until the awaited
/// one is known: enough for a container's start, bounded whatever else
/// starts meanwhile (about 30 MiB).
const HOLD_MAX: usize = 1 << 18;

pub enum Target {
    /// No `--netns`: every namespace.
    All,
    /// Shared with the stop's censuses (`trace`).
    Pinned(Arc<netns::Pinned>),
    Waiting(Waiting),
}

pub struct Waiting {
    spec: String,
    /// Set to end the watcher thread.
    quit: Arc<AtomicBool>,
    /// Namespaces that existed before the wait: not the awaited one.
    before: HashSet<u32>,
    held: Vec<Transition>,
    /// Transitions of new namespaces not held (the hold was full).
    pub overflow: u64,
}

impl Target {
    /// `--netns spec` pinned now, or awaited with `wait` if it does not
    /// exist yet. Errors are the user's (usage).
    pub fn new(spec: Option<&str>, wait: bool) -> anyhow::Result<Target> {
        let Some(spec) = spec else {
            anyhow::ensure!(!wait, "--wait needs --netns NAME");
            return Ok(Target::All);
        };
        match netns::Pinned::open(spec) {
            Ok(p) => Ok(Target::Pinned(Arc::new(p))),
            Err(_) if wait && !spec.starts_with("/proc/") && spec.parse::<u32>().is_err() => {
                Ok(Target::Waiting(Waiting {
                    spec: spec.into(),
                    quit: Arc::new(AtomicBool::new(false)),
                    before: netns::all().into_iter().map(|n| n.inode).collect(),
                    held: Vec::new(),
                    overflow: 0,
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// The inode the kernel filters on: only a namespace known at load.
    /// While waiting, every namespace is captured and filtered here.
    pub fn kernel_filter(&self) -> Option<u32> {
        match self {
            Target::Pinned(p) => Some(p.inode),
            _ => None,
        }
    }
}

impl Waiting {
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Keeps the batch's transitions of namespaces made since the wait
    /// began; returns how many it did not keep (of older namespaces: out
    /// of scope).
    pub fn hold(&mut self, batch: &mut Vec<Transition>) -> u64 {
        let mut other = 0;
        for t in batch.drain(..) {
            if t.netns.is_some_and(|n| self.before.contains(&n)) {
                other += 1;
            } else if self.held.len() < HOLD_MAX {
                self.held.push(t);
            } else {
                self.overflow += 1;
            }
        }
        other
    }

    /// Watches for the name on a thread of its own, every millisecond:
    /// events reach us up to a poll interval late, and a namespace can be
    /// made, used and deleted within that. Resolves to it pinned.
    pub fn watch(&self) -> tokio::sync::oneshot::Receiver<netns::Pinned> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (spec, quit) = (self.spec.clone(), self.quit.clone());
        std::thread::Builder::new()
            .name("tcpwatch-netns".into())
            .spawn(move || {
                while !quit.load(Ordering::Relaxed) {
                    if let Ok(p) = netns::Pinned::open(&spec) {
                        let _ = tx.send(p);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .expect("spawning the namespace watcher");
        rx
    }

    /// What was held, for the filter now that the namespace is known.
    pub fn take_held(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.held)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
    }
}
