//! The control socket: a Unix socket where local clients (`tcpwatch top`,
//! scripts) read the daemon's snapshots. Length-delimited frames of JSON
//! (`tcpwatch_core::protocol`). It runs on its own thread and runtime and
//! only reads published snapshots, so no client can slow the capture; each
//! client holds at most one snapshot and one frame, and the number of
//! clients, per user and in all, is capped.
use std::{
    collections::HashMap,
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tcpwatch_core::{
    protocol::{MAX_CLIENT_FRAME, MAX_SERVER_FRAME, PROTOCOL_VERSION, Reply, Request},
    snapshot::Snapshot,
};
use tokio::{net::UnixStream, sync::watch};

use crate::daemon::ControlStats as Counters;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Where the daemon listens unless told otherwise (systemd's
/// RuntimeDirectory=tcpwatch makes /run/tcpwatch).
pub const DEFAULT_PATH: &str = "/run/tcpwatch/tcpwatch.sock";
/// The group whose members may connect (mode 0660); root only without it.
pub const GROUP: &str = "tcpwatch";
pub const MAX_CLIENTS: usize = 64;
pub const MAX_PER_USER: usize = 16;
/// Time to say hello, and to send each request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that takes longer to read one frame is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket: refuses when another daemon answers on it, replaces a
/// stale one left by a crash, and leaves it mode 0660, group `tcpwatch`
/// when that group exists (else root's).
pub fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control socket: creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another tcpwatch daemon is running: {} answers (stop it, or give this one --control-socket)",
                    path.display()
                );
            }
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            std::fs::remove_file(path)
                .with_context(|| format!("control socket: removing stale {}", path.display()))?;
        }
        Ok(_) => bail!(
            "control socket: {} exists and is not a socket; not replacing it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("control socket: {}", path.display())),
    }
    // SAFETY: umask only swaps the process's file-creation mask; restored
    // right after, so the socket is never briefly open to others.
    let old = unsafe { libc::umask(0o117) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("control socket: binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group_id(GROUP) {
        std::os::unix::fs::chown(path, Some(0), Some(gid))
            .with_context(|| format!("control socket: chown {}", path.display()))?;
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam takes a NUL-terminated name and returns a pointer to
    // static storage (or null), read at once on this thread.
    let g = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null: a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// Removes the socket when the daemon stops.
pub struct Bound {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves clients from the snapshots on `snapshots` on a thread of its own
/// until the sender of `snapshots` is dropped.
pub fn spawn(
    listener: std::os::unix::net::UnixListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    counters: Arc<Counters>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tcpwatch-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("control socket: no runtime, serving nothing: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("control socket: cannot serve: {e}"),
                };
                let mut closed = snapshots.clone();
                tokio::select! {
                    _ = accept_loop(&listener, snapshots, counters) => {}
                    // The daemon is stopping.
                    _ = async { while closed.changed().await.is_ok() {} } => {}
                }
            })
        })
}

type Users = Arc<Mutex<HashMap<u32, usize>>>;

/// A client's place in the per-user count; given back when it leaves.
struct Seat {
    users: Users,
    uid: u32,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = u.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                u.remove(&self.uid);
            }
        }
    }
}

fn seat(users: &Users, uid: u32) -> Option<Seat> {
    let mut u = users.lock().unwrap_or_else(|p| p.into_inner());
    let total: usize = u.values().sum();
    let mine = u.entry(uid).or_default();
    if *mine >= MAX_PER_USER || total >= MAX_CLIENTS {
        return None;
    }
    *mine += 1;
    Some(Seat {
        users: users.clone(),
        uid,
    })
}

async fn accept_loop(
    listener: &tokio::net::UnixListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    counters: Arc<Counters>,
) {
    let users: Users = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(_) => {
                Counters::bump(&counters.refused, 1);
                continue;
            }
        };
        let Some(seat) = seat(&users, uid) else {
            Counters::bump(&counters.refused, 1);
            tracing::debug!(uid, "control socket: client cap reached, refusing one");
            continue;
        };
        Counters::bump(&counters.clients, 1);
        let (snapshots, counters) = (snapshots.clone(), counters.clone());
        tokio::spawn(async move {
            if let Err(e) = client(stream, snapshots, &counters).await {
                tracing::debug!(uid, "control client: {e}");
            }
            drop(seat);
        });
    }
}

