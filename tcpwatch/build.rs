//! Builds the eBPF object (tcpwatch-ebpf) and embeds it in the binary.
//!
//! Everything it needs beyond rustup is provisioned here, so a plain `cargo
//! build` works on a fresh machine: bpf-linker is built once from crates.io
//! against the pinned toolchain's own libLLVM and cached per user; the eBPF
//! crate is built by aya-build with the same pinned toolchain and
//! `-Z build-std=core`, enabled on stable through RUSTC_BOOTSTRAP.
use std::{
    env,
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

/// The bpf-linker release we build; bump with care (it must support the
/// toolchain's LLVM major through an `llvm-N` feature).
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TCPWATCH_BPF_LINKER_DIR");
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        // aya-build's own switch, for tools that only need the host crates;
        // the binary then cannot embed the object and will not link.
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let toolchain = pinned_toolchain(&manifest_dir)?;
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());

    let linker_dir = ensure_bpf_linker(&rustc, &toolchain)?;
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_dir];
    paths.extend(env::split_paths(&path));
    // SAFETY: build scripts are single-threaded; the variables are read by
    // the child cargo that aya-build spawns below.
    unsafe {
        env::set_var("PATH", env::join_paths(paths)?);
        env::set_var("RUSTC_BOOTSTRAP", "1");
        // aya-build relays the inner cargo's progress lines as warnings,
        // which cargo then replays on every build, even with nothing to do.
        // Quiet keeps only its errors and compiler messages.
        env::set_var("CARGO_TERM_QUIET", "true");
    }

    let root_dir = manifest_dir.join("../tcpwatch-ebpf").canonicalize()?;
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "tcpwatch-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )?;
    // Tests' fault injection lives in a second object, built only for
    // `--features fault-injection`; the production one has none of it.
    // Both builds write OUT_DIR/tcpwatch-probes, so the test one is renamed.
    if env::var_os("CARGO_FEATURE_FAULT_INJECTION").is_some() {
        let out_dir = PathBuf::from(env::var("OUT_DIR")?);
        let prod = out_dir.join("tcpwatch-probes");
        let keep = out_dir.join("tcpwatch-probes.prod");
        fs::rename(&prod, &keep)?;
        aya_build::build_ebpf(
            [Package {
                name: "tcpwatch-ebpf",
                root_dir,
                features: &["fault-injection"],
                ..Default::default()
            }],
            Toolchain::Custom(&toolchain),
        )?;
        fs::rename(&prod, out_dir.join("tcpwatch-probes-fault"))?;
        fs::rename(&keep, &prod)?;
    }
    Ok(())
}

/// The toolchain rustup runs us with, else the channel rust-toolchain.toml pins.
fn pinned_toolchain(manifest_dir: &Path) -> anyhow::Result<String> {
    if let Ok(tc) = env::var("RUSTUP_TOOLCHAIN") {
        // rustup may give the full name (1.99.1-x86_64-unknown-linux-gnu);
        // `rustup run` accepts it as is.
        return Ok(tc);
    }
    let file = manifest_dir.join("../rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", file.display());
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_owned)
        .next()
        .ok_or_else(|| anyhow!("no channel in {}", file.display()))
}

fn cache_root() -> PathBuf {
    if let Some(dir) = env::var_os("TCPWATCH_BPF_LINKER_DIR") {
        return PathBuf::from(dir);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("tcpwatch")
}

/// Returns the directory holding a bpf-linker built against `rustc`'s LLVM,
/// building it first if the cache lacks it (about a minute, once).
fn ensure_bpf_linker(rustc: &str, toolchain: &str) -> anyhow::Result<PathBuf> {
    let vv = Command::new(rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {rustc} -vV"))?;
    let vv = String::from_utf8_lossy(&vv.stdout).into_owned();
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| anyhow!("`{rustc} -vV` printed no `{name}`"))
    };
    let release = field("release:")?;
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();

    let dir = cache_root().join(format!(
        "bpf-linker-{BPF_LINKER_VERSION}-rust-{release}-llvm-{llvm_major}"
    ));
    let bin = dir.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two builds at once (test and clippy) must not both install.
    let lock = File::create(dir.join(".lock"))?;
    lock.lock()?;
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }

    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let libllvm = fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.*-rust-* in {}/lib", sysroot.display()))?;
    // bpf-linker's llvm-N feature links $LLVM_PREFIX/lib/libLLVM.so and
    // records an rpath there, so the prefix must outlive the build.
    let prefix = dir.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in [
        "libLLVM.so".into(),
        libllvm.file_name().unwrap_or_default().to_owned(),
    ] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }

    println!(
        "cargo::warning=building bpf-linker {BPF_LINKER_VERSION} against {} (once)",
        libllvm.display()
    );
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["install", "bpf-linker", "--locked", "--version"])
        .arg(BPF_LINKER_VERSION)
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .arg("--root")
        .arg(&dir)
        .arg("--target-dir")
        .arg(dir.join("build"))
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTUP_TOOLCHAIN", toolchain);
    // Keep the outer build's settings out of the nested one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_BOOTSTRAP",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd
        .status()
        .with_context(|| format!("spawning {cargo} install bpf-linker"))?;
    if !status.success() {
        bail!(
            "building bpf-linker failed ({status}); it needs crates.io and the toolchain's \
             libLLVM ({}). Set TCPWATCH_BPF_LINKER_DIR to a directory whose bin/ holds a \
             working bpf-linker to skip this step.",
            libllvm.display()
        );
    }
    let _ = fs::remove_dir_all(dir.join("build"));
    Ok(bin)
}
