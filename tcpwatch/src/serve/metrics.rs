//! The metrics HTTP endpoint: serves the exposition `tcpwatch_core::metrics`
//! encodes. An I/O edge with hard limits, because it listens on a socket of
//! a root daemon.
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// Default address: loopback only (a root daemon's numbers are not for the
/// network unless asked). The Prometheus wiki's exporter range 9100-9999 is
/// fully allocated; 19100 is in neither that list, IANA's registry nor
/// /etc/services.
pub const DEFAULT_ADDR: &str = "127.0.0.1:19100";

/// Limits of the HTTP endpoint: a root daemon's socket must not let a
/// client hold resources.
pub const MAX_CONNECTIONS: usize = 16;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (anything else: 404) until the task is dropped.
/// `render` is called per scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) {
    use http_body_util::Full;
    use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections, closing one");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move {
                    let resp = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                "content-type",
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            )
                            .body(Full::new(Bytes::from(render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"tcpwatch: try /metrics\n")))
                    };
                    Ok::<_, hyper::http::Error>(resp.expect("static response parts"))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            // A whole connection is bounded in time too (keep-alive included).
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(60), conn).await {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
            drop(permit);
        });
    }
}

/// Binds the metrics address, with the error users need when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e} (use --metrics-addr)"))
}