async fn client(
    stream: UnixStream,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    counters: &Counters,
) -> anyhow::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rx = FramedRead::new(
        rd,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_CLIENT_FRAME)
            .new_codec(),
    );
    let mut tx = FramedWrite::new(
        wr,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_SERVER_FRAME)
            .new_codec(),
    );
    let mut hello = false;
    loop {
        let frame = match tokio::time::timeout(REQUEST_TIMEOUT, rx.next()).await {
            Err(_) if !hello => bail!("no hello in time"),
            // Quiet between one-shot requests is fine.
            Err(_) => continue,
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                Counters::bump(&counters.bad_requests, 1);
                let _ = send(&mut tx, &error(format!("bad frame: {e}"))).await;
                bail!("bad frame: {e}");
            }
            Ok(Some(Ok(f))) => f,
        };
        let req = match Request::decode(&frame) {
            Ok(r) => r,
            Err(e) => {
                Counters::bump(&counters.bad_requests, 1);
                let _ = send(&mut tx, &error(e.clone())).await;
                bail!(e);
            }
        };
        match (hello, req) {
            (false, Request::Hello { version }) if version == PROTOCOL_VERSION => {
                hello = true;
                send(
                    &mut tx,
                    &Reply::Hello {
                        version: PROTOCOL_VERSION,
                        daemon: env!("CARGO_PKG_VERSION").into(),
                    },
                )
                .await?;
            }
            (false, Request::Hello { version }) => {
                let m = format!("protocol version {version} is not {PROTOCOL_VERSION}");
                let _ = send(&mut tx, &error(m.clone())).await;
                bail!(m);
            }
            (false, _) | (true, Request::Hello { .. }) => {
                Counters::bump(&counters.bad_requests, 1);
                let _ = send(&mut tx, &error("say hello first, once".into())).await;
                bail!("out of order");
            }
            (true, Request::Snapshot) => {
                let snapshot = snapshots.borrow_and_update().clone();
                send(
                    &mut tx,
                    &Reply::Snapshot {
                        missed: 0,
                        snapshot,
                    },
                )
                .await?;
                Counters::bump(&counters.snapshots_sent, 1);
            }
            (true, Request::Accounting) => {
                let kernel = snapshots.borrow().view.kernel.clone();
                send(&mut tx, &Reply::Accounting { kernel }).await?;
            }
            (true, Request::Subscribe) => return subscribe(&mut tx, snapshots, counters).await,
        }
    }
}

/// The current snapshot, then each new one; one that was replaced before
/// this client read the previous one is counted as missed, never queued.
async fn subscribe(
    tx: &mut FramedWrite<tokio::net::unix::OwnedWriteHalf, LengthDelimitedCodec>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    counters: &Counters,
) -> anyhow::Result<()> {
    let mut last: Option<u64> = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let missed = last.map_or(0, |l| snapshot.seq.saturating_sub(l + 1));
        last = Some(snapshot.seq);
        Counters::bump(&counters.snapshots_missed, missed);
        send(tx, &Reply::Snapshot { missed, snapshot }).await?;
        Counters::bump(&counters.snapshots_sent, 1);
        if snapshots.changed().await.is_err() {
            return Ok(());
        }
    }
}

fn error(message: String) -> Reply {
    Reply::Error { message }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut FramedWrite<W, LengthDelimitedCodec>,
    reply: &Reply,
) -> anyhow::Result<()> {
    let bytes = Bytes::from(serde_json::to_vec(reply)?);
    tokio::time::timeout(WRITE_TIMEOUT, tx.send(bytes))
        .await
        .context("client did not read in time")??;
    Ok(())
}

/// A client of the control socket (`tcpwatch snapshot`, `top`, tests).
pub struct Client {
    rx: FramedRead<tokio::net::unix::OwnedReadHalf, LengthDelimitedCodec>,
    tx: FramedWrite<tokio::net::unix::OwnedWriteHalf, LengthDelimitedCodec>,
}

impl Client {
    /// Connects and says hello.
    pub async fn connect(path: &Path) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "cannot reach the daemon at {} (is it running? members of group {GROUP} may connect)",
                path.display()
            )
        })?;
        let (rd, wr) = stream.into_split();
        let codec = || {
            LengthDelimitedCodec::builder()
                .max_frame_length(MAX_SERVER_FRAME)
                .new_codec()
        };
        let mut c = Client {
            rx: FramedRead::new(rd, codec()),
            tx: FramedWrite::new(wr, codec()),
        };
        match c
            .ask(&Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await?
        {
            Reply::Hello { .. } => Ok(c),
            other => bail!("the daemon did not say hello: {other:?}"),
        }
    }

    /// Sends one request and reads one reply.
    pub async fn ask(&mut self, req: &Request) -> anyhow::Result<Reply> {
        self.tx.send(Bytes::from(serde_json::to_vec(req)?)).await?;
        self.next().await
    }

    /// The next reply (subscriptions).
    pub async fn next(&mut self) -> anyhow::Result<Reply> {
        let frame = self
            .rx
            .next()
            .await
            .context("the daemon closed the connection")??;
        Ok(serde_json::from_slice(&frame)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_holds_at_most_its_share_and_seats_come_back() {
        let users: Users = Arc::default();
        let mine: Vec<Seat> = (0..MAX_PER_USER)
            .map(|_| seat(&users, 1000).unwrap())
            .collect();
        assert!(seat(&users, 1000).is_none());
        let others: Vec<Seat> = (0..MAX_CLIENTS - MAX_PER_USER)
            .map(|i| seat(&users, 2000 + (i / MAX_PER_USER) as u32).unwrap())
            .collect();
        assert!(seat(&users, 0).is_none(), "the whole table is full");
        drop(mine);
        assert!(seat(&users, 1000).is_some());
        drop(others);
        assert!(users.lock().unwrap().values().sum::<usize>() <= 1);
    }
}
