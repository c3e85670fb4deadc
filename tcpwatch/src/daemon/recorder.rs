//! Writes every engine input of a daemon run to a recording file.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tcpwatch_core::{engine::Input, model::Transition, record, view::trace::Clock};

use crate::host::clock::monotonic_ns;

pub struct Recorder {
    writer: record::Writer<File>,
    path: PathBuf,
}

impl Recorder {
    pub fn create(path: &Path, clock: Clock, hook: &str) -> anyhow::Result<Recorder> {
        let file = File::create(path)
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
