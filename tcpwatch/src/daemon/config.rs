//! Reads the daemon's configuration file (parsing and checking are
//! `tcpwatch_core::config`): which file, and an error that names it.
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tcpwatch_core::config::{Config, ConfigError, DEFAULT_PATH};

/// A configuration file that cannot be used, as `FILE:LINE: reason`.
#[derive(Debug)]
pub struct ConfigFileError {
    pub path: PathBuf,
    pub error: ConfigError,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.error.reason),
            None => write!(f, "{}: {}", self.path.display(), self.error.reason),
        }
    }
}

impl std::error::Error for ConfigFileError {}

/// Reads and checks one file.
pub fn read(path: &Path) -> Result<Config, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
        path: path.to_owned(),
        error: ConfigError {
            line: None,
            reason: e.to_string(),
        },
    })?;
    Config::parse(&text).map_err(|error| ConfigFileError {
        path: path.to_owned(),
        error,
    })
}

/// The file to use: `explicit` (which must exist), else the default path
/// when it exists, else none (built-in defaults).
pub fn load(explicit: Option<&Path>) -> Result<(Option<PathBuf>, Config), ConfigFileError> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok((None, Config::default())),
    };
    let cfg = read(&path)?;
    Ok((Some(path), cfg))
}

/// What SIGHUP re-reads, and the command line's overrides to lay on top.
#[derive(Clone)]
pub struct Reload {
    pub path: Option<PathBuf>,
    pub overrides: Arc<dyn Fn(&mut Config) + Send + Sync>,
}

impl Reload {
    pub fn read(&self) -> Result<Option<Config>, ConfigFileError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut cfg = read(path)?;
        (self.overrides)(&mut cfg);
        Ok(Some(cfg))
    }
}
