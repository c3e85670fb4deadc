//! Typed transitions and the kernel-side accounting, as the rest of
//! tcpwatch sees them. Pure: built from the raw shared layouts, no I/O.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tcpwatch_common::{
    AF_INET6, FLAG_CAUGHT, FLAG_OWNER_KNOWN, IPPROTO_MPTCP, NUM_PROGS, PROG_SLOTS, STATE_SLOTS,
    TRANSITION_SLOTS, TcpState, TransitionEvent, stat,
};

/// A state as reported: known to tcpwatch, or a number it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Known(TcpState),
    Unknown(u8),
}

impl State {
    pub fn from_raw(v: u8) -> State {
        TcpState::from_u8(v).map_or(State::Unknown(v), State::Known)
    }

    pub fn raw(self) -> u8 {
        match self {
            State::Known(s) => s as u8,
            State::Unknown(v) => v,
        }
    }
}

/// States travel in recordings by name ("SYN-SENT"), unknown ones as
/// "STATE-<n>", so a recording stays readable and survives renumbering.
impl serde::Serialize for State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if let Some(n) = name.strip_prefix("STATE-") {
            // The probe counts states 0..16 (`STATE_SLOTS`); a recording
            // naming others is not one it made, and 256 of them would make
            // 65,536 pairs per namespace to keep in order.
            return match n.parse::<u8>() {
                Ok(v) if u32::from(v) < tcpwatch_common::STATE_SLOTS => Ok(State::from_raw(v)),
                _ => Err(serde::de::Error::custom(format!(
                    "bad state {name:?} (states are numbered 0 to {})",
                    tcpwatch_common::STATE_SLOTS - 1
                ))),
            };
        }
        TcpState::parse(&name)
            .map(State::Known)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown TCP state {name:?}")))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Known(s) => f.pad(s.name()),
            State::Unknown(v) => f.pad(&format!("STATE-{v}")),
        }
    }
}

/// The process a socket belongs to, as captured in its owner's own context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id that made the owning call.
    pub tid: u32,
    pub comm: Comm,
}

/// A task's command name as the kernel keeps it: at most 15 bytes, kept
/// inline so that an event carries it without an allocation (the daemon
/// sees hundreds of thousands per second). Not necessarily UTF-8 (a
/// process names itself); shown lossily. Serialized as a string.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; Comm::MAX],
    len: u8,
}

/// The order a derived `Ord` gives (the bytes, then the length), as one
/// integer compare: the derived one called `memcmp` for the bytes, 6 % of
/// the daemon's samples under churn (processes are in an ordered map).
impl Ord for Comm {
    fn cmp(&self, other: &Comm) -> std::cmp::Ordering {
        self.packed().cmp(&other.packed())
    }
}

