//! `cargo xtask bench`: what tracing costs the traced, and whether anything
//! is lost, next to the tools users would run instead. One run, one machine,
//! configurations interleaved round by round so drift hits all alike.
//!
//! Each run: a load generator (loadgen.rs) in a fresh namespace waits; the
//! tracer is started on that namespace and waited for; the load runs; the
//! tracer's CPU time and peak RSS are read from /proc; the tracer is
//! stopped and its own account read from its last stderr line.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Under two minutes: 3 rounds of 20,000 connections, no scaling curve.
    #[arg(long)]
    quick: bool,
    /// Install and include the peer tracers (Debian's libbpf-tools and bpfcc-tools) and
    /// a count-only bpftrace program (the floor of any tracer on this tracepoint).
    #[arg(long)]
    peers: bool,
    /// Rounds (default 3 quick, 5 full).
    #[arg(long)]
    rounds: Option<usize>,
    /// Connections per run (default 20,000 quick, 50,000 full).
    #[arg(long)]
    connections: Option<u64>,
    /// Exit non-zero if a tcpwatch configuration loses a transition, named or not.
    #[arg(long)]
    check_loss: bool,
}

#[derive(Clone, Debug)]
struct Config {
    name: &'static str,
    /// argv; "{ns}" is the load's namespace path, "{out}" an output file.
    argv: Vec<String>,
    /// A stderr line that says the tracer is attached.
    ready: Option<&'static str>,
    /// Seconds to wait instead, for tracers that do not say.
    ready_wait: f64,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    None,
    Tcpwatch,
    Peer,
    /// A program that only counts transitions in a map and prints the map
    /// at exit: what any tracer on this hook costs at least.
    Counter,
}

/// `kernel.bpf_stats_enabled`, restored on drop. Statistics cost every
/// program run two clock reads (a paravirtual clock read is tens of ns in
/// a VM), so throughput is measured with them off, as in production, and
/// the in-kernel cost in a separate pass with them on.
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn take() -> anyhow::Result<BpfStats> {
        let old = std::fs::read_to_string(Self::PATH)?.trim().to_string();
        Ok(BpfStats(old))
    }

    fn set(&self, on: bool) -> anyhow::Result<()> {
        std::fs::write(Self::PATH, if on { "1" } else { "0" }).context("setting bpf_stats")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted after the comm.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of the process's main thread, in ns (for tcpwatch, the event
/// loop; the census runs on other threads).
fn main_thread_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `run_time_ns` and `run_cnt` summed over the BPF programs a process holds
/// open (from each fd's fdinfo): the in-kernel cost of any tracer, ours or
/// a peer, when `kernel.bpf_stats_enabled` is on.
fn bpf_prog_stats(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return total;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        let field = |k: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("run_time_ns:");
        total.1 += field("run_cnt:");
    }
    total
}

/// What a count-only program printed at exit: tcpwatch's floor line, or
/// bpftrace's map.
fn counter_total(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("tcpwatch-floor: counted=")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| bpftrace_map_total(out))
}

/// The events a peer reported lost ("lost 12 events on CPU #1" lines).
fn peer_reported_lost(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("lost ")?;
            let (n, tail) = rest.split_once(' ')?;
            tail.starts_with("events").then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

/// CPU time spent by the whole machine so far (every CPU, all but idle and
/// iowait), in ns: what tracing costs beyond its programs' own statistics
/// (dispatch, perf records, the tracer's process) shows here. /proc/stat's
/// ticks, so 10 ms grains.
fn busy_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some((busy as f64 / clk_tck() * 1e9) as u64)
}

