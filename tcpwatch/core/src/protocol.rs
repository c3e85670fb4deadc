//! The control socket's messages: JSON, one per length-delimited frame.
//! A client says hello with the protocol version, then asks once
//! (snapshot, accounting) or subscribes to every tick's snapshot.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{engine::KernelSample, snapshot::Snapshot};

/// Bumped on any change an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame a client may send: requests are tiny, and a length
/// prefix is never trusted beyond this.
pub const MAX_CLIENT_FRAME: usize = 4096;

/// The largest frame the daemon sends (a snapshot at the caps is well under
/// 1 MiB); clients refuse more.
pub const MAX_SERVER_FRAME: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
    },
    /// The latest snapshot, once.
    Snapshot,
    /// The kernel side's latest account, once.
    Accounting,
    /// Every snapshot from now on; a client that reads slower than the
    /// ticks gets the newest and is told how many it missed.
    Subscribe,
}

/// `{"type": ..., "body": {...}}`: the tag first and the body apart, so a
/// reader decodes the body directly (an internally tagged enum is buffered
/// first, and that buffer cannot hold the view's 128-bit sums).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        daemon: String,
    },
    Snapshot {
        /// Snapshots published since the last one this client got, not
        /// sent to it because it was still reading (subscriptions).
        missed: u64,
        snapshot: Arc<Snapshot>,
    },
    Accounting {
        kernel: Option<KernelSample>,
    },
    /// The request could not be served; the daemon closes the connection.
    Error {
        message: String,
    },
}

impl Request {
    /// A client frame, or why it is not one.
    pub fn decode(frame: &[u8]) -> Result<Request, String> {
        serde_json::from_slice(frame).map_err(|e| format!("bad request: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{Engine, EngineConfig},
        metrics::Info,
        view::trace::Clock,
    };

    #[test]
    fn a_snapshot_reply_round_trips_with_its_wide_numbers() {
        let snapshot = Arc::new(Snapshot::new(
            3,
            Clock {
                offset_ns: 1_795_592_629_121_514_040,
            },
            Info::default(),
            Engine::new(EngineConfig::default()).view(),
        ));
        let text = serde_json::to_string(&Reply::Snapshot {
            missed: 2,
            snapshot,
        })
        .unwrap();
        assert!(
            text.starts_with(r#"{"type":"snapshot","body":{"missed":2,"#),
            "{text}"
        );
        match serde_json::from_str::<Reply>(&text).unwrap() {
            Reply::Snapshot { missed, snapshot } => {
                assert_eq!((missed, snapshot.seq), (2, 3));
                assert_eq!(snapshot.clock.offset_ns, 1_795_592_629_121_514_040);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_read_as_documented_and_junk_is_refused() {
        assert_eq!(
            Request::decode(br#"{"type":"hello","version":1}"#),
            Ok(Request::Hello { version: 1 })
        );
        assert_eq!(
            Request::decode(br#"{"type":"subscribe"}"#),
            Ok(Request::Subscribe)
        );
        for junk in [
            &b"\xff\x00garbage"[..],
            br#"{"type":"shutdown"}"#,
            br#"{"version":1}"#,
            b"",
        ] {
            assert!(Request::decode(junk).is_err(), "{junk:?}");
        }
    }
}
