//! Debian kernels for the guest: the newest of a series, fetched with apt and
//! unpacked (never installed) into a cache keyed by the package's version.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The apt-side meta package whose dependency names the newest image.
const META: &str = "linux-image-amd64";
/// Debian ships its archive key here; the backports entry trusts only it.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Where this module adds backports when the host's apt lacks them.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/tcpwatch-vm-backports.sources";

/// An unpacked kernel: its image and its module tree.
pub struct Kernel {
    /// `uname -r` inside the guest, e.g. `6.1.0-41-amd64`.
    pub release: String,
    /// What qemu boots: the uncompressed ELF where the kernel can boot
    /// from it (PVH), else the bzImage.
    pub image: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
}

/// The newest kernel of `series` (`6.1`, `6.12`), from the cache under
/// `cache/<series>/<package>_<version>` or downloaded into it.
pub fn fetch(cache: &Path, series: &str) -> anyhow::Result<Kernel> {
    let suite = suite(series)?;
    if suite.ends_with("-backports") && !apt_knows(&suite)? {
        add_backports(&suite)?;
    }
    let (package, version) = match newest_image(series)? {
        Some(found) => found,
        None => {
            apt_update()?;
            newest_image(series)?
                .with_context(|| format!("apt knows no {META} of the {series} series"))?
        }
    };
    let dir = cache.join(series).join(format!("{package}_{version}"));
    if !dir.join(".ready").exists() {
        unpack(&dir, &package, &version)?;
        prune(&dir)?;
    }
    let mut kernel =
        locate(&dir).with_context(|| format!("unpacked kernel in {}", dir.display()))?;
    if pvh(&dir, &kernel.release) {
        kernel.image = vmlinux(&dir, &kernel.image);
    }
    Ok(kernel)
}

