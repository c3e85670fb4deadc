//! The socket census: every TCP socket of a network namespace, over
//! sock_diag netlink (the interface `ss` uses). It sees what the tracepoint
//! cannot: request sockets (SYN-RECV), TIME-WAIT, and listeners' queues.
use std::{io, net::SocketAddr, path::Path};

use tcpwatch_common::state::{TCP_FIN_WAIT2, TCP_TIME_WAIT};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};
use tcpwatch_core::census::{Census, SockEntry, TimeWait, TimeWaitPeer};

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("opening a sock_diag netlink socket: {0}")]
    Socket(io::Error),
    #[error("entering network namespace {path}")]
    Netns { path: String, source: io::Error },
    #[error("sock_diag request: {0}")]
    Io(io::Error),
    #[error("sock_diag answered with error {0}")]
    Kernel(i32),
    #[error("sock_diag message could not be parsed: {0}")]
    Decode(String),
    #[error("{SOCKSTAT}: {0}")]
    Sockstat(String),
}

/// Listeners and request sockets only (the kernel adds NEW_SYN_RECV to
/// SYN_RECV): their queues and half-open counts, at a fraction of a full
/// census's cost.
pub fn take_listening() -> Result<Census, CensusError> {
    dump_both(StateFlags::LISTEN | StateFlags::SYN_RECV)
}

/// `take_listening` in another namespace.
pub fn take_listening_in(netns: &Path) -> Result<Census, CensusError> {
    in_netns(netns, take_listening)
}

/// A census of the caller's network namespace (IPv4 and IPv6, all states).
/// With `peers_at`, TIME-WAIT sockets only counted are listed apart, by
/// destination, once they reach that fraction of the ephemeral port range
/// (only then can one destination run short of ports; listing them is
/// what a census under churn would spend most of its time on).
pub fn take(time_wait: TimeWait, peers_at: Option<f64>) -> Result<Census, CensusError> {
    let mut states = StateFlags::all();
    if time_wait == TimeWait::Counted {
        // The kernel filters minisockets by their substate: FIN-WAIT-2 ones
        // still come, as `ss` lists them.
        states.remove(StateFlags::TIME_WAIT);
    }
    let mut census = dump_both(states)?;
    if time_wait == TimeWait::Counted {
        let text =
            std::fs::read_to_string(SOCKSTAT).map_err(|e| CensusError::Sockstat(e.to_string()))?;
        let minisocks = parse_sockstat_tw(&text)
            .ok_or_else(|| CensusError::Sockstat("no \"TCP: ... tw N\" line".into()))?;
        census.time_wait_unlisted = time_wait_of(minisocks, &census.entries);
    }
    census.local_port_range = std::fs::read_to_string(PORT_RANGE)
        .ok()
        .and_then(|t| parse_port_range(&t));
    census.tw_reuse = std::fs::read_to_string(TW_REUSE)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    // With tcp_tw_reuse=1 connects take TIME-WAIT ports over: no
    // destination runs short (the detector says nothing), no listing.
    let reused = census.tw_reuse == Some(1);
    if let (Some(f), Some((lo, hi)), false) = (peers_at, census.local_port_range, reused) {
        let size = f64::from(hi.saturating_sub(lo)) + 1.0;
        if census.time_wait_unlisted as f64 >= f * size {
            census.time_wait_peers = list_time_wait_peers()?;
        }
    }
    Ok(census)
}

/// The calling thread's namespace's ephemeral port range.
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";

/// "32768\t60999" -> (32768, 60999).
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// The destinations with the most TIME-WAIT sockets, from a dump of those
/// alone.
fn list_time_wait_peers() -> Result<Vec<TimeWaitPeer>, CensusError> {
    let tw = dump_both(StateFlags::TIME_WAIT)?;
    Ok(tcpwatch_core::census::time_wait_peers(&tw.entries))
}

