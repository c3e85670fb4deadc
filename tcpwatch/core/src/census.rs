//! The socket census as data: every socket of a namespace (what sock_diag
//! returns), and its summary per state, per listener and per process. Pure:
//! `host::census` takes it, the engine, `states` and metrics read it.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};
use tcpwatch_common::state::{TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_SYN_RECV, TCP_TIME_WAIT};

use crate::model::{Owner, State};

/// One socket as the census sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    /// Kernel state number (TCP_* of tcpwatch_common::state).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Listener: connections waiting in the accept queue. Others: bytes
    /// not yet read.
    pub rqueue: u32,
    /// Listener: its backlog. Others: bytes not yet acknowledged.
    pub wqueue: u32,
    /// Socket inode (0 for request and TIME-WAIT sockets, which have none).
    pub inode: u32,
    pub uid: u32,
    /// A timewait minisocket: what the kernel keeps of a socket closed
    /// first on this side, in TIME-WAIT, or in FIN-WAIT-2 until the peer's
    /// FIN. (A FIN-WAIT-2 socket still open, or orphaned before the peer's
    /// ACK, is a full socket.)
    pub minisock: bool,
}

/// How a census treats TIME-WAIT sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWait {
    /// One entry each, as `ss -tan` lists them.
    Listed,
    /// Only their number. Under connection churn they outnumber all other
    /// sockets (each stays 60 s; 32,000 in a namespace after a 2.5 s loop
    /// of connections here) and listing them is the census's whole cost
    /// (`ss -tan` 40 ms, `ss -tan exclude time-wait` under 5 ms), while
    /// nothing but their number is used: they have no owner, no queue.
    Counted,
}

/// One census of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub entries: Vec<SockEntry>,
    /// TIME-WAIT sockets counted but not in `entries` (TimeWait::Counted).
    pub time_wait_unlisted: u64,
    /// The namespace's ephemeral ports (net.ipv4.ip_local_port_range), when read.
    pub local_port_range: Option<(u16, u16)>,
    /// Its net.ipv4.tcp_tw_reuse, when read: 1 lets new connects reuse a
    /// TIME-WAIT socket's port, 2 only toward loopback.
    pub tw_reuse: Option<u8>,
    /// TIME-WAIT sockets per destination, when they were counted but their
    /// destinations listed apart (many of them, see `time_wait_peers`).
    pub time_wait_peers: Vec<TimeWaitPeer>,
}

/// TIME-WAIT sockets from one local address to one destination: each
/// holds an ephemeral port that no new connection to that destination can
/// use (from that address) until it expires, 60 s after the close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWaitPeer {
    pub local: String,
    pub remote: String,
    pub port: u16,
    pub sockets: u64,
}

/// Destinations a census keeps, the most TIME-WAIT first.
pub const TIME_WAIT_PEERS: usize = 8;

