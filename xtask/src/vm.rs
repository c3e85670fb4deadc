//! Runs one command inside a Debian kernel under qemu (software emulation:
//! this host's /dev/kvm cannot run stock kernels), with the host's root
//! filesystem shared read-only, so already-built test binaries run unchanged
//! on the kernels production hosts have. See shared/docs/kernel-matrix.md.
use std::{
    collections::VecDeque,
    fs,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

mod initramfs;
mod kernel;
mod vmlinux;

/// The kernel series the guests run: Debian 12's, and its backports'.
pub const SERIES: &[&str] = &["6.1", "6.12"];
/// /init prints this right before the command, and `EXIT_MARKER<code>` after.
const START_MARKER: &str = "TCPWATCH-VM-START";
const EXIT_MARKER: &str = "TCPWATCH-VM-EXIT=";
/// How much of the console an error quotes.
const TAIL_LINES: usize = 30;
/// System packages the guest needs on the host, by a command each provides.
const VM_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    // The guest's on-demand modprobe is the host's, chrooted.
    ("modprobe", "kmod"),
    // Kernels: xz (6.1), zstd (6.12); 6.12's modules are .ko.xz.
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

/// `cargo xtask vm`: the guest runner on its own, for debugging.
#[derive(Args)]
pub struct VmArgs {
    /// Kernel series to boot (`all`: each in turn).
    #[arg(long, value_parser = ["6.1", "6.12", "all"])]
    kernel: String,
    /// Seconds before qemu is killed.
    #[arg(long, default_value_t = 20 * 60)]
    timeout: u64,
    /// Working directory in the guest (default: the current one).
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Extra `KEY=VALUE` for the command's environment (the host's CI is passed).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// One command to run in one guest.
pub struct Guest<'a> {
    /// A member of `SERIES`.
    pub kernel: &'a str,
    pub command: &'a [String],
    /// Absolute; the host's path is the guest's.
    pub cwd: &'a Path,
    /// Added to PATH, HOME, RUST_BACKTRACE=1 and the host's CI.
    pub env: &'a [(String, String)],
    pub timeout: Duration,
}

/// `kernel` as a list: `all` is every series.
pub fn kernels(kernel: &str) -> anyhow::Result<Vec<&'static str>> {
    if kernel == "all" {
        return Ok(SERIES.to_vec());
    }
    match SERIES.iter().find(|s| **s == kernel) {
        Some(s) => Ok(vec![*s]),
        None => bail!(
            "unknown kernel {kernel:?}: one of {} or all",
            SERIES.join(", ")
        ),
    }
}

/// Runs the subcommand; the exit code is the first failing guest's (or 0).
pub fn cli(args: &VmArgs, workspace: &Path) -> anyhow::Result<i32> {
    let cwd = match &args.cwd {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let cwd = fs::canonicalize(&cwd).with_context(|| format!("resolving {}", cwd.display()))?;
    let env = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {kv:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut first_failure = 0;
    for kernel in kernels(&args.kernel)? {
        let guest = Guest {
            kernel,
            command: &args.command,
            cwd: &cwd,
            env: &env,
            timeout: Duration::from_secs(args.timeout),
        };
        let code = run(workspace, &guest)?;
        if first_failure == 0 {
            first_failure = code;
        }
    }
    Ok(first_failure)
}

/// Boots `guest.kernel`, runs the command with its output streamed to
/// stdout, and returns the command's exit code.
pub fn run(workspace: &Path, guest: &Guest) -> anyhow::Result<i32> {
    ensure_tools()?;
    let cache = target_dir(workspace).join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let kernel = kernel::fetch(&cache, guest.kernel)?;
    // Per process and kernel: the guests of one run may boot side by side.
    let scratch = cache.join(format!("run-{}-{}", std::process::id(), guest.kernel));
    fs::create_dir_all(&scratch)?;
    let result = initramfs::build(&scratch, &kernel, &command_script(guest), workspace)
        .and_then(|initrd| boot(&kernel, &initrd, guest.kernel, guest.timeout));
    if let Err(e) = fs::remove_dir_all(&scratch) {
        eprintln!("xtask: vm: leaving {}: {e}", scratch.display());
    }
    result.with_context(|| format!("guest kernel {}", kernel.release))
}

/// Downloads and unpacks `series` into the cache if it is not there: one
/// at a time (apt is not shared safely), before guests boot side by side.
pub fn prefetch(workspace: &Path, series: &str) -> anyhow::Result<()> {
    ensure_tools()?;
    let cache = target_dir(workspace).join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    kernel::fetch(&cache, series).map(drop)
}

fn ensure_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = VM_TOOLS
        .iter()
        .filter(|(cmd, _)| !crate::have(cmd))
        .map(|&(_, pkg)| pkg)
        .collect();
    // A dynamic busybox would find no libc in the initramfs.
    if !installed("busybox-static") {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing packages, and not root: apt-get install {}",
            missing.join(" ")
        );
    }
    crate::apt_install(&missing)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// The script /init runs: a clean environment, then the command in the
/// host's root at `cwd`.
fn command_script(guest: &Guest) -> String {
    let mut words = vec!["exec".to_string(), "/bin/env".into(), "-i".into()];
    let base = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("RUST_BACKTRACE", "1"),
    ];
    // The tests are stricter under CI (no skipping): the guest's must be too.
    let ci = std::env::var("CI").ok().map(|v| ("CI".to_string(), v));
    let env = base
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(ci.iter().chain(guest.env).map(|(k, v)| format!("{k}={v}")));
    words.extend(env.map(|kv| initramfs::quote(&kv)));
    words.extend(
        [
            "/bin/chroot",
            "/newroot",
            "/bin/sh",
            "-c",
            r#"cd "$0" && exec "$@""#,
        ]
        .map(initramfs::quote),
    );
    words.push(initramfs::quote(&guest.cwd.to_string_lossy()));
    words.extend(guest.command.iter().map(|w| initramfs::quote(w)));
    words.join(" ") + "\n"
}

