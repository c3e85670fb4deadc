//! Where `top`'s snapshots come from: a running daemon's control socket
//! (any member of its group, no root), or a daemon runtime started in this
//! process (root). Both feed the same channel.
use std::{path::PathBuf, time::Duration};

use tcpwatch_core::protocol::{Reply, Request};
use tokio::sync::{mpsc, oneshot};

use super::Event;
use crate::{daemon, serve::control::Client};

/// How long to wait before trying a lost daemon again.
const RETRY: Duration = Duration::from_secs(1);

/// Subscribes to the daemon at `path` (already reached once as `client`)
/// and forwards its snapshots; when the daemon goes away, says so and
/// reconnects, so a restarted daemon is picked up again.
pub fn from_daemon(path: PathBuf, client: Client, tx: mpsc::Sender<Event>) {
    spawn_reporting(tx.clone(), async move {
        let mut client = Some(client);
        loop {
            let c = match client.take() {
                Some(c) => Ok(c),
                None => tokio::time::timeout(RETRY * 3, Client::connect(&path))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer to hello"))),
            };
            let why = match c {
                Ok(c) => {
                    let _ = tx
                        .send(Event::Source(format!("daemon at {}", path.display())))
                        .await;
                    pump(c, &tx).await
                }
                Err(e) => format!("{e:#}"),
            };
            if tx.is_closed() {
                return;
            }
            let _ = tx
                .send(Event::Source(format!("daemon lost ({why}); retrying")))
                .await;
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// Spawns `task`; if it panics, the app is told (and ends, restoring the
/// terminal) instead of drawing on without its source.
fn spawn_reporting(
    tx: mpsc::Sender<Event>,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = handle.await
            && e.is_panic()
        {
            let _ = tx
                .send(Event::Failed(format!("the snapshot source failed: {e}")))
                .await;
        }
    });
}

async fn pump(mut c: Client, tx: &mpsc::Sender<Event>) -> String {
    let mut reply = c.ask(&Request::Subscribe).await;
    loop {
        match reply {
            Ok(Reply::Snapshot { missed, snapshot }) => {
                if tx.send(Event::Snapshot(snapshot, missed)).await.is_err() {
                    return "top ended".into();
                }
            }
            Ok(Reply::Error { message }) => return format!("the daemon refused: {message}"),
            Ok(other) => return format!("unexpected reply {other:?}"),
            Err(e) => return format!("{e:#}"),
        }
        reply = c.next().await;
    }
}

/// Runs the daemon's runtime here and forwards each snapshot it publishes.
/// Returns once the probe is up (or with the reason it cannot be, e.g. not
/// root); sending on (or dropping) the returned sender stops it.
pub async fn in_process(
    opts: daemon::Options,
    tx: mpsc::Sender<Event>,
) -> anyhow::Result<oneshot::Sender<()>> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
    let ready = std::sync::Arc::new(std::sync::Mutex::new(Some(ready_tx)));
    let tell = move |r: anyhow::Result<()>| {
        let sender = ready.lock().unwrap_or_else(|p| p.into_inner()).take();
        match sender {
            Some(s) => s.send(r).is_ok(),
            None => false,
        }
    };
    let tell_started = tell.clone();
    spawn_reporting(tx.clone(), async move {
        let fwd = tx.clone();
        let r = daemon::run(
            opts,
            async move {
                let _ = stop_rx.await;
            },
            move |started| {
                let mut rx = started.snapshots;
                tokio::spawn(async move {
                    while rx.changed().await.is_ok() {
                        let s = rx.borrow_and_update().clone();
                        if fwd.send(Event::Snapshot(s, 0)).await.is_err() {
                            return;
                        }
                    }
                });
                tell_started(Ok(()));
                Ok(())
            },
        )
        .await;
        if let Err(e) = r {
            let msg = format!("{e:#}");
            // Before start-up: the caller gets the error itself; after: the app.
            if !tell(Err(e)) {
                let _ = tx.send(Event::Failed(msg)).await;
            }
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(stop_tx),
        Ok(Err(e)) => Err(e),
        Err(_) => anyhow::bail!("the in-process daemon ended before it started"),
    }
}
