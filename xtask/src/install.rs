//! `cargo xtask install`: the release binary where `sudo tcpwatch` finds it.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

#[derive(Args)]
pub struct InstallArgs {
    /// Installation prefix: the binary goes to PREFIX/sbin (it needs root).
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Staging root prepended to every path (for packagers).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

/// Copies the built binary into place: written beside it and renamed, so
/// a running tcpwatch keeps its file and no half-written one is ever seen.
pub fn run(args: &InstallArgs, root: &Path) -> anyhow::Result<()> {
    let built = root.join("target/release/tcpwatch");
    if !built.is_file() {
        bail!("{} is missing: the release build failed", built.display());
    }
    let mut dir = args.destdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    dir.push(args.prefix.strip_prefix("/").unwrap_or(&args.prefix));
    dir.push("sbin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join("tcpwatch");
    let tmp = dir.join(".tcpwatch.new");
    std::fs::copy(&built, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    eprintln!("xtask: installed {}", dest.display());
    Ok(())
}
