//! The kernel's signal counters (resets sent and received, SYN-ACK
//! retransmits) as the engine takes them: the probe keeps a cumulative
//! count per key, the daemon reads them every interval, and [`Deltas`]
//! turns each reading into what changed since the last.
use serde::{Deserialize, Serialize};
use tcpwatch_common::{DIR_OUT, SignalKey, signal};

use crate::{engine::Direction, model::Comm, totals::Totals};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    ResetSent,
    ResetReceived,
    SynackRetransmit,
    /// A connect() that failed with no state transition (no SYN left).
    ConnectFailed,
    /// A connect() whose SYN-SENT -> CLOSE carried no error: its errno.
    ConnectErrno,
}

impl SignalKind {
    pub fn from_raw(kind: u16) -> Option<SignalKind> {
        Some(match kind {
            signal::RST_SENT => SignalKind::ResetSent,
            signal::RST_RECEIVED => SignalKind::ResetReceived,
            signal::SYNACK_RETRANSMIT => SignalKind::SynackRetransmit,
            signal::CONNECT_FAILED => SignalKind::ConnectFailed,
            signal::CONNECT_ERRNO => SignalKind::ConnectErrno,
            _ => return None,
        })
    }
}

/// Signals of one kind on one port since the previous reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalDelta {
    pub netns: u32,
    pub kind: SignalKind,
    pub port: u16,
    pub direction: Direction,
    pub count: u64,
    /// The process and errno of a connect() failure, else 0 and empty.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<Comm>,
    #[serde(default, skip_serializing_if = "is_zero16")]
    pub errno: u16,
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

fn is_zero16(n: &u16) -> bool {
    *n == 0
}

/// One reading of the signal counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalsSample {
    pub ts_ns: u64,
    pub deltas: Vec<SignalDelta>,
    /// Since the probe started, cumulative: signals counted without a key
    /// (the probe's map was full) and signals it could not read.
    pub unkeyed: u64,
    pub unreadable: u64,
}

/// The previous reading of every key (as many as the probe's map holds).
#[derive(Debug, Default)]
pub struct Deltas {
    last: Totals<SignalKey>,
}

impl Deltas {
    /// What changed since the previous call, from the probe's cumulative
    /// totals. Keys of unknown kinds are skipped.
    pub fn update(
        &mut self,
        totals: impl IntoIterator<Item = (SignalKey, u64)>,
    ) -> Vec<SignalDelta> {
        let mut out = Vec::new();
        for (key, total) in totals {
            let Some(kind) = SignalKind::from_raw(key.kind) else {
                continue;
            };
            let count = self.last.change(key, total);
            if count == 0 {
                continue;
            }
            out.push(SignalDelta {
                netns: key.netns,
                kind,
                port: key.port,
                direction: if key.direction == DIR_OUT {
                    Direction::Out
                } else {
                    Direction::In
                },
                count,
                pid: key.tgid,
                comm: (key.tgid != 0).then(|| Comm::from_raw(&key.comm.0)),
                errno: key.errno,
            });
        }
        out.sort_by(|a, b| {
            (a.netns, a.port, a.direction, a.kind, a.pid, a.errno).cmp(&(
                b.netns,
                b.port,
                b.direction,
                b.kind,
                b.pid,
                b.errno,
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: u16, port: u16, direction: u16) -> SignalKey {
        SignalKey {
            netns: 7,
            tgid: 0,
            kind,
            errno: 0,
            port,
            direction,
            comm: tcpwatch_common::TaskComm([0; 16]),
        }
    }

    #[test]
    fn each_reading_gives_what_changed_since_the_last() {
        let mut d = Deltas::default();
        let first = d.update([
            (key(signal::RST_SENT, 80, 0), 5),
            (key(signal::RST_RECEIVED, 443, 1), 2),
            (key(99, 1, 0), 9),
        ]);
        assert_eq!(first.len(), 2, "{first:?}");
        assert_eq!(first[0].kind, SignalKind::ResetSent);
        assert_eq!((first[0].port, first[0].count), (80, 5));
        assert_eq!(first[1].direction, Direction::Out);
        let second = d.update([
            (key(signal::RST_SENT, 80, 0), 12),
            (key(signal::RST_RECEIVED, 443, 1), 2),
        ]);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].count, 7);
        // A key met again after the probe restarted counts from zero.
        let third = d.update([(key(signal::RST_SENT, 80, 0), 3)]);
        assert_eq!(third[0].count, 3);
    }
}