/// Removes the series' older kernels: ~500 MB each, and never booted again.
fn prune(keep: &Path) -> anyhow::Result<()> {
    let series = keep.parent().context("cache entry has no parent")?;
    for entry in fs::read_dir(series)? {
        let path = entry?.path();
        if path != keep {
            eprintln!("xtask: vm: removing the older {}", path.display());
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether the kernel has the PVH entry qemu needs to boot its ELF directly.
fn pvh(dir: &Path, release: &str) -> bool {
    let config = dir.join("root/boot").join(format!("config-{release}"));
    fs::read_to_string(config).is_ok_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"))
}

/// The cached ELF kernel, extracted once; the bzImage if that fails (slower
/// to boot, not wrong).
fn vmlinux(dir: &Path, vmlinuz: &Path) -> PathBuf {
    let out = dir.join("vmlinux");
    if out.is_file() {
        return out;
    }
    match super::vmlinux::extract(vmlinuz, &out) {
        Ok(()) => out,
        Err(e) => {
            eprintln!("xtask: vm: booting the bzImage: no vmlinux from it: {e:#}");
            vmlinuz.to_path_buf()
        }
    }
}

/// The Debian suite that carries a kernel series on this host's release.
fn suite(series: &str) -> anyhow::Result<String> {
    let codename = codename()?;
    match (codename.as_str(), series) {
        ("bookworm", "6.1") => Ok(codename),
        ("bookworm", "6.12") => Ok(format!("{codename}-backports")),
        _ => bail!("no known Debian suite for kernel {series} on {codename} (known: bookworm)"),
    }
}

fn codename() -> anyhow::Result<String> {
    let os = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .context("/etc/os-release has no VERSION_CODENAME")
}

/// `(repository URI, suite)` of every Packages index apt is configured with.
fn apt_indexes() -> anyhow::Result<Vec<(String, String)>> {
    let out = output(
        "apt-get",
        &[
            "indextargets",
            "--format",
            "$(REPO_URI) $(RELEASE)",
            "Identifier: Packages",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(uri, suite)| (uri.to_string(), suite.to_string()))
        .collect())
}

fn apt_knows(suite: &str) -> anyhow::Result<bool> {
    Ok(apt_indexes()?.iter().any(|(_, s)| s == suite))
}

/// Adds `suite` from the host's own Debian mirror; backports are pinned low
/// by their Release file, so this changes no installed package.
fn add_backports(suite: &str) -> anyhow::Result<()> {
    let base = suite.trim_end_matches("-backports");
    let mirror = apt_indexes()?
        .into_iter()
        .find(|(_, s)| s == base)
        .map(|(uri, _)| uri)
        .with_context(|| format!("apt has no {base} source to take the mirror from"))?;
    let entry = format!(
        "# Added by `cargo xtask vm` for the guest kernels (never installed).\n\
         Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {KEYRING}\n"
    );
    eprintln!("xtask: vm: adding {suite} to apt ({BACKPORTS_SOURCE})");
    fs::write(BACKPORTS_SOURCE, entry)
        .with_context(|| format!("writing {BACKPORTS_SOURCE} (needs root)"))?;
    apt_update()
}

fn apt_update() -> anyhow::Result<()> {
    crate::sh("apt-get", &["update", "-qq"])
}

/// The image package (and its version) that the newest `linux-image-amd64`
/// of `series` depends on, from apt's current lists.
fn newest_image(series: &str) -> anyhow::Result<Option<(String, String)>> {
    let show = output("apt-cache", &["show", META])?;
    let prefix = format!("{series}.");
    let mut best: Option<(String, String, String)> = None;
    for stanza in show.split("\n\n") {
        let Some(meta_version) = field(stanza, "Version") else {
            continue;
        };
        if !meta_version.starts_with(&prefix) {
            continue;
        }
        let image = field(stanza, "Depends").and_then(image_dependency);
        if let Some((package, version)) = image
            && best
                .as_ref()
                .is_none_or(|(v, ..)| newer(meta_version, v).unwrap_or(false))
        {
            best = Some((meta_version.to_string(), package, version));
        }
    }
    Ok(best.map(|(_, package, version)| (package, version)))
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// `linux-image-6.1.0-41-amd64 (= 6.1.192-3)` -> package and version.
fn image_dependency(depends: &str) -> Option<(String, String)> {
    let first = depends.split(',').next()?.split('|').next()?.trim();
    let (package, rest) = first.split_once(' ')?;
    let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
    Some((package.to_string(), version.to_string()))
}

/// Debian version order, which plain string order gets wrong (6.1.99 < 6.1.100).
fn newer(a: &str, b: &str) -> anyhow::Result<bool> {
    Ok(Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("running dpkg --compare-versions")?
        .success())
}

/// Downloads and unpacks into a scratch directory first, so an interrupted
/// run never leaves a half-unpacked kernel that looks ready.
fn unpack(dir: &Path, package: &str, version: &str) -> anyhow::Result<()> {
    let mut name = dir.file_name().context("cache entry name")?.to_owned();
    name.push(".partial");
    let scratch = dir.with_file_name(name);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    eprintln!("xtask: vm: downloading {package} {version}");
    let spec = format!("{package}={version}");
    if download(&scratch, &spec).is_err() {
        // The lists named a version the mirror has since dropped.
        apt_update()?;
        download(&scratch, &spec)?;
    }
    let deb = fs::read_dir(&scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", scratch.display()))?;
    let root = scratch.join("root");
    run_in(
        &scratch,
        "dpkg-deb",
        &["-x".as_ref(), deb.as_os_str(), root.as_os_str()],
    )?;
    fs::remove_file(&deb)?;
    // Debian generates modules.dep at install time (postinst), not in the package.
    let release = release(&root)?;
    run_in(
        &scratch,
        "depmod",
        &["-b".as_ref(), root.as_os_str(), release.as_ref()],
    )?;
    fs::write(scratch.join(".ready"), format!("{package} {version}\n"))?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&scratch, dir).with_context(|| format!("renaming to {}", dir.display()))
}

fn download(dir: &Path, spec: &str) -> anyhow::Result<()> {
    // As root into a root-owned directory apt's sandbox user cannot write to.
    let args = ["download", "-qq", "-o", "APT::Sandbox::User=root", spec];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run_in(dir, "apt-get", &args)
}

/// Finds the image and the module tree of the unpacked package.
fn locate(dir: &Path) -> anyhow::Result<Kernel> {
    let root = dir.join("root");
    let release = release(&root)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("no {} in the package", vmlinuz.display());
    }
    let modules = root.join("lib/modules").join(&release);
    if !modules.join("modules.dep").is_file() {
        bail!("no modules.dep in {}", modules.display());
    }
    Ok(Kernel {
        modules,
        release,
        image: vmlinuz,
    })
}

/// The one `lib/modules/<release>` directory the package ships.
fn release(root: &Path) -> anyhow::Result<String> {
    let modules = root.join("lib/modules");
    let entry = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(Result::ok)
        .find(|e| e.path().join("modules.order").is_file())
        .with_context(|| format!("no <release>/modules.order in {}", modules.display()))?;
    Ok(entry.file_name().to_string_lossy().into_owned())
}

fn output(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd} printed non-UTF-8"))
}

fn run_in(dir: &Path, cmd: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let status = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !status.success() {
        bail!("{cmd} failed in {}: {status}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_dependency_takes_the_first_exact_pin() {
        assert_eq!(
            image_dependency("linux-image-6.12.48+deb12-amd64 (= 6.12.48-1~bpo12+1)"),
            Some((
                "linux-image-6.12.48+deb12-amd64".into(),
                "6.12.48-1~bpo12+1".into()
            ))
        );
        assert_eq!(image_dependency("linux-image-6.1.0-41-amd64"), None);
    }
}
