//! The census against `ss` and against what the test built: a known
//! population of sockets in a namespace of the test's own, half-open ones
//! made by spoofed SYNs as a flood makes them, counted state by state.
use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::{Command, Output},
    time::{Duration, Instant},
};

use tcpwatch::{
    core::census::{Census, TimeWait, summarize},
    host::census,
};
use tcpwatch_common::state::{TCP_FIN_WAIT2, TCP_TIME_WAIT};

use crate::{
    common::{netns_thread, root_available},
    synflood::{self, SpoofNet},
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");

// The population.
const PAIRS_V4: u64 = 3;
const PAIRS_V6: u64 = 2;
/// Handshakes completed but never accepted: both ends ESTABLISHED.
const QUEUED: u64 = 1;
/// Peer closed, owner did not; each leaves its peer in FIN-WAIT-2.
const CLOSE_WAIT: u64 = 2;
/// Client closed first, then the server: the client side remains.
const TIME_WAIT: u64 = 3;
/// Client shut down its sending side and stays open: a full socket in
/// FIN-WAIT-2 (the ones CLOSE_WAIT leaves are minisockets).
const HALF_CLOSED: u64 = 1;
/// Spoofed SYNs: well below the backlog, so no SYN cookies.
const HALF_OPEN: u16 = 16;
/// Pairs (v4), pairs and TIME-WAIT (v6), CLOSE-WAIT, half-open, idle (v6).
const LISTENERS: u64 = 5;

/// Every state the population has, as `ss` names it; all others are zero.
fn constructed() -> BTreeMap<String, u64> {
    [
        ("LISTEN", LISTENERS),
        ("ESTABLISHED", 2 * (PAIRS_V4 + PAIRS_V6 + QUEUED)),
        ("CLOSE-WAIT", CLOSE_WAIT + HALF_CLOSED),
        ("FIN-WAIT-2", CLOSE_WAIT + HALF_CLOSED),
        ("TIME-WAIT", TIME_WAIT),
        ("SYN-RECV", HALF_OPEN as u64),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect()
}

/// `ss -tan` in the calling thread's namespace, counted per state with
/// tcpwatch's names (ss says ESTAB and UNCONN where tcpwatch says
/// ESTABLISHED and CLOSE; the other names agree).
fn ss_counts() -> BTreeMap<String, u64> {
    let out = Command::new("ss").args(["-tanH"]).output().unwrap();
    assert!(out.status.success(), "ss -tanH: {out:?}");
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = match line.split_whitespace().next() {
            Some("ESTAB") => "ESTABLISHED",
            Some("UNCONN") => "CLOSE",
            Some(other) => other,
            None => continue,
        };
        *counts.entry(name.to_string()).or_default() += 1;
    }
    counts
}

/// Polls `ss` until it shows the constructed population (closes and the
/// spoofed SYNs are processed asynchronously), for at most 3 s; returns the
/// last counts either way.
fn ss_settled() -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let counts = ss_counts();
        if counts == constructed() || Instant::now() >= deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Blocks until the peer's FIN has arrived (read returns end of file).
fn await_fin(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0, "expected the peer's FIN");
}

struct Population {
    /// Everything that must stay open while the census runs.
    _open: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
    /// Dropped after the sockets; the namespace would take it anyway.
    _spoof: SpoofNet,
    pairs_port: u16,
    half_open_port: u16,
}

fn pairs(l: &TcpListener, n: u64, open: &mut Vec<TcpStream>) {
    for _ in 0..n {
        open.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        open.push(l.accept().unwrap().0);
    }
}

fn populate() -> Population {
    let mut open = Vec::new();

    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    pairs(&v4, PAIRS_V4, &mut open);
    for _ in 0..QUEUED {
        open.push(TcpStream::connect(v4.local_addr().unwrap()).unwrap());
    }

    let v6 = TcpListener::bind("[::1]:0").unwrap();
    pairs(&v6, PAIRS_V6, &mut open);
    for _ in 0..TIME_WAIT {
        let c = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let mut s = v6.accept().unwrap().0;
        drop(c);
        await_fin(&mut s);
        drop(s);
    }

    let close_wait = TcpListener::bind("127.0.0.1:0").unwrap();
    for _ in 0..CLOSE_WAIT {
        let c = TcpStream::connect(close_wait.local_addr().unwrap()).unwrap();
        let mut s = close_wait.accept().unwrap().0;
        drop(c);
        await_fin(&mut s);
        open.push(s);
    }
    for _ in 0..HALF_CLOSED {
        let c = TcpStream::connect(close_wait.local_addr().unwrap()).unwrap();
        let mut s = close_wait.accept().unwrap().0;
        c.shutdown(std::net::Shutdown::Write).unwrap();
        await_fin(&mut s);
        open.extend([c, s]);
    }

    let spoof = SpoofNet::new();
    let half_open = TcpListener::bind((synflood::LOCAL, 0)).unwrap();
    let SocketAddr::V4(dst) = half_open.local_addr().unwrap() else {
        unreachable!("bound to an IPv4 address")
    };
    synflood::send_spoofed_syns(synflood::SPOOFED, dst, HALF_OPEN);

    let idle = TcpListener::bind("[::]:0").unwrap();

    Population {
        _open: open,
        pairs_port: v4.local_addr().unwrap().port(),
        half_open_port: dst.port(),
        _listeners: vec![v4, v6, close_wait, half_open, idle],
        _spoof: spoof,
    }
}