fn boot(
    kernel: &kernel::Kernel,
    initrd: &Path,
    tag: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let mut qemu = qemu(kernel, initrd)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let lines = console_lines(&mut qemu)?;
    let outcome = watch(&lines, started, tag, timeout);
    if outcome.is_err() {
        // Still running after a timeout; harmless if it already exited.
        let _ = qemu.kill();
    }
    let status = qemu.wait().context("waiting for qemu")?;
    let console = outcome?;
    let total = started.elapsed().as_secs_f64();
    match console.exit {
        Some(code) => {
            eprintln!(
                "xtask: vm: {}: exit {code} after {total:.1} s",
                kernel.release
            );
            Ok(code)
        }
        None => bail!(
            "the guest ended without reporting an exit code (qemu {status}, {total:.1} s); \
             last console lines:\n{}",
            console.tail()
        ),
    }
}

fn qemu(kernel: &kernel::Kernel, initrd: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // One host thread runs both vCPUs in turn: with a thread each, the
    // kernel's live patching of its own text (static keys flipped as
    // tracepoints attach) raced under emulation and a 6.12 guest died on a
    // stray int3 in syscall exit.
    cmd.args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=1",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-rng-pci",
        ])
        // qemu would otherwise read the terminal as the guest's serial input.
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// The console's lines, CRs stripped, as they arrive.
fn console_lines(qemu: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let stdout = qemu.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || forward_lines(stdout, &tx));
    Ok(rx)
}

fn forward_lines(stdout: impl Read, tx: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        let line = String::from_utf8_lossy(&buf).replace('\r', "");
        if tx.send(line.trim_end_matches('\n').to_string()).is_err() {
            return;
        }
        buf.clear();
    }
}

/// What the console showed: the exit marker, and the last lines for errors.
#[derive(Default)]
struct Console {
    /// Put before each line of the command's: guests may run side by side.
    tag: String,
    /// Set between the start and the exit marker: the command's own output.
    streaming: bool,
    exit: Option<i32>,
    last: VecDeque<String>,
}

impl Console {
    /// Prints the command's lines; firmware and kernel lines are only kept
    /// for an error's tail.
    fn take(&mut self, line: String, started: Instant) {
        // SeaBIOS leaves escape codes without a newline before /init's first line.
        if line.ends_with(START_MARKER) {
            let boot = started.elapsed().as_secs_f64();
            eprintln!("xtask: vm {}: booted in {boot:.1} s", self.tag);
            self.streaming = true;
            return;
        }
        if let Some(code) = line.strip_prefix(EXIT_MARKER) {
            self.exit = code.trim().parse().ok();
            self.streaming = false;
            return;
        }
        if self.streaming {
            println!("[{}] {line}", self.tag);
        }
        if self.last.len() == TAIL_LINES {
            self.last.pop_front();
        }
        self.last.push_back(plain(&line));
    }

    fn tail(&self) -> String {
        self.last.iter().map(|l| format!("  {l}\n")).collect()
    }
}

/// `line` without terminal escapes (SeaBIOS resets the terminal with them).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
        } else if chars.next() == Some('[') {
            // A CSI sequence ends at its first letter-like byte.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Streams the console until qemu closes it or `timeout` passes.
fn watch(
    lines: &mpsc::Receiver<String>,
    started: Instant,
    tag: &str,
    timeout: Duration,
) -> anyhow::Result<Console> {
    let deadline = started + timeout;
    let mut console = Console {
        tag: tag.into(),
        ..Default::default()
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => console.take(line, started),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(console),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "timed out after {} s; qemu killed; last console lines:\n{}",
                timeout.as_secs(),
                console.tail()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_script_quotes_every_word() {
        let command = ["echo".to_string(), "it's".into()];
        let env = [("CI".to_string(), "true".to_string())];
        let guest = Guest {
            kernel: "6.1",
            command: &command,
            cwd: Path::new("/work/a b"),
            env: &env,
            timeout: Duration::from_secs(1),
        };
        let script = command_script(&guest);
        assert!(script.starts_with("exec /bin/env -i 'PATH=/usr/local/sbin:"));
        assert!(script.contains(" 'CI=true' '/bin/chroot' '/newroot' '/bin/sh' '-c' "));
        assert!(script.ends_with("'/work/a b' 'echo' 'it'\\''s'\n"));
    }

    #[test]
    fn plain_drops_the_firmware_escapes() {
        assert_eq!(plain("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS"), "SeaBIOS");
        assert_eq!(plain("no escapes"), "no escapes");
    }

    #[test]
    fn kernels_expand_all() {
        assert_eq!(kernels("all").unwrap(), ["6.1", "6.12"]);
        assert_eq!(kernels("6.12").unwrap(), ["6.12"]);
        assert!(kernels("5.15").is_err());
    }
}
