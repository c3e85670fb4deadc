//! A writer thread between the event loop and a possibly slow stdout.
//!
//! The event loop must keep draining the ring buffer whatever stdout does,
//! or the kernel drops events. So batches go through a bounded queue; when
//! it is full the batch is counted as dropped here, never waited for.
use std::{
    io::{self, IsTerminal, LineWriter, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Batches the queue holds before it drops (each at most a few thousand lines).
const QUEUE_BATCHES: usize = 64;

pub struct Output<T: Send + 'static> {
    tx: Option<SyncSender<Vec<T>>>,
    dropped: u64,
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// What the writer did, at the end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutputStats {
    pub written: u64,
    /// Items dropped because the writer fell behind.
    pub dropped: u64,
    /// The writer stopped early: stdout closed (e.g. `| head`) or failed.
    pub closed: Option<String>,
}

impl<T: Send + 'static> Output<T> {
    /// Starts a writer on stdout: line-buffered on a terminal, block-buffered
    /// otherwise. `header` is written first; `format` makes one line of an item.
    pub fn stdout(header: Option<String>, format: impl Fn(&T) -> String + Send + 'static) -> Self {
        let stdout = io::stdout();
        let sink: Box<dyn Write + Send> = if stdout.is_terminal() {
            Box::new(LineWriter::new(stdout))
        } else {
            Box::new(io::BufWriter::with_capacity(1 << 16, stdout))
        };
        Self::new(sink, header, format)
    }

    pub fn new(
        mut sink: Box<dyn Write + Send>,
        header: Option<String>,
        format: impl Fn(&T) -> String + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Vec<T>>(QUEUE_BATCHES);
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let thread = std::thread::Builder::new()
            .name("tcpwatch-output".into())
            .spawn(move || -> io::Result<()> {
                if let Some(h) = header {
                    writeln!(sink, "{h}")?;
                }
                for batch in rx {
                    for item in &batch {
                        writeln!(sink, "{}", format(item))?;
                    }
                    counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                sink.flush()
            })
            .expect("spawning the output thread");
        Output {
            tx: Some(tx),
            dropped: 0,
            written,
            thread: Some(thread),
        }
    }

    /// Queues a batch, or counts it as dropped if the writer is behind.
    /// Returns false once the writer has stopped (stdout closed).
    pub fn send(&mut self, batch: Vec<T>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(b)) => {
                self.dropped += b.len() as u64;
                true
            }
            Err(TrySendError::Disconnected(b)) => {
                self.dropped += b.len() as u64;
                false
            }
        }
    }

    /// Flushes and stops the writer, waiting at most `patience` for a
    /// stalled output (a terminal on hold, a reader that stopped reading):
    /// exiting must not hang on it.
    pub fn finish(mut self, patience: Duration) -> OutputStats {
        self.tx = None;
        let deadline = Instant::now() + patience;
        let thread = self.thread.take();
        let closed = match thread {
            None => None,
            Some(t) => {
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if t.is_finished() {
                    match t.join() {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some("output thread panicked".into()),
                    }
                } else {
                    Some(format!(
                        "output stalled; stopped waiting after {patience:?}"
                    ))
                }
            }
        };
        OutputStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped,
            closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A sink that blocks every write until released: a stalled terminal.
    struct Stalled(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn slow_sink_drops_and_counts_instead_of_blocking() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let data = Arc::new(Mutex::new(Vec::new()));
        let mut out = Output::new(
            Box::new(Stalled(gate.clone(), data.clone())),
            None,
            |n: &u32| n.to_string(),
        );
        let sent = 1000u64;
        let start = std::time::Instant::now();
        for i in 0..sent {
            assert!(out.send(vec![i as u32]));
        }
        // Never blocked on the stalled sink.
        assert!(start.elapsed() < Duration::from_secs(2));
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let stats = out.finish(Duration::from_secs(5));
        assert!(stats.dropped > 0, "{stats:?}");
        assert_eq!(stats.written + stats.dropped, sent);
        let lines = String::from_utf8(data.lock().unwrap().clone()).unwrap();
        assert_eq!(lines.lines().count() as u64, stats.written);
    }

    #[test]
    fn a_sink_stalled_forever_does_not_hang_the_exit() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let data = Arc::new(Mutex::new(Vec::new()));
        let mut out = Output::new(Box::new(Stalled(gate, data)), None, |n: &u32| n.to_string());
        out.send(vec![1]);
        let start = Instant::now();
        let stats = out.finish(Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(stats.closed.unwrap().contains("stalled"));
    }

    #[test]
    fn closed_sink_is_reported() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::new(Box::new(Closed), Some("HEADER".into()), |n: &u32| {
            n.to_string()
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut accepted = true;
        for _ in 0..10 {
            accepted &= out.send(vec![1]);
        }
        assert!(!accepted);
        let stats = out.finish(Duration::from_secs(5));
        assert!(stats.closed.is_some());
        assert_eq!(stats.written, 0);
    }
}
