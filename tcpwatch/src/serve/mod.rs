//! What the daemon serves to others: the metrics endpoint, the control
//! socket and the Alertmanager sink, each on a thread of its own, reading
//! published snapshots.
pub mod alertmanager;
pub mod control;
pub mod metrics;

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Returns once the daemon stops: when the sender of `snapshots` (a clone
/// of the server's own receiver) is dropped.
pub(crate) async fn daemon_stopped<T>(mut snapshots: tokio::sync::watch::Receiver<T>) {
    while snapshots.changed().await.is_ok() {}
}

/// What the latest snapshot renders to, keyed by its seq: made when a
/// client first asks for it and shared by every client until a newer one.
/// Nothing is rendered for a tick nobody reads, and no rendering runs
/// ahead of (or crowds out) the clients it is for.
#[derive(Clone, Default)]
pub(crate) struct Rendered(Arc<Mutex<Option<(u64, Bytes)>>>);

impl Rendered {
    /// The rendering of snapshot `seq`, made by `render` unless cached.
    pub(crate) fn get<E>(
        &self,
        seq: u64,
        render: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        // A panic while rendering leaves the previous rendering, still valid.
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some((s, bytes)) if *s == seq => Ok(bytes.clone()),
            _ => {
                let bytes = render()?;
                *cache = Some((seq, bytes.clone()));
                Ok(bytes)
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_rendered_once_and_a_failed_rendering_keeps_the_last() {
        let cache = Rendered::default();
        let renders = std::cell::Cell::new(0);
        let render = |text: &'static str| {
            renders.set(renders.get() + 1);
            Ok::<_, ()>(Bytes::from_static(text.as_bytes()))
        };
        assert_eq!(cache.get(1, || render("one")).unwrap(), "one");
        assert_eq!(cache.get(1, || render("again")).unwrap(), "one");
        assert_eq!(renders.get(), 1);
        assert_eq!(cache.get(2, || render("two")).unwrap(), "two");
        assert_eq!(cache.get(3, || Err(())), Err(()));
        assert_eq!(cache.get(2, || render("not this")).unwrap(), "two");
        assert_eq!(renders.get(), 2);
    }
}
