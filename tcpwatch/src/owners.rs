//! Owners of listening sockets that existed before the probe attached, read
//! from procfs the way `ss -lp` does (socket inode -> process). Without
//! them, connections accepted on an old listener would have no owner.
use std::collections::HashMap;

use procfs::{
    net::TcpState,
    process::{FDTarget, all_processes},
};

use crate::model::Owner;

/// (local port, owner) of every listening TCP socket in this process's
/// network namespace whose owner could be found. A port listened on by
/// several processes (SO_REUSEPORT) keeps the first one found.
pub fn listeners() -> anyhow::Result<Vec<(u16, Owner)>> {
    let mut by_inode: HashMap<u64, u16> = HashMap::new();
    for entry in procfs::net::tcp()?.into_iter().chain(procfs::net::tcp6()?) {
        if entry.state == TcpState::Listen {
            by_inode.insert(entry.inode, entry.local_address.port());
        }
    }
    let mut found: HashMap<u16, Owner> = HashMap::new();
    if by_inode.is_empty() {
        return Ok(Vec::new());
    }
    for process in all_processes()?.flatten() {
        // Processes come and go while we scan: skip the ones that left.
        let Ok(fds) = process.fd() else { continue };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target
                && let Some(&port) = by_inode.get(&inode)
                && !found.contains_key(&port)
                && let Ok(stat) = process.stat()
            {
                found.insert(
                    port,
                    Owner {
                        pid: stat.pid as u32,
                        tid: stat.pid as u32,
                        comm: stat.comm,
                    },
                );
            }
        }
    }
    Ok(found.into_iter().collect())
}
