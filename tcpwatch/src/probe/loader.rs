//! Loads and attaches the eBPF programs, and turns every way that can fail
//! into one sentence a user can act on. The only module that chooses a hook;
//! [`crate::probe::capture`] takes the loaded object from here.
use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{ArrayOfMaps, MapData, RingBuf},
    programs::{
        BtfTracePoint, FExit, ProgramError, TracePoint, fexit::FExitLinkId,
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use tcpwatch_common::{HOOK_BTF, LAYOUT_VERSION, ProbeConfig};

use crate::probe::{lane::Lanes, layout};

/// The eBPF object built by build.rs from tcpwatch-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpwatch-probes"));

/// The same programs with fault injection, for tests only.
#[cfg(feature = "fault-injection")]
static FAULT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpwatch-probes-fault"));

/// The object to load: the test one only when a fault is asked for.
fn object_for(opts: &LoadOptions) -> &'static [u8] {
    #[cfg(feature = "fault-injection")]
    if opts.simulate_skip_every != 0 || opts.simulate_not_run_every != 0 {
        return FAULT_OBJECT;
    }
    let _ = opts;
    OBJECT
}

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
pub const TRACEFS: &str = "/sys/kernel/tracing";
const TP_FORMAT: &str = "events/sock/inet_sock_set_state/format";

/// Which kernel hook to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// BTF-typed tracepoint where the kernel has BTF, else the classic one.
    Auto,
    /// tp_btf/inet_sock_set_state with a catcher for recursion skips.
    Btf,
    /// The classic tracepoint sock:inet_sock_set_state (needs tracefs).
    Classic,
}

/// Where connect() calls that fail before a SYN are caught.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnectChoice {
    /// fexit on `inet_stream_connect` where the kernel allows it, else the
    /// `sys_exit_connect` tracepoint.
    #[default]
    Auto,
    /// The `sys_exit_connect` tracepoint (every system call of every task
    /// then takes the kernel's tracing path).
    Syscall,
    /// Not caught.
    Off,
}

/// What the loader was asked for.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub hook: HookChoice,
    /// Only this network namespace (inode number), filtered in the kernel.
    pub netns: Option<u32>,
    /// Each CPU's ring buffer size in bytes (rounded up to a power of two,
    /// at least one page); None: [`default_ring_bytes`].
    pub ring_bytes: Option<u32>,
    /// Show the verifier's log when a program is rejected.
    pub verbose: bool,
    /// Fault injection for tests: act as if the kernel skipped the main
    /// program every n-th run per CPU (0: never). Loads the test object.
    #[cfg(feature = "fault-injection")]
    pub simulate_skip_every: u32,
    /// Fault injection for tests: act as if the kernel never ran the
    /// programs for every n-th armed firing per CPU (0: never). Loads the
    /// test object.
    #[cfg(feature = "fault-injection")]
    pub simulate_not_run_every: u16,
    /// Count the tracepoint's firings with a perf counter beside the
    /// programs (see `crate::probe::witness`).
    pub witness: bool,
    /// The counts-only mode: one program counts transitions per namespace
    /// and pair in the kernel and sends no event (BTF hook only).
    pub counts_only: bool,
    /// The signal programs (resets, SYN-ACK retransmits, connect()
    /// failures), for a run that reads their counters (not `trace`).
    pub signals: bool,
    pub connect: ConnectChoice,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            hook: HookChoice::Auto,
            netns: None,
            ring_bytes: None,
            verbose: false,
            #[cfg(feature = "fault-injection")]
            simulate_skip_every: 0,
            #[cfg(feature = "fault-injection")]
            simulate_not_run_every: 0,
            witness: false,
            counts_only: false,
            signals: true,
            connect: ConnectChoice::Auto,
        }
    }
}

/// The hook actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Btf,
    Classic,
}

impl Hook {
    /// A label value: "tp_btf" or "tracepoint".
    pub fn short(self) -> &'static str {
        match self {
            Hook::Btf => "tp_btf",
            Hook::Classic => "tracepoint",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Btf => "tp_btf/inet_sock_set_state (+ catcher)",
            Hook::Classic => "tracepoint/sock/inet_sock_set_state",
        })
    }
}

/// Why loading failed. Each variant's message is meant to be shown as is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "tcpwatch needs CAP_BPF and CAP_PERFMON (or root) to load its eBPF programs: \
         run it as root (sudo tcpwatch ...) or grant them (setcap cap_bpf,cap_perfmon+ep $(which tcpwatch))"
    )]
    NotPermitted,
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}): \
         mount it with `mount -t tracefs nodev {TRACEFS}`"
    )]
    NoTracefs(io::Error),
    #[error(
        "the kernel has no tracepoint sock:inet_sock_set_state ({0} is missing): \
         tcpwatch needs Linux >= 4.16 built with CONFIG_TRACEPOINTS"
    )]
    NoTracepoint(PathBuf),
    #[error(
        "the kernel's BTF cannot be used ({0}); run with --hook classic, or --hook auto to fall back"
    )]
    Btf(layout::LayoutError),
    #[error("unexpected layout of tracepoint sock:inet_sock_set_state, refusing to guess: {0}")]
    Format(layout::LayoutError),
    #[error("the kernel rejected program {program}: {summary}{log}")]
    Verifier {
        program: &'static str,
        summary: String,
        log: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{what}")]
    Other {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LoadError {
    fn other(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        LoadError::Other {
            what: what.into(),
            source: Box::new(e),
        }
    }

    /// Process exit code for this failure (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            LoadError::NotPermitted => 77,
            LoadError::Usage(_) => 2,
            _ => 69,
        }
    }
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A BTF-typed tracepoint (tp_btf) on this kernel function's tracepoint.
    Btf { tracepoint: &'static str },
    /// A classic tracepoint (needs tracefs).
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// fexit on this kernel function (some kernels refuse any fexit
    /// program: then it is missing, whatever the reason).
    Fexit { function: &'static str },
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attach::Btf { tracepoint } => write!(f, "tp_btf/{tracepoint}"),
            Attach::Tracepoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            Attach::Fexit { function } => write!(f, "fexit/{function}"),
        }
    }
}