/// The census of another network namespace (a path such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`).
/// With `expect`, only if the path still opens that namespace (by inode):
/// a process's or thread's namespace changes with setns or unshare, and a
/// PID is reused, between the enumeration and the census; another
/// namespace's sockets filed under the expected one would make its
/// sockets look vanished.
pub fn take_in(
    netns: &Path,
    expect: Option<u32>,
    time_wait: TimeWait,
    peers_at: Option<f64>,
) -> Result<Census, CensusError> {
    in_netns(netns, || {
        if let Some(want) = expect {
            use std::os::unix::fs::MetadataExt as _;
            let found = std::fs::metadata("/proc/thread-self/ns/net")
                .map_err(|source| CensusError::Netns {
                    path: netns.display().to_string(),
                    source,
                })?
                .ino();
            if found != u64::from(want) {
                return Err(CensusError::Netns {
                    path: netns.display().to_string(),
                    source: io::Error::other(format!("it opens namespace {found} now, not {want}")),
                });
            }
        }
        take(time_wait, peers_at)
    })
}

/// Runs a census in another namespace: a netlink socket belongs to the
/// namespace it was created in, so it is created on a thread that entered
/// that namespace.
fn in_netns(
    netns: &Path,
    f: impl FnOnce() -> Result<Census, CensusError> + Send,
) -> Result<Census, CensusError> {
    crate::host::netns::run_in(netns, f).map_err(|source| CensusError::Netns {
        path: netns.display().to_string(),
        source,
    })?
}

/// How many TCP sockets that can still make a transition the namespace
/// `netns` opens holds: not TIME-WAIT minisockets, nor FIN-WAIT-2 ones
/// (those have no inode; their full socket already went to CLOSE).
pub fn live_sockets_in(netns: &Path) -> Result<usize, CensusError> {
    let mut states = StateFlags::all();
    states.remove(StateFlags::TIME_WAIT);
    in_netns(netns, || dump_both(states)).map(|c| {
        c.entries
            .iter()
            .filter(|e| e.state != TCP_TIME_WAIT && !(e.state == TCP_FIN_WAIT2 && e.inode == 0))
            .count()
    })
}

/// The sockets in `states`, IPv4 then IPv6, over one sock_diag socket.
fn dump_both(states: StateFlags) -> Result<Census, CensusError> {
    let mut socket = open()?;
    let mut census = Census::default();
    for family in [AF_INET, AF_INET6] {
        dump(&mut socket, family, states.clone(), &mut census.entries)?;
    }
    Ok(census)
}

/// The calling thread's namespace's socket statistics (a thread that
/// entered another namespace sees that one's).
const SOCKSTAT: &str = "/proc/thread-self/net/sockstat";

/// The `tw` field of /proc/net/sockstat's `TCP:` line: the namespace's
/// timewait minisockets, IPv4 and IPv6, whatever their substate (what
/// `ss -s` shows as "timewait").
pub fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let fields = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut it = fields.split_whitespace();
    while let Some(name) = it.next() {
        let value = it.next()?;
        if name == "tw" {
            return value.parse().ok();
        }
    }
    None
}

/// TIME-WAIT sockets, from the kernel's count of all minisockets less those
/// listed (in FIN-WAIT-2). The two are read one after the other: under
/// churn, minisockets made or expired in between make it off by as many.
/// The owner (uid) of the local socket `client` connected to `server`, as
/// the kernel reports it for that one socket (an exact sock_diag lookup, not
/// a dump): who is at the other end of a loopback connection.
pub fn socket_uid(client: SocketAddr, server: SocketAddr) -> Result<u32, CensusError> {
    let mut socket = open()?;
    let family = if client.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut id = if client.is_ipv4() {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    id.source_address = client.ip();
    id.source_port = client.port();
    id.destination_address = server.ip();
    id.destination_port = server.port();
    // INET_DIAG_NOCOOKIE: match by the 4-tuple alone.
    id.cookie = [0xff; 8];
    send(&mut socket, NLM_F_REQUEST, family, StateFlags::all(), id)?;
    let mut rx = vec![0u8; 4096];
    let n = socket.recv(&mut &mut rx[..], 0).map_err(CensusError::Io)?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[..n])
        .map_err(|e| CensusError::Decode(e.to_string()))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Ok(r.header.uid),
        NetlinkPayload::Error(e) => Err(CensusError::Kernel(e.code.map_or(0, |c| c.get()))),
        _ => Err(CensusError::Decode("no answer for that socket".into())),
    }
}

