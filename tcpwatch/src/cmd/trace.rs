//! `tcpwatch trace`: every transition, as text columns or JSON lines, and at
//! the end the accounting of what was delivered, dropped and skipped.
use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tcpwatch::{
    core::{
        chains::Chains,
        config::Config,
        model::{Accounting, Transition},
        view::trace::{Filter, TextColumns, push_json_line},
    },
    daemon::{
        LastCensuses, checkable, last_censuses,
        sampler::{Sampler, Scope},
    },
    host::clock::wall_clock,
    probe::{capture::Capture, loader::LoadOptions},
};

use crate::cmd::output::{Output, OutputStats};
use tcpwatch_common::TcpState;

use crate::{
    ProbeArgs,
    cmd::{Stop, target::Target},
};

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// JSON lines, one object per transition (stable field names).
    #[arg(long)]
    json: bool,
    /// Only transitions with this local or remote port (repeatable, or comma-separated).
    #[arg(short, long, value_delimiter = ',')]
    port: Vec<u16>,
    /// Only this local port (as tcpstates -L).
    #[arg(short = 'L', long, value_delimiter = ',')]
    lport: Vec<u16>,
    /// Only this remote port (as tcpstates -D).
    #[arg(short = 'D', long, value_delimiter = ',')]
    dport: Vec<u16>,
    /// Only sockets owned by this process id.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Only transitions into or out of this state (ss or kernel names: close-wait, TCP_SYN_SENT).
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    state: Vec<TcpState>,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    ipv4: bool,
    /// Only IPv6 sockets (v4-mapped peers on v6 sockets included).
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,
    /// Only this network namespace: inode number, /run/netns/NAME, NAME or /proc/PID/ns/net.
    /// Filtered in the kernel, so the counters cover only it too. Held
    /// open for the run; the run ends once nothing is left in it.
    #[arg(long)]
    netns: Option<String>,
    /// With --netns NAME: if it does not exist yet, wait for it (every
    /// namespace is captured meanwhile, so nothing of its first moments is
    /// lost; the counters then cover every namespace).
    #[arg(long, requires = "netns")]
    wait: bool,
    /// Flush every line, also to a pipe or file (otherwise they are
    /// flushed at least every 200 ms).
    #[arg(long)]
    line_buffered: bool,
    /// Stop after this many transitions are shown (at least 1).
    #[arg(short = 'c', long, value_parser = parse_count)]
    count: Option<u64>,
    /// Stop after this many seconds (at least 0.01).
    #[arg(short = 'd', long, value_name = "SECONDS", value_parser = super::daemon::parse_duration)]
    duration: Option<f64>,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

fn parse_state(s: &str) -> Result<TcpState, String> {
    TcpState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
        format!("unknown TCP state `{s}`; one of {}", names.join(", "))
    })
}

/// Events read from the ring buffer per wake-up, at most.
const BATCH: usize = 4096;

