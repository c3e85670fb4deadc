//! Writes every engine input of a daemon run to a recording file.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tcpwatch_core::{engine::Input, model::Transition, record, view::trace::Clock};

use crate::host::clock::monotonic_ns;

pub struct Recorder {
    writer: record::Writer<Box<dyn Write + Send>>,
    path: PathBuf,
}

/// Opens the recording: `-` is stdout; a file is created mode 0600 (it
/// names the host's connections and processes), truncated if it exists,
/// and never through a symbolic link planted in its place (the daemon
/// runs as root).
fn open(path: &Path) -> std::io::Result<Box<dyn Write + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    Ok(Box::new(file))
}

impl Recorder {
    pub fn create(path: &Path, clock: Clock, hook: &str) -> anyhow::Result<Recorder> {
        let file = open(path)
            .with_context(|| format!("cannot create the recording {}", path.display()))?;
        let now = monotonic_ns();
        let header = record::Header::new(now, clock.unix_ns(now), Some(hook.into()));
        Ok(Recorder {
            writer: record::Writer::new(file, &header)
                .with_context(|| format!("writing {}", path.display()))?,
            path: path.to_owned(),
        })
    }

    pub fn write(&mut self, input: &Input) -> anyhow::Result<()> {
        self.writer
            .write(input)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn write_transition(&mut self, t: &Transition) -> anyhow::Result<()> {
        self.writer
            .write_transition(t)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.writer
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lines(&self) -> u64 {
        self.writer.lines()
    }
}
