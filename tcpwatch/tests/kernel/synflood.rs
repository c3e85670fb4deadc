//! Half-open connections the way a SYN flood makes them: raw SYNs from a
//! spoofed source nobody answers for. The network rule is checked here, not
//! left to callers: only in a namespace the test made, only from an on-link
//! source whose neighbour entry is static (a MAC no interface has, so the
//! SYN-ACKs leave through a veth whose peer drops them and no RST comes
//! back), only to a local address, bounded in count and time.
use std::{
    marker::PhantomData,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::common::thread_netns;

/// The listener side of the test subnet 10.77.0.0/24.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// A source in that subnet that nobody answers for.
pub const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);
/// Locally administered, and on no interface.
const NOBODY_MAC: &str = "02:00:00:00:77:99";
pub const DEV: &str = "tw-syn0";
const PEER_DEV: &str = "tw-syn1";

/// The most SYNs one call sends, and the longest it may take.
pub const MAX_SYNS: u16 = 1024;
const MAX_SEND_TIME: Duration = Duration::from_secs(2);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_inode(path: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// Panics unless the calling thread is in a network namespace of its own:
/// neither the test process's (its main thread's) nor init's.
fn assert_in_test_netns() -> u32 {
    let here = thread_netns();
    for other in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        assert_ne!(
            Some(here),
            netns_inode(other),
            "spoofed packets only in a namespace the test made (this thread shares {other})"
        );
    }
    here
}

/// The test subnet in the calling thread's namespace: a veth pair, LOCAL/24
/// on one end, both up, and a permanent neighbour entry for SPOOFED. The
/// namespace takes it along when it goes; dropping the guard removes it
/// earlier. Not `Send`: it must be dropped in the namespace it was made in.
pub struct SpoofNet {
    netns: u32,
    _same_thread: PhantomData<*const ()>,
}

impl SpoofNet {
    pub fn new() -> SpoofNet {
        let netns = assert_in_test_netns();
        ip(&["link", "add", DEV, "type", "veth", "peer", "name", PEER_DEV]);
        // From here on a failing step still removes the pair.
        let net = SpoofNet {
            netns,
            _same_thread: PhantomData,
        };
        ip(&["addr", "add", &format!("{LOCAL}/24"), "dev", DEV]);
        ip(&["link", "set", DEV, "up"]);
        ip(&["link", "set", PEER_DEV, "up"]);
        ip(&[
            "neigh",
            "add",
            &SPOOFED.to_string(),
            "lladdr",
            NOBODY_MAC,
            "nud",
            "permanent",
            "dev",
            DEV,
        ]);
        net
    }
}

impl Drop for SpoofNet {
    fn drop(&mut self) {
        // Deleting one end deletes both. Never in another namespace, and
        // never a panic while unwinding.
        if netns_inode("/proc/thread-self/ns/net") == Some(self.netns) {
            let _ = Command::new("ip").args(["link", "del", DEV]).output();
        }
    }
}

/// Panics unless `src` cannot answer: on-link here (no gateway), not one of
/// our addresses, with a permanent neighbour entry (so no ARP ever asks).
fn assert_unanswered_source(src: Ipv4Addr) {
    let src = src.to_string();
    let route = ip(&["-4", "route", "get", &src]);
    assert!(
        !route.starts_with("local ") && !route.contains(" via "),
        "spoofed source {src} must be on-link and not ours: {route}"
    );
    let neigh = ip(&["-4", "neigh", "show", "to", &src, "nud", "permanent"]);
    assert!(
        neigh.contains("lladdr"),
        "spoofed source {src} needs a permanent neighbour entry (ip neigh add ... nud permanent)"
    );
}

#[path = "../../../xtask/src/syn_packet.rs"]
mod syn_packet;
use syn_packet::syn;

/// Source ports 40000..60000, handed out in turn across calls, so a later
/// call never repeats an earlier call's connections (a repeated SYN only
/// retransmits the SYN-ACK of the request socket that is already there).
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
const PORT_BASE: u32 = 40_000;
const PORT_SPAN: u32 = 20_000;

/// Sends `count` SYNs (at most MAX_SYNS) from `src`, each from a distinct
/// port, to the local `dst`, in the calling thread's namespace: each makes
/// one request socket (SYN-RECV) on a listener at `dst`, for as long as the
/// kernel retransmits its SYN-ACK (about a minute). Returns once all are
/// sent; panics if the network rule does not hold or sending fails.
pub fn send_spoofed_syns(src: Ipv4Addr, dst: SocketAddrV4, count: u16) {
    assert!(
        count <= MAX_SYNS,
        "bounded floods only: {count} > {MAX_SYNS}"
    );
    assert_in_test_netns();
    assert_unanswered_source(src);
    let route = ip(&["-4", "route", "get", &dst.ip().to_string()]);
    assert!(
        route.starts_with("local "),
        "spoofed SYNs go to a local address only: {route}"
    );

    let sender = syn_packet::RawSender::open().expect("raw socket");
    let first = NEXT_PORT.fetch_add(count as u32, Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..count as u32 {
        assert!(
            started.elapsed() < MAX_SEND_TIME,
            "spoofed SYNs: {i} of {count} sent in {MAX_SEND_TIME:?}, giving up"
        );
        let port = (PORT_BASE + (first + i) % PORT_SPAN) as u16;
        let p = syn(
            SocketAddrV4::new(src, port),
            dst,
            0x1000_0000u32.wrapping_add(first + i),
        );
        sender.send(&p, *dst.ip()).expect("sendto");
    }
}

#[test]
fn spoofing_refuses_the_test_process_namespace() {
    let refused =
        std::panic::catch_unwind(|| send_spoofed_syns(SPOOFED, SocketAddrV4::new(LOCAL, 80), 1));
    assert!(
        refused.is_err(),
        "sent spoofed SYNs outside a test namespace"
    );
}
