//! Naming network namespaces the way users do: an inode number, a path
//! (`/run/netns/NAME`, `/proc/PID/ns/net`) or a name under /run/netns.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The inode number of the network namespace `spec` names.
pub fn resolve(spec: &str) -> anyhow::Result<u32> {
    if let Ok(n) = spec.parse::<u32>() {
        if n == 0 {
            bail!("--netns 0 names no namespace");
        }
        // As `path` does: a number that is no namespace here would trace
        // nothing, as if the namespace were quiet.
        if !all().iter().any(|ns| ns.inode == n) {
            bail!(
                "--netns {spec}: no network namespace with that inode has a name or a thread in it"
            );
        }
        return Ok(n);
    }
    let path = named(spec);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("--netns {spec}: cannot stat {}", path.display()))?;
    if !is_nsfs(&path) {
        bail!("--netns {spec}: {} is not a namespace file", path.display());
    }
    match u32::try_from(meta.ino()) {
        Ok(ino) => Ok(ino),
        Err(_) => bail!("--netns {spec}: inode {} is not a namespace id", meta.ino()),
    }
}

/// A path that opens the network namespace `spec` names: the path itself,
/// `/run/netns/NAME`, or for an inode number whatever [`all`] finds for it
/// (its name, a process or a thread in it).
pub fn path(spec: &str) -> anyhow::Result<PathBuf> {
    if let Ok(ino) = spec.parse::<u32>() {
        return match all().into_iter().find(|n| n.inode == ino) {
            Some(n) => Ok(n.path),
            None => bail!(
                "--netns {spec}: no network namespace with that inode has a name or a thread in it"
            ),
        };
    }
    Ok(named(spec))
}

/// The file a non-numeric spec names: itself if it is a path, else the
/// `ip netns` name under /run/netns.
fn named(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    }
}

/// A network namespace held open for a whole run. While its file is open
/// the kernel cannot free the namespace, so its inode number is never
/// given to a new one: a filter on the inode keeps meaning this namespace
/// after its name is deleted (unpinned, a recycled inode was traced as
/// the old namespace).
#[derive(Debug)]
pub struct Pinned {
    file: std::fs::File,
    pub inode: u32,
    /// What the user named it by, for messages.
    pub spec: String,
    /// The path that named it when pinned (a name, a process's file).
    named: PathBuf,
}

impl Pinned {
    /// Opens the namespace `spec` names (as [`resolve`] reads it).
    pub fn open(spec: &str) -> anyhow::Result<Pinned> {
        let inode = resolve(spec)?;
        let named = path(spec)?;
        let file = std::fs::File::open(&named)
            .with_context(|| format!("--netns {spec}: cannot open {}", named.display()))?;
        // The namespace opened must be the one resolved (a name can be
        // re-pointed between the two looks).
        let opened = file.metadata().map(|m| m.ino()).ok();
        if opened != Some(u64::from(inode)) {
            bail!("--netns {spec}: the namespace changed while it was being opened");
        }
        Ok(Pinned {
            file,
            inode,
            spec: spec.into(),
            named,
        })
    }

    /// A path that opens this very namespace for as long as it is pinned,
    /// from any thread of this process, whatever became of its name.
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Whether the namespace is gone for its users: the path that named it
    /// leads elsewhere or nowhere, no name and no process is left in it,
    /// and no socket but TIME-WAIT ones (which make no transitions) is
    /// left to close. Only the pin keeps it then; nothing more can happen
    /// in it. The first check is one stat; the rest run only once it fails.
    pub fn gone(&self) -> bool {
        if inode(&self.named) == Some(self.inode) {
            return false;
        }
        if all().iter().any(|n| n.inode == self.inode) {
            return false;
        }
        crate::host::census::live_sockets_in(&self.path()).is_ok_and(|n| n == 0)
    }
}

/// Whether `path` lives on nsfs (a namespace file, not any file's inode).
fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct of the right type; the path
    // is a valid NUL-terminated string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == NSFS_MAGIC
    }
}

