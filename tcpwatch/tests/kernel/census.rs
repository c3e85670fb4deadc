//! The census against `ss`: a known population of sockets in a namespace
//! of the test's own, every state counted as `ss -tan` counts it.
use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use crate::{
    common::{netns_thread, root_available},
    synflood,
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");

/// `ss -tan` in the calling thread's namespace, counted per state with
/// tcpwatch's names.
fn ss_counts() -> BTreeMap<String, u64> {
    let out = Command::new("ss").arg("-tan").output().unwrap();
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let st = line.split_whitespace().next().unwrap_or_default();
        let name = match st {
            "ESTAB" => "ESTABLISHED",
            other => other,
        };
        *counts.entry(name.to_string()).or_default() += 1;
    }
    counts
}

/// Spoofed SYNs sent: below the listener's backlog, so no SYN cookies.
const HALF_OPEN: u64 = 16;

struct Population {
    /// Everything that must stay open while the census runs.
    _keep: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
    _spoof: synflood::SpoofNet,
    queued_port: u16,
    half_open_port: u16,
}

/// Builds: 4 accepted pairs and 1 connection waiting in the accept queue
/// (one listener), 2 CLOSE-WAIT (peer closed, owner did not), 3 TIME-WAIT,
/// and 16 half-open request sockets (spoofed SYNs nobody answers for).
fn populate() -> Population {
    let mut keep = Vec::new();
    let mut listeners = Vec::new();

    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let a1 = l1.local_addr().unwrap();
    for _ in 0..4 {
        keep.push(TcpStream::connect(a1).unwrap());
        keep.push(l1.accept().unwrap().0);
    }
    keep.push(TcpStream::connect(a1).unwrap()); // never accepted

    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    for _ in 0..2 {
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        keep.push(l2.accept().unwrap().0); // owner keeps it open: CLOSE-WAIT
        drop(c); // peer closes: FIN-WAIT-2 (orphan)
    }

    let l3 = TcpListener::bind("[::1]:0").unwrap();
    for _ in 0..3 {
        let c = TcpStream::connect(l3.local_addr().unwrap()).unwrap();
        let s = l3.accept().unwrap().0;
        drop(c);
        std::thread::sleep(Duration::from_millis(5));
        drop(s); // the client ends in TIME-WAIT
    }

    let spoof = synflood::SpoofNet::new();
    let l4 = TcpListener::bind((synflood::LOCAL, 0)).unwrap();
    let std::net::SocketAddr::V4(a4) = l4.local_addr().unwrap() else {
        unreachable!()
    };
    synflood::send_spoofed_syns(synflood::SPOOFED, a4, HALF_OPEN as u16);
    std::thread::sleep(Duration::from_millis(200));
    let queued_port = a1.port();
    let half_open_port = l4.local_addr().unwrap().port();
    listeners.extend([l1, l2, l3, l4]);
    Population {
        _keep: keep,
        _listeners: listeners,
        _spoof: spoof,
        queued_port,
        half_open_port,
    }
}

#[test]
fn states_json_equals_ss_state_by_state() {
    if !root_available("states_json_equals_ss_state_by_state") {
        return;
    }
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (_ino, go, worker) = netns_thread(move || {
        let pop = populate();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let ss = ss_counts();
        // Also tcpwatch run inside the namespace (inherited from this thread).
        let inside = Command::new(BIN)
            .args(["states", "--json"])
            .output()
            .unwrap();
        tid_tx
            .send((tid, ss, inside, pop.queued_port, pop.half_open_port))
            .unwrap();
        done_rx.recv().unwrap();
        drop(pop);
    });
    go.send(()).unwrap();
    let (tid, ss, inside, queued_port, half_open_port) = tid_rx.recv().unwrap();
    // And from outside, naming the namespace by path.
    let outside = Command::new(BIN)
        .args([
            "states",
            "--json",
            "--netns",
            &format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
        ])
        .output()
        .unwrap();
    done_tx.send(()).unwrap();
    worker.join().unwrap();

    let expected: BTreeMap<&str, u64> = BTreeMap::from([
        ("LISTEN", 4),
        ("ESTABLISHED", 10),
        ("FIN-WAIT-2", 2),
        ("CLOSE-WAIT", 2),
        ("TIME-WAIT", 3),
        ("SYN-RECV", HALF_OPEN),
    ]);
    for (name, n) in &expected {
        assert_eq!(ss.get(*name).copied().unwrap_or(0), *n, "ss {name}: {ss:?}");
    }
    for out in [inside, outside] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let states = json["states"].as_object().unwrap();
        for (name, n) in states {
            let want = ss.get(name.as_str()).copied().unwrap_or(0);
            assert_eq!(
                n.as_u64().unwrap(),
                want,
                "{name}: tcpwatch {json} vs ss {ss:?}"
            );
        }
        assert_eq!(json["total"].as_u64().unwrap(), ss.values().sum::<u64>());
        let listener = |port: u16| {
            json["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["port"] == port)
                .cloned()
                .unwrap_or_else(|| panic!("no listener {port}: {json}"))
        };
        assert_eq!(listener(queued_port)["accept_queue"], 1, "{json}");
        assert_eq!(listener(half_open_port)["syn_recv"], HALF_OPEN, "{json}");
        assert_eq!(
            listener(half_open_port)["pid"],
            std::process::id(),
            "{json}"
        );
        let me = json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == std::process::id())
            .cloned()
            .unwrap();
        // Listeners, open sockets, the queued child and the request sockets
        // of our listeners; the client-side orphans (FIN-WAIT-2, TIME-WAIT)
        // belong to nobody.
        assert_eq!(me["total"], 4 + 10 + 2 + HALF_OPEN, "{json}");
    }
}
