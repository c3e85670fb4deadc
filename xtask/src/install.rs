//! `cargo xtask install`: the release binary where `sudo tcpwatch` finds it,
//! and what runs it as a service: the systemd unit, its group (sysusers),
//! the default configuration (never over an existing one), the
//! Prometheus rules and the Grafana dashboards, from `deploy/`.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

#[derive(Args)]
pub struct InstallArgs {
    /// Installation prefix: the binary goes to PREFIX/sbin (it needs root),
    /// the unit to PREFIX/lib/systemd/system, its group to
    /// PREFIX/lib/sysusers.d, the Prometheus rules and Grafana dashboards to
    /// PREFIX/share/tcpwatch;
    /// the configuration to /etc/tcpwatch/tcpwatch.toml if there is none.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Staging root prepended to every path (for packagers).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

pub fn run(args: &InstallArgs, root: &Path) -> anyhow::Result<()> {
    let built = root.join("target/release/tcpwatch");
    if !built.is_file() {
        bail!("{} is missing: the release build failed", built.display());
    }
    let staged = |path: &Path| {
        let mut dir = args.destdir.clone().unwrap_or_else(|| PathBuf::from("/"));
        dir.push(path.strip_prefix("/").unwrap_or(path));
        dir
    };
    let prefix = &args.prefix;
    let deploy = root.join("deploy");
    let binary = prefix.join("sbin/tcpwatch");
    put(&staged(&binary), &std::fs::read(&built)?, 0o755)?;
    // The unit runs the binary where it was just put.
    let unit = std::fs::read_to_string(deploy.join("systemd/tcpwatch.service"))?
        .replace("/usr/sbin/tcpwatch", &binary.display().to_string());
    put(
        &staged(&prefix.join("lib/systemd/system/tcpwatch.service")),
        unit.as_bytes(),
        0o644,
    )?;
    put(
        &staged(&prefix.join("lib/sysusers.d/tcpwatch.conf")),
        &std::fs::read(deploy.join("systemd/tcpwatch.sysusers.conf"))?,
        0o644,
    )?;
    // Every shipped rule file and dashboard, as the package ships them.
    for (from, to) in [
        ("prometheus", "share/tcpwatch/prometheus"),
        ("grafana/dashboards", "share/tcpwatch/grafana/dashboards"),
    ] {
        for entry in std::fs::read_dir(deploy.join(from))? {
            let path = entry?.path();
            put(
                &staged(&prefix.join(to).join(path.file_name().context("a file")?)),
                &std::fs::read(&path)?,
                0o644,
            )?;
        }
    }
    // Grafana's provider points at the dashboards where they were just put.
    let provider = std::fs::read_to_string(deploy.join("grafana/provisioning/tcpwatch.yml"))?
        .replace(
            "/usr/share/tcpwatch/grafana/dashboards",
            &prefix
                .join("share/tcpwatch/grafana/dashboards")
                .display()
                .to_string(),
        );
    put(
        &staged(&prefix.join("share/tcpwatch/grafana/provisioning/tcpwatch.yml")),
        provider.as_bytes(),
        0o644,
    )?;
    // An operator's configuration is theirs: only a missing one is written.
    let config = staged(Path::new("/etc/tcpwatch/tcpwatch.toml"));
    if config.exists() {
        eprintln!("xtask: kept {} (exists)", config.display());
    } else {
        put(
            &config,
            &std::fs::read(deploy.join("tcpwatch.toml"))?,
            0o640,
        )?;
    }
    Ok(())
}

/// Writes a file into place: beside it first, then renamed, so a running
/// tcpwatch keeps its binary and no half-written file is ever seen.
fn put(dest: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().context("a path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.new",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    eprintln!("xtask: installed {}", dest.display());
    Ok(())
}
