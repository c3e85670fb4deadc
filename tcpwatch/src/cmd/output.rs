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

/// Items the queue holds before it drops, however they are batched (the
/// capture hands out small batches every few ms under load).
const QUEUE_ITEMS: u64 = 1 << 18;

/// Batches the channel holds; the bound that matters is [`QUEUE_ITEMS`].
const QUEUE_BATCHES: usize = 1 << 14;

/// Output to a pipe or a file is flushed at least this often, so a reader
/// sees lines promptly on a quiet host, and a closed pipe is noticed
/// within it even when nothing is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Block-buffered text is handed to the sink in writes at least this big:
/// the capacity of the `BufWriter` below, so it never copies them.
const WRITE_AT: usize = 1 << 16;

pub struct Output<T: Send + 'static> {
    tx: Option<SyncSender<Vec<T>>>,
    /// Items handed to the writer thread.
    accepted: u64,
    /// Items handed over and not yet written out by the writer thread.
    queued: Arc<AtomicU64>,
    dropped: u64,
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Said once the writer thread has ended (stdout closed or failed).
    ended: Arc<tokio::sync::Notify>,
}

/// What the writer did, at the end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Items flushed to the output.
    pub written: u64,
    /// Items not written: dropped because the writer fell behind, or still
    /// queued or buffered when the output closed or stalled.
    pub dropped: u64,
    /// The writer stopped early: stdout closed (e.g. `| head`) or failed.
    pub closed: Option<String>,
    /// Whether that was a closed pipe (the reader went away), not a failure.
    pub closed_pipe: bool,
}

/// How the writer meets its output.
pub struct Sink {
    pub out: Box<dyn Write + Send>,
    /// Flush after every batch (a terminal, `--line-buffered`).
    pub line_buffered: bool,
    /// The file descriptor to watch for a reader that went away.
    pub fd: Option<std::os::fd::RawFd>,
}

impl<T: Send + 'static> Output<T> {
    /// Starts a writer on stdout: flushed per batch on a terminal or with
    /// `line_buffered`, else block-buffered and flushed every `FLUSH_EVERY`.
    /// `header` is written first; `format` appends one line of an item
    /// (without its newline) to the text not yet written.
    pub fn stdout(
        header: Option<String>,
        line_buffered: bool,
        format: impl FnMut(&T, &mut Vec<u8>) + Send + 'static,
    ) -> Self {
        let stdout = io::stdout();
        let line_buffered = line_buffered || stdout.is_terminal();
        let out: Box<dyn Write + Send> = if line_buffered {
            Box::new(LineWriter::new(stdout))
        } else {
            Box::new(io::BufWriter::with_capacity(WRITE_AT, stdout))
        };
        let sink = Sink {
            out,
            line_buffered,
            fd: Some(1),
        };
        Self::new(sink, header, format)
    }

    pub fn new(
        sink: Sink,
        header: Option<String>,
        mut format: impl FnMut(&T, &mut Vec<u8>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Vec<T>>(QUEUE_BATCHES);
        let written = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(tokio::sync::Notify::new());
        let (counter, in_queue, on_end) = (written.clone(), queued.clone(), ended.clone());
        let thread = std::thread::Builder::new()
            .name("tcpwatch-output".into())
            .spawn(move || -> io::Result<()> {
                let r = write_all(sink, header, &rx, &counter, &in_queue, &mut format);
                on_end.notify_one();
                r
            })
            .expect("spawning the output thread");
        Output {
            tx: Some(tx),
            accepted: 0,
            queued,
            dropped: 0,
            written,
            thread: Some(thread),
            ended,
        }
    }

    /// Queues a batch, or counts it as dropped if the writer is behind.
    /// Returns false once the writer has stopped (stdout closed).
    pub fn send(&mut self, batch: Vec<T>) -> bool {
        if batch.is_empty() {
            return self.thread.as_ref().is_some_and(|t| !t.is_finished());
        }
        let Some(tx) = &self.tx else { return false };
        let n = batch.len() as u64;
        if self.queued.load(Ordering::Relaxed) + n > QUEUE_ITEMS {
            self.dropped += n;
            return self.thread.as_ref().is_some_and(|t| !t.is_finished());
        }
        // Counted before the writer can see the batch, which subtracts it.
        self.queued.fetch_add(n, Ordering::Relaxed);
        match tx.try_send(batch) {
            Ok(()) => {
                self.accepted += n;
                true
            }
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                self.dropped += n;
                true
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                self.dropped += n;
                false
            }
        }
    }

    /// Whether the writer has ended (its output closed or failed).
    pub fn is_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Resolves once the writer has ended by itself (its output closed or
    /// failed), whether or not anything was sent since. Cancel-safe.
    pub async fn ended(&self) {
        self.ended.notified().await;
    }

    /// Flushes and stops the writer, waiting at most `patience` for a
    /// stalled output (a terminal on hold, a reader that stopped reading):
    /// exiting must not hang on it. What was handed to it and never
    /// written counts as dropped, so every item is written or dropped.
    pub fn finish(mut self, patience: Duration) -> OutputStats {
        self.tx = None;
        let deadline = Instant::now() + patience;
        let thread = self.thread.take();
        let (closed, closed_pipe) = match thread {
            None => (None, false),
            Some(t) => {
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if t.is_finished() {
                    match t.join() {
                        Ok(Ok(())) => (None, false),
                        Ok(Err(e)) => (Some(e.to_string()), e.kind() == io::ErrorKind::BrokenPipe),
                        Err(_) => (Some("output thread panicked".into()), false),
                    }
                } else {
                    (
                        Some(format!(
                            "output stalled; stopped waiting after {patience:?}"
                        )),
                        false,
                    )
                }
            }
        };
        let written = self.written.load(Ordering::Relaxed);
        OutputStats {
            written,
            dropped: self.dropped + self.accepted.saturating_sub(written),
            closed,
            closed_pipe,
        }
    }
}

