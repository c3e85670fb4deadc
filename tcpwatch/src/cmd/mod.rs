//! Subcommands: each parses its arguments, wires the edges to the core and
//! prints. No logic of their own beyond that.
use std::time::Duration;

use tcpwatch::{
    daemon::config::ConfigFileError,
    probe::{capture::CaptureError, loader::LoadError},
};

/// Writes a line to stderr, like `eprintln!`, but never panics: with
/// stderr gone or full (`2>/dev/full`) there is nowhere to say anything,
/// and the exit status still tells.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod alerts;
pub mod config;
pub mod daemon;
pub mod floor;
pub mod output;
pub mod replay;
pub mod snapshot;
pub mod states;
pub mod target;
pub mod top;
pub mod trace;

/// Says what sockets' chains and the census check named in scope, and how
/// many of those the ring buffer's counted drops explain (a dropped close
/// leaves its socket to vanish): the rest were lost before any program
/// counted them. `daemon`, `record` and `trace` alike.
pub fn say_named_losses(breaks: u64, vanished: u64, explained: u64) {
    if breaks > 0 {
        say!(
            "tcpwatch: sockets' chains of transitions broke {breaks} times (a transition's old state was not the one its socket last went to)"
        );
    }
    if vanished > 0 {
        say!(
            "tcpwatch: {vanished} sockets vanished from two censuses in a row while their last transition seen said open: their last transitions were lost"
        );
    }
    let named = breaks + vanished;
    if named > 0 {
        say!(
            "tcpwatch: of those {named}, the ring buffer's counted drops explain {explained}; the rest are transitions lost before any program counted them"
        );
    }
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// SIGINT or SIGTERM: an operator or a service manager asked.
    Signal,
    /// `-d` seconds passed.
    Duration,
}

/// What ends a capture: SIGINT, SIGTERM, SIGQUIT (a clean stop, not a
/// core dump that would leave a cut recording), SIGHUP where asked
/// (`record`: its terminal went away), or `-d` seconds passing. Installed
/// before the loop so a signal during start-up is not lost.
pub struct Stop {
    signals: Signals,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The signals that stop a run.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// The next of them. Cancel-safe.
    async fn next(&mut self) {
        let hangup = async {
            match &mut self.hup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.quit.recv() => {}
            _ = hangup => {}
        }
    }
}

impl Stop {
    /// `seconds`: validated by the caller (positive, finite); past ~584
    /// years it saturates.
    pub fn new(seconds: Option<f64>) -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        let after = seconds.map_or(Duration::MAX, |d| {
            Duration::try_from_secs_f64(d).unwrap_or(Duration::MAX)
        });
        Ok(Stop {
            signals: Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                quit: signal(SignalKind::quit())?,
                hup: None,
            },
            deadline: Box::pin(tokio::time::sleep(after)),
        })
    }

    /// Also stops on SIGHUP.
    pub fn on_hangup(mut self) -> std::io::Result<Stop> {
        self.signals.hup = Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        )?);
        Ok(self)
    }

    /// Resolves on the next stopping signal only (not the duration, which
    /// stays passed): a second Ctrl-C cuts what a stop still does.
    pub async fn signal(&mut self) {
        self.signals.next().await
    }

    /// Resolves when it is time to stop, saying why. Cancel-safe: a
    /// `select!` may drop it and call it again.
    pub async fn wait(&mut self) -> Why {
        tokio::select! {
            _ = self.signals.next() => Why::Signal,
            _ = &mut self.deadline => Why::Duration,
        }
    }
}

/// The reader of stdout went away (`| head`): the command ends quietly
/// with 141, as a tool killed by SIGPIPE does in a shell.
#[derive(Debug)]
pub struct ClosedPipe;

impl std::fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the output pipe was closed")
    }
}

impl std::error::Error for ClosedPipe {}

/// Exit status of a command whose output pipe closed early.
pub const EXIT_CLOSED_PIPE: u8 = 141;

/// Writes a command's whole output to stdout: a closed pipe is
/// [`ClosedPipe`], any other failure (a full disk) one sentence.
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedPipe.into()),
        Err(e) => Err(anyhow::anyhow!("writing the output: {e}")),
    }
}

/// A usage error found after parsing (exit 2), said in one sentence.
#[derive(Debug)]
pub struct Usage(pub String);

/// An error of the user's input as a usage error (exit 2), its causes
/// said once; one that was a permission refused stays that (exit 77).
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if denied {
        NotPermitted(format!("{e:#}: run it as root")).into()
    } else {
        Usage(format!("{e:#}")).into()
    }
}

/// Not permitted (exit 77), with what to do about it.
#[derive(Debug)]
pub struct NotPermitted(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}
impl std::error::Error for NotPermitted {}

/// The documented exit code for an error: the loader's codes (69, 77) where
/// loading failed, 2 for a configuration that cannot be used, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ClosedPipe>() {
            return EXIT_CLOSED_PIPE;
        }
        if cause.downcast_ref::<ConfigFileError>().is_some() || cause.is::<Usage>() {
            return 2;
        }
        if cause.is::<NotPermitted>() {
            return 77;
        }
        if let Some(l) = cause.downcast_ref::<LoadError>() {
            return l.exit_code() as u8;
        }
        if let Some(CaptureError::Load(l)) = cause.downcast_ref::<CaptureError>() {
            return l.exit_code() as u8;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                // Entering another namespace, opening a file: every
                // permission error alike.
                std::io::ErrorKind::PermissionDenied => return 77,
                // A metrics address in use is the user's choice to change.
                std::io::ErrorKind::AddrInUse => return 2,
                _ => {}
            }
        }
    }
    1
}