/// The programs that catch failed connect() calls, the preferred first.
const CONNECT_PROGRAMS: [&str; 2] = ["tcpwatch_connect_fexit", "tcpwatch_connect_exit"];

/// What a kernel without a program's hook means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMissing {
    /// Loading fails (the program is what tcpwatch is for).
    Fail,
    /// It is left out, said once in the log and kept in `Loaded::skipped`
    /// (programs that add signals, such as the detection tracepoints).
    Skip,
}

/// A program's check before attaching: why it could do nothing here.
pub type Check = fn(&ProbeConfig) -> Result<(), String>;

/// One program of the object.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    pub name: &'static str,
    /// The hook mode it belongs to.
    pub hook: Hook,
    /// What it feeds.
    pub role: Role,
    pub attach: Attach,
    pub if_missing: IfMissing,
    /// Left out when this program attached: it does the same job at a
    /// cheaper hook, and this one is its fallback.
    pub unless: Option<&'static str>,
    /// Checked before attaching (the layout of what it reads in place, in
    /// the configuration or the hook's record): an error leaves it out as
    /// if its hook were missing, so a program that could do nothing is
    /// neither attached nor announced.
    pub check: Option<Check>,
}

/// What a program feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Transition events and their accounting (main program first).
    Transitions,
    /// The counts-only mode's program, in the transition programs' place.
    Counts,
    /// The in-kernel signal counters (resets, SYN-ACKs, early connect
    /// failures): optional, each left out where its hook is missing.
    Signals,
}

/// Every program, in attach order within a hook: the kernel runs a hook's
/// programs in that order, and the catcher must run after the program
/// whose skips it catches. Adding a program is a line here.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: "tcpwatch_main",
        hook: Hook::Btf,
        role: Role::Transitions,
        attach: Attach::Btf {
            tracepoint: "inet_sock_set_state",
        },
        if_missing: IfMissing::Fail,
        unless: None,
        check: None,
    },
    ProgramSpec {
        name: "tcpwatch_catch",
        hook: Hook::Btf,
        role: Role::Transitions,
        attach: Attach::Btf {
            tracepoint: "inet_sock_set_state",
        },
        if_missing: IfMissing::Fail,
        unless: None,
        check: None,
    },
    ProgramSpec {
        name: "tcpwatch_count",
        hook: Hook::Btf,
        role: Role::Counts,
        attach: Attach::Btf {
            tracepoint: "inet_sock_set_state",
        },
        if_missing: IfMissing::Fail,
        unless: None,
        check: None,
    },
    ProgramSpec {
        name: "tcpwatch_classic",
        hook: Hook::Classic,
        role: Role::Transitions,
        attach: Attach::Tracepoint {
            category: "sock",
            name: "inet_sock_set_state",
        },
        if_missing: IfMissing::Fail,
        unless: None,
        check: None,
    },
    signal(
        "tcpwatch_rst_out",
        Attach::Btf {
            tracepoint: "tcp_send_reset",
        },
    ),
    signal(
        "tcpwatch_rst_in",
        Attach::Btf {
            tracepoint: "tcp_receive_reset",
        },
    ),
    signal(
        "tcpwatch_synack",
        Attach::Btf {
            tracepoint: "tcp_retransmit_synack",
        },
    ),
    // connect() failures no transition carries (see the probe): fexit on
    // the TCP connect where the kernel allows it, else a classic syscall
    // tracepoint (of the BTF hook: it reads the fd table at offsets from
    // BTF), which sends every system call of every task through the
    // kernel's tracing path.
    ProgramSpec {
        check: Some(fexit_connect_fields),
        ..signal(
            CONNECT_PROGRAMS[0],
            Attach::Fexit {
                function: "inet_stream_connect",
            },
        )
    },
    ProgramSpec {
        unless: Some(CONNECT_PROGRAMS[0]),
        check: Some(syscall_connect_fields),
        ..signal(
            CONNECT_PROGRAMS[1],
            Attach::Tracepoint {
                category: "syscalls",
                name: "sys_exit_connect",
            },
        )
    },
];

/// A signal program: BTF hook only (it reads the socket in place), and
/// left out where the kernel lacks its hook.
const fn signal(name: &'static str, attach: Attach) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::Btf,
        role: Role::Signals,
        attach,
        if_missing: IfMissing::Skip,
        unless: None,
        check: None,
    }
}

