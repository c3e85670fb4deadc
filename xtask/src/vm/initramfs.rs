//! The guest's initramfs: static busybox, /init, the modules that mount the
//! host's root over 9p, and the one command to run.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::kernel::Kernel;

const INIT: &str = include_str!("init.sh");
/// What the kernel runs for request_module(): the host's modprobe, chrooted.
const MODPROBE: &str =
    "#!/bin/busybox sh\nexec /bin/busybox chroot /newroot /sbin/modprobe \"$@\"\n";
/// 9p over virtio-pci, before any host file is reachable; their dependencies
/// come from modules.dep.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
const BUSYBOX: &str = "/bin/busybox";

/// Builds `<dir>/initramfs.cpio` for `kernel`, running `script` (a shell
/// script, see `command_script`) as the guest's one command, with `keep`
/// (the workspace) visible whatever the guest mounts over its parents.
pub fn build(dir: &Path, kernel: &Kernel, script: &str, keep: &Path) -> anyhow::Result<PathBuf> {
    let stage = dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    for sub in [
        "bin", "dev", "proc", "sys", "newroot", "mnt", "modules", "vm",
    ] {
        fs::create_dir_all(stage.join(sub))?;
    }
    fs::copy(BUSYBOX, stage.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX} (busybox-static)"))?;
    executable(&stage.join("init"), INIT)?;
    executable(&stage.join("bin/vm-modprobe"), MODPROBE)?;
    fs::write(stage.join("vm/command"), script)?;
    fs::write(stage.join("vm/env"), guest_facts(kernel, keep)?)?;
    stage_modules(&stage.join("modules"), kernel)?;
    let cpio = dir.join("initramfs.cpio");
    archive(&stage, &cpio)?;
    Ok(cpio)
}

fn executable(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Shell assignments /init sources: the release, where the package's
/// module tree is on the host (seen through the 9p share), and the
/// directory that must stay visible (the workspace).
fn guest_facts(kernel: &Kernel, keep: &Path) -> anyhow::Result<String> {
    let modules = fs::canonicalize(&kernel.modules)
        .with_context(|| format!("resolving {}", kernel.modules.display()))?;
    let keep = fs::canonicalize(keep).with_context(|| format!("resolving {}", keep.display()))?;
    Ok(format!(
        "KERNEL_RELEASE={}\nHOST_MODULES={}\nKEEP={}\n",
        quote(&kernel.release),
        quote(&modules.to_string_lossy()),
        quote(&keep.to_string_lossy())
    ))
}

/// Copies the boot modules in load order as `NN-name.ko`, decompressed
/// because busybox insmod only reads plain ELF.
fn stage_modules(dest: &Path, kernel: &Kernel) -> anyhow::Result<()> {
    let deps = ModuleDeps::read(&kernel.modules)?;
    for (i, rel) in deps.load_order(BOOT_MODULES)?.iter().enumerate() {
        let src = kernel.modules.join(rel);
        let out = dest.join(format!("{i:02}-{}.ko", module_name(rel)));
        decompress(&src, &out)?;
    }
    Ok(())
}

fn decompress(src: &Path, out: &Path) -> anyhow::Result<()> {
    let tool = match src.extension().and_then(|e| e.to_str()) {
        Some("ko") => {
            fs::copy(src, out).with_context(|| format!("copying {}", src.display()))?;
            return Ok(());
        }
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => bail!("unknown module format: {}", src.display()),
    };
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .stdout(file)
        .status()
        .with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} -dc {} failed: {status}", src.display());
    }
    Ok(())
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; modprobe treats `-` and `_` alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// modules.dep and modules.builtin of one kernel.
struct ModuleDeps {
    /// name -> (path, direct and indirect dependencies' paths)
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleDeps {
    fn read(tree: &Path) -> anyhow::Result<Self> {
        let dep = fs::read_to_string(tree.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", tree.display()))?;
        let modules = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(path, deps)| {
                let deps = deps.split_whitespace().map(String::from).collect();
                (module_name(path), (path.to_string(), deps))
            })
            .collect();
        // Absent in some packages: then nothing is known to be built in.
        let builtin = fs::read_to_string(tree.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        Ok(Self { modules, builtin })
    }

    /// The module files to insmod, dependencies first, each once; built-in
    /// ones need no loading.
    fn load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut order = Vec::new();
        for name in wanted {
            self.visit(name, &mut order)?;
        }
        Ok(order)
    }

    fn visit(&self, name: &str, order: &mut Vec<String>) -> anyhow::Result<()> {
        let Some((path, deps)) = self.modules.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            bail!("module {name} is neither in modules.dep nor built in");
        };
        if order.contains(path) {
            return Ok(());
        }
        // modules.dep lists the deepest dependency last.
        for dep in deps.iter().rev() {
            self.visit(&module_name(dep), order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Packs `stage` as a newc cpio archive, the format the kernel unpacks.
fn archive(stage: &Path, cpio: &Path) -> anyhow::Result<()> {
    let list = Command::new("find")
        .args([".", "-print0"])
        .current_dir(stage)
        .output()
        .context("running find")?;
    if !list.status.success() {
        bail!("find in {} failed: {}", stage.display(), list.status);
    }
    let out = fs::File::create(cpio).with_context(|| format!("creating {}", cpio.display()))?;
    let mut child = Command::new("cpio")
        .args(["--null", "--create", "--format=newc", "--quiet"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running cpio")?;
    std::io::Write::write_all(&mut child.stdin.take().context("cpio stdin")?, &list.stdout)
        .context("feeding cpio")?;
    let status = child.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio failed: {status}");
    }
    Ok(())
}

/// Single-quotes `s` for sh.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(dep: &str, builtin: &str) -> ModuleDeps {
        ModuleDeps {
            modules: dep
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(p, d)| {
                    let d = d.split_whitespace().map(String::from).collect();
                    (module_name(p), (p.to_string(), d))
                })
                .collect(),
            builtin: builtin.lines().map(module_name).collect(),
        }
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let d = deps(
            "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
             kernel/net/9p/9pnet.ko.xz:\n\
             kernel/fs/netfs/netfs.ko.xz:\n\
             kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n",
            "kernel/drivers/virtio/virtio_pci.ko\n",
        );
        assert_eq!(
            d.load_order(&["virtio_pci", "9pnet_virtio", "9p"]).unwrap(),
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
            ]
        );
        assert!(d.load_order(&["nosuch"]).is_err());
    }

    #[test]
    fn quote_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
