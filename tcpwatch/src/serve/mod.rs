//! What the daemon serves to others: the metrics endpoint, the control
//! socket and the Alertmanager sink, each on a thread of its own, reading
//! published snapshots.
pub mod alertmanager;
pub mod control;
pub mod metrics;

/// Runs `serve` on a thread of its own with its own current-thread
/// runtime: what is served never runs on the thread that drains the ring
/// buffer. `what` names it in the thread name and the log.
pub(crate) fn spawn_serving<F>(
    what: &'static str,
    serve: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(format!("tcpwatch-{what}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(serve()),
                Err(e) => tracing::error!("{what}: no runtime, serving nothing: {e}"),
            }
        })
}
