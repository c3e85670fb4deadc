//! `cargo xtask deb`: the Debian package, built with cargo-deb from the
//! release binary, `deploy/`, and the man pages and completions
//! `tcpwatch generate` writes. And the check `cargo xtask test` runs as
//! root: install it with dpkg, use it as an operator would, purge it, and
//! find nothing left.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Builds the package; its path.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    crate::cargo(&["build", "--release", "--package", "tcpwatch"], &[])?;
    let generated = root.join("target/generated");
    let _ = std::fs::remove_dir_all(&generated);
    run(Command::new(root.join("target/release/tcpwatch"))
        .arg("generate")
        .arg(&generated))?;
    // Man pages ship compressed, reproducibly (no name or time in the gzip).
    for page in std::fs::read_dir(generated.join("man"))? {
        run(Command::new("gzip").args(["-9nf"]).arg(page?.path()))?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // cargo-deb, built once from crates.io into ~/.cargo/bin (as
    // bpf-linker is into ~/.cache/tcpwatch), with its own locked versions.
    let installed = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("xtask: building cargo-deb (once)");
        run(Command::new(&cargo).args(["install", "--locked", "cargo-deb"]))?;
    }
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["deb", "--package", "tcpwatch", "--no-build"])
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // cargo-deb prints the package's path last.
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb named no package")?;
    eprintln!("xtask: built {}", path.display());
    Ok(path)
}

/// Installs the package, checks it as an operator would, purges it and
/// checks nothing is left. Refuses to touch a tcpwatch package already
/// installed here.
pub fn check(root: &Path) -> anyhow::Result<()> {
    if Command::new("dpkg")
        .args(["-s", "tcpwatch"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!(
            "a tcpwatch package is installed on this machine: the package check would replace it; remove it first (dpkg --purge tcpwatch)"
        );
    }
    let deb = build(root)?;
    let listing = capture(Command::new("dpkg").arg("-c").arg(&deb))?;
    eprintln!("xtask: the package holds:\n{listing}");
    // A failed install is purged too: a half-configured package would
    // stop every later check at the guard above.
    if let Err(e) = run(Command::new("dpkg").arg("-i").arg(&deb)) {
        let _ = run(Command::new("dpkg").args(["--purge", "tcpwatch"]));
        return Err(e);
    }
    let result = installed_works();
    let files = capture(Command::new("dpkg").args(["-L", "tcpwatch"]));
    run(Command::new("dpkg").args(["--purge", "tcpwatch"]))?;
    result?;
    let mut left = Vec::new();
    for f in files?.lines().map(Path::new) {
        if f.is_file() {
            left.push(f.display().to_string());
        }
    }
    if Path::new("/etc/tcpwatch").exists() {
        left.push("/etc/tcpwatch".into());
    }
    if !left.is_empty() {
        bail!("the purge left {}", left.join(", "));
    }
    if Command::new("getent")
        .args(["group", "tcpwatch"])
        .output()?
        .status
        .success()
    {
        bail!("the purge left the tcpwatch group");
    }
    eprintln!("xtask: package installed, used and purged cleanly");
    Ok(())
}

/// What an operator does first with the installed package.
fn installed_works() -> anyhow::Result<()> {
    let version = capture(Command::new("/usr/sbin/tcpwatch").arg("--version"))?;
    if !version.starts_with("tcpwatch ") {
        bail!("tcpwatch --version said {version:?}");
    }
    capture(Command::new("/usr/sbin/tcpwatch").args([
        "config",
        "check",
        "/etc/tcpwatch/tcpwatch.toml",
    ]))?;
    let man = capture(
        Command::new("man")
            .args(["-P", "cat", "tcpwatch"])
            .env("MANWIDTH", "80"),
    )
    .or_else(|_| capture(Command::new("zcat").arg("/usr/share/man/man1/tcpwatch.1.gz")))?;
    if !man.contains("tcpwatch") {
        bail!("no man page for tcpwatch");
    }
    let group = capture(Command::new("getent").args(["group", "tcpwatch"]))?;
    if !group.starts_with("tcpwatch:") {
        bail!("no tcpwatch group after install");
    }
    let meta = std::fs::metadata("/etc/tcpwatch/tcpwatch.toml")?;
    use std::os::unix::fs::MetadataExt as _;
    if meta.mode() & 0o777 != 0o640 {
        bail!(
            "/etc/tcpwatch/tcpwatch.toml is mode {:o}, not 640",
            meta.mode() & 0o777
        );
    }
    let conffiles = std::fs::read_to_string("/var/lib/dpkg/info/tcpwatch.conffiles")
        .context("the package has no conffiles")?;
    if !conffiles.contains("/etc/tcpwatch/tcpwatch.toml") {
        bail!("the configuration is not a conffile: {conffiles}");
    }
    run_the_unit()?;
    for f in [
        "/lib/systemd/system/tcpwatch.service",
        "/usr/share/bash-completion/completions/tcpwatch",
        "/usr/share/zsh/vendor-completions/_tcpwatch",
        "/usr/share/fish/vendor_completions.d/tcpwatch.fish",
        "/usr/share/tcpwatch/prometheus/tcpwatch.rules.yml",
    ] {
        if !Path::new(f).is_file() {
            bail!("the package did not install {f}");
        }
    }
    Ok(())
}

/// Starts the installed unit where systemd runs; elsewhere (this VM's init
/// is not systemd) runs its ExecStart line as the unit would: root with
/// only its capabilities and its group, its runtime directory made, for
/// two seconds.
fn run_the_unit() -> anyhow::Result<()> {
    if Path::new("/run/systemd/system").exists() {
        run(Command::new("systemctl").args(["start", "tcpwatch.service"]))?;
        let active = capture(Command::new("systemctl").args(["is-active", "tcpwatch.service"]));
        run(Command::new("systemctl").args(["stop", "tcpwatch.service"]))?;
        return active.map(drop);
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/tcpwatch.service")?;
    let field = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("the unit has no {key}"))
    };
    let exec: Vec<&str> = field("ExecStart=")?.split_whitespace().collect();
    let caps: String = field("CapabilityBoundingSet=")?
        .split_whitespace()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let group = field("Group=")?.trim();
    std::fs::create_dir_all("/run/tcpwatch")?;
    let out = Command::new("setpriv")
        .arg(format!("--bounding-set=-all{caps}"))
        .arg(format!("--regid={group}"))
        .args(["--clear-groups", "--inh-caps=-all", "--"])
        .args(&exec)
        .args(["--duration", "2"])
        .output()
        .context("running the unit's ExecStart")?;
    let _ = std::fs::remove_dir_all("/run/tcpwatch");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !err.contains("daemon up") {
        bail!(
            "the unit's ExecStart under its capabilities failed ({}): {err}",
            out.status
        );
    }
    eprintln!("xtask: the unit's ExecStart ran under its capabilities only (no systemd here)");
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    capture(cmd).map(drop)
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