impl PartialOrd for Comm {
    fn partial_cmp(&self, other: &Comm) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Comm {
    /// TASK_COMM_LEN less the terminating NUL.
    pub const MAX: usize = 15;

    /// From the kernel's NUL-padded buffer.
    pub fn from_raw(raw: &[u8; 16]) -> Comm {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(Comm::MAX);
        // The bytes from the NUL on are zeroed by a mask, not a copy of
        // `len` bytes (a `memcpy` call per owned event).
        let kept = u128::from_le_bytes(*raw) & ((1u128 << (8 * len)) - 1);
        let mut bytes = [0; Comm::MAX];
        bytes.copy_from_slice(&kept.to_le_bytes()[..Comm::MAX]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// The first 15 bytes of `name`, as the kernel would keep them.
    pub fn from_bytes(name: &[u8]) -> Comm {
        let len = name.len().min(Comm::MAX);
        let mut bytes = [0; Comm::MAX];
        bytes[..len].copy_from_slice(&name[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The bytes and then the length, big-endian: integer order is their
    /// lexicographic order.
    fn packed(&self) -> u128 {
        let mut all = [self.len; 16];
        all[..Comm::MAX].copy_from_slice(&self.bytes);
        u128::from_be_bytes(all)
    }

    /// The name as text; borrowed unless it is not UTF-8.
    pub fn to_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// The name's bytes, zero-padded to the 15 the kernel keeps.
    pub fn padded(&self) -> &[u8; Comm::MAX] {
        &self.bytes
    }

    /// The kernel's NUL-padded form.
    pub fn raw(&self) -> [u8; 16] {
        let mut raw = [0; 16];
        raw[..self.len as usize].copy_from_slice(self.as_bytes());
        raw
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Comm {
        // Cut at a character boundary so that a UTF-8 name stays UTF-8.
        let mut end = name.len().min(Comm::MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Comm::from_bytes(&name.as_bytes()[..end])
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.to_str(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_str())
    }
}

impl<'de> serde::Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Comm::from(&*name))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Mptcp,
}

/// One TCP state transition. Its serde form is the recording format's
/// `transition` line (see `record`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub skaddr: u64,
    /// Network namespace inode, `None` when the kernel did not let us read it.
    pub netns: Option<u32>,
    pub owner: Option<Owner>,
    pub old: State,
    pub new: State,
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Time spent in `old`, when the previous transition was seen.
    #[serde(with = "duration_ns", rename = "in_old_ns")]
    pub in_old: Option<Duration>,
    /// Delivered by the catcher program (the kernel skipped the main one).
    pub caught: bool,
    /// The socket's side as its first transition showed it: a server's
    /// (LISTEN -> SYN-RECV, true) or a client's (CLOSE -> SYN-SENT, false).
    /// None when unknown: the socket is older than the probe, or a lost
    /// transition broke its chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<bool>,
    /// At `-> CLOSE`, the error the kernel closed the socket with (errno:
    /// 111 refused, 110 timed out, 113 host unreachable, 104 reset...);
    /// None for an orderly close and for other transitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<u16>,
}

/// The symbolic name of an errno a socket can close or fail with (as
/// `strerror`'s users know them), or `E<n>` for another.
pub fn errno_name(errno: u16) -> std::borrow::Cow<'static, str> {
    let name = match errno {
        1 => "EPERM",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        92 => "ENOPROTOOPT",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => return format!("E{errno}").into(),
    };
    name.into()
}

/// Durations as whole nanoseconds (exact, unlike float seconds).
mod duration_ns {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_nanos() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_nanos))
    }
}

impl Transition {
    pub fn from_raw(e: &TransitionEvent) -> Transition {
        let (saddr, daddr): (IpAddr, IpAddr) = if e.family == AF_INET6 {
            (
                Ipv6Addr::from(e.saddr).into(),
                Ipv6Addr::from(e.daddr).into(),
            )
        } else {
            let v4 = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]).into();
            (v4(&e.saddr), v4(&e.daddr))
        };
        Transition {
            ts_ns: e.ts_ns,
            skaddr: e.skaddr,
            netns: (e.netns != 0).then_some(e.netns),
            owner: (e.flags & FLAG_OWNER_KNOWN != 0).then(|| Owner {
                pid: e.tgid,
                tid: e.pid,
                comm: Comm::from_raw(&e.comm.0),
            }),
            old: State::from_raw(e.oldstate),
            new: State::from_raw(e.newstate),
            protocol: if e.protocol == IPPROTO_MPTCP {
                Protocol::Mptcp
            } else {
                Protocol::Tcp
            },
            local: SocketAddr::new(saddr, e.sport),
            remote: SocketAddr::new(daddr, e.dport),
            // Followed in user space (`sockets::Follower`).
            in_old: None,
            caught: e.flags & FLAG_CAUGHT != 0,
            passive: None,
            error: (e.error != 0).then_some(e.error),
        }
    }

    /// 4 or 6, by the socket's family (a v4-mapped peer on a v6 socket is 6).
    pub fn ip_version(&self) -> u8 {
        if self.local.is_ipv6() { 6 } else { 4 }
    }

    /// A passive socket's LISTEN -> SYN-RECV seen before the kernel set its
    /// addresses: it still carries its listener's, and no peer. Kernels
    /// before 6.18 (6.1 and 6.12 measured) change the state first; the
    /// socket's later transitions have both addresses.
    pub fn peer_unset(&self) -> bool {
        self.old.raw() == tcpwatch_common::state::TCP_LISTEN
            && self.new.raw() == tcpwatch_common::state::TCP_SYN_RECV
            && self.remote.port() == 0
    }
}

