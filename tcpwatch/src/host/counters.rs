//! Reads the kernel's TCP counters of a network namespace (/proc/net/snmp
//! and /proc/net/netstat); the parsing is `tcpwatch_core::counters`.
use std::{collections::BTreeMap, io, path::Path};

use tcpwatch_core::counters::parse;

#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("reading {path}")]
    Read { path: String, source: io::Error },
    #[error("entering network namespace {path}")]
    Netns { path: String, source: io::Error },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
}

/// The counters of the calling thread's network namespace (thread-self: a
/// thread that entered another namespace sees that one's).
pub fn read_current() -> Result<BTreeMap<String, i64>, CountersError> {
    let mut out = BTreeMap::new();
    for path in [
        "/proc/thread-self/net/snmp",
        "/proc/thread-self/net/netstat",
    ] {
        let text = std::fs::read_to_string(path).map_err(|source| CountersError::Read {
            path: path.into(),
            source,
        })?;
        parse(&text, &mut out).map_err(|message| CountersError::Parse {
            file: path.into(),
            message,
        })?;
    }
    Ok(out)
}

/// The counters of another namespace (a path that opens it), read on a
/// short-lived thread that entered it.
pub fn read_in(netns: &Path) -> Result<BTreeMap<String, i64>, CountersError> {
    crate::host::netns::run_in(netns, read_current).map_err(|source| CountersError::Netns {
        path: netns.display().to_string(),
        source,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_files_parse() {
        let m = read_current().unwrap();
        assert!(m.contains_key("TcpExt.ListenOverflows"));
    }
}