pub async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let mut target = Target::new(args.netns.as_deref(), args.wait).map_err(super::usage)?;
    let mut filter = Filter {
        ports: args.port.clone(),
        local_ports: args.lport.clone(),
        remote_ports: args.dport.clone(),
        pids: args.pid.clone(),
        states: args.state.clone(),
        ip_version: match (args.ipv4, args.ipv6) {
            (true, _) => Some(4),
            (_, true) => Some(6),
            _ => None,
        },
        netns: target.kernel_filter(),
    };
    if args.state.contains(&TcpState::TimeWait) {
        // Said, not refused: the filter also takes its other states.
        say!(
            "tcpwatch: note: no transition goes into or out of TIME-WAIT here (the kernel moves a closing socket to a TIME-WAIT minisocket after FIN-WAIT-2 -> CLOSE, without this tracepoint); `tcpwatch states` counts TIME-WAIT sockets"
        );
    }

    let mut capture = Capture::start(&LoadOptions {
        // trace prints transitions only: no signal program (the syscall
        // tracepoint's alone would tax every system call of every task).
        signals: false,
        ..args
            .probe
            .load_options(&Default::default(), target.kernel_filter())
    })
    .context("cannot start tracing")?;
    let clock = wall_clock();
    say!(
        "tcpwatch: tracing TCP state transitions via {}; Ctrl-C to stop",
        capture.hook()
    );
    let mut out: Output<Transition> = if args.json {
        Output::stdout(None, args.line_buffered, move |t, s| {
            push_json_line(s, t, &clock)
        })
    } else {
        let mut cols = TextColumns::new(args.ipv6);
        Output::stdout(Some(cols.header()), args.line_buffered, move |t, s| {
            s.extend_from_slice(cols.line(t, &clock).as_bytes())
        })
    };

    let mut stop = Stop::new(args.duration)?;
    if let Target::Waiting(w) = &target {
        say!(
            "tcpwatch: waiting for network namespace {} (capturing meanwhile)",
            w.spec()
        );
    }
    let mut arrival = match &target {
        Target::Waiting(w) => Some(w.watch()),
        _ => None,
    };
    // Whether the pinned namespace is gone, once a second.
    let mut look = tokio::time::interval(Duration::from_secs(1));

    let mut shown = Shown::new(args.count);
    let mut batch = Vec::with_capacity(BATCH);
    while !shown.done() {
        tokio::select! {
            _ = stop.wait() => break,
            // The reader went away or the output failed: nothing more to do.
            _ = out.ended() => break,
            r = capture.next_batch(&mut batch, BATCH) => {
                r.context("reading the ring buffer")?;
                if let Target::Waiting(w) = &mut target {
                    shown.filtered += w.hold(&mut batch);
                } else if !out.send(shown.take(&filter, &mut batch)) {
                    break; // stdout closed
                }
            }
            r = async { arrival.as_mut().expect("checked").await }, if arrival.is_some() => {
                arrival = None;
                // The watcher only ends without a namespace when told to.
                let Ok(pinned) = r else { continue };
                let Target::Waiting(w) = &mut target else { unreachable!("only a wait has an arrival") };
                say!(
                    "tcpwatch: network namespace {} is here (inode {}): tracing it",
                    w.spec(),
                    pinned.inode
                );
                let mut held = w.take_held();
                shown.wait_dropped = w.overflow;
                filter.netns = Some(pinned.inode);
                target = Target::Pinned(Arc::new(pinned));
                if !out.send(shown.take(&filter, &mut held)) {
                    break;
                }
            }
            _ = look.tick(), if matches!(target, Target::Pinned(_)) => {
                if let Target::Pinned(p) = &target && p.gone() {
                    say!("tcpwatch: network namespace {} is gone: no name, process or socket is left in it", p.spec);
                    break;
                }
            }
        }
    }
    // A socket whose last transitions the kernel lost stays open to the
    // follower: two censuses at the stop of the namespaces in scope with
    // sockets followed open name it. Not when nobody reads any more, nor
    // while still waiting for the namespace (none of it is in scope); a
    // second signal cuts them short.
    let scope = match &target {
        _ if out.is_ended() => None,
        Target::All => Some(Scope::All {
            max: Config::default().limits.max_netns,
        }),
        Target::Pinned(p) => Some(Scope::One(p.clone())),
        Target::Waiting(_) => None,
    };
    let mut last = LastCensuses {
        rounds: Vec::new(),
        missed: 0,
    };
    if let Some(scope) = scope {
        last = last_censuses(
            &mut capture,
            move || Some(Sampler::new(scope, u32::MAX)),
            |c| {
                c.drain_now(&mut batch);
                out.send(shown.take(&filter, &mut batch));
                Ok(())
            },
            stop.signal(),
        )
        .await?;
    }
    // Whatever arrived before the probe was detached is delivered (and, past
    // --count, counted as not shown).
    capture.stop(&mut batch).await?;
    if let Target::Waiting(w) = &mut target {
        // Nothing was in scope: what came, was held or did not fit in the
        // hold is filtered, not lost.
        say!("tcpwatch: network namespace {} never appeared", w.spec());
        shown.filtered += w.hold(&mut batch);
        shown.filtered += w.take_held().len() as u64 + w.overflow;
    }
    let late = shown.take(&filter, &mut batch);
    out.send(late);
    // The stop's censuses, in the order taken, once followed past (a stop
    // that gave up reading leaves the rest unchecked: naming would guess).
    let (rounds, unchecked) = checkable(&capture, last.rounds);
    for round in &rounds {
        shown.vanished += capture.vanished(round).len() as u64;
    }
    shown.censuses_missed = last.missed + unchecked;
    let counters = capture.counters()?;
    let accounting = counters.summary();
    let output = out.finish(Duration::from_secs(5));
    report(
        &accounting,
        capture.delivered(),
        capture.malformed(),
        capture.witness_unavailable().as_deref(),
        &shown,
        &output,
    );
    // A transition the kernel skipped or never ran the programs for is a
    // failure of the run's promise, even though everything else completed;
    // then an output that closed (141, as a tool killed by SIGPIPE) or
    // failed (1).
    Ok(
        if accounting.promise_broken()
            || shown.wait_dropped > 0
            || shown.unexplained_breaks(&accounting, capture.malformed()) > 0
        {
            ExitCode::from(3)
        } else if output.closed_pipe {
            ExitCode::from(super::EXIT_CLOSED_PIPE)
        } else if output.closed.is_some() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// Applies the filter and `--count`, remembering how many were filtered out.
struct Shown {
    limit: Option<u64>,
    shown: u64,
    filtered: u64,
    over_count: u64,
    /// Held while waiting for `--netns` and dropped (the hold was full).
    wait_dropped: u64,
    /// Whether the kernel's early SYN-RECV (no peer yet) was explained.
    peer_unset_said: bool,
    /// Sockets' chains of transitions: a break names a lost one.
    chains: Chains,
    /// Sockets the stop's censuses did not show while the follower had
    /// them open: their last transitions were lost.
    vanished: u64,
    /// The stop's censuses not taken or not checked.
    censuses_missed: usize,
}

impl Shown {
    fn new(limit: Option<u64>) -> Self {
        Shown {
            limit,
            shown: 0,
            filtered: 0,
            over_count: 0,
            wait_dropped: 0,
            peer_unset_said: false,
            chains: Chains::default(),
            vanished: 0,
            censuses_missed: 0,
        }
    }

    /// Chain breaks and vanished sockets the ring buffer's own counted
    /// drops do not explain (a dropped close leaves its socket to vanish):
    /// transitions lost before any program counted them.
    fn unexplained_breaks(&self, a: &Accounting, malformed: u64) -> u64 {
        (self.chains.breaks + self.vanished)
            .saturating_sub(a.ringbuf_full + a.read_failed + malformed)
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.shown >= l)
    }

    fn take(&mut self, filter: &Filter, batch: &mut Vec<Transition>) -> Vec<Transition> {
        let mut keep = Vec::with_capacity(batch.len());
        for t in batch.drain(..) {
            // Every transition in scope, shown or not, continues its chain.
            if filter.netns.is_none_or(|n| t.netns == Some(n)) {
                self.chains.follow(&t);
            }
            if !filter.matches(&t) {
                self.filtered += 1;
            } else if self.done() {
                self.over_count += 1;
            } else {
                if t.peer_unset() && !self.peer_unset_said {
                    self.peer_unset_said = true;
                    say!(
                        "tcpwatch: note: this kernel moves a passive socket to SYN-RECV before setting its addresses: that line shows its listener's address and no peer; its next transitions show both"
                    );
                }
                self.shown += 1;
                keep.push(t);
            }
        }
        keep
    }
}

