//! The Alertmanager sink: on a thread of its own, it reads each published
//! snapshot and posts the alert list (`core::detect::alertmanager`) to
//! `/api/v2/alerts` when it changed or a resend is due. Only the newest
//! list is ever pending, so nothing queues up; a failed post is retried
//! with backoff (1 s doubling to 60 s), counted, and never reaches the
//! event loop, which only publishes snapshots.
use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tcpwatch_core::{
    detect::alertmanager::{Outbox, Policy},
    metrics::SinkCounters,
    snapshot::Snapshot,
};
use tokio::sync::watch;

use crate::host::clock::wall_clock;

/// How long one post may take, connecting included.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the sink did, for the metrics (written here, read by the daemon
/// at each tick).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub posts_ok: AtomicU64,
    pub posts_failed: AtomicU64,
    pub alerts_sent: AtomicU64,
}

impl SinkStats {
    pub fn read(&self) -> SinkCounters {
        let r = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        SinkCounters {
            posts_ok: r(&self.posts_ok),
            posts_failed: r(&self.posts_failed),
            alerts_sent: r(&self.alerts_sent),
        }
    }
}

/// Where to post.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The URL's path prefix ("/" for none).
    pub prefix: String,
}

pub fn spawn(
    target: Target,
    policy: Policy,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    stats: Arc<SinkStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    super::spawn_serving("alertmanager", move || async move {
        let resend = Duration::from_secs_f64(policy.resend_s);
        let mut outbox = Outbox::default();
        // A change not yet posted (a failed post keeps it).
        let mut dirty = false;
        let mut last_ok: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        let mut retry_at: Option<Instant> = None;
        let mut failing = false;
        // Each tick publishes a snapshot: the sink wakes with it, and stops
        // when the daemon does.
        while snapshots.changed().await.is_ok() {
            let snap = snapshots.borrow_and_update().clone();
            dirty |= outbox.update(&snap.alerts, snap.view.now_ns);
            if retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let resend_due = !outbox.is_empty() && last_ok.is_none_or(|t| t.elapsed() >= resend);
            if !dirty && !resend_due {
                continue;
            }
            // The wall clock now, not at start: a clock stepped since
            // (NTP at boot) must not put endsAt in the past.
            let list = outbox.payload(&wall_clock(), snap.view.now_ns, &policy);
            let n = list.len() as u64;
            let body = match serde_json::to_vec(&list) {
                Ok(b) => b,
                Err(e) => return tracing::error!("alertmanager: encoding alerts: {e}"),
            };
            match tokio::time::timeout(POST_TIMEOUT, post(&target, body)).await {
                Ok(Ok(())) => {
                    SinkStats::bump(&stats.posts_ok, 1);
                    SinkStats::bump(&stats.alerts_sent, n);
                    if failing {
                        tracing::info!("alertmanager: posting again");
                    }
                    (dirty, last_ok, retry_at, failing) =
                        (false, Some(Instant::now()), None, false);
                    backoff = Duration::from_secs(1);
                }
                r => {
                    SinkStats::bump(&stats.posts_failed, 1);
                    let why = match r {
                        Ok(Err(e)) => format!("{e:#}"),
                        _ => format!("no answer within {POST_TIMEOUT:?}"),
                    };
                    // Said once per outage, not on every retry.
                    if !failing {
                        tracing::warn!(
                            "alertmanager at {}:{}: {why}; retrying with backoff",
                            target.host,
                            target.port
                        );
                    }
                    failing = true;
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    })
}

impl SinkStats {
    fn bump(a: &AtomicU64, n: u64) {
        a.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn post(t: &Target, body: Vec<u8>) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .context("connecting")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = format!("{}/api/v2/alerts", t.prefix.trim_end_matches('/'));
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, format!("{}:{}", t.host, t.port))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("HTTP {}", resp.status());
    }
    Ok(())
}