/// The writer thread's work: lines out, flushed per batch when line
/// buffered, else at least every `FLUSH_EVERY`; `written` counts only
/// what was flushed. Watches `fd` for a reader that went away.
fn write_all<T>(
    mut sink: Sink,
    header: Option<String>,
    rx: &mpsc::Receiver<Vec<T>>,
    written: &AtomicU64,
    queued: &AtomicU64,
    format: &mut impl FnMut(&T, &mut Vec<u8>),
) -> io::Result<()> {
    let mut unflushed = 0u64;
    let mut last_flush = Instant::now();
    // Lines are formatted into one reused buffer, with no allocation or
    // `fmt` per line, and it is itself the block buffer: handed on only in
    // writes of `WRITE_AT` or more, which `BufWriter` passes through
    // uncopied (the second copy of every byte cost ~25 ns a line of
    // `trace --json`, ~7 % of its CPU).
    let mut text = Vec::new();
    let flush =
        |out: &mut Box<dyn Write + Send>, text: &mut Vec<u8>, n: &mut u64, at: &mut Instant| {
            out.write_all(text)?;
            text.clear();
            out.flush()?;
            written.fetch_add(std::mem::take(n), Ordering::Relaxed);
            *at = Instant::now();
            io::Result::Ok(())
        };
    if let Some(h) = header {
        text.extend_from_slice(h.as_bytes());
        text.push(b'\n');
        if sink.line_buffered {
            flush(&mut sink.out, &mut text, &mut unflushed, &mut last_flush)?;
        }
    }
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(batch) => {
                for item in &batch {
                    format(item, &mut text);
                    text.push(b'\n');
                }
                queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
                unflushed += batch.len() as u64;
                if sink.line_buffered || last_flush.elapsed() >= FLUSH_EVERY {
                    flush(&mut sink.out, &mut text, &mut unflushed, &mut last_flush)?;
                } else if text.len() >= WRITE_AT {
                    sink.out.write_all(&text)?;
                    text.clear();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                flush(&mut sink.out, &mut text, &mut unflushed, &mut last_flush)?;
                if sink.fd.is_some_and(reader_gone) {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    flush(&mut sink.out, &mut text, &mut unflushed, &mut last_flush)
}

/// Whether the reader of `fd` went away (a pipe whose read end closed
/// reports POLLERR), without writing to it.
fn reader_gone(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd of ours, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    fn sink(w: impl Write + Send + 'static) -> Sink {
        Sink {
            out: Box::new(w),
            line_buffered: true,
            fd: None,
        }
    }

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
            sink(Stalled(gate.clone(), data.clone())),
            None,
            |n: &u32, s: &mut Vec<u8>| s.extend_from_slice(n.to_string().as_bytes()),
        );
        // More items than the queue holds, in small batches (the bound is
        // on items, not batches).
        let batches = QUEUE_ITEMS / 10 + 1_000;
        let sent = batches * 10;
        let start = std::time::Instant::now();
        for i in 0..batches {
            assert!(out.send((0..10).map(|k| (i * 10 + k) as u32).collect()));
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

    /// The bytes a sink was given, and its calls: the size of each write,
    /// `None` for a flush.
    type Given = (Vec<u8>, Vec<Option<usize>>);

    /// A sink that keeps what it is given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Given>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut k = self.0.lock().unwrap();
            k.0.extend_from_slice(buf);
            k.1.push(Some(buf.len()));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.lock().unwrap().1.push(None);
            Ok(())
        }
    }

    /// A block-buffered sink into `kept`, as `Output::stdout` makes one
    /// for a file or a pipe.
    fn block_buffered(kept: &Kept) -> Sink {
        Sink {
            out: Box::new(io::BufWriter::with_capacity(WRITE_AT, kept.clone())),
            line_buffered: false,
            fd: None,
        }
    }

    #[test]
    fn block_buffered_lines_go_out_whole_in_order_and_in_big_writes() {
        let kept = Kept::default();
        let sink = block_buffered(&kept);
        let mut out = Output::new(sink, Some("H".into()), |n: &u32, s: &mut Vec<u8>| {
            s.extend_from_slice(n.to_string().as_bytes())
        });
        let sent = 100_000u32;
        for i in (0..sent).step_by(100) {
            assert!(out.send((i..i + 100).collect()));
        }
        let stats = out.finish(Duration::from_secs(10));
        assert_eq!((stats.written, stats.dropped), (u64::from(sent), 0));
        let k = kept.0.lock().unwrap();
        let want: String = std::iter::once("H".to_string())
            .chain((0..sent).map(|n| n.to_string()))
            .map(|l| l + "\n")
            .collect();
        assert!(k.0 == want.as_bytes(), "the lines differ from those sent");
        // Writes are block-sized, but for a flush's (at the end, or when
        // the flush timer is due), which the flush itself follows.
        let calls = &k.1;
        for (i, call) in calls.iter().enumerate() {
            if let Some(n) = *call
                && n < WRITE_AT
            {
                assert_eq!(
                    calls.get(i + 1),
                    Some(&None),
                    "a small write at {i}: {calls:?}"
                );
            }
        }
        assert!(
            calls.iter().any(|c| c.is_some_and(|n| n >= WRITE_AT)),
            "{calls:?}"
        );
    }

    #[test]
    fn block_buffered_lines_reach_the_sink_on_a_quiet_host() {
        let kept = Kept::default();
        let sink = block_buffered(&kept);
        let mut out = Output::new(sink, None, |n: &u32, s: &mut Vec<u8>| {
            s.extend_from_slice(n.to_string().as_bytes())
        });
        assert!(out.send(vec![7]));
        // Nothing more comes: the flush timer alone must hand the line on.
        let deadline = Instant::now() + FLUSH_EVERY * 10;
        while kept.0.lock().unwrap().0 != b"7\n" {
            assert!(Instant::now() < deadline, "the line never reached the sink");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.finish(Duration::from_secs(5)).written, 1);
    }

    #[test]
    fn a_sink_stalled_forever_does_not_hang_the_exit() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let data = Arc::new(Mutex::new(Vec::new()));
        let mut out = Output::new(
            sink(Stalled(gate, data)),
            None,
            |n: &u32, s: &mut Vec<u8>| s.extend_from_slice(n.to_string().as_bytes()),
        );
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
        let mut out = Output::new(
            sink(Closed),
            Some("HEADER".into()),
            |n: &u32, s: &mut Vec<u8>| s.extend_from_slice(n.to_string().as_bytes()),
        );
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