fn report(
    a: &Accounting,
    delivered: u64,
    malformed: u64,
    no_witness: Option<&str>,
    shown: &Shown,
    out: &OutputStats,
) {
    say!(
        "tcpwatch: {} transitions counted in the kernel: {} delivered, {} dropped (ring buffer full)",
        a.counted,
        delivered,
        a.ringbuf_full
    );
    say!(
        "tcpwatch: {} written, {} dropped because output was slow or closed, {} filtered out, {} past --count",
        out.written,
        out.dropped,
        shown.filtered,
        shown.over_count
    );
    if a.has_catcher {
        say!(
            "tcpwatch: the kernel skipped the main program {} times (nested runs); the catcher handled {}; {} lost",
            a.kernel_skipped,
            a.caught,
            a.unrecovered
        );
    } else {
        say!(
            "tcpwatch: the kernel skipped the program {} times (nested runs): those transitions are lost and unknown",
            a.kernel_skipped
        );
    }
    match no_witness {
        None => say!(
            "tcpwatch: a perf counter of the tracepoint saw {} firings the kernel ran no program for: {}",
            a.not_run,
            if a.not_run == 0 {
                "none lost"
            } else {
                "those transitions are lost (of any namespace and port: the counter cannot filter)"
            }
        ),
        Some(why) => say!(
            "tcpwatch: no perf counter of the tracepoint ({why}): firings the kernel runs no program for would go uncounted"
        ),
    }
    if a.double_counted > 0 {
        say!(
            "tcpwatch: {} transitions may have been counted twice",
            a.double_counted
        );
    }
    if a.read_failed + a.map_update_failed + malformed > 0 {
        say!(
            "tcpwatch: {} kernel reads failed, {} owner-map updates failed, {} malformed records",
            a.read_failed,
            a.map_update_failed,
            malformed
        );
    }
    if shown.censuses_missed > 0 {
        say!(
            "tcpwatch: {} of the stop's censuses were not taken or not checked (a namespace gone or not enterable, their 5 s limit, a second signal): a socket there whose last transitions were lost goes unnamed",
            shown.censuses_missed
        );
    }
    let named = shown.chains.breaks + shown.vanished;
    super::say_named_losses(
        shown.chains.breaks,
        shown.vanished,
        named - shown.unexplained_breaks(a, malformed),
    );
    if shown.wait_dropped > 0 {
        say!(
            "tcpwatch: {} transitions of namespaces made during the wait were dropped (more than could be held): some may have been the awaited one's",
            shown.wait_dropped
        );
    }
    if let Some(e) = &out.closed {
        say!("tcpwatch: output closed early: {e}");
    }
    // One machine-readable line for scripts and tests.
    say!(
        "tcpwatch-accounting: counted={} emitted={} delivered={} ringbuf_dropped={} written={} output_dropped={} filtered={} wait_dropped={} kernel_skipped={} caught={} unrecovered={} not_run={} witness={} double_counted={} nested={} malformed={} chain_breaks={} chain_untracked={} sockets_vanished={} bpf_run_time_ns={} bpf_run_cnt={}",
        a.counted,
        a.emitted,
        delivered,
        a.ringbuf_full,
        out.written,
        out.dropped,
        shown.filtered,
        shown.wait_dropped,
        a.kernel_skipped,
        a.caught,
        a.unrecovered,
        a.not_run,
        u8::from(a.has_witness),
        a.double_counted,
        a.nested,
        malformed,
        shown.chains.breaks,
        shown.chains.untracked,
        shown.vanished,
        a.bpf_run_time_ns,
        a.bpf_run_cnt
    );
}

/// `-c`: a count of transitions, at least 1 (0 would stop before the first,
/// as `-d 0` would; both are usage errors).
fn parse_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a count of transitions (1 or more)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vanished_sockets_fail_the_run_unless_counted_drops_explain_them() {
        let mut shown = Shown::new(None);
        shown.vanished = 2;
        let mut a = Accounting::default();
        assert_eq!(shown.unexplained_breaks(&a, 0), 2);
        // A dropped close leaves its socket to vanish: drops explain it.
        a.ringbuf_full = 1;
        assert_eq!(shown.unexplained_breaks(&a, 0), 1);
        assert_eq!(shown.unexplained_breaks(&a, 1), 0);
    }
}