/// Loaded and attached programs; dropping it detaches them.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hook: Hook,
    pub config: ProbeConfig,
    /// Optional programs left out, with why.
    pub skipped: Vec<(&'static str, String)>,
    links: Vec<(&'static str, Link)>,
    /// Each CPU's ring buffer of events, by CPU index (taken by the capture).
    pub rings: Vec<RingBuf<MapData>>,
    /// The main program's lanes, if it writes to lanes (taken by the capture).
    pub lanes: Option<Lanes>,
    /// The counts-only mode's program in place of the transition programs.
    pub counts_only: bool,
}

enum Link {
    Btf(BtfTracePointLinkId),
    Tracepoint(TracePointLinkId),
    Fexit(FExitLinkId),
}

/// Names of the programs that count transitions, main program first (then
/// the catcher), or the counts-only mode's one.
pub fn program_names(hook: Hook, counts_only: bool) -> Vec<&'static str> {
    let role = if counts_only {
        Role::Counts
    } else {
        Role::Transitions
    };
    PROGRAMS
        .iter()
        .filter(|p| p.hook == hook && p.role == role)
        .map(|p| p.name)
        .collect()
}

impl Loaded {
    /// [`program_names`] of what is loaded.
    pub fn transition_programs(&self) -> Vec<&'static str> {
        program_names(self.hook, self.counts_only)
    }

    /// The hook and mode, as said at start and shown by `top` and in the
    /// metrics' `build_info`.
    pub fn describe(&self) -> String {
        let transitions = if self.counts_only {
            "tp_btf/inet_sock_set_state (counts only)".into()
        } else {
            self.hook.to_string()
        };
        match self.connect_hook() {
            Some(connect) => format!("{transitions}, connect() failures via {connect}"),
            None => format!("{transitions}, connect() failures before a SYN not caught"),
        }
    }

    /// Where failed connect() calls are caught, if they are.
    pub fn connect_hook(&self) -> Option<String> {
        let name = self
            .links
            .iter()
            .map(|(name, _)| *name)
            .find(|name| CONNECT_PROGRAMS.contains(name))?;
        let spec = PROGRAMS.iter().find(|p| p.name == name)?;
        Some(spec.attach.to_string())
    }

    /// A short label of the hook and mode ("tp_btf", "tracepoint",
    /// "tp_btf counts-only").
    pub fn short(&self) -> &'static str {
        if self.counts_only {
            tcpwatch_core::metrics::COUNTS_ONLY_HOOK
        } else {
            self.hook.short()
        }
    }

    /// Lets the programs act, or stops them. Until armed they return at
    /// once, so no transition is seen by the main program before the
    /// catcher that backs it up is attached; disarmed at stop, neither acts
    /// while they are detached one after the other.
    pub fn set_armed(&mut self, armed: bool) -> Result<(), LoadError> {
        let mut control: aya::maps::Array<_, u32> = self
            .ebpf
            .map_mut("CONTROL")
            .ok_or_else(|| LoadError::other("finding map", io::Error::other("CONTROL")))?
            .try_into()
            .map_err(|e| LoadError::other("map CONTROL", e))?;
        control
            .set(0, &u32::from(armed), 0)
            .map_err(|e| LoadError::other("arming the programs", e))
    }

    /// Detaches the programs (main first, so the catcher still sees what
    /// arrives in between) but keeps them loaded, so their counters and
    /// statistics can still be read for the final accounting.
    pub fn detach(&mut self) -> Result<(), LoadError> {
        for (name, link) in self.links.drain(..) {
            let detached = match link {
                Link::Btf(id) => program::<BtfTracePoint>(&mut self.ebpf, name)?.detach(id),
                Link::Tracepoint(id) => program::<TracePoint>(&mut self.ebpf, name)?.detach(id),
                Link::Fexit(id) => program::<FExit>(&mut self.ebpf, name)?.detach(id),
            };
            detached.map_err(|e| LoadError::other(format!("detaching {name}"), e))?;
        }
        Ok(())
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether the effective capabilities allow loading tracing programs.
fn permitted() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        // SAFETY: geteuid has no preconditions.
        return unsafe { libc::geteuid() } == 0;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Makes sure tracefs is mounted (mounting it if we may) and returns its path.
pub(crate) fn ensure_tracefs() -> Result<PathBuf, LoadError> {
    for base in [TRACEFS, "/sys/kernel/debug/tracing"] {
        if Path::new(base).join("events").is_dir() {
            return Ok(PathBuf::from(base));
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL in a constant");
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::NoTracefs(io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

fn classic_config() -> Result<ProbeConfig, LoadError> {
    let tracefs = ensure_tracefs()?;
    let format_path = tracefs.join(TP_FORMAT);
    let format =
        fs::read_to_string(&format_path).map_err(|_| LoadError::NoTracepoint(format_path))?;
    let mut cfg = layout::classic_config(&format).map_err(LoadError::Format)?;
    layout::add_netns_from_btf(Path::new(BTF_PATH), &mut cfg);
    Ok(cfg)
}

/// Chooses the hook, computes its configuration from the running kernel,
/// loads the object and attaches (not yet armed: see [`Loaded::arm`]).
/// Every failure is a [`LoadError`].
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    if !permitted() {
        return Err(LoadError::NotPermitted);
    }
    if opts.counts_only {
        // Its program reads the socket in place: the BTF hook or nothing.
        if opts.hook == HookChoice::Classic {
            return Err(LoadError::Usage(
                "the counts-only mode needs the BTF hook (--hook btf or auto)".into(),
            ));
        }
        let cfg = layout::btf_config(Path::new(BTF_PATH)).map_err(LoadError::Btf)?;
        return load_hook(Hook::Btf, cfg, opts);
    }
    match opts.hook {
        HookChoice::Btf => load_hook(
            Hook::Btf,
            layout::btf_config(Path::new(BTF_PATH)).map_err(LoadError::Btf)?,
            opts,
        ),
        HookChoice::Classic => load_hook(Hook::Classic, classic_config()?, opts),
        HookChoice::Auto => {
            let btf = layout::btf_config(Path::new(BTF_PATH)).map_err(LoadError::Btf);
            match btf.and_then(|cfg| load_hook(Hook::Btf, cfg, opts)) {
                Ok(loaded) => Ok(loaded),
                // Kernels differ: a BTF layout we cannot use or a verifier
                // that rejects the BTF program still leaves the classic hook.
                Err(e @ (LoadError::Btf(_) | LoadError::Verifier { .. })) => {
                    tracing::warn!(
                        "BTF hook unavailable ({e}); falling back to the classic tracepoint"
                    );
                    load_hook(Hook::Classic, classic_config()?, opts)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// The layout version the embedded object was built with (its
/// `TCPWATCH_LAYOUT` symbol), or why it cannot be read.
pub fn object_layout(object: &[u8]) -> Result<u32, String> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(object).map_err(|e| format!("not an ELF object: {e}"))?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok("TCPWATCH_LAYOUT"))
        .ok_or("no TCPWATCH_LAYOUT symbol")?;
    let section = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or("TCPWATCH_LAYOUT has no section")?;
    let data = section.data().map_err(|e| e.to_string())?;
    // In a relocatable object a symbol's value is its offset in its section.
    let at = usize::try_from(sym.address() - section.address()).map_err(|e| e.to_string())?;
    let bytes = data
        .get(at..at + 4)
        .ok_or("TCPWATCH_LAYOUT lies outside its section")?;
    let bytes: [u8; 4] = bytes.try_into().expect("4 bytes");
    Ok(if file.is_little_endian() {
        u32::from_le_bytes(bytes)
    } else {
        u32::from_be_bytes(bytes)
    })
}

fn check_layout(object: &[u8]) -> Result<(), LoadError> {
    match object_layout(object) {
        Ok(v) if v == LAYOUT_VERSION => Ok(()),
        Ok(v) => Err(LoadError::other(
            "checking the eBPF object",
            io::Error::other(format!(
                "it was built with layout version {v}, this tcpwatch reads version {LAYOUT_VERSION}: rebuild tcpwatch"
            )),
        )),
        Err(e) => Err(LoadError::other(
            "checking the eBPF object",
            io::Error::other(e),
        )),
    }
}

fn load_hook(hook: Hook, mut config: ProbeConfig, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let object = object_for(opts);
    check_layout(object)?;
    if let Some(ns) = opts.netns {
        if ns == 0 {
            return Err(LoadError::Usage("--netns 0 names no namespace".into()));
        }
        if config.netns_readable == 0 {
            // Every transition would read as netns 0 and be filtered out:
            // an empty trace that looks like a quiet host.
            return Err(LoadError::Usage(
                "this kernel does not let tcpwatch read a socket's network namespace \
                 (no usable BTF), so --netns cannot filter"
                    .into(),
            ));
        }
    }
    config.filter_netns = opts.netns.unwrap_or(0);
    if !opts.signals || opts.connect == ConnectChoice::Off {
        // No connect() program: the transitions need not mark the sockets
        // whose SYN-SENT -> CLOSE one would look up.
        config.socket_sk = 0;
    }
    #[cfg(feature = "fault-injection")]
    {
        config.simulate_skip_every = opts.simulate_skip_every;
        config.simulate_not_run_every = opts.simulate_not_run_every;
    }
    let cpus = aya::util::nr_cpus()
        .map_err(|(path, e)| LoadError::other(format!("reading {path}"), e))?
        .get();
    let asked = opts.ring_bytes.unwrap_or_else(|| default_ring_bytes(cpus));
    let ring_bytes = asked
        .max(4096)
        .checked_next_power_of_two()
        .ok_or_else(|| LoadError::Usage(format!("ring buffer of {asked} bytes is too large")))?;
    // The counts-only mode sends no event: no lanes, the smallest rings.
    config.lane_slots = if opts.counts_only {
        0
    } else {
        lane_slots(config.hook, ring_bytes)
    };
    let ring_bytes = if opts.counts_only { 4096 } else { ring_bytes };
    let lane_events = cpus
        .checked_mul(config.lane_slots)
        .ok_or_else(|| LoadError::Usage(format!("lanes of {ring_bytes} bytes are too large")))?;
    // With lanes, the rings carry only the catcher's events and the lanes'
    // doorbells: a quarter of the size (at least a page), so that lanes and
    // rings together take about the memory the rings alone took.
    let ring_bytes = if config.lane_slots != 0 {
        (ring_bytes / 4).max(4096)
    } else {
        ring_bytes
    };
    // Wake the reader at a quarter full: early enough that a burst does not
    // overflow before it runs, rare enough to cost nothing per event.
    config.wakeup_bytes = ring_bytes / 4;
    debug_assert_eq!(config.layout_version, LAYOUT_VERSION);

    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", cpus)
        .map_max_entries("LANES", lane_events.max(1))
        .map_max_entries("LANE_POS", cpus)
        // The bench's keyed floor is never loaded here: its preallocated
        // per-CPU hash would hold 4,096 slots on every CPU for nothing.
        .map_max_entries("FLOOR_KEYED", 1)
        .map_max_entries(
            "COUNTS",
            if opts.counts_only {
                tcpwatch_common::COUNT_KEYS
            } else {
                1
            },
        )
        .load(object)
        .map_err(|e| match e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                LoadError::NotPermitted
            }
            e => LoadError::other("loading the eBPF object", e),
        })?;

    let mut links = Vec::new();
    let mut skipped = Vec::new();
    let mut btf = None;
    let wanted = |p: &&ProgramSpec| {
        p.hook == hook
            && match p.role {
                Role::Transitions => !opts.counts_only,
                Role::Counts => opts.counts_only,
                Role::Signals if !opts.signals => false,
                Role::Signals => match opts.connect {
                    ConnectChoice::Auto => true,
                    ConnectChoice::Syscall => p.name != CONNECT_PROGRAMS[0],
                    ConnectChoice::Off => !CONNECT_PROGRAMS.contains(&p.name),
                },
            }
    };
    for spec in PROGRAMS.iter().filter(wanted) {
        if let Some(better) = spec.unless
            && links.iter().any(|(name, _)| *name == better)
        {
            continue;
        }
        let attached = match spec.check.map_or(Ok(()), |check| check(&config)) {
            Ok(()) => attach(&mut ebpf, spec, &mut btf, opts.verbose),
            Err(why) => Err(Missing::Hook(why)),
        };
        // A fallback follows (it does the same at a costlier hook): not
        // attaching is a choice of hook, not a loss.
        let has_fallback = PROGRAMS
            .iter()
            .any(|p| p.unless == Some(spec.name) && wanted(&p));
        match attached {
            Ok(link) => links.push((spec.name, link)),
            Err(Missing::Hook(why)) if has_fallback => {
                tracing::info!(
                    program = spec.name,
                    "not attached, a fallback instead: {why}"
                );
            }
            Err(Missing::Error(e)) if has_fallback => {
                // Our own program rejected: a bug to see, not to hide.
                tracing::warn!(program = spec.name, "rejected, a fallback instead: {e}");
            }
            Err(Missing::Hook(why)) if spec.if_missing == IfMissing::Skip => {
                tracing::warn!(
                    program = spec.name,
                    "left out: this kernel lacks its hook ({why})"
                );
                skipped.push((spec.name, why));
            }
            Err(Missing::Hook(why)) => {
                return Err(LoadError::other(
                    format!("attaching {}", spec.name),
                    io::Error::other(why),
                ));
            }
            Err(Missing::Error(e)) => return Err(e),
        }
    }
    debug_assert!(hook != Hook::Btf || config.hook == HOOK_BTF);
    // The rings and lanes are mapped once the kernel's parsed BTF (~17 MB)
    // is freed, not beside it: that sum was the daemon's peak RSS. The
    // programs read no ring or lane and count no drop until armed, after
    // this.
    drop(btf);
    // Its own BTF read, also before the mappings.
    if links.iter().any(|(name, _)| *name == "tcpwatch_rst_out")
        && !layout::traces_every_reset_sent(Path::new(BTF_PATH))
    {
        tracing::warn!(
            "this kernel (before 6.10) traces no reset sent without a full socket: resets sent for closed ports and by TIME-WAIT sockets are not counted (received ones are)"
        );
    }
    let rings = make_rings(&mut ebpf, cpus, ring_bytes)?;
    let lanes = if config.lane_slots != 0 {
        Some(map_lanes(&mut ebpf, cpus, config.lane_slots)?)
    } else {
        None
    };
    Ok(Loaded {
        ebpf,
        hook,
        config,
        skipped,
        links,
        rings,
        lanes,
        counts_only: opts.counts_only,
    })
}

/// Events in each CPU's lane: as many as the ring buffer's bytes hold, to
/// a power of two below. Only on the BTF hook (whose main program never
/// nests in itself) and on x86-64, whose stores other CPUs see in program
/// order, which the lane's publication relies on; elsewhere, none.
fn lane_slots(hook: u32, ring_bytes: u32) -> u32 {
    if hook != HOOK_BTF || !cfg!(target_arch = "x86_64") {
        return 0;
    }
    let fits = ring_bytes / size_of::<tcpwatch_common::TransitionEvent>() as u32;
    1 << fits.max(2).ilog2()
}

/// Maps the lanes' arrays, sized at load for every CPU's lane.
fn map_lanes(ebpf: &mut Ebpf, cpus: u32, slots: u32) -> Result<Lanes, LoadError> {
    let mut take = |name: &'static str| match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => Ok(data),
        _ => Err(LoadError::other(
            "the eBPF object",
            io::Error::other(format!("no array map {name}")),
        )),
    };
    let (events, positions) = (take("LANES")?, take("LANE_POS")?);
    Lanes::map(events, positions, cpus as usize, slots as usize)
        .map_err(|e| LoadError::other("mapping the lanes", e))
}

/// Each CPU's ring by default: 4 MiB in all, at least 256 KiB per CPU (a
/// many-CPU host takes more memory rather than rings too small for a burst
/// on one CPU between two reads).
pub fn default_ring_bytes(cpus: u32) -> u32 {
    ((4u32 << 20) / cpus.max(1)).max(256 << 10)
}

/// One ring buffer per possible CPU, put in the programs' `EVENTS` array
/// at that CPU's index.
fn make_rings(ebpf: &mut Ebpf, cpus: u32, bytes: u32) -> Result<Vec<RingBuf<MapData>>, LoadError> {
    let outer = ebpf
        .map_mut("EVENTS")
        .ok_or_else(|| LoadError::other("the eBPF object", io::Error::other("no map EVENTS")))?;
    let mut outer: ArrayOfMaps<&mut MapData, RingBuf<MapData>> =
        ArrayOfMaps::try_from(outer).map_err(|e| LoadError::other("the EVENTS map", e))?;
    let mut rings = Vec::with_capacity(cpus as usize);
    for cpu in 0..cpus {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
            0,
            0,
            bytes,
            0,
        );
        let ring = MapData::create(def, "tcpwatch_events", None)
            .and_then(|data| RingBuf::try_from(aya::maps::Map::RingBuf(data)))
            .map_err(|e| match e {
                aya::maps::MapError::CreateError { io_error, .. }
                    if io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    LoadError::NotPermitted
                }
                e => LoadError::other(format!("making CPU {cpu}'s ring buffer"), e),
            })?;
        outer
            .set(cpu, &ring, 0)
            .map_err(|e| LoadError::other(format!("installing CPU {cpu}'s ring buffer"), e))?;
        rings.push(ring);
    }
    Ok(rings)
}

/// Why a program did not attach: its hook is not in this kernel (which
/// `IfMissing` decides about), or anything else (always an error).
enum Missing {
    Hook(String),
    Error(LoadError),
}

/// The fexit connect() program's fields: the socket's `sk` and `file`
/// and the cookie.
fn fexit_connect_fields(config: &ProbeConfig) -> Result<(), String> {
    if config.socket_sk == 0 || config.socket_file == 0 {
        return Err("no struct socket layout in this kernel's BTF".into());
    }
    Ok(())
}

/// The syscall connect() program's: the socket's fields, the way from an
/// fd to its socket and the saved registers (x86-64), and the record.
fn syscall_connect_fields(config: &ProbeConfig) -> Result<(), String> {
    if config.socket_sk == 0 || config.task_files == 0 {
        return Err(
            "no fd table or saved-register layout in this kernel's BTF (x86-64 only)".into(),
        );
    }
    connect_formats()
}

/// Checks the connect() syscall tracepoints' record layouts.
fn connect_formats() -> Result<(), String> {
    let tracefs = ensure_tracefs().map_err(|e| e.to_string())?;
    let read = |name: &str| {
        let p = tracefs.join("events/syscalls").join(name).join("format");
        fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    layout::connect_format_matches(&read("sys_exit_connect")?).map_err(|e| e.to_string())
}

/// The bench's floors: one of the object's count-only programs alone,
/// attached to the hook the main program uses. Dropping it detaches it.
pub struct Floor {
    ebpf: Ebpf,
    keyed: bool,
}

impl Floor {
    /// `keyed`: the count per namespace and state pair (`tcpwatch_floor_keyed`,
    /// which reads the socket at offsets from the kernel's BTF), else the
    /// one count of every transition (`tcpwatch_floor`).
    pub fn attach(keyed: bool) -> Result<Floor, LoadError> {
        let mut loader = EbpfLoader::new();
        let config;
        if keyed {
            config = layout::btf_config(Path::new(BTF_PATH)).map_err(LoadError::Btf)?;
            loader.override_global("CONFIG", &config, true);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| LoadError::other("loading the eBPF object", e))?;
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::other("reading kernel BTF", e))?;
        let name = if keyed {
            "tcpwatch_floor_keyed"
        } else {
            "tcpwatch_floor"
        };
        let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
        prog.load("inet_sock_set_state", &btf)
            .map_err(|e| rejected(name, e, false))?;
        prog.attach()
            .map_err(|e| LoadError::other(format!("attaching {name}"), e))?;
        Ok(Floor { ebpf, keyed })
    }

    /// Transitions counted so far, all CPUs (and all keys).
    pub fn counted(&self) -> Result<u64, LoadError> {
        if self.keyed {
            return Ok(self.keyed_counts()?.values().sum());
        }
        let counts: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(self.map("FLOOR")?)
                .map_err(|e| LoadError::other("the FLOOR map", e))?;
        let per_cpu = counts
            .get(&0, 0)
            .map_err(|e| LoadError::other("reading FLOOR", e))?;
        Ok(per_cpu.iter().sum())
    }

    /// The keyed floor's counts by key (`tcpwatch_common::floor_key`), all
    /// CPUs.
    pub fn keyed_counts(&self) -> Result<BTreeMap<u64, u64>, LoadError> {
        if !self.keyed {
            return Err(LoadError::other(
                "the plain floor",
                io::Error::other("it counts no keys (attach it keyed)"),
            ));
        }
        let counts: aya::maps::PerCpuHashMap<_, u64, u64> =
            aya::maps::PerCpuHashMap::try_from(self.map("FLOOR_KEYED")?)
                .map_err(|e| LoadError::other("the FLOOR_KEYED map", e))?;
        counts
            .iter()
            .map(|kv| {
                let (key, per_cpu) = kv.map_err(|e| LoadError::other("reading FLOOR_KEYED", e))?;
                Ok((key, per_cpu.iter().sum()))
            })
            .collect()
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map, LoadError> {
        self.ebpf.map(name).ok_or_else(|| {
            LoadError::other(
                "the eBPF object",
                io::Error::other(format!("no map {name}")),
            )
        })
    }
}

/// Loads one program of the table and attaches it.
fn attach(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    btf: &mut Option<Btf>,
    verbose: bool,
) -> Result<Link, Missing> {
    match spec.attach {
        Attach::Btf { tracepoint } => {
            let btf = kernel_btf(btf)?;
            let prog: &mut BtfTracePoint = program(ebpf, spec.name).map_err(Missing::Error)?;
            prog.load(tracepoint, btf).map_err(|e| match e {
                // The kernel has no such tracepoint function in its BTF.
                ProgramError::Btf(b) => Missing::Hook(format!("no BTF for {tracepoint}: {b}")),
                e => Missing::Error(rejected(spec.name, e, verbose)),
            })?;
            prog.attach().map(Link::Btf).map_err(|e| {
                Missing::Error(LoadError::other(format!("attaching {}", spec.name), e))
            })
        }
        Attach::Fexit { function } => {
            let btf = kernel_btf(btf)?;
            let prog: &mut FExit = program(ebpf, spec.name).map_err(Missing::Error)?;
            prog.load(function, btf).map_err(|e| match e {
                // Some kernels refuse every fexit program (these machines'
                // 6.18 does, even an empty one).
                ProgramError::LoadError { io_error, .. }
                    if io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    Missing::Hook(format!(
                        "the kernel refuses fexit on {function} ({io_error})"
                    ))
                }
                // The function is not in this kernel's BTF.
                ProgramError::Btf(b) => Missing::Hook(format!("no BTF for {function}: {b}")),
                e => Missing::Error(rejected(spec.name, e, verbose)),
            })?;
            match prog.attach() {
                Ok(link) => Ok(Link::Fexit(link)),
                Err(e) => {
                    // Not left loaded: what is held is what runs.
                    let _ = prog.unload();
                    Err(Missing::Hook(format!("attaching fexit on {function}: {e}")))
                }
            }
        }
        Attach::Tracepoint { category, name } => {
            let tracefs = ensure_tracefs().map_err(Missing::Error)?;
            let prog: &mut TracePoint = program(ebpf, spec.name).map_err(Missing::Error)?;
            prog.load()
                .map_err(|e| Missing::Error(rejected(spec.name, e, verbose)))?;
            if !tracefs.join("events").join(category).join(name).exists() {
                return Err(Missing::Hook(format!("no tracepoint {category}:{name}")));
            }
            prog.attach(category, name)
                .map(Link::Tracepoint)
                .map_err(|e| {
                    Missing::Error(LoadError::other(format!("attaching {}", spec.name), e))
                })
        }
    }
}

/// The kernel's BTF, read once for all the programs that need it.
fn kernel_btf(btf: &mut Option<Btf>) -> Result<&Btf, Missing> {
    if btf.is_none() {
        *btf = Some(
            Btf::from_sys_fs()
                .map_err(|e| Missing::Error(LoadError::other("reading kernel BTF", e)))?,
        );
    }
    Ok(btf.as_ref().expect("just read"))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::other("finding program", io::Error::other(name)))?
        .try_into()
        .map_err(|e| LoadError::other(format!("program {name} has an unexpected type"), e))
}

/// A verifier rejection: the error, plus the end of the verifier's log when
/// asked for (`-v`), since that is where the reason is.
fn rejected(program: &'static str, e: ProgramError, verbose: bool) -> LoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if io_error.raw_os_error() == Some(libc::EPERM) {
                return LoadError::NotPermitted;
            }
            let text = verifier_log.to_string();
            let log = if verbose {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                format!("\nlast lines of the verifier log:\n{}", tail.join("\n"))
            } else {
                " (run with -v to see the verifier's log)".into()
            };
            LoadError::Verifier {
                program,
                summary: io_error.to_string(),
                log,
            }
        }
        e => LoadError::other(format!("loading {program}"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_carries_this_layout_version() {
        assert_eq!(object_layout(OBJECT), Ok(LAYOUT_VERSION));
        assert!(check_layout(OBJECT).is_ok());
        assert!(object_layout(b"not an object").is_err());
    }

    #[test]
    fn every_program_of_the_table_is_in_the_object_and_mains_come_first() {
        use object::{Object as _, ObjectSymbol as _};
        let file = object::File::parse(OBJECT).unwrap();
        let names: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        for p in PROGRAMS {
            assert!(names.contains(&p.name), "{} not in the object", p.name);
        }
        assert_eq!(
            program_names(Hook::Btf, false),
            ["tcpwatch_main", "tcpwatch_catch"]
        );
        assert_eq!(program_names(Hook::Classic, false), ["tcpwatch_classic"]);
        assert_eq!(program_names(Hook::Btf, true), ["tcpwatch_count"]);
    }

    /// A fallback comes after the program it stands in for: the loop
    /// attaches in table order and skips it only if that one attached.
    #[test]
    fn every_fallback_follows_what_it_stands_in_for() {
        for (i, spec) in PROGRAMS.iter().enumerate() {
            if let Some(better) = spec.unless {
                let at = PROGRAMS.iter().position(|p| p.name == better);
                assert!(at.is_some_and(|at| at < i), "{} before {better}", spec.name);
            }
        }
    }

    /// A program whose hook this kernel lacks reads as a missing hook, with
    /// its reason (which the table's `IfMissing` turns into a skip or a
    /// failure), never as a load error. Needs BPF (root).
    #[test]
    fn a_missing_hook_reads_as_missing_not_as_an_error() {
        if !permitted() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: BPF must load"
            );
            eprintln!("\n!!! SKIPPED a_missing_hook_reads_as_missing_not_as_an_error: not root\n");
            return;
        }
        let config = layout::btf_config(Path::new(BTF_PATH)).unwrap();
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(OBJECT)
            .unwrap();
        let mut btf = None;
        let spec = |if_missing| ProgramSpec {
            name: "tcpwatch_main",
            hook: Hook::Btf,
            role: Role::Transitions,
            attach: Attach::Btf {
                tracepoint: "tcpwatch_no_such_tracepoint",
            },
            if_missing,
            unless: None,
            check: None,
        };
        match attach(&mut ebpf, &spec(IfMissing::Skip), &mut btf, false) {
            Err(Missing::Hook(why)) => {
                assert!(why.contains("tcpwatch_no_such_tracepoint"), "{why}")
            }
            Ok(_) => panic!("attached to a tracepoint that does not exist"),
            Err(Missing::Error(e)) => panic!("a missing hook read as an error: {e}"),
        }
        let spec = ProgramSpec {
            name: "tcpwatch_classic",
            hook: Hook::Classic,
            role: Role::Transitions,
            attach: Attach::Tracepoint {
                category: "sock",
                name: "tcpwatch_no_such_tracepoint",
            },
            if_missing: IfMissing::Skip,
            unless: None,
            check: None,
        };
        assert!(matches!(
            attach(&mut ebpf, &spec, &mut btf, false),
            Err(Missing::Hook(_))
        ));
        // fexit: a function the kernel lacks, or a kernel that refuses
        // fexit (these machines' 6.18), is a missing hook with its reason.
        let spec = ProgramSpec {
            attach: Attach::Fexit {
                function: "tcpwatch_no_such_function",
            },
            ..*PROGRAMS
                .iter()
                .find(|p| p.name == CONNECT_PROGRAMS[0])
                .unwrap()
        };
        match attach(&mut ebpf, &spec, &mut btf, false) {
            Err(Missing::Hook(why)) => assert!(why.contains("tcpwatch_no_such_function"), "{why}"),
            Ok(_) => panic!("fexit attached to a function that does not exist"),
            Err(Missing::Error(e)) => panic!("a missing fexit hook read as an error: {e}"),
        }
    }

    /// The production object's main program has no fault-injection code:
    /// it is shorter than the test object's.
    #[cfg(feature = "fault-injection")]
    #[test]
    fn the_production_main_program_has_no_fault_injection() {
        use object::{Object as _, ObjectSymbol as _};
        let size = |obj: &[u8]| {
            object::File::parse(obj)
                .unwrap()
                .symbols()
                .find(|s| s.name() == Ok("tcpwatch_main"))
                .unwrap()
                .size()
        };
        assert!(
            size(OBJECT) < size(FAULT_OBJECT),
            "{} {}",
            size(OBJECT),
            size(FAULT_OBJECT)
        );
    }

    #[test]
    fn an_object_of_another_layout_is_refused() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let file = object::File::parse(OBJECT).unwrap();
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok("TCPWATCH_LAYOUT"))
            .unwrap();
        let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
        let (start, _) = section.file_range().unwrap();
        let at = (start + sym.address() - section.address()) as usize;
        let mut other = OBJECT.to_vec();
        other[at..at + 4].copy_from_slice(&(LAYOUT_VERSION + 1).to_le_bytes());
        assert_eq!(object_layout(&other), Ok(LAYOUT_VERSION + 1));
        // Said with its cause, as the command line prints the chain.
        let e = format!(
            "{:#}",
            anyhow::Error::new(check_layout(&other).unwrap_err())
        );
        assert!(e.contains("rebuild tcpwatch"), "{e}");
    }
}
