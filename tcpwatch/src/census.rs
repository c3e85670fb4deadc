//! The socket census: every TCP socket of a network namespace, over
//! sock_diag netlink (the interface `ss` uses). It sees what the tracepoint
//! cannot: request sockets (SYN-RECV), TIME-WAIT, and listeners' queues.
use std::{io, net::SocketAddr, path::Path};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

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
}

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("opening a sock_diag netlink socket: {0}")]
    Socket(io::Error),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("sock_diag request: {0}")]
    Io(io::Error),
    #[error("sock_diag answered with error {0}")]
    Kernel(i32),
    #[error("sock_diag message could not be parsed: {0}")]
    Decode(String),
}

/// Every TCP socket (IPv4 and IPv6, all states) of the caller's network
/// namespace.
pub fn tcp_sockets() -> Result<Vec<SockEntry>, CensusError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(CensusError::Socket)?;
    socket.bind_auto().map_err(CensusError::Socket)?;
    socket
        .connect(&NlAddr::new(0, 0))
        .map_err(CensusError::Socket)?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump(&mut socket, family, &mut out)?;
    }
    Ok(out)
}

/// The census of another network namespace (a path such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`): a netlink socket belongs to
/// the namespace it was created in, so it is created on a thread that
/// entered that namespace.
pub fn tcp_sockets_in(netns: &Path) -> Result<Vec<SockEntry>, CensusError> {
    crate::netns::run_in(netns, tcp_sockets).map_err(|source| CensusError::Netns {
        path: netns.display().to_string(),
        source,
    })?
}

fn dump(socket: &mut Socket, family: u8, out: &mut Vec<SockEntry>) -> Result<(), CensusError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(CensusError::Io)?;

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
