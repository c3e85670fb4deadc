//! The control socket: a Unix socket where local clients (`tcpwatch top`,
//! scripts) read the daemon's snapshots. Length-delimited frames of JSON
//! (`tcpwatch_core::protocol`). It runs on its own thread and runtime and
//! only reads published snapshots, so no client can slow the capture; each
//! client holds at most one snapshot and one frame, and the number of
//! clients, per user and in all, is capped.
use std::{
    collections::HashMap,
    io,
    os::unix::fs::FileTypeExt,
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
/// Seats only root may take, so other users filling the table never lock
/// the operator out.
pub const ROOT_RESERVE: usize = 4;
/// A client that asks nothing for this long (and has not subscribed) is
/// dropped, so idle connections do not hold seats for good.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time to say hello, and to send each request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that takes longer to read one frame is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket: one daemon per path (a lock held for its life; a
/// socket that still answers also refuses), a stale socket left by a crash
/// replaced, created mode 0660 (through the umask, never a chmod that could
/// follow a planted link), group `tcpwatch` when that group exists (else
/// root's).
pub fn bind(path: &Path) -> anyhow::Result<Bound> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control socket: creating {}", dir.display()))?;
    }
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .with_context(|| format!("control socket: opening {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; non-blocking.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        bail!(
            "another tcpwatch daemon is running: it holds {} (stop it, or give this one --control-socket)",
            lock_path.display()
        );
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
    if let Some(gid) = group_id(GROUP) {
        // lchown: never through a link planted in its place.
        std::os::unix::fs::lchown(path, Some(0), Some(gid))
            .with_context(|| format!("control socket: chown {}", path.display()))?;
    }
    listener.set_nonblocking(true)?;
    Ok(Bound {
        listener,
        path: path.to_owned(),
        _lock: lock,
    })
}

fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam takes a NUL-terminated name and returns a pointer to
    // static storage (or null), read at once on this thread.
    let g = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null: a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// The bound socket; the daemon's lock on its path is held while this
/// lives, and the socket is removed when it goes.
pub struct Bound {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
    _lock: std::fs::File,
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
    super::spawn_serving("control", move || async move {
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!("control socket: cannot serve: {e}"),
        };
        let stopped = snapshots.clone();
        tokio::select! {
            _ = accept_loop(&listener, snapshots, counters) => {}
            // The daemon is stopping.
            _ = super::daemon_stopped(stopped) => {}
        }
    })
}

type Users = Arc<Mutex<HashMap<u32, usize>>>;

/// The JSON of the latest snapshot, by its seq: encoded once per tick
/// whatever the number of clients.
#[derive(Clone, Default)]
struct Encoded(super::Rendered);