/// The namespace's timewait minisockets, as /proc/net/sockstat counts them.
fn minisockets() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").unwrap();
    census::parse_sockstat_tw(&text).unwrap()
}

/// Polls until the closed clients are all minisockets: an orphaned socket
/// in FIN-WAIT-2 stays a full one for a moment (~100 ms here) before the
/// kernel frees it for a minisocket. At most 3 s; the count either way.
fn minisockets_settled() -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = minisockets();
        if n == TIME_WAIT + CLOSE_WAIT || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the namespace's own thread saw.
struct Inside {
    tid: i32,
    ss: BTreeMap<String, u64>,
    minisockets: u64,
    /// The census in-process, TIME-WAIT listed (as `states`) and counted
    /// (as the daemon's).
    listed: Census,
    counted: Census,
    tcpwatch: Output,
    pairs_port: u16,
    half_open: SocketAddrV4,
}

#[test]
fn states_json_equals_ss_and_the_population_with_spoofed_half_open() {
    if !root_available("states_json_equals_ss_and_the_population_with_spoofed_half_open") {
        return;
    }
    let started = Instant::now();
    let (inside_tx, inside_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The namespace, the veth and every socket live on this thread and go
    // with it, also when either side panics (a dropped channel wakes it).
    let (ino, go, worker) = netns_thread(move || {
        let pop = populate();
        let ss = ss_settled();
        let minisockets = minisockets_settled();
        let listed = census::take(TimeWait::Listed, None).unwrap();
        // Their destinations listed apart at any count (the daemon does
        // it only once they fill a fraction of the port range).
        let counted = census::take(TimeWait::Counted, Some(0.0)).unwrap();
        // tcpwatch inherits the namespace from this thread.
        let tcpwatch = Command::new(BIN)
            .args(["states", "--json"])
            .output()
            .unwrap();
        inside_tx
            .send(Inside {
                // SAFETY: gettid has no preconditions.
                tid: unsafe { libc::gettid() },
                ss,
                minisockets,
                listed,
                counted,
                tcpwatch,
                pairs_port: pop.pairs_port,
                half_open: SocketAddrV4::new(synflood::LOCAL, pop.half_open_port),
            })
            .unwrap();
        let _ = done_rx.recv();
        drop(pop);
    });
    go.send(()).unwrap();
    let inside = inside_rx.recv().expect("the namespace thread failed");
    // And from outside, naming the namespace.
    let outside = Command::new(BIN)
        .args([
            "states",
            "--json",
            "--netns",
            &format!("/proc/{}/task/{}/ns/net", std::process::id(), inside.tid),
        ])
        .output()
        .unwrap();
    done_tx.send(()).unwrap();
    worker.join().unwrap();

    assert_eq!(inside.ss, constructed(), "ss against the population");

    // Minisockets are told from full sockets, and the daemon's census
    // (TIME-WAIT only counted) sums up as the full listing does.
    assert_eq!(inside.minisockets, TIME_WAIT + CLOSE_WAIT, "sockstat tw");
    let kinds = |state: u8| -> (u64, u64) {
        let of_state = inside.listed.entries.iter().filter(|e| e.state == state);
        let mini = of_state.clone().filter(|e| e.minisock).count() as u64;
        (mini, of_state.count() as u64 - mini)
    };
    assert_eq!(
        kinds(TCP_TIME_WAIT),
        (TIME_WAIT, 0),
        "TIME-WAIT: minisockets"
    );
    assert_eq!(
        kinds(TCP_FIN_WAIT2),
        (CLOSE_WAIT, HALF_CLOSED),
        "FIN-WAIT-2: minisockets, full sockets"
    );
    assert_eq!(inside.listed.time_wait_unlisted, 0);
    assert_eq!(inside.counted.time_wait_unlisted, TIME_WAIT);
    assert!(
        !inside
            .counted
            .entries
            .iter()
            .any(|e| e.state == TCP_TIME_WAIT),
        "TIME-WAIT counted, not listed"
    );
    let none = Default::default();
    let counted = summarize(Some(ino), &inside.counted, &none);
    assert_eq!(counted, summarize(Some(ino), &inside.listed, &none));
    // The TIME-WAIT sockets' destinations, from the dump of those alone.
    assert_eq!(
        counted
            .time_wait_peers
            .iter()
            .map(|p| p.sockets)
            .sum::<u64>(),
        TIME_WAIT,
        "{:?}",
        counted.time_wait_peers
    );
    assert!(counted.local_port_range.is_some());
    for (how, out) in [("inside", inside.tcpwatch), ("--netns", outside)] {
        assert!(
            out.status.success(),
            "tcpwatch states ({how}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["netns"], ino, "{how}: {json}");
        let counted: BTreeMap<String, u64> = json["states"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(s, n)| (s.clone(), n.as_u64().unwrap()))
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(counted, inside.ss, "tcpwatch ({how}) against ss");
        assert_eq!(json["total"], inside.ss.values().sum::<u64>(), "{how}");

        let listeners = json["listeners"].as_array().unwrap();
        assert_eq!(listeners.len() as u64, LISTENERS, "{how}: {json}");
        for l in listeners {
            let port = l["port"].as_u64().unwrap() as u16;
            let (syn_recv, queued) = match port {
                p if p == inside.half_open.port() => (HALF_OPEN as u64, 0),
                p if p == inside.pairs_port => (0, QUEUED),
                _ => (0, 0),
            };
            assert_eq!(l["syn_recv"], syn_recv, "{how}: listener {l}");
            assert_eq!(l["accept_queue"], queued, "{how}: listener {l}");
            assert_eq!(l["pid"], std::process::id(), "{how}: listener {l}");
        }
        let half_open = listeners
            .iter()
            .find(|l| l["port"] == inside.half_open.port())
            .unwrap();
        assert_eq!(half_open["address"], inside.half_open.ip().to_string());

        // Ours: listeners, open sockets (the queued child, the half-closed
        // client and the request sockets through their listener). The
        // closed clients (FIN-WAIT-2, TIME-WAIT) belong to nobody.
        let me = json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == std::process::id())
            .unwrap_or_else(|| panic!("{how}: we own nothing: {json}"));
        let c = constructed();
        assert_eq!(
            me["total"],
            c["LISTEN"] + c["ESTABLISHED"] + c["CLOSE-WAIT"] + c["SYN-RECV"] + HALF_CLOSED,
            "{how}: {json}"
        );
    }
    eprintln!(
        "census: {:?} equal in ss, tcpwatch and --netns, in {:?}",
        inside.ss,
        started.elapsed()
    );
}

/// A listener held only in a thread's own fd table (which procfs's
/// process table does not list) is found there at the start, owned by that
/// thread: its port's connections get their owner. No root needed.
#[test]
fn finds_a_listener_held_only_in_a_threads_own_fd_table() {
    use std::{collections::HashSet, os::fd::AsRawFd, os::unix::fs::MetadataExt, sync::mpsc};
    use tcpwatch::{
        core::model::{Comm, Owner},
        host::owners::{listeners, socket_owners},
    };
    let (found_tx, found) = mpsc::channel();
    let (done, done_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tcpw-own-fds".into())
        .spawn(move || {
            crate::common::private_fd_table();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let fd = format!("/proc/thread-self/fd/{}", l.as_raw_fd());
            let inode = std::fs::metadata(fd).unwrap().ino();
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() } as u32;
            found_tx
                .send((l.local_addr().unwrap().port(), inode, tid))
                .unwrap();
            // Held until the test has looked.
            let _ = done_rx.recv();
        })
        .unwrap();
    let (port, inode, tid) = found.recv().unwrap();
    // The setup: the process's own table does not list it.
    assert!(socket_owners(&HashSet::from([inode])).unwrap().is_empty());
    let ls = listeners().unwrap();
    done.send(()).unwrap();
    thread.join().unwrap();
    let want = Owner {
        pid: std::process::id(),
        tid,
        comm: Comm::from("tcpw-own-fds"),
    };
    assert!(
        ls.iter()
            .any(|(p, n, o)| *p == port && *n == 1 && *o == Some(want)),
        "{ls:?}"
    );
}