/// The destinations with the most TIME-WAIT sockets among `entries`.
pub fn time_wait_peers<'a>(entries: impl IntoIterator<Item = &'a SockEntry>) -> Vec<TimeWaitPeer> {
    let mut by: HashMap<(std::net::IpAddr, SocketAddr), u64> = HashMap::new();
    for e in entries {
        if e.state == TCP_TIME_WAIT {
            *by.entry((e.local.ip(), e.remote)).or_default() += 1;
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(TIME_WAIT_PEERS);
    v.into_iter()
        .map(|((local, remote), sockets)| TimeWaitPeer {
            local: local.to_string(),
            remote: remote.ip().to_string(),
            port: remote.port(),
            sockets,
        })
        .collect()
}

/// Request sockets are reported as SYN-RECV (as `ss` does), whichever of the
/// two kernel numbers sock_diag gives them.
fn shown_state(raw: u8) -> State {
    State::from_raw(if raw == TCP_NEW_SYN_RECV {
        TCP_SYN_RECV
    } else {
        raw
    })
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Listener {
    pub address: String,
    pub port: u16,
    /// Connections completed and waiting for accept().
    pub accept_queue: u32,
    pub backlog: u32,
    /// Half-open request sockets for this listener.
    pub syn_recv: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The sockets it serves (its port and address) by state, LISTEN and
    /// TIME-WAIT left out (those have no listener any more); zeros omitted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub total: u64,
    pub states: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub netns: Option<u32>,
    pub total: u64,
    /// Every TCP state `ss` names, zeros included, so scripts can rely on keys.
    pub states: BTreeMap<String, u64>,
    pub listeners: Vec<Listener>,
    pub processes: Vec<Process>,
    /// Listeners and processes past `MAX_LISTED` (the least busy), counted
    /// here instead of listed: any user can open sockets and processes in
    /// bulk, and every snapshot carries the summary.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub listeners_dropped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub processes_dropped: u64,
    /// The ephemeral port range, when read (the daemon's census).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port_range: Option<(u16, u16)>,
    /// net.ipv4.tcp_tw_reuse, when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tw_reuse: Option<u8>,
    /// The destinations with the most TIME-WAIT sockets, when listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_wait_peers: Vec<TimeWaitPeer>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Listeners, and processes, a summary lists at most.
pub const MAX_LISTED: usize = 4096;

/// Listening ports from each listening socket's (port, owner), whether
/// the census or procfs found them: how many listen on each, and their
/// owner only when every one was found in one process (else none, unknown
/// but never wrong: in SO_REUSEPORT groups or v4 and v6 sockets of other
/// processes, a child could be any one's).
pub fn listening_ports(
    listeners: impl IntoIterator<Item = (u16, Option<Owner>)>,
) -> Vec<(u16, u64, Option<Owner>)> {
    // Per port: how many listen, the first's owner, whether all share it.
    let mut ports: BTreeMap<u16, (u64, Option<Owner>, bool)> = BTreeMap::new();
    for (port, owner) in listeners {
        let p = ports.entry(port).or_insert((0, owner, true));
        p.0 += 1;
        p.2 &= owner.is_some() && p.1.map(|o| o.pid) == owner.map(|o| o.pid);
    }
    ports
        .into_iter()
        .map(|(port, (n, owner, one))| (port, n, owner.filter(|_| one)))
        .collect()
}

impl Summary {
    /// Its listening ports: how many listeners each has, and their owner
    /// when one process holds them all (see [`listening_ports`]).
    pub fn listening_ports(&self) -> Vec<(u16, u64, Option<Owner>)> {
        listening_ports(self.listeners.iter().map(|l| {
            let owner = l.pid.zip(l.comm.as_deref()).map(|(pid, comm)| Owner {
                pid,
                tid: pid,
                comm: comm.into(),
            });
            (l.port, owner)
        }))
    }

    /// Adds another namespace's socket counts (for `other`).
    pub fn add(&mut self, o: &Summary) {
        self.total += o.total;
        for (state, n) in &o.states {
            *self.states.entry(state.clone()).or_default() += n;
        }
    }
}

/// The states every summary lists, zeros included, in the kernel's order.
pub const SHOWN: [u8; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

/// Folds a census into the summary. `owners` maps socket inodes to their
/// process; sockets without an inode are attributed to the owner of the
/// listener they came from, TIME-WAIT to nobody. TIME-WAIT sockets only
/// counted give the same summary as listed ones.
pub fn summarize(netns: Option<u32>, census: &Census, owners: &HashMap<u64, Owner>) -> Summary {
    let entries = &census.entries;
    let time_wait = State::from_raw(TCP_TIME_WAIT).to_string();
    let mut states: BTreeMap<String, u64> = SHOWN
        .iter()
        .map(|&s| (State::from_raw(s).to_string(), 0))
        .collect();
    for e in entries {
        *states.entry(shown_state(e.state).to_string()).or_default() += 1;
    }
    *states.entry(time_wait.clone()).or_default() += census.time_wait_unlisted;

    let listeners_raw: Vec<&SockEntry> = entries.iter().filter(|e| e.state == TCP_LISTEN).collect();
    // Listeners by port, so attributing 100,000 sockets to a thousand
    // listeners stays linear.
    let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, l) in listeners_raw.iter().enumerate() {
        by_port.entry(l.local.port()).or_default().push(i);
    }
    let serves = |l: &SockEntry, e: &SockEntry| {
        e.local.port() == l.local.port()
            && (l.local.ip().is_unspecified() || l.local.ip() == e.local.ip())
    };
    let candidates =
        |e: &SockEntry| -> &[usize] { by_port.get(&e.local.port()).map_or(&[], Vec::as_slice) };
    let mut served: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); listeners_raw.len()];
    for e in entries {
        if e.state == TCP_LISTEN || e.state == TCP_TIME_WAIT {
            continue;
        }
        for &i in candidates(e) {
            if serves(listeners_raw[i], e) {
                *served[i]
                    .entry(shown_state(e.state).to_string())
                    .or_default() += 1;
            }
        }
    }
    let syn_recv_name = State::from_raw(TCP_SYN_RECV).to_string();
    let mut listeners: Vec<Listener> = listeners_raw
        .iter()
        .zip(served)
        .map(|(l, states)| {
            let owner = owners.get(&(l.inode as u64));
            let syn_recv = states.get(&syn_recv_name).copied().unwrap_or(0);
            Listener {
                address: l.local.ip().to_string(),
                port: l.local.port(),
                accept_queue: l.rqueue,
                backlog: l.wqueue,
                syn_recv,
                pid: owner.map(|o| o.pid),
                comm: owner.map(|o| o.comm.to_string()),
                states,
            }
        })
        .collect();
    listeners.sort_by(|a, b| (a.port, &a.address).cmp(&(b.port, &b.address)));

    let owner_of = |e: &SockEntry| -> Option<&Owner> {
        if e.inode != 0 {
            return owners.get(&(e.inode as u64));
        }
        // No file yet (request sockets, children waiting in the accept
        // queue) or any more (closed by a server): its listener's. TIME-WAIT
        // belongs to nobody.
        if e.state == TCP_TIME_WAIT {
            return None;
        }
        let &l = candidates(e)
            .iter()
            .find(|&&i| serves(listeners_raw[i], e))?;
        owners.get(&(listeners_raw[l].inode as u64))
    };
    let mut procs: HashMap<Option<u32>, Process> = HashMap::new();
    let mut count = |owner: Option<&Owner>, state: String, n: u64| {
        let p = procs
            .entry(owner.map(|o| o.pid))
            .or_insert_with(|| Process {
                pid: owner.map(|o| o.pid),
                comm: owner.map(|o| o.comm.to_string()),
                total: 0,
                states: BTreeMap::new(),
            });
        p.total += n;
        *p.states.entry(state).or_default() += n;
    };
    for e in entries {
        count(owner_of(e), shown_state(e.state).to_string(), 1);
    }
    if census.time_wait_unlisted > 0 {
        count(None, time_wait, census.time_wait_unlisted);
    }
    let mut processes: Vec<Process> = procs.into_values().collect();
    // Biggest first; the unattributed bucket (no pid) last among equals.
    processes.sort_by(|a, b| {
        b.total
            .cmp(&a.total)
            .then(a.pid.is_none().cmp(&b.pid.is_none()))
            .then(a.pid.cmp(&b.pid))
    });

    let processes_dropped = processes.len().saturating_sub(MAX_LISTED) as u64;
    processes.truncate(MAX_LISTED);
    let listeners_dropped = listeners.len().saturating_sub(MAX_LISTED) as u64;
    if listeners_dropped > 0 {
        // The busiest stay (half-open plus queued), then in port order.
        listeners.sort_by_key(|l| std::cmp::Reverse(l.syn_recv + l.accept_queue as u64));
        listeners.truncate(MAX_LISTED);
        listeners.sort_by(|a, b| (a.port, &a.address).cmp(&(b.port, &b.address)));
    }

    Summary {
        netns,
        total: entries.len() as u64 + census.time_wait_unlisted,
        states,
        listeners,
        processes,
        listeners_dropped,
        processes_dropped,
        local_port_range: census.local_port_range,
        tw_reuse: census.tw_reuse,
        // Listed apart by the daemon; from the entries where they are listed.
        time_wait_peers: if census.time_wait_peers.is_empty() {
            time_wait_peers(entries)
        } else {
            census.time_wait_peers.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::states::{processes_table, states_table};
    use tcpwatch_common::state::*;

    fn e(state: u8, local: &str, remote: &str, inode: u32) -> SockEntry {
        SockEntry {
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            rqueue: 0,
            wqueue: 0,
            inode,
            uid: 0,
            minisock: state == TCP_TIME_WAIT,
        }
    }

    fn owners() -> HashMap<u64, Owner> {
        let o = |pid, comm: &str| Owner {
            pid,
            tid: pid,
            comm: comm.into(),
        };
        HashMap::from([
            (10, o(100, "nginx")),
            (11, o(100, "nginx")),
            (20, o(200, "curl")),
        ])
    }

    #[test]
    fn listening_ports_count_each_listener_and_name_an_owner_only_when_one() {
        let l = |port, pid: Option<u32>, comm: &str| Listener {
            address: "0.0.0.0".into(),
            port,
            accept_queue: 0,
            backlog: 1,
            syn_recv: 0,
            pid,
            comm: pid.map(|_| comm.into()),
            states: BTreeMap::new(),
        };
        let mut s = summarize(None, &Census::default(), &HashMap::new());
        s.listeners = vec![
            l(80, Some(100), "nginx"),
            l(80, Some(100), "nginx"),
            l(443, Some(100), "nginx"),
            l(443, Some(200), "haproxy"),
            l(8080, None, ""),
        ];
        let got = s.listening_ports();
        let nginx = Owner {
            pid: 100,
            tid: 100,
            comm: "nginx".into(),
        };
        assert_eq!(
            got,
            vec![(80, 2, Some(nginx)), (443, 2, None), (8080, 1, None)]
        );
    }

    fn census() -> Census {
        let mut l = e(TCP_LISTEN, "0.0.0.0:80", "0.0.0.0:0", 10);
        l.rqueue = 3;
        l.wqueue = 511;
        Census {
            entries: vec![
                l,
                e(TCP_ESTABLISHED, "10.0.0.1:80", "10.0.0.2:5000", 11),
                e(TCP_SYN_RECV, "10.0.0.1:80", "10.0.0.9:6000", 0),
                e(TCP_NEW_SYN_RECV, "10.0.0.1:80", "10.0.0.9:6001", 0),
                e(TCP_CLOSE_WAIT, "10.0.0.1:40000", "10.0.0.3:443", 20),
                e(TCP_TIME_WAIT, "10.0.0.1:40001", "10.0.0.3:443", 0),
            ],
            time_wait_unlisted: 0,
            ..Default::default()
        }
    }

    #[test]
    fn time_wait_peers_are_counted_per_local_address_and_destination_most_first() {
        let tw = |l: &str, r: &str| e(TCP_TIME_WAIT, l, r, 0);
        let mut entries = vec![
            tw("10.0.0.1:40001", "10.0.0.3:443"),
            tw("10.0.0.1:40002", "10.0.0.3:443"),
            tw("10.0.0.1:40003", "10.0.0.4:443"),
            // Another local address: ports of its own.
            tw("10.0.0.2:40001", "10.0.0.3:443"),
            e(TCP_ESTABLISHED, "10.0.0.1:40009", "10.0.0.3:443", 5),
        ];
        for i in 0..20u16 {
            entries.push(tw(
                &format!("10.0.0.1:{}", 41000 + i),
                &format!("10.0.1.{i}:80"),
            ));
        }
        let peers = time_wait_peers(&entries);
        assert_eq!(peers.len(), TIME_WAIT_PEERS);
        assert_eq!(
            peers[0],
            TimeWaitPeer {
                local: "10.0.0.1".into(),
                remote: "10.0.0.3".into(),
                port: 443,
                sockets: 2
            }
        );
        assert!(peers[1..].iter().all(|p| p.sockets == 1));
    }

    #[test]
    fn time_wait_counted_summarizes_as_time_wait_listed() {
        let listed = census();
        let mut counted = listed.clone();
        counted.entries.retain(|e| e.state != TCP_TIME_WAIT);
        counted.time_wait_unlisted = 1;
        // Their destinations, as the daemon lists them apart.
        counted.time_wait_peers = time_wait_peers(&listed.entries);
        assert_eq!(
            summarize(Some(7), &counted, &owners()),
            summarize(Some(7), &listed, &owners())
        );
        // Also when no listed socket is unattributed: the bucket is made.
        counted.entries.retain(|e| e.state == TCP_LISTEN);
        counted.time_wait_unlisted = 5;
        let s = summarize(None, &counted, &owners());
        assert_eq!((s.total, s.states["TIME-WAIT"]), (6, 5));
        let none = s.processes.iter().find(|p| p.pid.is_none()).unwrap();
        assert_eq!((none.total, none.states["TIME-WAIT"]), (5, 5));
    }

    #[test]
    fn counts_every_state_with_request_sockets_as_syn_recv() {
        let s = summarize(Some(7), &census(), &owners());
        assert_eq!(s.total, 6);
        assert_eq!(s.states["SYN-RECV"], 2);
        assert_eq!(s.states["CLOSE-WAIT"], 1);
        assert_eq!(s.states["TIME-WAIT"], 1);
        assert_eq!(s.states["CLOSING"], 0, "zeros are kept for scripts");
        assert_eq!(s.states.values().sum::<u64>(), s.total);
        let table = states_table(&s);
        assert!(table.contains("SYN-RECV       2\n"), "{table}");
        assert!(table.ends_with("TOTAL          6\n"), "{table}");
    }

    #[test]
    fn listeners_carry_queues_syn_recv_and_owner() {
        let s = summarize(None, &census(), &owners());
        assert_eq!(
            s.listeners,
            vec![Listener {
                address: "0.0.0.0".into(),
                port: 80,
                accept_queue: 3,
                backlog: 511,
                syn_recv: 2,
                pid: Some(100),
                comm: Some("nginx".into()),
                states: [("ESTABLISHED".into(), 1), ("SYN-RECV".into(), 2)].into(),
            }]
        );
    }

    #[test]
    fn processes_own_their_sockets_and_request_sockets_go_to_the_listener() {
        let s = summarize(None, &census(), &owners());
        let nginx = s.processes.iter().find(|p| p.pid == Some(100)).unwrap();
        assert_eq!(nginx.total, 4, "listener, established, two request sockets");
        assert_eq!(nginx.states["SYN-RECV"], 2);
        let none = s.processes.iter().find(|p| p.pid.is_none()).unwrap();
        assert_eq!(none.states["TIME-WAIT"], 1);
        assert_eq!(s.processes[0].pid, Some(100), "biggest first");
        let table = processes_table(&s);
        assert!(
            table.contains("100     nginx            4      ESTABLISHED=1 LISTEN=1 SYN-RECV=2"),
            "{table}"
        );
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;
    use tcpwatch_common::state::TCP_LISTEN;

    #[test]
    fn a_census_lists_at_most_max_listed_listeners_keeping_the_busiest() {
        let n = MAX_LISTED + 10;
        let entries = (0..n)
            .map(|i| SockEntry {
                state: TCP_LISTEN,
                local: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                remote: SocketAddr::from(([0, 0, 0, 0], 0)),
                // The last ten have a queue.
                rqueue: u32::from(i >= MAX_LISTED),
                wqueue: 128,
                inode: 0,
                uid: 0,
                minisock: false,
            })
            .collect();
        let s = summarize(
            Some(1),
            &Census {
                entries,
                time_wait_unlisted: 0,
                ..Default::default()
            },
            &HashMap::new(),
        );
        assert_eq!(s.listeners.len(), MAX_LISTED);
        assert_eq!(s.listeners_dropped, 10);
        assert_eq!(
            s.listeners.iter().filter(|l| l.accept_queue == 1).count(),
            10
        );
        assert_eq!(s.states["LISTEN"], n as u64, "counts stay whole");
    }
}