thread_local! {
    /// CPU time spent by the namespace threads this thread has waited on.
    static HELPERS_CPU_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// CPU time of the calling thread plus that of every namespace thread it
/// ran through [`run_in`]: what a census costs, since in another namespace
/// its work is done on those threads, out of sight of the caller's own
/// CPU clock. (The daemon's census budget read only that clock, and so
/// missed the sock_diag work: measured 0.7 % of a core where the process
/// spent ~3.6 %.)
pub fn thread_cpu_with_helpers_ns() -> u64 {
    crate::host::clock::thread_cpu_ns() + HELPERS_CPU_NS.get()
}

/// Runs `f` on a short-lived thread that entered the namespace `path`
/// opens: sockets it creates and /proc/thread-self/net it reads belong to
/// that namespace, and nothing else of this process moves. Its CPU time is
/// added to the caller's [`thread_cpu_with_helpers_ns`].
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let (result, cpu_ns) = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this scoped thread only, with a namespace
            // file kept open for the call.
            let result = if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EPERM) {
                    setns_denied_once();
                }
                Err(e)
            } else {
                Ok(f())
            };
            // A fresh thread: its CPU clock started at zero.
            (result, crate::host::clock::thread_cpu_ns())
        })
        .join()
        .unwrap_or_else(|_| (Err(std::io::Error::other("namespace thread panicked")), 0))
    });
    HELPERS_CPU_NS.set(HELPERS_CPU_NS.get() + cpu_ns);
    result
}

/// Says once per run that entering other namespaces is not permitted: they
/// are then not censused, and that is why.
fn setns_denied_once() {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "cannot enter other network namespaces (setns needs CAP_SYS_ADMIN): only the daemon's own is censused"
        );
    }
}

/// The network namespace of this process.
pub fn current() -> anyhow::Result<u32> {
    resolve("/proc/self/ns/net")
}

/// A network namespace found on the host, and a path that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRef {
    pub inode: u32,
    pub path: PathBuf,
    /// Its `ip netns` name, if it has one.
    pub name: Option<String>,
    /// Named (only root can), or a process of root's is in it: the ones a
    /// cap must not let other users crowd out.
    pub root: bool,
}

/// Every network namespace with a thread in it (/proc/*/task/*/ns/net) or a
/// name (/run/netns/*), once each, sorted by inode. Named ones keep their
/// /run/netns path, process-wide ones /proc/PID/ns/net. Threads that exit
/// during the scan and unreadable entries are skipped.
pub fn all() -> Vec<NamespaceRef> {
    let mut found: std::collections::BTreeMap<u32, NamespaceRef> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            let path = entry.path();
            // /run/netns also holds plain files until `ip netns add` has
            // bind-mounted the namespace; skip those.
            if !is_nsfs(&path) {
                continue;
            }
            let Some(inode) = inode(&path) else {
                continue;
            };
            found.insert(
                inode,
                NamespaceRef {
                    inode,
                    name: Some(entry.file_name().to_string_lossy().into_owned()),
                    path,
                    root: true,
                },
            );
        }
    }
    for pid in numbered(Path::new("/proc")) {
        // The process's own path first: it lasts as long as the process. A
        // thread that entered another namespace (setns, unshare) shows it
        // only under its task, so the tasks are looked at too.
        // /proc/PID belongs to the process's effective uid.
        let root = std::fs::metadata(&pid).is_ok_and(|m| m.uid() == 0);
        let tasks = numbered(&pid.join("task")).map(|t| t.join("ns/net"));
        for path in std::iter::once(pid.join("ns/net")).chain(tasks) {
            if let Some(inode) = inode(&path) {
                let e = found.entry(inode).or_insert(NamespaceRef {
                    inode,
                    path,
                    name: None,
                    root,
                });
                e.root |= root;
            }
        }
    }
    found.into_values().collect()
}

/// The entries of `dir` named by a number (pids, tids); none if it is gone.
fn numbered(dir: &Path) -> impl Iterator<Item = PathBuf> + use<> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.as_encoded_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit)
        })
        .map(|e| e.path())
}

/// The namespace inode of a namespace file, if it can be read.
fn inode(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_and_paths_resolve() {
        let own = super::resolve("/proc/self/ns/net").unwrap();
        assert!(own > 0);
        // Our own namespace by its number; a number that is no namespace
        // here is refused (it would trace nothing).
        assert_eq!(super::resolve(&own.to_string()).unwrap(), own);
        assert!(super::resolve("4294967290").is_err());
        assert!(super::resolve("no-such-namespace-here").is_err());
        assert!(super::resolve("0").is_err());
        let err = super::resolve("/etc/hostname").unwrap_err().to_string();
        assert!(err.contains("not a namespace file"), "{err}");
    }
}