/// Statistics of one program, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgCounters {
    /// Transitions counted, by (old, new).
    pub transitions: Vec<u64>,
    /// `stat::*` counters.
    pub stats: Vec<u64>,
    /// Runs the kernel skipped (`recursion_misses` of the program).
    pub recursion_misses: u64,
    /// Runs and run time (non-zero only while `kernel.bpf_stats_enabled`).
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl ProgCounters {
    pub fn new() -> Self {
        ProgCounters {
            transitions: vec![0; (STATE_SLOTS * STATE_SLOTS) as usize],
            stats: vec![0; stat::COUNT as usize],
            ..Default::default()
        }
    }

    pub fn stat(&self, which: u32) -> u64 {
        self.stats[which as usize]
    }
}

/// Everything the kernel side counted. Main program first; the catcher
/// exists only on the BTF hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub main: ProgCounters,
    pub catcher: Option<ProgCounters>,
    /// Firings of the tracepoint for which the kernel neither ran the main
    /// program nor counted a miss, by the perf witness (see
    /// `crate::witness`); `None` where there is no witness.
    pub not_run: Option<u64>,
}

/// Which program and which counter a per-CPU stats array index holds: the
/// inverse of `transition_index` / `stat_index` (checked by a test).
pub fn stats_slot(index: u32) -> Option<(u32, Slot)> {
    let prog = index / PROG_SLOTS;
    if prog >= NUM_PROGS {
        return None;
    }
    let rem = index % PROG_SLOTS;
    Some(if rem < TRANSITION_SLOTS {
        (
            prog,
            Slot::Transition((rem / STATE_SLOTS) as u8, (rem % STATE_SLOTS) as u8),
        )
    } else {
        (prog, Slot::Stat(rem - TRANSITION_SLOTS))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Transition(u8, u8),
    Stat(u32),
}

impl KernelCounters {
    fn progs(&self) -> impl Iterator<Item = &ProgCounters> {
        std::iter::once(&self.main).chain(self.catcher.as_ref())
    }

    /// Transitions counted for `old -> new` by both programs.
    pub fn transition(&self, old: u8, new: u8) -> u64 {
        let i = (old as u32 * STATE_SLOTS + new as u32) as usize;
        self.progs().map(|p| p.transitions[i]).sum()
    }

    /// Non-zero transition counters, as ((old, new), count).
    pub fn transitions(&self) -> Vec<((State, State), u64)> {
        let mut out = Vec::new();
        for old in 0..STATE_SLOTS as u8 {
            for new in 0..STATE_SLOTS as u8 {
                let n = self.transition(old, new);
                if n > 0 {
                    out.push(((State::from_raw(old), State::from_raw(new)), n));
                }
            }
        }
        out
    }

    fn stat(&self, which: u32) -> u64 {
        self.progs().map(|p| p.stat(which)).sum()
    }

    pub fn summary(&self) -> Accounting {
        let counted: u64 = self
            .progs()
            .map(|p| p.transitions.iter().sum::<u64>())
            .sum();
        let caught = self.catcher.as_ref().map_or(0, |c| c.stat(stat::CAUGHT));
        let skipped = self.main.recursion_misses + self.main.stat(stat::SIMULATED_SKIP);
        Accounting {
            counted: counted + self.stat(stat::BAD_STATE),
            emitted: self.stat(stat::EMITTED),
            ringbuf_full: self.stat(stat::RINGBUF_FULL),
            read_failed: self.stat(stat::READ_FAILED),
            map_update_failed: self.stat(stat::MAP_UPDATE_FAILED),
            filtered: self.stat(stat::FILTERED),
            nested: self.main.stat(stat::NESTED),
            other_protocol: self.stat(stat::OTHER_PROTOCOL),
            kernel_skipped: skipped,
            caught,
            // Skips the catcher did not make up for: transitions counted
            // nowhere, whatever their namespace or state.
            unrecovered: skipped.saturating_sub(caught),
            // More caught than skipped: some transition was handled twice
            // (the identity stack overflowing is one known way).
            double_counted: caught.saturating_sub(skipped),
            recent_full: self.main.stat(stat::RECENT_FULL),
            has_catcher: self.catcher.is_some(),
            not_run: self.not_run.unwrap_or(0),
            has_witness: self.not_run.is_some(),
            bpf_run_time_ns: self.progs().map(|p| p.run_time_ns).sum(),
            bpf_run_cnt: self.progs().map(|p| p.run_cnt).sum(),
        }
    }
}

/// The reconciliation printed at exit and exported as self-metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accounting {
    /// Transitions counted in the kernel (in scope of the filters).
    pub counted: u64,
    /// Of those, written into the ring buffer.
    pub emitted: u64,
    /// Of those, lost because the ring buffer was full.
    pub ringbuf_full: u64,
    pub read_failed: u64,
    pub map_update_failed: u64,
    /// Runs of the main program that started inside another on one CPU
    /// (expected 0: the kernel skips those; non-zero means counters may race).
    pub nested: u64,
    /// Transitions outside the namespace filter (not counted above).
    pub filtered: u64,
    /// Transitions of other protocols on the same tracepoint (SCTP).
    pub other_protocol: u64,
    /// Runs of the main program the kernel skipped (all namespaces), plus
    /// those skipped on purpose by fault injection (tests only).
    pub kernel_skipped: u64,
    /// Of those, handled by the catcher (all namespaces).
    pub caught: u64,
    /// Skipped and not caught: counted nowhere.
    pub unrecovered: u64,
    pub double_counted: u64,
    /// Identities the main program could not leave for the catcher.
    pub recent_full: u64,
    pub has_catcher: bool,
    /// Time the programs ran and how often, summed (non-zero only while
    /// `kernel.bpf_stats_enabled` is 1): the in-kernel cost per event.
    #[serde(default)]
    pub bpf_run_time_ns: u64,
    #[serde(default)]
    pub bpf_run_cnt: u64,
    /// Firings of the tracepoint the kernel never ran the programs for and
    /// never counted as missed (all namespaces), seen by the perf witness:
    /// transitions counted nowhere else.
    #[serde(default)]
    pub not_run: u64,
    /// Whether the witness ran (BTF hook, perf counters available); without
    /// it `not_run` is unknown and shown as 0.
    #[serde(default)]
    pub has_witness: bool,
}

impl Accounting {
    /// Whether every transition was counted exactly once: nothing skipped
    /// and uncaught, nothing the kernel did not run the programs for,
    /// nothing caught twice, and no run of the main program nested inside
    /// another (which would make per-CPU counters race).
    pub fn lossless(&self) -> bool {
        self.unrecovered == 0 && self.not_run == 0 && self.double_counted == 0 && self.nested == 0
    }

    /// Transitions lost in the kernel before any program counted them:
    /// skipped and not caught, or never run (all namespaces).
    pub fn lost_in_kernel(&self) -> u64 {
        self.unrecovered + self.not_run
    }

    /// Whether the run broke its promise and exits 3 (trace, daemon,
    /// record): a transition lost in the kernel or counted twice, or the
    /// main program ran nested.
    pub fn promise_broken(&self) -> bool {
        self.lost_in_kernel() > 0 || self.double_counted > 0 || self.nested > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpwatch_common::{AF_INET, IPPROTO_TCP, state::*};

    /// The exit-3 condition every live command shares: a run with 1,383
    /// skips and 1,384 catches once exited 0 (found by a user).
    #[test]
    fn counting_twice_breaks_the_promise_as_losing_does() {
        let fine = Accounting {
            kernel_skipped: 1383,
            caught: 1383,
            has_catcher: true,
            has_witness: true,
            ..Default::default()
        };
        assert!(!fine.promise_broken() && fine.lossless());
        let twice = Accounting {
            caught: 1384,
            double_counted: 1,
            ..fine.clone()
        };
        assert!(twice.promise_broken() && !twice.lossless());
        let lost = Accounting {
            caught: 1382,
            unrecovered: 1,
            ..fine.clone()
        };
        assert!(lost.promise_broken());
        let never_run = Accounting {
            not_run: 1,
            ..fine.clone()
        };
        assert!(never_run.promise_broken());
        let nested = Accounting { nested: 1, ..fine };
        assert!(nested.promise_broken());
    }

    fn raw() -> TransitionEvent {
        TransitionEvent {
            header: tcpwatch_common::EventHeader {
                kind: tcpwatch_common::kind::TRANSITION,
                size: 104,
                _pad: 0,
            },
            ts_ns: 5,
            skaddr: 0xffff_8880_0000_1000,
            netns: 4026531840,
            pid: 101,
            tgid: 100,
            oldstate: TCP_SYN_SENT,
            newstate: TCP_ESTABLISHED,
            family: AF_INET,
            protocol: IPPROTO_TCP,
            sport: 40000,
            dport: 80,
            flags: FLAG_OWNER_KNOWN,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: tcpwatch_common::TaskComm(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
            error: 0,
            _pad2: 0,
            _pad3: 0,
        }
    }

    #[test]
    fn a_close_with_an_error_carries_it_and_its_name() {
        let mut e = raw();
        e.newstate = TCP_CLOSE;
        e.error = 111;
        let t = Transition::from_raw(&e);
        assert_eq!(t.error, Some(111));
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(4242), "E4242");
        assert_eq!(Transition::from_raw(&raw()).error, None);
    }

    #[test]
    fn comm_is_the_kernels_15_bytes_and_travels_as_a_string() {
        assert_eq!(Comm::from_raw(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        // What follows the NUL is not the name (and not part of equality).
        assert_eq!(
            Comm::from_raw(b"curl\0garbage\0\0\0\0"),
            Comm::from_bytes(b"curl")
        );
        assert_eq!(Comm::from_raw(&[0; 16]), Comm::from_bytes(b""));
        // A full buffer without NUL (the kernel always has one; be safe).
        assert_eq!(Comm::from_raw(&[b'a'; 16]).as_bytes(), &[b'a'; 15]);
        // Cut at a character boundary: 7 two-byte characters fit in 15.
        let c = Comm::from("ééééééééé");
        assert_eq!(c.to_str(), "ééééééé");
        // Not UTF-8: shown lossily, kept exactly.
        let odd = Comm::from_raw(b"a\xffb\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(odd.as_bytes(), b"a\xffb");
        assert_eq!(odd.to_string(), "a\u{fffd}b");
        assert_eq!(odd.raw()[..4], *b"a\xffb\0");
        let json = serde_json::to_string(&Comm::from("nginx")).unwrap();
        assert_eq!(json, "\"nginx\"");
        assert_eq!(serde_json::from_str::<Comm>(&json).unwrap(), "nginx");
        assert_eq!(format!("[{:<7}]", Comm::from("ss")), "[ss     ]");
    }

    #[test]
    fn comms_order_by_their_bytes_then_their_length() {
        let names: [&[u8]; 9] = [
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"ab",
            b"b",
            b"\xff",
            b"zzzzzzzzzzzzzzz",
        ];
        for a in names {
            for b in names {
                let (ca, cb) = (Comm::from_bytes(a), Comm::from_bytes(b));
                // What the derived order gave: the padded bytes, then the length.
                let mut pa = [0u8; Comm::MAX];
                pa[..a.len()].copy_from_slice(a);
                let mut pb = [0u8; Comm::MAX];
                pb[..b.len()].copy_from_slice(b);
                let want = (pa, a.len()).cmp(&(pb, b.len()));
                assert_eq!(ca.cmp(&cb), want, "{a:?} vs {b:?}");
                assert_eq!(ca == cb, want.is_eq(), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn raw_event_becomes_typed_transition() {
        let t = Transition::from_raw(&raw());
        assert_eq!(t.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(t.remote, "127.0.0.2:80".parse().unwrap());
        assert_eq!(t.old, State::Known(TcpState::SynSent));
        assert_eq!(t.new.to_string(), "ESTABLISHED");
        assert_eq!(t.owner.as_ref().unwrap().pid, 100);
        assert_eq!(t.owner.as_ref().unwrap().comm, "curl");
        assert_eq!(t.in_old, None, "followed in user space, not sent");
        assert_eq!(t.ip_version(), 4);
    }

    #[test]
    fn unknown_owner_and_time_stay_unknown() {
        let mut e = raw();
        e.flags = 0;
        e.family = AF_INET6;
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.oldstate = 42;
        let t = Transition::from_raw(&e);
        assert_eq!(t.owner, None);
        assert_eq!(t.in_old, None);
        assert_eq!(t.ip_version(), 6);
        assert_eq!(t.old.to_string(), "STATE-42");
    }

    #[test]
    fn a_recording_names_states_the_probe_counts_only() {
        let s: State = serde_json::from_str("\"STATE-14\"").unwrap();
        assert_eq!(s, State::Unknown(14));
        // 256 unknown states would be 65,536 pairs per namespace.
        let e = serde_json::from_str::<State>("\"STATE-16\"").unwrap_err();
        assert!(e.to_string().contains("numbered 0 to 15"), "{e}");
        assert!(serde_json::from_str::<State>("\"STATE-x\"").is_err());
    }

    #[test]
    fn accounting_reconciles_skips_with_catches() {
        let mut k = KernelCounters {
            main: ProgCounters::new(),
            catcher: Some(ProgCounters::new()),
            not_run: Some(0),
        };
        k.main.transitions[(TCP_CLOSE as u32 * STATE_SLOTS + TCP_SYN_SENT as u32) as usize] = 10;
        k.catcher.as_mut().unwrap().transitions
            [(TCP_CLOSE as u32 * STATE_SLOTS + TCP_SYN_SENT as u32) as usize] = 2;
        k.main.stats[stat::EMITTED as usize] = 9;
        k.main.stats[stat::RINGBUF_FULL as usize] = 1;
        k.catcher.as_mut().unwrap().stats[stat::EMITTED as usize] = 2;
        k.main.recursion_misses = 3;
        k.catcher.as_mut().unwrap().stats[stat::CAUGHT as usize] = 3;
        let a = k.summary();
        assert_eq!(a.counted, 12);
        assert_eq!(a.emitted + a.ringbuf_full, a.counted);
        assert_eq!(k.transition(TCP_CLOSE, TCP_SYN_SENT), 12);
        assert!(a.lossless());
        k.main.recursion_misses = 5;
        assert_eq!(k.summary().unrecovered, 2);
        assert!(!k.summary().lossless());
        assert_eq!(k.summary().lost_in_kernel(), 2);
    }

    #[test]
    fn transitions_the_kernel_never_ran_are_a_loss() {
        let mut k = KernelCounters {
            main: ProgCounters::new(),
            catcher: Some(ProgCounters::new()),
            not_run: Some(2),
        };
        k.main.transitions[(TCP_FIN_WAIT1 as u32 * STATE_SLOTS + TCP_FIN_WAIT2 as u32) as usize] =
            5;
        let a = k.summary();
        assert!(a.has_witness);
        assert_eq!(a.not_run, 2);
        assert_eq!(a.lost_in_kernel(), 2);
        assert!(!a.lossless());
        // Without a witness nothing is known, and nothing is claimed.
        k.not_run = None;
        let a = k.summary();
        assert!(!a.has_witness);
        assert!(a.lossless());
    }

    #[test]
    fn stats_slot_inverts_the_shared_index_functions() {
        use tcpwatch_common::{PROG_CATCHER, PROG_MAIN, STATS_LEN, stat_index, transition_index};
        for prog in [PROG_MAIN, PROG_CATCHER] {
            for old in 0..16u8 {
                for new in 0..16u8 {
                    let i = transition_index(prog, old, new).unwrap();
                    assert_eq!(stats_slot(i), Some((prog, Slot::Transition(old, new))));
                }
            }
            for which in 0..stat::COUNT {
                assert_eq!(
                    stats_slot(stat_index(prog, which)),
                    Some((prog, Slot::Stat(which)))
                );
            }
        }
        assert_eq!(stats_slot(STATS_LEN), None);
    }
}
