//! The metrics HTTP endpoint, on a thread and runtime of its own: the
//! exposition of the latest snapshot is rendered by the first scrape that
//! asks for it, off the thread that drains the ring buffer, and every
//! scrape until the next snapshot is served that cached text. It
//! listens on a socket of a root daemon, so no client can hold it: a
//! bounded number of connections, of requests per connection and of time
//! to send headers, and when the slots are full an idle connection (no
//! request yet, then the longest idle) makes way for the new one.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tcpwatch_core::{metrics::render_snapshot, snapshot::Snapshot};
use tokio::sync::{Notify, watch};

/// Default address: loopback only (a root daemon's numbers are not for the
/// network unless asked). The Prometheus wiki's exporter range 9100-9999 is
/// fully allocated; 19100 is in neither that list, IANA's registry nor
/// /etc/services.
pub const DEFAULT_ADDR: &str = "127.0.0.1:19100";

/// Limits of the HTTP endpoint.
pub const MAX_CONNECTIONS: usize = 16;
/// Slots one peer may hold: a local user (by the uid owning the client
/// socket; every local user shares 127.0.0.1) or a remote address.
pub const MAX_PER_PEER: usize = 4;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests one connection may make; the last answer closes it, so a client
/// that pipelines forever reconnects (and competes for a slot) instead.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100;
/// A connection's whole life, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Binds the metrics address, with the error users need when it is taken,
/// and warns when it is not loopback.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    // The io::Error stays the source (its kind decides the exit code).
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "metrics: cannot listen on {addr} (use --metrics-addr)"
        ))
    })?;
    listener.set_nonblocking(true)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "metrics listen beyond loopback: anyone who can reach {addr} reads this host's connections"
        );
    }
    Ok(listener)
}

/// Serves `GET /metrics` from the snapshots on `snapshots` on a thread of
/// its own, until the sender of `snapshots` is dropped.
pub fn spawn(
    listener: std::net::TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) -> io::Result<JoinHandle<()>> {
    super::spawn_serving("metrics", move || async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => serve(l, snapshots).await,
            Err(e) => tracing::error!("metrics: cannot serve: {e}"),
        }
    })
}

async fn serve(listener: tokio::net::TcpListener, snapshots: watch::Receiver<Arc<Snapshot>>) {
    let slots = Slots::default();
    let stopped = snapshots.clone();
    tokio::select! {
        _ = accept_loop(&listener, &slots, snapshots) => {}
        // The daemon is stopping.
        _ = super::daemon_stopped(stopped) => {}
    }
}