/// The sum of the counts bpftrace prints for a map at exit (`@[a, b]: n`).
fn bpftrace_map_total(out: &str) -> u64 {
    out.lines()
        .filter(|l| l.starts_with('@'))
        .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
        .sum()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// `key=value` pairs of a `tcpwatch-accounting:` line.
fn accounting(stderr: &str) -> BTreeMap<String, u64> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("tcpwatch-accounting: "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Load {
    child: Child,
    path: String,
    stdout: BufReader<std::process::ChildStdout>,
}

/// A load never outlives its run: one left behind would run into the next
/// configuration's measurement.
impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_load(xtask: &Path, extra: &[String]) -> anyhow::Result<Load> {
    let mut child = Command::new(xtask)
        .arg("loadgen")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("loadgen said {line:?}"))?;
    Ok(Load {
        child,
        path: v["netns_path"].as_str().unwrap_or_default().to_string(),
        stdout,
    })
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

type Stderr = std::sync::mpsc::Receiver<String>;

fn start_tracer(c: &Config, ns: &str, out: &Path) -> anyhow::Result<(Child, Stderr)> {
    let argv: Vec<String> = c
        .argv
        .iter()
        .map(|a| {
            a.replace("{ns}", ns)
                .replace("{out}", &out.display().to_string())
        })
        .collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if matches!(c.kind, Kind::Peer | Kind::Counter) || c.name.contains("trace") {
        cmd.stdout(Stdio::from(std::fs::File::create(out)?));
    } else {
        cmd.stdout(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))?;
    let mut err = child.stderr.take().unwrap();
    let mut seen = String::new();
    if let Some(ready) = c.ready {
        let mut byte = [0u8; 1];
        while !seen.contains(ready) {
            if err.read(&mut byte)? == 0 {
                bail!("{} exited before it was ready:\n{seen}", c.name);
            }
            seen.push(byte[0] as char);
        }
    }
    std::thread::sleep(Duration::from_secs_f64(c.ready_wait));
    if let Some(st) = child.try_wait()? {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        let last = rest.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        bail!("{} exited before the load ({st}): {seen}{last}", c.name);
    }
    // Drain the rest on a thread; the account comes at exit.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    Ok((child, rx))
}

/// `tcpwatch top` sessions in real terminals (tmux), subscribed to a
/// daemon's control socket for as long as this lives.
struct TopClients(Vec<String>);

impl TopClients {
    fn start(tcpwatch: &Path, socket: &str, n: usize) -> anyhow::Result<TopClients> {
        let mut t = TopClients(Vec::new());
        for i in 0..n {
            let server = format!("tcpwatch-bench-{}-{i}", std::process::id());
            let st = Command::new("tmux")
                .args(["-L", &server, "-f", "/dev/null", "new-session", "-d"])
                .args(["-x", "120", "-y", "40"])
                .arg(format!("{} top --socket {socket}", tcpwatch.display()))
                .status()
                .context("tmux (cargo xtask setup installs it)")?;
            anyhow::ensure!(st.success(), "tmux new-session for top client {i}");
            t.0.push(server);
        }
        // Attached when each screen shows the daemon as its source (not
        // the in-process fallback, which would load a probe of its own).
        let deadline = Instant::now() + Duration::from_secs(10);
        for s in &t.0 {
            loop {
                let out = Command::new("tmux")
                    .args(["-L", s, "capture-pane", "-p"])
                    .output()?;
                let screen = String::from_utf8_lossy(&out.stdout);
                // The header names the source: "top · daemon at PATH", not
                // "in-process (no daemon at ...)" or "daemon lost".
                if screen.contains("top · daemon at ") && screen.contains("events ") {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "top client {s} never showed the daemon:\n{screen}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(t)
    }
}

impl Drop for TopClients {
    fn drop(&mut self) {
        for s in &self.0 {
            let _ = Command::new("tmux").args(["-L", s, "kill-server"]).status();
        }
    }
}

/// Extra work attached to a tracer while it runs.
#[derive(Clone, Copy)]
struct Attach<'a> {
    /// `top` clients on this control socket.
    top_clients: Option<(&'a Path, &'a str, usize)>,
}

const NOTHING: Attach<'static> = Attach { top_clients: None };

fn run_one(
    xtask: &Path,
    c: &Config,
    conns: u64,
    rate: Option<f64>,
    dir: &Path,
    attach: Attach,
) -> anyhow::Result<Value> {
    let mut load_args: Vec<String> = vec![
        "--wait".into(),
        "--connections".into(),
        conns.to_string(),
        "--max-seconds".into(),
        "60".into(),
    ];
    if let Some(r) = rate {
        load_args.extend(["--rate".into(), r.to_string()]);
    }
    let mut load = start_load(xtask, &load_args)?;
    let out = dir.join(format!("{}.out", c.name.replace(' ', "_")));
    let tracer = match c.kind {
        Kind::None => None,
        _ => Some(start_tracer(c, &load.path, &out)?),
    };
    let _clients = match attach.top_clients {
        Some((bin, socket, n)) => Some(TopClients::start(bin, socket, n)?),
        None => None,
    };
    let busy0 = busy_ns();
    let ticks0 = tracer.as_ref().and_then(|(t, _)| cpu_ticks(t.id()));
    let main0 = tracer.as_ref().and_then(|(t, _)| main_thread_ns(t.id()));
    writeln!(load.child.stdin.as_mut().unwrap())?;
    let mut line = String::new();
    load.stdout.read_line(&mut line)?;
    let result: Value =
        serde_json::from_str(&line).with_context(|| format!("loadgen result {line:?}"))?;
    let mut row = json!({
        "config": c.name,
        "conn_per_s": result["conn_per_s"],
        "completed": result["connections_completed"],
        "errors": result["errors"],
        "elapsed_s": result["elapsed_s"],
    });
    // Completed connections' transitions plus the listeners' own, less
    // each listener's CLOSE->LISTEN: the listeners are bound before the
    // load says it is ready (it reports their ports), so before the
    // tracer is attached.
    let expected = result["expected_transitions"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(result["listeners"].as_u64().unwrap_or(0));
    // Let the tracer drain what the load left in its buffers (and wait as
    // long without one, so the machine's CPU is read over alike windows).
    std::thread::sleep(Duration::from_millis(500));
    if let (Some(a), Some(b)) = (busy0, busy_ns()) {
        row["system_cpu_ns_per_transition"] = json!((b - a) as f64 / expected.max(1) as f64);
    }
    if let Some((mut t, rx)) = tracer {
        let elapsed = result["elapsed_s"].as_f64().unwrap_or(1.0);
        let ticks1 = cpu_ticks(t.id());
        if let (Some(a), Some(b)) = (ticks0, ticks1) {
            row["cpu_pct"] = json!((b - a) as f64 / clk_tck() / elapsed * 100.0);
        }
        if let (Some(a), Some(b)) = (main0, main_thread_ns(t.id())) {
            row["main_thread_cpu_pct"] = json!((b - a) as f64 / 1e9 / elapsed * 100.0);
        }
        row["rss_mib"] = json!(status_kib(t.id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0);
        row["peak_rss_mib"] = json!(status_kib(t.id(), "VmHWM:").unwrap_or(0) as f64 / 1024.0);
        let (prog_ns, prog_runs) = bpf_prog_stats(t.id());
        signal(&t, libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = t.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        row["expected"] = json!(expected);
        match c.kind {
            Kind::Tcpwatch => {
                let a = accounting(&stderr);
                let g = |k: &str| a.get(k).copied().unwrap_or(0);
                row["counted"] = json!(g("counted"));
                row["delivered"] = json!(g("delivered"));
                row["dropped"] = json!(g("ringbuf_dropped") + g("output_dropped"));
                row["kernel_skipped_uncaught"] = json!(g("unrecovered"));
                // Firings the kernel ran no program for, named by tcpwatch's
                // perf witness (any namespace; the load's nearly all).
                row["kernel_not_run"] = json!(g("not_run"));
                row["witness"] = json!(g("witness") == 1);
                row["lost_in_kernel"] = json!(g("unrecovered") + g("not_run"));
                // Losses named in scope per chain break and per vanished
                // socket, not per transition (a socket that lost its last
                // two is one): shown beside the unaccounted transitions,
                // never netted against them.
                row["losses_named"] = json!(g("chain_breaks") + g("sockets_vanished"));
                // Unaccounted: transitions that happened and that the
                // account does not name (neither delivered nor counted as
                // dropped, skipped or not run).
                let accounted =
                    g("delivered") + g("ringbuf_dropped") + g("unrecovered") + g("not_run");
                row["unaccounted"] = json!(expected.saturating_sub(accounted));
                // More accounted than happened (the witness is host-wide,
                // a double count): shown apart, never netted against a loss.
                row["surplus"] = json!(accounted.saturating_sub(expected));
                if g("bpf_run_cnt") > 0 {
                    row["kernel_ns_per_event"] =
                        json!(g("bpf_run_time_ns") as f64 / g("counted").max(1) as f64);
                }
                if a.is_empty() {
                    row["note"] = json!(format!("no account from the tracer: {stderr}"));
                }
            }
            Kind::Peer | Kind::Counter => {
                // Peers print one line per event (plus a header) and keep no
                // account: what they did not print is lost, silently. The
                // counter prints its map's counts.
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                let seen = if c.kind == Kind::Counter {
                    counter_total(&text)
                } else {
                    text.lines().count().saturating_sub(1) as u64
                };
                // What a peer says it lost itself (libbpf-tools: "lost N
                // events on CPU #c" on stderr) is named, not unaccounted.
                let named = peer_reported_lost(&stderr);
                row["delivered"] = json!(seen);
                row["lost_in_kernel"] = json!(named);
                row["unaccounted"] = json!(expected.saturating_sub(seen + named));
                row["surplus"] = json!((seen + named).saturating_sub(expected));
                if prog_runs > 0 {
                    // Their programs run once per transition on the host
                    // (the load's are nearly all of them).
                    row["kernel_ns_per_event"] = json!(prog_ns as f64 / prog_runs as f64);
                }
            }
            Kind::None => {}
        }
        let _ = std::fs::remove_file(&out);
    }
    Ok(row)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Census cost: `tcpwatch states` on a namespace holding `pairs` pairs
/// (2 sockets each), from its own debug log (census and owner scan apart).
fn census_cost(xtask: &Path, tcpwatch: &Path, sockets: u64) -> anyhow::Result<Value> {
    // One process holds at most ~9,000 pairs (the fd limit here is 20,000).
    let per = 5_000u64;
    let mut holders = Vec::new();
    let first = start_load(
        xtask,
        &[
            "--mode".into(),
            "hold".into(),
            "--connections".into(),
            (sockets / 2).min(per).to_string(),
            "--hold-seconds".into(),
            "120".into(),
        ],
    )?;
    let path = first.path.clone();
    holders.push(first);
    let mut left = (sockets / 2).saturating_sub(per);
    while left > 0 {
        let n = left.min(per);
        holders.push(start_load(
            xtask,
            &[
                "--mode".into(),
                "hold".into(),
                "--connections".into(),
                n.to_string(),
                "--hold-seconds".into(),
                "120".into(),
                "--join-netns".into(),
                path.clone(),
            ],
        )?);
        left -= n;
    }
    for h in &mut holders {
        let mut line = String::new();
        h.stdout.read_line(&mut line)?; // {"holding":N}
    }
    let mut best = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new(tcpwatch)
            .args(["states", "--json", "--netns", &path])
            .env("TCPWATCH_LOG", "debug")
            .output()?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let log = String::from_utf8_lossy(&out.stderr);
        let field = |k: &str| -> f64 {
            log.split(&format!("{k}="))
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        best = (
            best.0.min(field("census_ms")),
            best.1.min(field("owners_ms")),
            best.2.min(wall),
        );
    }
    let t = Instant::now();
    let ss = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(["ss", "-tan"])
        .output();
    let ss_ms = ss.ok().map(|_| t.elapsed().as_secs_f64() * 1e3);
    drop(holders);
    Ok(
        json!({"sockets": sockets, "census_ms": best.0, "owners_ms": best.1,
              "states_wall_ms": best.2, "ss_tan_ms": ss_ms}),
    )
}

/// Issue 5's targets against this run: how far each is, met or not.
fn targets_met(summary: &[Value], sustained: &Value) -> String {
    let get = |config: &str, k: &str| {
        summary
            .iter()
            .find(|s| s["config"] == config)
            .and_then(|s| s[k].as_f64())
    };
    let (d, t) = ("tcpwatch daemon", "tcpwatch trace --json");
    let rows: [(&str, Option<f64>, bool, f64); 8] = [
        (
            "daemon: ratio to no tracer ≥ 0.95",
            get(d, "ratio"),
            true,
            0.95,
        ),
        (
            "daemon: unaccounted (worst run, sustained included) = 0",
            get(d, "unaccounted_worst")
                .map(|w| w.max(sustained["unaccounted"].as_f64().unwrap_or(0.0))),
            false,
            0.0,
        ),
        (
            // Not one of the issue's targets as written ("unaccounted"),
            // but its point: a loss the account names is still a loss.
            "daemon: lost in the kernel, named (worst run, sustained included) = 0",
            get(d, "lost_in_kernel_worst")
                .map(|w| w.max(sustained["lost_in_kernel"].as_f64().unwrap_or(0.0))),
            false,
            0.0,
        ),
        (
            "daemon: kernel ns per transition ≤ 150",
            get(d, "kernel_ns_per_event"),
            false,
            150.0,
        ),
        (
            "daemon: CPU % of one core, sustained ≤ 5",
            sustained["cpu_pct"].as_f64(),
            false,
            5.0,
        ),
        (
            "daemon: RSS MiB, peak ≤ 30",
            get(d, "peak_rss_mib_max"),
            false,
            30.0,
        ),
        (
            "trace --json: ratio to no tracer ≥ 0.50",
            get(t, "ratio"),
            true,
            0.50,
        ),
        (
            "trace --json: unaccounted (worst run) = 0",
            get(t, "unaccounted_worst"),
            false,
            0.0,
        ),
    ];
    let mut md = String::from("\n| target (issue 5) | measured | met |\n|---|---|---|\n");
    for (what, v, at_least, bound) in rows {
        let (shown, met) = match v {
            Some(v) if v.is_finite() => (
                format!("{v:.2}"),
                if (at_least && v >= bound) || (!at_least && v <= bound) {
                    "yes"
                } else {
                    "no"
                },
            ),
            _ => ("–".into(), "–"),
        };
        md.push_str(&format!("| {what} | {shown} | {met} |\n"));
    }
    md
}

/// The floor's row, for issue 16's ratio target and the floor rows.
const FLOOR: &str = "tcpwatch floor: tp_btf, count only";

/// Issue 16's targets, those not already in issue 5's table: the daemon
/// within 5 % of the floor's ratio (measured in the same run), and
/// `trace --json` at 0.80 of the untraced rate.
fn issue16_targets(summary: &[Value]) -> String {
    let ratio = |config: &str| {
        summary
            .iter()
            .find(|s| s["config"] == config)
            .and_then(|s| s["ratio"].as_f64())
            .filter(|r| r.is_finite())
    };
    let floor = ratio(FLOOR);
    let within = |who: &str| match floor {
        Some(f) => format!(
            "{who}: ratio ≥ the floor's less 5 % ({f:.3} × 0.95 = {:.3})",
            f * 0.95
        ),
        None => format!("{who}: ratio ≥ the floor's less 5 % (no floor row)"),
    };
    let rows = [
        (
            within("daemon"),
            ratio("tcpwatch daemon"),
            floor.map(|f| f * 0.95),
        ),
        (
            within("daemon --counts-only"),
            ratio("tcpwatch daemon --counts-only"),
            floor.map(|f| f * 0.95),
        ),
        (
            within("daemon --counts-only --connect-hook off"),
            ratio("tcpwatch daemon --counts-only --connect-hook off"),
            floor.map(|f| f * 0.95),
        ),
        (
            "trace --json: ratio to no tracer ≥ 0.80".into(),
            ratio("tcpwatch trace --json"),
            Some(0.80),
        ),
    ];
    let mut md = String::from("\n| target (issue 16) | measured | met |\n|---|---|---|\n");
    for (what, v, bound) in rows {
        // Unrounded values are compared; three decimals shown, so a miss
        // by less than a thousandth reads as a tie, not as a met bound.
        let (shown, met) = match (v, bound) {
            (Some(v), Some(b)) => (format!("{v:.3}"), if v >= b { "yes" } else { "no" }),
            (Some(v), None) => (format!("{v:.3}"), "–"),
            _ => ("–".into(), "–"),
        };
        md.push_str(&format!("| {what} | {shown} | {met} |\n"));
    }
    md
}

pub fn run(args: BenchArgs, root: &Path) -> anyhow::Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 });
    let conns = args
        .connections
        .unwrap_or(if args.quick { 20_000 } else { 50_000 });
    let bin = root.join("target/release");
    let tcpwatch = bin.join("tcpwatch");
    let xtask = bin.join("xtask");
    let tw = tcpwatch.display().to_string();
    // Its own control socket, as in production, beside any running daemon.
    let control = std::env::temp_dir()
        .join(format!("tcpwatch-bench-{}.sock", std::process::id()))
        .display()
        .to_string();
    let daemon = |name: &'static str, extra: &[&str]| Config {
        name,
        argv: [
            tw.as_str(),
            "daemon",
            "--netns",
            "{ns}",
            "--metrics-addr",
            "127.0.0.1:0",
            "--control-socket",
            control.as_str(),
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect(),
        ready: Some("daemon up"),
        ready_wait: 0.2,
        kind: Kind::Tcpwatch,
    };
    // The daemon stays second: the sustained and paced runs use it.
    let mut configs = vec![
        Config {
            name: "no tracer",
            argv: vec![],
            ready: None,
            ready_wait: 0.0,
            kind: Kind::None,
        },
        daemon("tcpwatch daemon", &[]),
        Config {
            name: "tcpwatch trace --json",
            argv: vec![
                tw.clone(),
                "trace".into(),
                "--json".into(),
                "--netns".into(),
                "{ns}".into(),
            ],
            ready: Some("Ctrl-C"),
            ready_wait: 0.2,
            kind: Kind::Tcpwatch,
        },
        // What the perf witness costs: the same daemon without it.
        daemon("tcpwatch daemon --witness", &["--witness"]),
        // Counts per namespace and pair in the kernel, no socket followed.
        daemon("tcpwatch daemon --counts-only", &["--counts-only"]),
        // The same without a connect() program: what the syscall
        // tracepoint it takes on kernels that refuse fexit costs (where
        // fexit is allowed, the program runs per connect() only).
        daemon(
            "tcpwatch daemon --counts-only --connect-hook off",
            &["--counts-only", "--connect-hook", "off"],
        ),
        Config {
            name: FLOOR,
            argv: vec![tw.clone(), "floor".into()],
            ready: Some("floor: attached"),
            ready_wait: 0.0,
            kind: Kind::Counter,
        },
        // The least any in-kernel aggregation costs: a count per
        // namespace and state pair in a per-CPU hash, the socket read for
        // its namespace, no port, owner or catcher.
        Config {
            name: "tcpwatch floor --keyed: count per netns and pair",
            argv: vec![tw.clone(), "floor".into(), "--keyed".into()],
            ready: Some("floor: attached"),
            ready_wait: 0.0,
            kind: Kind::Counter,
        },
    ];
    if args.peers
        && (which("tcpstates").is_none()
            || which("tcpstates-bpfcc").is_none()
            || which("bpftrace").is_none())
    {
        crate::apt_install(&["libbpf-tools", "bpfcc-tools", "bpftrace"])?;
    }
    if let Some(p) = which("bpftrace").filter(|_| args.peers) {
        configs.push(Config {
            name: "bpftrace, count only",
            argv: vec![
                p.display().to_string(),
                "-e".into(),
                "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }"
                    .into(),
            ],
            ready: None,
            ready_wait: 3.0,
            kind: Kind::Counter,
        });
    }
    if let Some(p) = which("tcpstates").filter(|_| args.peers) {
        configs.push(Config {
            name: "libbpf-tools tcpstates",
            argv: vec![p.display().to_string()],
            ready: None,
            ready_wait: 2.0,
            kind: Kind::Peer,
        });
    }
    if let Some(p) = which("tcpstates-bpfcc").filter(|_| args.peers) {
        configs.push(Config {
            name: "BCC tcpstates",
            argv: vec![p.display().to_string()],
            ready: None,
            ready_wait: 8.0,
            kind: Kind::Peer,
        });
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let stats = BpfStats::take()?;
    stats.set(false)?;
    let started = Instant::now();
    let mut rows: Vec<Value> = Vec::new();
    for round in 0..rounds {
        // Each round starts one configuration later, so none always runs
        // first (a warm cache) or last (a drifting machine).
        for i in 0..configs.len() {
            let c = &configs[(i + round) % configs.len()];
            let row = match run_one(&xtask, c, conns, None, &dir, NOTHING) {
                Ok(row) => row,
                // A peer that cannot run here (BCC without kernel headers,
                // say) is reported, not fatal; our own configurations are.
                Err(e) if c.kind == Kind::Peer => {
                    json!({"config": c.name, "error": format!("{e:#}")})
                }
                Err(e) => return Err(e.context(format!("round {round}, {}", c.name))),
            };
            let mut row = row;
            row["round"] = json!(round);
            eprintln!("bench: round {} {:<24} {}", round + 1, c.name, row);
            rows.push(row);
        }
    }
    // The in-kernel cost: the same rounds of our configurations again, with
    // bpf_stats on (these runs count for loss too, not for throughput).
    // The peers too: their programs' statistics come from their fds.
    stats.set(true)?;
    for round in 0..rounds {
        for c in configs.iter().filter(|c| c.kind != Kind::None) {
            let mut row = match run_one(&xtask, c, conns, None, &dir, NOTHING) {
                Ok(row) => row,
                Err(e) if c.kind != Kind::Tcpwatch => {
                    json!({"config": c.name, "error": format!("{e:#}")})
                }
                Err(e) => return Err(e.context(format!("cost pass {round}, {}", c.name))),
            };
            row["pass"] = json!("cost");
            eprintln!("bench: cost {} {:<24} {}", round + 1, c.name, row);
            rows.push(row);
        }
    }
    stats.set(false)?;
    // The daemon under sustained full churn, ten times a round's
    // connections: long enough for the census to settle to its CPU budget,
    // which a ~1 s round cannot show (one census of a round's TIME-WAIT
    // sockets is several % of that second).
    let sustained = {
        let row = run_one(&xtask, &configs[1], conns * 10, None, &dir, NOTHING)?;
        eprintln!("bench: sustained {row}");
        row
    };
    // How the daemon's CPU grows with the transition rate: paced loads of
    // 10k, 50k and 100k transitions/s (10 per connection) for 5 s each.
    let mut scaling = Vec::new();
    let targets: &[u64] = if args.quick {
        &[100_000]
    } else {
        &[10_000, 50_000, 100_000]
    };
    for &tps in targets {
        let cps = tps as f64 / 10.0;
        let row = run_one(
            &xtask,
            &configs[1],
            (cps * 5.0) as u64,
            Some(cps),
            &dir,
            NOTHING,
        )?;
        eprintln!("bench: scaling {tps} transitions/s {row}");
        scaling.push(json!({
            "transitions_per_s": tps,
            "achieved_conn_per_s": row["conn_per_s"],
            "daemon_cpu_pct": row["cpu_pct"],
            "unaccounted": row["unaccounted"],
        }));
    }
    // What `top` costs the daemon: paced 100k transitions/s, with and
    // without five `top` sessions attached, in pairs whose order alternates.
    // 10 s runs: CPU comes from 10 ms ticks.
    let mut top_cost = Vec::new();
    for pair in 0..rounds.max(5) {
        let cps = 10_000.0;
        let mut both = [Value::Null, Value::Null];
        for step in 0..2 {
            let with = (pair + step) % 2 == 1;
            let attach = Attach {
                top_clients: with.then_some((tcpwatch.as_path(), control.as_str(), 5)),
            };
            let row = run_one(
                &xtask,
                &configs[1],
                (cps * 10.0) as u64,
                Some(cps),
                &dir,
                attach,
            )?;
            eprintln!("bench: top clients {} {row}", if with { 5 } else { 0 });
            both[usize::from(with)] = row;
        }
        top_cost.push(json!({
            "without": both[0]["cpu_pct"], "with_5": both[1]["cpu_pct"],
            "rss_mib_without": both[0]["rss_mib"], "rss_mib_with_5": both[1]["rss_mib"],
            "conn_per_s_without": both[0]["conn_per_s"], "conn_per_s_with_5": both[1]["conn_per_s"],
            "unaccounted": both[0]["unaccounted"].as_u64().unwrap_or(0) + both[1]["unaccounted"].as_u64().unwrap_or(0),
        }));
    }
    let census: Vec<Value> = if args.quick {
        vec![census_cost(&xtask, &tcpwatch, 10_000)?]
    } else {
        vec![
            census_cost(&xtask, &tcpwatch, 10_000)?,
            census_cost(&xtask, &tcpwatch, 100_000)?,
        ]
    };

    // Summary per configuration: medians, worst loss.
    let base = median(
        rows.iter()
            .filter(|r| r["config"] == "no tracer")
            .filter_map(|r| r["conn_per_s"].as_f64())
            .collect(),
    );
    let mut summary = Vec::new();
    let mut md = String::from(
        "| configuration | conn/s (median) | ratio, paired by round: median (min–max) | expected | delivered | dropped | lost in kernel, named (worst) | unaccounted / surplus (worst) | kernel ns/event (bpf_stats pass) | machine CPU ns/transition, + over no tracer (paired) | CPU % (main thread) | RSS MiB (peak) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut lost = false;
    for c in &configs {
        let all: Vec<&Value> = rows.iter().filter(|r| r["config"] == c.name).collect();
        let worst = all.iter().filter_map(|r| r["unaccounted"].as_u64()).max();
        let lost_worst = all
            .iter()
            .filter_map(|r| r["lost_in_kernel"].as_u64())
            .max();
        let named_worst = all.iter().filter_map(|r| r["losses_named"].as_u64()).max();
        let kernel_ns = median(
            all.iter()
                .filter(|r| r["pass"] == "cost")
                .filter_map(|r| r["kernel_ns_per_event"].as_f64())
                .collect(),
        );
        let rs: Vec<&Value> = all
            .iter()
            .copied()
            .filter(|r| r["pass"] != "cost")
            .collect();
        let m = |k: &str| median(rs.iter().filter_map(|r| r[k].as_f64()).collect());
        // Any loss in the load's namespace fails --check-loss, named or not.
        let dropped_worst = rs.iter().filter_map(|r| r["dropped"].as_u64()).max();
        if c.kind == Kind::Tcpwatch
            && (worst.unwrap_or(0) > 0
                || lost_worst.unwrap_or(0) > 0
                || dropped_worst.unwrap_or(0) > 0)
        {
            lost = true;
        }
        if let Some(err) = rs.iter().find_map(|r| r["error"].as_str()) {
            md.push_str(&format!(
                "| {} | did not run: {} |||||||||||\n",
                c.name,
                err.lines().next().unwrap_or_default()
            ));
            summary.push(json!({"config": c.name, "error": err}));
            continue;
        }
        let cps = m("conn_per_s");
        // Ratios paired by round: each run against the untraced run of its
        // own round, so slow drift of the machine cancels out.
        let paired: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let base_r = rows.iter().find(|b| {
                    b["config"] == "no tracer" && b["round"] == r["round"] && b["pass"] != "cost"
                })?;
                Some(r["conn_per_s"].as_f64()? / base_r["conn_per_s"].as_f64()?)
            })
            .collect();
        // The machine's CPU per transition, and over the untraced run of the
        // same round: what the tracer costs all told.
        let sys_over: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let base_r = rows.iter().find(|b| {
                    b["config"] == "no tracer" && b["round"] == r["round"] && b["pass"] != "cost"
                })?;
                Some(
                    r["system_cpu_ns_per_transition"].as_f64()?
                        - base_r["system_cpu_ns_per_transition"].as_f64()?,
                )
            })
            .collect();
        let sys_over = median(sys_over);
        let (lo, hi) = paired
            .iter()
            .fold((f64::NAN, f64::NAN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let ratio = median(paired.clone());
        let surplus_worst = rs.iter().filter_map(|r| r["surplus"].as_u64()).max();
        let s = json!({
            "config": c.name, "runs": rs.len(), "conn_per_s_median": cps,
            "ratio": ratio, "ratio_min": lo, "ratio_max": hi, "ratios": paired,
            "ratio_unpaired": cps / base, "surplus_worst": surplus_worst,
            "expected_median": m("expected"),
            "delivered_median": m("delivered"), "dropped_median": m("dropped"),
            "unaccounted_worst": worst, "lost_in_kernel_worst": lost_worst,
            "losses_named_worst": named_worst,
            "kernel_ns_per_event": kernel_ns,
            "system_cpu_ns_per_transition": m("system_cpu_ns_per_transition"),
            "system_cpu_ns_over_untraced": sys_over,
            "cpu_pct_median": m("cpu_pct"), "main_thread_cpu_pct_median": m("main_thread_cpu_pct"), "rss_mib_max": rs.iter().filter_map(|r| r["rss_mib"].as_f64()).fold(f64::NAN, f64::max),
            "peak_rss_mib_max": rs.iter().filter_map(|r| r["peak_rss_mib"].as_f64()).fold(f64::NAN, f64::max),
        });
        let f = |v: f64, p: usize| {
            if v.is_nan() {
                "–".to_string()
            } else {
                format!("{v:.p$}")
            }
        };
        let paired_text = format!("{} ({}–{})", f(ratio, 2), f(lo, 2), f(hi, 2));
        let loss_text = format!(
            "{} / {}{}",
            worst.map_or("–".into(), |w| w.to_string()),
            surplus_worst.map_or("–".into(), |w| w.to_string()),
            match named_worst {
                Some(n) if n > 0 => format!(" ({n} named by chain breaks or vanished sockets)"),
                _ => String::new(),
            }
        );
        let machine = format!(
            "{} (+{})",
            f(m("system_cpu_ns_per_transition"), 0),
            f(sys_over, 0)
        );
        let cpu = format!(
            "{} ({})",
            f(m("cpu_pct"), 1),
            f(m("main_thread_cpu_pct"), 1)
        );
        let rss = format!(
            "{} ({})",
            f(s["rss_mib_max"].as_f64().unwrap_or(f64::NAN), 1),
            f(s["peak_rss_mib_max"].as_f64().unwrap_or(f64::NAN), 1)
        );
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.name,
            f(cps, 0),
            paired_text,
            f(m("expected"), 0),
            f(m("delivered"), 0),
            f(m("dropped"), 0),
            lost_worst.map_or("–".into(), |w| w.to_string()),
            loss_text,
            f(kernel_ns, 0),
            machine,
            cpu,
            rss,
        ));
        summary.push(s);
    }
    md.push_str(
        "\nMachine CPU: every CPU's busy time (/proc/stat ticks, 10 ms grains) from the load's start until 0.5 s after its end (the tracer drained), per transition; in parentheses, more than the untraced run of the same round (median of the pairs): dispatch, perf and the tracer's process, which bpf_stats does not see.\nCPU %: the process, from /proc ticks (10 ms) over each ~0.5-1 s round, so coarse; in parentheses its main thread (tcpwatch's event loop), from schedstat (ns). The sustained run below is long enough for the ticks, and is the one the CPU target is read from.\n",
    );
    let pct = |v: &Value| v.as_f64().map_or("–".into(), |x| format!("{x:.1}"));
    md.push_str(&format!(
        "\n| daemon, sustained full churn | conn/s | CPU % of one core | event loop (main thread) | census and the rest | lost in kernel, named | unaccounted |\n|---|---|---|---|---|---|---|\n| {} connections in {:.1} s | {:.0} | {} | {} | {} | {} | {} |\n",
        sustained["completed"],
        sustained["elapsed_s"].as_f64().unwrap_or(f64::NAN),
        sustained["conn_per_s"].as_f64().unwrap_or(f64::NAN),
        pct(&sustained["cpu_pct"]),
        pct(&sustained["main_thread_cpu_pct"]),
        match (sustained["cpu_pct"].as_f64(), sustained["main_thread_cpu_pct"].as_f64()) {
            (Some(a), Some(b)) => format!("{:.1}", a - b),
            _ => "–".into(),
        },
        sustained["lost_in_kernel"],
        sustained["unaccounted"],
    ));
    md.push_str(&targets_met(&summary, &sustained));
    md.push_str(&issue16_targets(&summary));
    md.push_str("\n| paced load, transitions/s | achieved conn/s | daemon CPU % of one core | unaccounted |\n|---|---|---|---|\n");
    for r in &scaling {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {} |\n",
            r["transitions_per_s"],
            r["achieved_conn_per_s"].as_f64().unwrap_or(f64::NAN),
            r["daemon_cpu_pct"].as_f64().unwrap_or(f64::NAN),
            r["unaccounted"]
        ));
    }
    md.push_str("\n| 5 `top` clients, paced 100k transitions/s | daemon CPU % without | with | difference | RSS MiB without | with | unaccounted |\n|---|---|---|---|---|---|---|\n");
    for (i, r) in top_cost.iter().enumerate() {
        let g = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| pair {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {} |\n",
            i + 1,
            g("without"),
            g("with_5"),
            g("with_5") - g("without"),
            g("rss_mib_without"),
            g("rss_mib_with_5"),
            r["unaccounted"]
        ));
    }
    let diffs: Vec<f64> = top_cost
        .iter()
        .filter_map(|r| Some(r["with_5"].as_f64()? - r["without"].as_f64()?))
        .collect();
    md.push_str(&format!(
        "| median difference | | | {:+.1} (spread {:+.1} to {:+.1}) | | | |\n",
        median(diffs.clone()),
        diffs.iter().copied().fold(f64::INFINITY, f64::min),
        diffs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ));
    md.push_str("\n| census of | sock_diag ms | owner scan ms | `tcpwatch states` wall ms | `ss -tan` ms |\n|---|---|---|---|---|\n");
    for c in &census {
        md.push_str(&format!(
            "| {} sockets | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            c["sockets"],
            c["census_ms"].as_f64().unwrap_or(f64::NAN),
            c["owners_ms"].as_f64().unwrap_or(f64::NAN),
            c["states_wall_ms"].as_f64().unwrap_or(f64::NAN),
            c["ss_tan_ms"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = json!({
        "commit": commit, "quick": args.quick, "rounds": rounds, "connections": conns,
        "seconds": started.elapsed().as_secs_f64(),
        "summary": summary, "runs": rows, "census": census, "scaling": scaling,
        "sustained": sustained, "top_clients": top_cost,
    });
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let json_text = serde_json::to_string_pretty(&report)?;
    std::fs::write(dir.join(format!("bench-{stamp}.json")), &json_text)?;
    std::fs::write(dir.join("latest.json"), &json_text)?;
    std::fs::write(dir.join("latest.md"), &md)?;
    println!("{md}");
    println!(
        "bench: {rounds} rounds × {conns} connections in {:.0} s; JSON in {}",
        started.elapsed().as_secs_f64(),
        dir.join("latest.json").display()
    );
    if sustained["unaccounted"].as_u64().unwrap_or(0) > 0
        || sustained["lost_in_kernel"].as_u64().unwrap_or(0) > 0
    {
        lost = true;
    }
    if args.check_loss && lost {
        bail!("a tcpwatch configuration lost transitions (named or not)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_own_loss_reports_are_summed() {
        let err = "lost 12 events on CPU #1\nlost 3 events on CPU #0\nlost track of time\n";
        assert_eq!(peer_reported_lost(err), 15);
        assert_eq!(counter_total("tcpwatch-floor: counted=200002\n"), 200_002);
    }

    #[test]
    fn bpftrace_map_total_sums_the_printed_counts() {
        // What bpftrace 0.17 printed here at Ctrl-C for 5 connections.
        let out = "Attaching 1 probe...\n\n\n@[10, 7]: 1\n@[7, 10]: 1\n@[1, 8]: 5\n@[8, 9]: 5\n@[2, 1]: 5\n@[1, 4]: 5\n@[9, 7]: 5\n@[10, 3]: 5\n@[5, 7]: 5\n@[4, 5]: 5\n@[3, 1]: 5\n@[7, 2]: 5\n";
        assert_eq!(bpftrace_map_total(out), 52);
        assert_eq!(bpftrace_map_total("Attaching 1 probe...\n"), 0);
    }

    #[test]
    fn issue16_targets_hold_the_daemon_to_the_floor_of_the_same_run() {
        let summary = vec![
            json!({"config": FLOOR, "ratio": 0.94}),
            json!({"config": "tcpwatch daemon", "ratio": 0.90}),
            json!({"config": "tcpwatch trace --json", "ratio": 0.71}),
        ];
        let md = issue16_targets(&summary);
        assert!(
            md.contains(
                "| daemon: ratio ≥ the floor's less 5 % (0.940 × 0.95 = 0.893) | 0.900 | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| trace --json: ratio to no tracer ≥ 0.80 | 0.710 | no |"),
            "{md}"
        );
        // A configuration the run did not measure is not judged.
        assert!(
            md.contains("| daemon --counts-only: ratio ≥ the floor's less 5 % (0.940 × 0.95 = 0.893) | – | – |"),
            "{md}"
        );
        // Just under the bound (0.93 × 0.95 = 0.8835): not met.
        let under = [
            json!({"config": FLOOR, "ratio": 0.93}),
            json!({"config": "tcpwatch daemon", "ratio": 0.883}),
        ];
        let md = issue16_targets(&under);
        assert!(
            md.contains(
                "| daemon: ratio ≥ the floor's less 5 % (0.930 × 0.95 = 0.883) | 0.883 | no |"
            ),
            "{md}"
        );
        // No daemon row: nothing measured, nothing met.
        let md = issue16_targets(&summary[..1]);
        assert!(
            md.contains("| daemon: ratio ≥ the floor's less 5 % (0.940 × 0.95 = 0.893) | – | – |"),
            "{md}"
        );
        // Without a floor row the target cannot be judged: never "yes".
        let md = issue16_targets(&summary[1..]);
        assert!(
            md.contains("| daemon: ratio ≥ the floor's less 5 % (no floor row) | 0.900 | – |"),
            "{md}"
        );
    }

    #[test]
    fn targets_say_how_far_and_whether_met() {
        let summary = vec![
            json!({"config": "tcpwatch daemon", "ratio": 0.8, "unaccounted_worst": 0,
                   "lost_in_kernel_worst": 0,
                   "kernel_ns_per_event": 490.0, "peak_rss_mib_max": 24.0}),
            json!({"config": "tcpwatch trace --json", "ratio": 0.63, "unaccounted_worst": 3}),
        ];
        let md = targets_met(&summary, &json!({"cpu_pct": 6.5}));
        assert!(
            md.contains("| daemon: ratio to no tracer ≥ 0.95 | 0.80 | no |"),
            "{md}"
        );
        assert!(
            md.contains("| daemon: unaccounted (worst run, sustained included) = 0 | 0.00 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| daemon: CPU % of one core, sustained ≤ 5 | 6.50 | no |"),
            "{md}"
        );
        assert!(
            md.contains("| daemon: RSS MiB, peak ≤ 30 | 24.00 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| trace --json: ratio to no tracer ≥ 0.50 | 0.63 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| trace --json: unaccounted (worst run) = 0 | 3.00 | no |"),
            "{md}"
        );
        assert!(
            md.contains("| daemon: lost in the kernel, named (worst run, sustained included) = 0 | 0.00 | yes |"),
            "{md}"
        );
        // A loss in the sustained run counts against the daemon, named or not.
        let md = targets_met(
            &summary,
            &json!({"cpu_pct": 4.0, "unaccounted": 2, "lost_in_kernel": 2}),
        );
        assert!(
            md.contains("| daemon: unaccounted (worst run, sustained included) = 0 | 2.00 | no |"),
            "{md}"
        );
        assert!(
            md.contains("| daemon: lost in the kernel, named (worst run, sustained included) = 0 | 2.00 | no |"),
            "{md}"
        );
        assert!(
            md.contains("| daemon: CPU % of one core, sustained ≤ 5 | 4.00 | yes |"),
            "{md}"
        );
    }
}