/// A sock_diag socket of the calling thread's namespace.
fn open() -> Result<Socket, CensusError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(CensusError::Socket)?;
    socket.bind_auto().map_err(CensusError::Socket)?;
    socket
        .connect(&NlAddr::new(0, 0))
        .map_err(CensusError::Socket)?;
    Ok(socket)
}

/// One TCP inet_diag request: a dump (`NLM_F_DUMP`) or an exact lookup.
fn send(
    socket: &mut Socket,
    flags: u16,
    family: u8,
    states: StateFlags,
    socket_id: SocketId,
) -> Result<(), CensusError> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(CensusError::Io)?;
    Ok(())
}

fn time_wait_of(minisocks: u64, listed: &[SockEntry]) -> u64 {
    let fin_wait2 = listed
        .iter()
        .filter(|e| e.minisock && e.state == TCP_FIN_WAIT2)
        .count() as u64;
    minisocks.saturating_sub(fin_wait2)
}

fn dump(
    socket: &mut Socket,
    family: u8,
    states: StateFlags,
    out: &mut Vec<SockEntry>,
) -> Result<(), CensusError> {
    let any = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    send(socket, NLM_F_REQUEST | NLM_F_DUMP, family, states, any)?;

    // Large enough for many responses per read (each is ~100 bytes).
    let mut rx = vec![0u8; 1 << 17];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0).map_err(CensusError::Io)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..n])
                .map_err(|e| CensusError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = r.header;
                    let id = h.socket_id;
                    // Full sockets always carry their shutdown state (since
                    // Linux 3.7); minisockets carry no attribute at all.
                    let full = r.nlas.iter().any(|a| matches!(a, Nla::Shutdown(_)));
                    out.push(SockEntry {
                        state: h.state,
                        // A v6 socket talking to a v4 peer keeps its
                        // ::ffff:a.b.c.d form, as the tracepoint reports it.
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                        rqueue: h.recv_queue,
                        wqueue: h.send_queue,
                        inode: h.inode,
                        uid: h.uid,
                        minisock: !full && (h.state == TCP_TIME_WAIT || h.state == TCP_FIN_WAIT2),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(CensusError::Kernel(e.code.map_or(0, |c| c.get())));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_loopback_client_is_found_by_its_4_tuple() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(socket_uid(peer, l.local_addr().unwrap()).unwrap(), me);
        // A 4-tuple that is no socket: an error, not a guess.
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(socket_uid(gone, l.local_addr().unwrap()).is_err());
    }

    #[test]
    fn the_port_range_is_two_numbers_low_first() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 1024"), Some((1024, 1024)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn sockstat_tw_is_read_from_the_tcp_line() {
        let text =
            "sockets: used 11\nTCP: inuse 11 orphan 5 tw 2000 alloc 12 mem 3\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), Some(2000));
        assert_eq!(parse_sockstat_tw("TCP: inuse 1 orphan 0\n"), None);
        assert_eq!(parse_sockstat_tw("UDP: inuse 0 tw 3\n"), None);
        assert_eq!(parse_sockstat_tw("TCP: inuse 1 tw x\n"), None);
    }

    #[test]
    fn time_wait_is_the_minisockets_not_listed_in_fin_wait2() {
        let entry = |state, minisock| SockEntry {
            state,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            rqueue: 0,
            wqueue: 0,
            inode: 0,
            uid: 0,
            minisock,
        };
        let listed = [
            entry(TCP_FIN_WAIT2, true),
            entry(TCP_FIN_WAIT2, false),
            entry(TCP_FIN_WAIT2, true),
        ];
        assert_eq!(time_wait_of(10, &listed), 8);
        // Minisockets expired between the dump and the count: never below 0.
        assert_eq!(time_wait_of(1, &listed), 0);
    }
}