async fn accept_loop(
    listener: &tokio::net::TcpListener,
    slots: &Slots,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    let rendered = super::Rendered::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let key = peer_key(peer, stream.local_addr().ok());
        let Some(slot) = slots.admit(key, Instant::now()) else {
            tracing::debug!(%peer, ?key, "metrics: no slot this peer may take, refusing it");
            continue;
        };
        let latest = Latest {
            snapshots: snapshots.clone(),
            rendered: rendered.clone(),
        };
        tokio::spawn(connection(stream, peer, slot, latest));
    }
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, slot: Slot, latest: Latest) {
    use http_body_util::Full;
    use hyper::{Method, Request, Response, StatusCode, service::service_fn};
    use hyper_util::rt::{TokioIo, TokioTimer};

    let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let service = {
        let slot = slot.clone();
        service_fn(move |req: Request<hyper::body::Incoming>| {
            slot.busy();
            let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let (mut resp, body) = if req.method() == Method::GET && req.uri().path() == "/metrics"
            {
                let ok = Response::builder().header(
                    "content-type",
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                );
                (ok, latest.exposition())
            } else {
                let not_found = Response::builder().status(StatusCode::NOT_FOUND);
                (not_found, Bytes::from_static(b"tcpwatch: try /metrics\n"))
            };
            if n >= MAX_REQUESTS_PER_CONNECTION {
                resp = resp.header("connection", "close");
            }
            // Idle again only once the body is written (the body is
            // dropped then), so a connection being answered is never evicted.
            std::future::ready(resp.body(IdleWhenDone {
                body: Full::new(body),
                slot: slot.clone(),
            }))
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
            if let Ok(Err(e)) = r {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        }
        _ = slot.evicted() => tracing::debug!(%peer, "metrics: idle connection evicted for a new one"),
    }
}

/// The exposition of the latest snapshot, rendered by the first scrape
/// that asks for it: a rendering slower than the tick then delays scrapes
/// by one rendering, never starves them (rendering each snapshot as it was
/// published did, in an emulated guest).
struct Latest {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    rendered: super::Rendered,
}

impl Latest {
    fn exposition(&self) -> Bytes {
        let snap = self.snapshots.borrow().clone();
        self.rendered
            .get(snap.seq, || {
                Ok::<_, std::convert::Infallible>(Bytes::from(render_snapshot(snap)))
            })
            .unwrap_or_else(|never| match never {})
    }
}

/// Who a connection counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeerKey {
    Uid(u32),
    Addr(IpAddr),
}

/// On loopback, the local user behind the client socket; else its address.
fn peer_key(peer: SocketAddr, local: Option<SocketAddr>) -> PeerKey {
    // A v4 client of a [::] listener shows as ::ffff:a.b.c.d.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let local = local.map(|l| SocketAddr::new(l.ip().to_canonical(), l.port()));
    match local {
        // Any loopback source (all of 127/8, ::1) or our own address is a
        // local user, whatever address it binds: key it by its uid.
        Some(local) if peer.ip().is_loopback() || peer.ip() == local.ip() => {
            match crate::host::census::socket_uid(peer, local) {
                Ok(uid) => PeerKey::Uid(uid),
                Err(e) => {
                    tracing::debug!(%peer, "metrics: owner of the client socket unknown: {e}");
                    PeerKey::Addr(peer.ip())
                }
            }
        }
        _ => PeerKey::Addr(network_of(peer.ip())),
    }
}

/// A remote peer's share is per address, and per /64 for IPv6 (one host
/// holds a /64 and could take a slot per address in it).
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A response body that marks its connection idle when it has been sent.
struct IdleWhenDone {
    body: http_body_util::Full<Bytes>,
    slot: Slot,
}

impl hyper::body::Body for IdleWhenDone {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for IdleWhenDone {
    fn drop(&mut self) {
        self.slot.idle(Instant::now());
    }
}

/// The connection table: who holds a slot and since when it is idle.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    next: u64,
    held: HashMap<u64, Held>,
}

struct Held {
    key: PeerKey,
    /// None while a request is being answered.
    idle_since: Option<Instant>,
    /// No request yet: the first to go.
    fresh: bool,
    evict: Arc<Notify>,
}

/// One connection's slot; freed when the connection ends.
#[derive(Clone)]
struct Slot {
    id: u64,
    table: Slots,
    evict: Arc<Notify>,
    _owner: Arc<SlotOwner>,
}

struct SlotOwner {
    id: u64,
    table: Slots,
}

impl Drop for SlotOwner {
    fn drop(&mut self) {
        self.table.lock().held.remove(&self.id);
    }
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the table invalid:
        // every update is a single insert or remove.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `key`. A peer at its share makes
    /// room among its own connections only; otherwise a full table gives up
    /// an idle connection of the peer holding the most (one that never
    /// asked first, then the longest idle). None when no connection may go.
    fn admit(&self, key: PeerKey, now: Instant) -> Option<Slot> {
        let mut t = self.lock();
        let mut per_key: HashMap<PeerKey, usize> = HashMap::new();
        for h in t.held.values() {
            *per_key.entry(h.key).or_default() += 1;
        }
        let own = per_key.get(&key).copied().unwrap_or(0);
        let must_go = own >= MAX_PER_PEER || t.held.len() >= MAX_CONNECTIONS;
        if must_go {
            // At its share: one of its own. Else: of the biggest holders.
            let biggest = t
                .held
                .values()
                .filter(|h| h.idle_since.is_some())
                .map(|h| per_key[&h.key])
                .max()
                .unwrap_or(0);
            let victim = t
                .held
                .iter()
                .filter(|(_, h)| {
                    if own >= MAX_PER_PEER {
                        h.key == key
                    } else {
                        per_key[&h.key] == biggest
                    }
                })
                .filter_map(|(&id, h)| h.idle_since.map(|since| (!h.fresh, since, id)))
                .min()?
                .2;
            if let Some(h) = t.held.remove(&victim) {
                h.evict.notify_one();
            }
        }
        let id = t.next;
        t.next += 1;
        let evict = Arc::new(Notify::new());
        t.held.insert(
            id,
            Held {
                key,
                idle_since: Some(now),
                fresh: true,
                evict: evict.clone(),
            },
        );
        Some(Slot {
            id,
            table: self.clone(),
            evict,
            _owner: Arc::new(SlotOwner {
                id,
                table: self.clone(),
            }),
        })
    }
}

impl Slot {
    fn busy(&self) {
        if let Some(h) = self.table.lock().held.get_mut(&self.id) {
            h.idle_since = None;
            h.fresh = false;
        }
    }

    fn idle(&self, now: Instant) {
        if let Some(h) = self.table.lock().held.get_mut(&self.id) {
            h.idle_since = Some(now);
        }
    }

    async fn evicted(&self) {
        self.evict.notified().await
    }
}

/// For tests: the number of connections holding a slot.
#[cfg(test)]
fn held(slots: &Slots) -> usize {
    slots.lock().held.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `GET /metrics` over a real socket: the whole response.
    fn get(addr: SocketAddr) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn scrapes_read_the_latest_snapshot_and_serving_ends_with_the_daemon() {
        use tcpwatch_core::{
            engine::{Engine, EngineConfig},
            metrics::Info,
            view::trace::Clock,
        };
        let snap = |seq, hook: &str| {
            let info = Info {
                hook: Some(hook.into()),
                ..Info::default()
            };
            let view = Engine::new(EngineConfig::default()).view();
            Arc::new(Snapshot::new(seq, Clock { offset_ns: 0 }, info, view))
        };
        let (tx, rx) = watch::channel(snap(0, "first"));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = spawn(listener, rx).unwrap();
        let first = get(addr);
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains(r#"hook="first""#), "{first}");
        tx.send_replace(snap(1, "second"));
        let second = get(addr);
        assert!(second.contains(r#"hook="second""#), "{second}");
        assert!(!second.contains(r#"hook="first""#), "{second}");
        // The daemon stopping (its sender dropped) ends the thread.
        drop(tx);
        thread.join().unwrap();
    }

    #[test]
    fn remote_ipv6_peers_share_per_64_and_v4_stays_whole() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(ip("2001:db8:1:2:aa::1")), ip("2001:db8:1:2::"));
        assert_eq!(network_of(ip("2001:db8:1:2:bb::9")), ip("2001:db8:1:2::"));
        assert_eq!(network_of(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    fn user(uid: u32) -> PeerKey {
        PeerKey::Uid(uid)
    }

    #[test]
    fn one_user_holds_only_its_share_and_makes_room_among_its_own() {
        let slots = Slots::default();
        let t0 = Instant::now();
        let attacker = user(65534);
        let mut theirs: Vec<Slot> = (0..MAX_PER_PEER)
            .map(|_| slots.admit(attacker, t0).unwrap())
            .collect();
        // More connections of theirs replace their own oldest silent one.
        let first = theirs[0].id;
        theirs.push(
            slots
                .admit(attacker, t0 + Duration::from_millis(1))
                .unwrap(),
        );
        assert!(!slots.lock().held.contains_key(&first));
        assert_eq!(held(&slots), MAX_PER_PEER);
        // All of theirs mid-request: the next of theirs is refused.
        for s in &theirs {
            s.busy();
        }
        assert!(slots.admit(attacker, t0).is_none());
        // Others fill the rest of the table; when it is full, a newcomer
        // takes an idle slot from the biggest holder, never one mid-request.
        let others: Vec<Slot> = (0..MAX_CONNECTIONS - MAX_PER_PEER)
            .map(|i| slots.admit(user(i as u32), t0).unwrap())
            .collect();
        assert_eq!(held(&slots), MAX_CONNECTIONS);
        let scraper = slots.admit(user(999), t0).unwrap();
        assert_eq!(held(&slots), MAX_CONNECTIONS);
        assert!(
            theirs[1..]
                .iter()
                .all(|s| slots.lock().held.contains_key(&s.id))
        );
        drop((others, scraper));
    }

    #[test]
    fn a_full_table_evicts_a_connection_that_never_asked_before_an_idle_one() {
        let slots = Slots::default();
        let t0 = Instant::now();
        let mut kept: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|i| slots.admit(user(i as u32), t0).unwrap())
            .collect();
        // All but the last have asked something and are idle again; the
        // last has sent nothing (an attacker's idle socket).
        for s in &kept[..MAX_CONNECTIONS - 1] {
            s.busy();
            s.idle(t0);
        }
        let silent = kept[MAX_CONNECTIONS - 1].id;
        let newcomer = slots.admit(user(100), t0 + Duration::from_secs(1)).unwrap();
        assert!(!slots.lock().held.contains_key(&silent));
        assert_eq!(held(&slots), MAX_CONNECTIONS);
        // Then the longest idle of those that asked.
        newcomer.busy();
        newcomer.idle(t0 + Duration::from_secs(1));
        kept[3].idle(t0 - Duration::from_secs(5));
        let oldest = kept[3].id;
        let _again = slots.admit(user(101), t0 + Duration::from_secs(2)).unwrap();
        assert!(!slots.lock().held.contains_key(&oldest));
        drop(newcomer);
        kept.clear();
    }

    #[test]
    fn connections_mid_request_are_never_evicted() {
        let slots = Slots::default();
        let t0 = Instant::now();
        let kept: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|i| slots.admit(user(i as u32), t0).unwrap())
            .collect();
        for s in &kept {
            s.busy();
        }
        assert!(slots.admit(user(100), t0).is_none());
        // A slot comes back when its connection ends.
        drop(kept);
        assert_eq!(held(&slots), 0);
        assert!(slots.admit(user(100), t0).is_some());
    }
}
