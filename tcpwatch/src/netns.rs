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
        return Ok(n);
    }
    let path = if spec.contains('/') {
        Path::new(spec).to_path_buf()
    } else {
        Path::new("/run/netns").join(spec)
    };
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("--netns {spec}: cannot stat {}", path.display()))?;
    match u32::try_from(meta.ino()) {
        Ok(ino) => Ok(ino),
        Err(_) => bail!("--netns {spec}: inode {} is not a namespace id", meta.ino()),
    }
}

/// A path that opens the network namespace `spec` names: the path itself,
/// `/run/netns/NAME`, or for an inode number the namespace of a process
/// that lives in it.
pub fn path(spec: &str) -> anyhow::Result<PathBuf> {
    if let Ok(ino) = spec.parse::<u32>() {
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let p = entry.path().join("ns/net");
            if std::fs::metadata(&p).is_ok_and(|m| m.ino() == ino as u64) {
                return Ok(p);
            }
        }
        bail!("--netns {spec}: no process lives in a network namespace with that inode");
    }
    Ok(if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    })
}

/// The network namespace of this process.
pub fn current() -> anyhow::Result<u32> {
    resolve("/proc/self/ns/net")
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_and_paths_resolve() {
        assert_eq!(super::resolve("4026531840").unwrap(), 4026531840);
        let own = super::resolve("/proc/self/ns/net").unwrap();
        assert!(own > 0);
        assert!(super::resolve("no-such-namespace-here").is_err());
    }
}
