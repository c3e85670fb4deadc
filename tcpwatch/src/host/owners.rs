//! Which process owns a socket, from procfs the way `ss -p` does: every
//! process's fd table, socket inode -> process. Used for listeners that
//! predate the probe and for the census.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use procfs::{
    net::TcpState,
    process::{FDTarget, all_processes},
};

use tcpwatch_core::model::{Comm, Owner};

/// Owners of the given socket inodes. One pass over all processes' fd
/// tables; a socket shared by several processes keeps the first found.
/// Processes that exit during the scan are skipped.
pub fn socket_owners(inodes: &HashSet<u64>) -> anyhow::Result<HashMap<u64, Owner>> {
    let mut found = HashMap::new();
    if inodes.is_empty() {
        return Ok(found);
    }
    // procfs skips, without an error, each fd it may not read: ask the
    // process's capabilities instead.
    if !can_read_others_fds() {
        denied_once();
    }
    for process in all_processes()?.flatten() {
        let fds = match process.fd() {
            Ok(fds) => fds,
            Err(procfs::ProcError::PermissionDenied(_)) => {
                denied_once();
                continue;
            }
            // Exited during the scan.
            Err(_) => continue,
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            if !inodes.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            if comm.is_none() {
                comm = process.stat().ok().map(|s| s.comm);
            }
            let Some(comm) = &comm else { break };
            found.insert(
                inode,
                Owner {
                    pid: process.pid as u32,
                    tid: process.pid as u32,
                    comm: Comm::from(comm.as_str()),
                },
            );
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    Ok(found)
}

/// How long the pass over threads' own fd tables may take. It runs once,
/// at the start, before the probe is armed; a host with many private
/// tables (or a user making them on purpose) gets it cut short, said,
/// rather than a start delayed without bound.
const THREAD_PASS_LIMIT: Duration = Duration::from_millis(250);

/// Owners of sockets held only in a thread's own fd table (after
/// `unshare(CLONE_FILES)`), which `/proc/PID/fd` (the leader's table) does
/// not list: each such table's `/proc/PID/task/TID/fd`, with its first
/// thread as the owner. A table is read once: threads sharing their
/// leader's table, or one read already in their process, are skipped
/// (`kcmp`), so where no thread has its own table the pass costs a
/// listing of each process's threads and a syscall per thread.
fn thread_table_owners(inodes: &HashSet<u64>, found: &mut HashMap<u64, Owner>) {
    let Ok(processes) = all_processes() else {
        return;
    };
    let deadline = Instant::now() + THREAD_PASS_LIMIT;
    let wanted = found.len() + inodes.len();
    for process in processes.flatten() {
        let Ok(tasks) = process.tasks() else { continue };
        // Threads of this process whose own tables were read.
        let mut read: Vec<i32> = Vec::new();
        for task in tasks.flatten() {
            if Instant::now() > deadline {
                return cut_short();
            }
            if task.tid == process.pid
                || !fd_tables_differ(process.pid, task.tid)
                || read.iter().any(|&r| !fd_tables_differ(r, task.tid))
            {
                continue;
            }
            read.push(task.tid);
            let root = format!("/proc/{}/task/{}", process.pid, task.tid).into();
            let Ok(fds) = procfs::process::Process::new_with_root(root).and_then(|t| t.fd()) else {
                continue;
            };
            for fd in fds.flatten() {
                // A table can hold a million fds (a readlink each).
                if Instant::now() > deadline {
                    return cut_short();
                }
                let FDTarget::Socket(inode) = fd.target else {
                    continue;
                };
                if !inodes.contains(&inode) || found.contains_key(&inode) {
                    continue;
                }
                let Ok(stat) = task.stat() else { break };
                found.insert(
                    inode,
                    Owner {
                        pid: process.pid as u32,
                        tid: task.tid as u32,
                        comm: Comm::from(stat.comm.as_str()),
                    },
                );
            }
            if found.len() == wanted {
                return;
            }
        }
    }
}

fn cut_short() {
    tracing::warn!(
        "owners of existing listeners: the pass over threads' own fd tables stopped after {THREAD_PASS_LIMIT:?}; listeners it did not reach show no owner"
    );
}

/// Whether tasks `a` and `b` have different fd tables, as `kcmp` says;
/// false when it cannot say (no `kcmp`, a task gone), so that no table is
/// read on a guess.
fn fd_tables_differ(a: i32, b: i32) -> bool {
    const KCMP_FILES: libc::c_long = 2;
    // SAFETY: kcmp only compares two tasks' kernel objects; no memory of
    // ours is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) };
    r == 1 || r == 2
}

/// Whether this process may list (CAP_DAC_READ_SEARCH) and read
/// (CAP_SYS_PTRACE) the fds of processes of other users: both effective.
fn can_read_others_fds() -> bool {
    const CAP_DAC_READ_SEARCH: u32 = 2;
    const CAP_SYS_PTRACE: u32 = 19;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|eff| eff & (1 << CAP_DAC_READ_SEARCH) != 0 && eff & (1 << CAP_SYS_PTRACE) != 0)
}

/// Says once per run that some processes' fd tables could not be read: the
/// owners of their sockets show as unknown, and that is why.
fn denied_once() {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "cannot read other users' processes' fd tables (CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are needed): the owners of their sockets show as unknown"
        );
    }
}

/// Every local port TCP listens on in this process's network namespace:
/// how many sockets listen on it, and their owner: None unless every one
/// was found, all in one process (SO_REUSEPORT groups, v4 and v6 sockets
/// of other processes: a child could be any one's).
pub fn listeners() -> anyhow::Result<Vec<(u16, u64, Option<Owner>)>> {
    let mut by_inode: HashMap<u64, u16> = HashMap::new();
    for entry in procfs::net::tcp()?.into_iter().chain(procfs::net::tcp6()?) {
        if entry.state == TcpState::Listen {
            by_inode.insert(entry.inode, entry.local_address.port());
        }
    }
    let inodes: HashSet<u64> = by_inode.keys().copied().collect();
    let mut owners = socket_owners(&inodes)?;
    if owners.len() < inodes.len() {
        let left = inodes.iter().filter(|i| !owners.contains_key(i)).copied();
        thread_table_owners(&left.collect(), &mut owners);
    }
    Ok(tcpwatch_core::census::listening_ports(
        by_inode
            .iter()
            .map(|(inode, port)| (*port, owners.get(inode).copied())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_the_owner_of_our_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = socket_owners(&HashSet::from([inode])).unwrap();
        let me = &owners[&inode];
        assert_eq!(me.pid, std::process::id());
        let port = l.local_addr().unwrap().port();
        let ls = listeners().unwrap();
        assert!(
            ls.iter().any(|(p, n, o)| *p == port
                && *n == 1
                && o.is_some_and(|o| o.pid == std::process::id())),
            "{ls:?}"
        );
    }
}