impl Encoded {
    /// The frame of a snapshot reply (as `Reply::Snapshot` serializes).
    fn frame(&self, snapshot: &Snapshot, missed: u64) -> anyhow::Result<Bytes> {
        let json = self.0.get(snapshot.seq, || {
            serde_json::to_vec(snapshot).map(Bytes::from)
        })?;
        let head = format!(r#"{{"type":"snapshot","body":{{"missed":{missed},"snapshot":"#);
        let mut frame = Vec::with_capacity(head.len() + json.len() + 2);
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(&json);
        frame.extend_from_slice(b"}}");
        Ok(Bytes::from(frame))
    }
}

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
    let cap = if uid == 0 {
        MAX_CLIENTS + ROOT_RESERVE
    } else {
        MAX_CLIENTS
    };
    let mine = u.entry(uid).or_default();
    if *mine >= MAX_PER_USER || total >= cap {
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
    let encoded = Encoded::default();
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
        let (snapshots, counters, encoded) = (snapshots.clone(), counters.clone(), encoded.clone());
        tokio::spawn(async move {
            if let Err(e) = client(stream, snapshots, &counters, &encoded).await {
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
    encoded: &Encoded,
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
        let wait = if hello { IDLE_TIMEOUT } else { REQUEST_TIMEOUT };
        let frame = match tokio::time::timeout(wait, rx.next()).await {
            Err(_) if !hello => bail!("no hello in time"),
            Err(_) => bail!("idle for {IDLE_TIMEOUT:?}"),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                return Err(refuse(&mut tx, Some(counters), format!("bad frame: {e}")).await);
            }
            Ok(Some(Ok(f))) => f,
        };
        let req = match Request::decode(&frame) {
            Ok(r) => r,
            Err(e) => return Err(refuse(&mut tx, Some(counters), e).await),
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
                return Err(refuse(&mut tx, None, m).await);
            }
            (false, _) | (true, Request::Hello { .. }) => {
                let m = "say hello first, once".to_string();
                return Err(refuse(&mut tx, Some(counters), m).await);
            }
            (true, Request::Snapshot) => {
                let snapshot = snapshots.borrow_and_update().clone();
                send_frame(&mut tx, encoded.frame(&snapshot, 0)?).await?;
                Counters::bump(&counters.snapshots_sent, 1);
            }
            (true, Request::Accounting) => {
                let kernel = snapshots.borrow().view.kernel.clone();
                send(&mut tx, &Reply::Accounting { kernel }).await?;
            }
            (true, Request::Subscribe) => {
                return subscribe(&mut tx, snapshots, counters, encoded).await;
            }
        }
    }
}

/// The current snapshot, then each new one; one that was replaced before
/// this client read the previous one is counted as missed, never queued.
async fn subscribe(
    tx: &mut FramedWrite<tokio::net::unix::OwnedWriteHalf, LengthDelimitedCodec>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    counters: &Counters,
    encoded: &Encoded,
) -> anyhow::Result<()> {
    let mut last: Option<u64> = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let missed = last.map_or(0, |l| snapshot.seq.saturating_sub(l + 1));
        last = Some(snapshot.seq);
        Counters::bump(&counters.snapshots_missed, missed);
        send_frame(tx, encoded.frame(&snapshot, missed)?).await?;
        Counters::bump(&counters.snapshots_sent, 1);
        if snapshots.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Tells the client why it is dropped (if it still listens), counts a bad
/// request where `counters` is given, and returns the error that ends it.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut FramedWrite<W, LengthDelimitedCodec>,
    counters: Option<&Counters>,
    message: String,
) -> anyhow::Error {
    if let Some(c) = counters {
        Counters::bump(&c.bad_requests, 1);
    }
    let _ = send(
        tx,
        &Reply::Error {
            message: message.clone(),
        },
    )
    .await;
    anyhow::anyhow!(message)
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut FramedWrite<W, LengthDelimitedCodec>,
    reply: &Reply,
) -> anyhow::Result<()> {
    send_frame(tx, Bytes::from(serde_json::to_vec(reply)?)).await
}

async fn send_frame<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut FramedWrite<W, LengthDelimitedCodec>,
    bytes: Bytes,
) -> anyhow::Result<()> {
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
    fn a_shared_encoding_reads_back_as_the_snapshot_reply() {
        use tcpwatch_core::{
            engine::{Engine, EngineConfig},
            metrics::Info,
            view::trace::Clock,
        };
        let snap = Snapshot::new(
            9,
            Clock { offset_ns: 5 },
            Info::default(),
            Engine::new(EngineConfig::default()).view(),
        );
        let enc = Encoded::default();
        let frame = enc.frame(&snap, 3).unwrap();
        assert_eq!(
            frame,
            serde_json::to_vec(&Reply::Snapshot {
                missed: 3,
                snapshot: Arc::new(snap.clone()),
            })
            .unwrap()
        );
        // Encoded once: a second client's frame reuses it.
        assert!(
            enc.frame(&snap, 0)
                .unwrap()
                .ends_with(&frame[frame.len() - 40..])
        );
    }

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
        assert!(seat(&users, 7).is_none(), "the whole table is full");
        // ... but for root, who has seats of its own.
        let root: Vec<Seat> = (0..ROOT_RESERVE)
            .map(|_| seat(&users, 0).unwrap())
            .collect();
        assert!(seat(&users, 0).is_none());
        drop(root);
        drop(mine);
        assert!(seat(&users, 1000).is_some());
        drop(others);
        assert!(users.lock().unwrap().values().sum::<usize>() <= 1);
    }
}
