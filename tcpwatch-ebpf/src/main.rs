//! tcpwatch's kernel side: one handler for every TCP state transition,
//! reached from three entry points.
//!
//! - `tcpwatch_main` (tp_btf `inet_sock_set_state`): the normal path.
//! - `tcpwatch_catch` (the same hook, attached second): the kernel skips a
//!   program that would nest inside itself on one CPU (counted in its
//!   `recursion_misses`); the catcher handles exactly the transitions the
//!   main program did not, found through a small per-CPU memory of identities.
//! - `tcpwatch_classic` (classic tracepoint): the fallback where BTF is missing.
//!
//! Offsets into kernel structures come from user space (BTF or the
//! tracepoint's format file) through `CONFIG`; nothing here hard-codes them.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::bindings::{
    BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
};
use aya_ebpf::{
    EbpfContext,
    btf_maps::{ArrayOfMaps, RingBuf},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, generated,
    },
    macros::{btf_map, btf_tracepoint, fexit, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
};
use tcpwatch_common::{
    AF_INET6, DIR_IN, DIR_OUT, EventHeader, FLAG_CAUGHT, FLAG_OWNER_KNOWN, HOOK_BTF, HOOK_CLASSIC,
    IPPROTO_MPTCP, IPPROTO_TCP, LanePos, NetSeen, PF_KTHREAD, PROG_CATCHER, PROG_MAIN, ProbeConfig,
    RECENT_SLOTS, Recent, STATS_LEN, SignalKey, SignalStats, Stats, TP_RECORD_READ, TaskComm,
    TransitionEvent, count_key, floor_key, kind, listener_key, owner_runs_transition, signal, stat,
    stat_index, state::*, transition_id, transition_index,
};

/// Filled in by user space before load (read-only data).
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::UNSET;

/// The shared layouts this object was built with: user space reads it from
/// the object and refuses to load one built from other sources (CONFIG's
/// own copy is overwritten by user space, so it cannot tell).
#[unsafe(no_mangle)]
static TCPWATCH_LAYOUT: u32 = tcpwatch_common::LAYOUT_VERSION;

/// Transition events for user space: one ring buffer per CPU, made and
/// sized by user space (the count of entries too). One ring shared by all
/// CPUs cost ~250 ns per event on two CPUs (its lock and positions bounced
/// between them; ~10 ns on one CPU, measured): user space merges the rings
/// in time order instead (`probe::capture`).
#[btf_map]
static EVENTS: ArrayOfMaps<RingBuf<TransitionEvent, 4096>, 1> = ArrayOfMaps::new();

/// Per-CPU counters: every transition per (old, new), plus event statistics
/// (layout in tcpwatch_common), in one value so user space reads them with
/// one lookup.
#[map]
static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// Listening ports by (netns, port) (key [`listener_key`]), value how many
/// sockets listen there (SO_REUSEPORT groups, v4 and v6; 1 when seeded
/// from procfs): how a signal of a socket tells a server's side from a
/// client's. Written only on `-> LISTEN` and `LISTEN -> CLOSE`, never on
/// the per-connection path. Owners, sides and times of sockets are
/// followed in user space.
#[map]
static LISTENERS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Slot 0 is set to 1 by user space once every program is attached. Until
/// then the programs do nothing, so no transition is seen by the main
/// program while the catcher that backs it up is not attached yet.
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn armed() -> bool {
    CONTROL.get(0).is_some_and(|v| *v == 1)
}

/// The main program's lanes (see `LanePos`): every CPU's slots in turn,
/// sized by user space, which maps both arrays and reads them in place.
#[map]
static LANES: Array<TransitionEvent> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
static LANE_POS: Array<LanePos> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The main program's recent transition identities, for the catcher.
#[map]
static RECENT: PerCpuArray<Recent> = PerCpuArray::with_max_entries(1, 0);

/// One transition, read from whichever hook fired. Addresses are words, not
/// byte arrays: BPF has no unaligned loads, so byte arrays are copied one
/// byte at a time.
struct Transition {
    skaddr: u64,
    oldstate: u8,
    newstate: u8,
    family: u16,
    protocol: u16,
    sport: u16,
    dport: u16,
    netns: u32,
    saddr: [u32; 4],
    daddr: [u32; 4],
    /// `sk_err` at `-> CLOSE`, else 0.
    error: u16,
    /// At SYN-SENT -> CLOSE on the BTF hook (when the connect() programs
    /// run), the socket's cookie, else 0.
    cookie: u64,
    /// When it was seen (`bpf_ktime_get_ns`).
    ts_ns: u64,
}

/// The clock, read as soon as a transition is admitted: its read waits for
/// every load before it to complete (the TSC read is ordered), and there
/// few are still in flight (measured: ~5 % of the main program's time
/// went to that wait when it was read last).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn config() -> &'static ProbeConfig {
    let p: *const ProbeConfig = &CONFIG;
    // SAFETY: a volatile read of a local pointer to the CONFIG static. The
    // compiler cannot see which static it points to, so it does not fold
    // field reads to the compiled-in default (user space rewrites CONFIG
    // before load); and only the fields used are read, where a copy of the
    // whole struct read all 136 bytes on every run.
    unsafe { &*core::ptr::read_volatile(&p) }
}

#[inline(always)]
fn bump(index: u32) {
    // Through memory, so the compiler cannot drop the check below on the
    // strength of a bound it proved but the verifier cannot follow (it
    // tracked the catcher's index up to 764 of 538 slots).
    // SAFETY: a read of a local.
    let index = unsafe { core::ptr::read_volatile(&index) };
    if index >= STATS_LEN {
        return;
    }
    if let Some(p) = STATS.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's value of a per-CPU array, and
        // `index` is within its slots (checked above, which also bounds the
        // access for the verifier). Each program has its own slots and a
        // program never nests inside itself on one CPU (the kernel skips it
        // instead), so nothing interrupts this read-modify-write with a
        // write to the same slot.
        unsafe {
            let slot = core::ptr::addr_of_mut!((*p).slots)
                .cast::<u64>()
                .add(index as usize);
            *slot += 1;
        }
    }
}

/// Reads `N` bytes at `off` of `buf`, or `None` when out of bounds (offsets
/// come from user space and are checked there too; this keeps the verifier
/// and a bad configuration both harmless).
#[inline(always)]
fn bytes_at<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    let src = buf.get(off..off.checked_add(N)?)?;
    let mut out = [0u8; N];
    out.copy_from_slice(src);
    Some(out)
}

#[inline(always)]
fn u16_at(buf: &[u8], off: u16) -> Option<u16> {
    bytes_at::<2>(buf, off as usize).map(u16::from_ne_bytes)
}

/// Reads a `T` at kernel address `addr`; a failure (a bad address) is
/// counted in `prog`'s READ_FAILED and gives `None`.
#[inline(always)]
fn read_kernel<T>(prog: u32, addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the source address itself and
    // writes exactly size_of::<T>() bytes into a value it returns.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(stat_index(prog, stat::READ_FAILED));
            None
        }
    }
}

/// Network namespace inode of socket `sk` (classic hook: no BTF pointer to
/// load through), 0 when it cannot be read.
#[inline(always)]
fn classic_netns(cfg: &ProbeConfig, sk: u64) -> u32 {
    if cfg.netns_readable == 0 {
        return 0;
    }
    match read_kernel::<u64>(PROG_MAIN, sk + cfg.sk_net as u64) {
        Some(net) if net != 0 => {
            read_kernel::<u32>(PROG_MAIN, net + cfg.net_ns_inum as u64).unwrap_or(0)
        }
        _ => 0,
    }
}

/// The tp_btf arguments `(struct sock *sk, int oldstate, int newstate)`,
/// with the socket address as a plain number too. Loaded from the context,
/// `sk` is a trusted BTF pointer: the verifier lets the program read its
/// fields directly (no helper call per read) but forbids the arithmetic of
/// `transition_id` on it. Stored into a map value and loaded back, it is a
/// number: the verifier allows that store for programs that may see kernel
/// addresses (CAP_PERFMON, which loading a tracing program needs anyway).
/// That replaced a helper read per program run (~4 % of their time).
/// (Reading a spilled pointer back from the stack in halves is refused:
/// "invalid size of register fill".)
#[inline(always)]
fn btf_args(ctx: &BtfTracePointContext, slot: &mut u64) -> (u64, u8, u8) {
    let sk: *const u8 = ctx.arg(0);
    let slot: *mut u64 = slot;
    // SAFETY: `slot` is this program's own u64 in this CPU's slot of a
    // per-CPU map value (no other run writes it meanwhile, see
    // Recent::sk_slot). Volatile, so the compiler does not forward the
    // pointer past the map round trip the verifier needs to see.
    let sk_num = unsafe {
        core::ptr::write_volatile(slot.cast::<*const u8>(), sk);
        core::ptr::read_volatile(slot)
    };
    (sk_num, ctx.arg::<i32>(1) as u8, ctx.arg::<i32>(2) as u8)
}

/// An offset from CONFIG, read where it is used: CONFIG is frozen read-only
/// data, so the verifier knows the value and checks the field access
/// against the kernel's BTF as if it were a constant in the code.
#[inline(always)]
fn off(field: &u16) -> usize {
    // SAFETY: a read of a field of the CONFIG static.
    unsafe { core::ptr::read_volatile(field) as usize }
}

#[inline(always)]
fn off32(field: &u32) -> usize {
    // SAFETY: a read of a field of the CONFIG static.
    unsafe { core::ptr::read_volatile(field) as usize }
}

/// Reads a field of the socket in place (a BTF-checked, fault-safe load).
///
/// # Safety
/// `sk` must be the tp_btf `struct sock *` argument and `at` an offset of a
/// field of type `T` in it, taken from the kernel's BTF by user space.
#[inline(always)]
unsafe fn field<T: Copy>(sk: *const u8, at: usize) -> T {
    unsafe { core::ptr::read_volatile(sk.add(at).cast::<T>()) }
}

/// Reads a transition of socket `sk` with direct loads. The local port
/// lives past `struct sock` (in `struct inet_sock`), where the verifier does
/// not let a `struct sock *` reach: it is read through the socket as a
/// `struct tcp_sock`, or with a helper read for MPTCP's own socket.
#[inline(always)]
fn read_btf(
    ctx: &BtfTracePointContext,
    (skaddr, oldstate, newstate): (u64, u8, u8),
    cfg: &ProbeConfig,
    prog: u32,
    seen: &mut NetSeen,
) -> Option<Transition> {
    let sk: *const u8 = ctx.arg::<*const u8>(0);
    // SAFETY (all `field` calls): offsets are BTF member offsets of struct
    // sock for fields of these sizes, checked by user space and again by
    // the verifier against BTF.
    let protocol: u16 = unsafe { field(sk, off32(&CONFIG.sk_protocol)) };
    // SAFETY: `sk` is the hook's socket argument.
    let netns = unsafe { sk_netns_seen(sk, cfg, seen) };
    if !admit(prog, protocol, netns, cfg) {
        return None;
    }
    let ts_ns = now_ns();
    let family: u16 = unsafe { field(sk, off(&CONFIG.sk_family)) };
    // SAFETY: `sk` is the hook's socket argument, at `skaddr`.
    let sport = unsafe { local_port(prog, sk, cfg, || Some(skaddr)) };
    let dport: u16 = unsafe { field(sk, off(&CONFIG.sk_dport)) };
    let mut t = Transition {
        skaddr,
        oldstate,
        newstate,
        family,
        protocol,
        sport,
        dport: u16::from_be(dport),
        netns,
        saddr: [0; 4],
        daddr: [0; 4],
        error: 0,
        cookie: 0,
        ts_ns,
    };
    if newstate == TCP_CLOSE && cfg.sk_err != 0 {
        // SAFETY: `sk_err` is an int at this BTF offset of struct sock.
        let err: i32 = unsafe { field(sk, off32(&CONFIG.sk_err)) };
        t.error = err as u16;
    }
    if oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE && cfg.socket_sk != 0 {
        // SAFETY: `sk` is the hook's socket; the helper (its tracing
        // variant) takes it as is and gives the socket's cookie, made on
        // first use and never reused.
        t.cookie = unsafe { generated::bpf_get_socket_cookie(sk as *mut c_void) };
    }
    if family == AF_INET6 {
        let (s, d) = (off(&CONFIG.sk_v6_rcv_saddr), off(&CONFIG.sk_v6_daddr));
        for i in 0..4 {
            t.saddr[i] = unsafe { field(sk, s + 4 * i) };
            t.daddr[i] = unsafe { field(sk, d + 4 * i) };
        }
    } else {
        t.saddr[0] = unsafe { field(sk, off(&CONFIG.sk_rcv_saddr)) };
        t.daddr[0] = unsafe { field(sk, off(&CONFIG.sk_daddr)) };
    }
    Some(t)
}

/// Reads a transition from the classic tracepoint record, at the offsets user
/// space took from the tracepoint's format file.
#[inline(always)]
fn read_classic(ctx: &TracePointContext, cfg: &ProbeConfig) -> Option<Transition> {
    let mut rec = [0u8; TP_RECORD_READ];
    // SAFETY: a checked kernel read of the record into a stack buffer of
    // exactly its length.
    if unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut rec) }.is_err() {
        bump(stat_index(PROG_MAIN, stat::READ_FAILED));
        return None;
    }
    let skaddr = u64::from_ne_bytes(bytes_at::<8>(&rec, cfg.tp_skaddr as usize)?);
    let family = u16_at(&rec, cfg.tp_family)?;
    let mut t = Transition {
        skaddr,
        oldstate: i32::from_ne_bytes(bytes_at::<4>(&rec, cfg.tp_oldstate as usize)?) as u8,
        newstate: i32::from_ne_bytes(bytes_at::<4>(&rec, cfg.tp_newstate as usize)?) as u8,
        family,
        protocol: u16_at(&rec, cfg.tp_protocol)?,
        sport: u16_at(&rec, cfg.tp_sport)?,
        dport: u16_at(&rec, cfg.tp_dport)?,
        netns: 0,
        saddr: [0; 4],
        daddr: [0; 4],
        error: 0,
        cookie: 0,
        ts_ns: 0,
    };
    t.netns = classic_netns(cfg, skaddr);
    if !admit(PROG_MAIN, t.protocol, t.netns, cfg) {
        return None;
    }
    t.ts_ns = now_ns();
    if t.newstate == TCP_CLOSE && cfg.sk_err != 0 {
        t.error = read_kernel::<i32>(PROG_MAIN, skaddr + cfg.sk_err as u64).unwrap_or(0) as u16;
    }
    let word =
        |off: u16, i: usize| bytes_at::<4>(&rec, off as usize + 4 * i).map(u32::from_ne_bytes);
    if family == AF_INET6 {
        for i in 0..4 {
            t.saddr[i] = word(cfg.tp_saddr_v6, i)?;
            t.daddr[i] = word(cfg.tp_daddr_v6, i)?;
        }
    } else {
        t.saddr[0] = word(cfg.tp_saddr, 0)?;
        t.daddr[0] = word(cfg.tp_daddr, 0)?;
    }
    Some(t)
}

/// The current task as a socket's owner: its ids as
/// `bpf_get_current_pid_tgid` gives them and its comm, or `None` for a
/// kernel thread (never a socket's owner in tcpwatch's sense, even in a
/// syscall-like path). On the BTF hook, with the offsets known, read in
/// place from the task (two helper calls fewer).
#[inline(always)]
fn current_owner(cfg: &ProbeConfig, prog: u32) -> Option<(u64, TaskComm)> {
    if cfg.hook == HOOK_BTF && cfg.task_pid != 0 && cfg.task_comm != 0 {
        let task = current_task_btf();
        if is_kthread(cfg, task) {
            return None;
        }
        // SAFETY (all `field` calls): BTF offsets in task_struct of the
        // ints `pid` and `tgid` (one after the other) and the 16-byte
        // `comm`, checked by user space and by the verifier.
        unsafe {
            let pid_at = off32(&CONFIG.task_pid);
            let pid: u32 = field(task, pid_at);
            let tgid: u32 = field(task, pid_at + 4);
            let comm_at = off32(&CONFIG.task_comm);
            let words: [u64; 2] = [field(task, comm_at), field(task, comm_at + 8)];
            // Whatever follows the name's NUL is ignored by user space.
            let comm = TaskComm(core::mem::transmute::<[u64; 2], [u8; 16]>(words));
            return Some(((tgid as u64) << 32 | pid as u64, comm));
        }
    }
    if in_kernel_thread(cfg, prog) {
        return None;
    }
    Some((bpf_get_current_pid_tgid(), current_comm()))
}

/// The current task as a BTF pointer.
#[inline(always)]
fn current_task_btf() -> *const u8 {
    // SAFETY: a helper without preconditions; it returns the current task
    // as a BTF pointer, never NULL.
    unsafe { generated::bpf_get_current_task_btf() as *const u8 }
}

/// Whether `task` (a BTF task pointer) is a kernel thread. Unknown
/// offsets: no.
#[inline(always)]
fn is_kthread(cfg: &ProbeConfig, task: *const u8) -> bool {
    if cfg.task_flags == 0 {
        return false;
    }
    // SAFETY: `flags` is a u32 at this BTF offset of task_struct.
    let flags: u32 = unsafe { field(task, off32(&CONFIG.task_flags)) };
    flags & PF_KTHREAD != 0
}

/// Whether the current task is a kernel thread. Unknown offsets: no.
#[inline(always)]
fn in_kernel_thread(cfg: &ProbeConfig, prog: u32) -> bool {
    if cfg.task_flags == 0 {
        return false;
    }
    if cfg.hook == HOOK_BTF {
        return is_kthread(cfg, current_task_btf());
    }
    // SAFETY: a helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    read_kernel::<u32>(prog, task + cfg.task_flags as u64)
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// A value of plain data with every byte zero, written as 8-byte words.
/// A zero-initialized aggregate (a `const` struct, `[0; N]`) compiles here
/// to a call of the object's `memset`, a byte-at-a-time loop in a
/// subprogram (measured: ~2 % of the programs' time). Stores of a zero the
/// optimizer cannot see as a constant are not merged back into that call.
#[inline(always)]
fn zeroed<T: Copy>() -> T {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 8) };
    let zero = 0u64;
    // SAFETY: a read of a local.
    let zero = unsafe { core::ptr::read_volatile(&zero) };
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let words = v.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: in bounds (size is a multiple of 8) and aligned (align
        // is at least 8) within `v`.
        unsafe { words.add(i).write(zero) };
    }
    // SAFETY: every byte is written, and T is plain data (all-zero valid).
    unsafe { v.assume_init() }
}

/// The current task's comm, written straight into an aligned value (the
/// helper wrapper returns a byte array, which costs a byte-wise copy).
#[inline(always)]
fn current_comm() -> TaskComm {
    let mut comm = core::mem::MaybeUninit::<TaskComm>::uninit();
    // SAFETY: the helper always writes all 16 bytes: the name NUL-padded,
    // or zeroes on failure. (Not zeroed first: see `zeroed`.)
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        comm.assume_init()
    }
}

/// Bytes past a multiple of the wakeup mark within which a record still
/// counts as crossing it: eight records with their ring headers.
const WAKE_WINDOW: u64 = 8 * (core::mem::size_of::<TransitionEvent>() as u64 + 8);

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: both are 16 bytes of plain data; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// Whether a transition of this protocol and namespace is in scope; one
/// that is not is counted and costs no further read.
#[inline(always)]
fn admit(prog: u32, protocol: u16, netns: u32, cfg: &ProbeConfig) -> bool {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        bump(stat_index(prog, stat::OTHER_PROTOCOL));
        return false;
    }
    if cfg.filter_netns != 0 && netns != cfg.filter_netns {
        bump(stat_index(prog, stat::FILTERED));
        return false;
    }
    true
}

/// Counts one transition and emits the event, with the current task only
/// where it is the owner (user space follows owners, sides and times from
/// there). Never fails: whatever cannot be done is counted in `STATS`.
/// `lane`: the caller is the lanes' one producer (the main program on the
/// BTF hook); everyone else writes to the ring buffers.
#[inline(always)]
fn handle(prog: u32, t: &Transition, cfg: &ProbeConfig, extra_flags: u16, lane: bool) {
    match transition_index(prog, t.oldstate, t.newstate) {
        Some(i) => bump(i),
        None => bump(stat_index(prog, stat::BAD_STATE)),
    }
    if t.newstate == TCP_LISTEN || t.oldstate == TCP_LISTEN && t.newstate == TCP_CLOSE {
        note_listener(prog, t);
    }
    if t.oldstate == TCP_SYN_SENT && t.newstate == TCP_CLOSE && t.cookie != 0 {
        // For the connect() that may be returning this failure: the
        // transition counted it (and its error, if it had one).
        let end = ConnectEnd {
            cookie: t.cookie,
            had_error: u64::from(t.error != 0),
        };
        let _ = CONNECT_ENDS.insert(&t.skaddr, &end, 0);
    }
    let owner = if owner_runs_transition(t.oldstate, t.newstate) {
        current_owner(cfg, prog)
    } else {
        None
    };
    // SAFETY: a helper without preconditions.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() };
    let event = || event_of(t, owner, extra_flags);
    if lane && cfg.lane_slots != 0 {
        emit_to_lane(prog, cpu, cfg, event);
    } else {
        emit_to_ring(prog, cpu, cfg, event);
    }
}

/// The record of transition `t`, with `owner` (ids, comm) when known.
#[inline(always)]
fn event_of(t: &Transition, owner: Option<(u64, TaskComm)>, extra_flags: u16) -> TransitionEvent {
    let (pid, tgid, comm, owner) = match owner {
        Some((id, comm)) => (id as u32, (id >> 32) as u32, comm, FLAG_OWNER_KNOWN),
        None => (0, 0, zeroed(), 0),
    };
    TransitionEvent {
        header: EventHeader {
            kind: kind::TRANSITION,
            size: core::mem::size_of::<TransitionEvent>() as u16,
            _pad: 0,
        },
        ts_ns: t.ts_ns,
        skaddr: t.skaddr,
        netns: t.netns,
        pid,
        tgid,
        oldstate: t.oldstate,
        newstate: t.newstate,
        family: t.family,
        protocol: t.protocol,
        sport: t.sport,
        dport: t.dport,
        flags: extra_flags | owner,
        saddr: words_to_bytes(t.saddr),
        daddr: words_to_bytes(t.daddr),
        comm,
        error: t.error,
        _pad2: 0,
        _pad3: 0,
    }
}

/// Writes an event into this CPU's lane (see `LanePos`), or counts it as
/// dropped when the lane is full. Only the main program on the BTF hook
/// writes here: it never runs nested in itself on one CPU, so it is the
/// lane's one producer.
#[inline(always)]
fn emit_to_lane(prog: u32, cpu: u32, cfg: &ProbeConfig, event: impl FnOnce() -> TransitionEvent) {
    let slots = cfg.lane_slots;
    let Some(pos) = LANE_POS.get_ptr_mut(cpu) else {
        bump(stat_index(prog, stat::RINGBUF_FULL));
        return;
    };
    let quarter = (slots / 4) as u64;
    // SAFETY: this CPU's entry of the positions array, valid for the run;
    // `head` and `tail_seen` are ours alone, `tail` is user space's and
    // only read here.
    let (head, seen) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*pos).head)),
            core::ptr::read_volatile(core::ptr::addr_of!((*pos).tail_seen)),
        )
    };
    // `tail` only grows, so the fill from `seen` is never below the true
    // one: below the wake mark there is room and no doorbell to ring
    // without reading `tail` itself.
    let mut fill = head.wrapping_sub(seen);
    let near_mark = fill + 1 >= quarter;
    if near_mark {
        // SAFETY: as above.
        unsafe {
            let tail = core::ptr::read_volatile(core::ptr::addr_of!((*pos).tail));
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*pos).tail_seen), tail);
            fill = head.wrapping_sub(tail);
        }
    }
    if fill >= slots as u64 {
        bump(stat_index(prog, stat::RINGBUF_FULL));
        return;
    }
    let index = cpu.wrapping_mul(slots) + (head as u32 & slots.wrapping_sub(1));
    let Some(slot) = LANES.get_ptr_mut(index) else {
        bump(stat_index(prog, stat::RINGBUF_FULL));
        return;
    };
    // SAFETY: a slot of this CPU's lane that user space has read already
    // (head - tail < slots) and does not read until head passes it.
    unsafe { slot.write(event()) };
    // The slot is written before head says so: the compiler keeps this
    // order, and x86-64's stores are seen by other CPUs in program order
    // (user space turns lanes on only there).
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*pos).head), head + 1) };
    bump(stat_index(prog, stat::EMITTED));
    // Once per crossing of a quarter full (the fill grows one at a time:
    // only this program adds to it), ring user space's doorbell; it also
    // polls, so a doorbell lost to a full ring only delays the read.
    if near_mark
        && fill + 1 == quarter
        && let Some(ring) = EVENTS.get(cpu)
    {
        let bell = EventHeader {
            kind: kind::LANE_WAKE,
            size: core::mem::size_of::<EventHeader>() as u16,
            _pad: 0,
        };
        let _ = ring.output_untyped(&bell, BPF_RB_FORCE_WAKEUP as u64);
    }
}

/// Writes an event into this CPU's ring buffer, waking user space where
/// the backlog crosses a mark, or counts it as dropped.
#[inline(always)]
fn emit_to_ring(prog: u32, cpu: u32, cfg: &ProbeConfig, event: impl FnOnce() -> TransitionEvent) {
    // No ring for this CPU cannot happen (user space gives every possible
    // CPU one); were it to, the event is counted as dropped, never silent.
    let Some(ring) = EVENTS.get(cpu) else {
        bump(stat_index(prog, stat::RINGBUF_FULL));
        return;
    };
    match ring.reserve(0) {
        Some(mut entry) => {
            entry.write(event());
            // Wake user space when the unread backlog (this record
            // included, it is reserved) crosses the mark or a multiple of
            // it, never per event: user space also drains on a timer. Not
            // for every event past the mark either: once the previous
            // wakeup has run, each one is an irq_work self-IPI (measured:
            // ~4 % of the programs' time went to its APIC write). The
            // window absorbs records other CPUs reserve between our reserve
            // and this query; a crossing missed anyway is caught at the
            // next multiple or by the timer.
            // SAFETY: `ring` is the inner map the lookup gave, which is
            // what the helper takes (as the typed methods pass it).
            let avail = unsafe {
                generated::bpf_ringbuf_query(
                    core::ptr::from_ref(ring).cast_mut().cast(),
                    BPF_RB_AVAIL_DATA as u64,
                )
            };
            let mark = cfg.wakeup_bytes as u64;
            let flags = if mark != 0 && avail >= mark && avail % mark < WAKE_WINDOW {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags as u64);
            bump(stat_index(prog, stat::EMITTED));
        }
        None => bump(stat_index(prog, stat::RINGBUF_FULL)),
    }
}

/// Keeps the listening-port map: a listen counts one more listener on its
/// port, a listener's close one less, and the port goes at none. A failed
/// listen() on a busy port (the kernel goes to LISTEN before it finds the
/// port taken, then back) adds and takes away its own one. Two listens or
/// closes on one port at the same instant on two CPUs can miscount by one:
/// this is a plain read-modify-write, the price of no atomics on old BPF.
#[inline(always)]
fn note_listener(prog: u32, t: &Transition) {
    note_listener_at(prog, t.netns, t.sport, t.newstate == TCP_LISTEN);
}

/// [`note_listener`] for a listen (`listen`) or a listener's close of
/// `port` in `netns`.
#[inline(always)]
fn note_listener_at(prog: u32, netns: u32, port: u16, listen: bool) {
    let key = listener_key(netns, port);
    match LISTENERS.get_ptr_mut(&key) {
        Some(n) => {
            // SAFETY: this map value, valid for the program run.
            let left = unsafe {
                if listen {
                    *n += 1;
                } else {
                    *n = (*n).saturating_sub(1);
                }
                *n
            };
            if left == 0 {
                let _ = LISTENERS.remove(&key);
            }
        }
        None if listen => {
            if LISTENERS.insert(&key, &1, 0).is_err() {
                bump(stat_index(prog, stat::MAP_UPDATE_FAILED));
            }
        }
        None => {}
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpwatch_main(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    if cfg.hook != HOOK_BTF {
        return 0;
    }
    let Some(r) = RECENT.get_ptr_mut(0) else {
        bump(stat_index(PROG_MAIN, stat::RUNS));
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for this run. Only
    // the two programs touch it, and the stack discipline (see Recent)
    // keeps their interleavings on one CPU consistent.
    let r = unsafe { &mut *r };
    let args = btf_args(&ctx, &mut r.sk_slot[PROG_MAIN as usize]);
    let armed = armed();
    r.depth += 1;
    if r.depth > 1 {
        bump(stat_index(PROG_MAIN, stat::NESTED));
    }
    if !armed && r.depth == 1 && r.catcher_depth == 0 {
        // Before arming, what is left may be from before the catcher was
        // attached (stale). Not once armed: between a firing's main run and
        // its catcher run nothing of this program is in progress either, and
        // a softirq that lands there would wipe that firing's identity (seen:
        // its catcher then delivered it a second time). Once armed, an
        // identity is taken by its catcher or cut by an enclosing catcher
        // run (see tcpwatch_catch); what neither reaches (a run in the
        // catcher's own prologue) piles up until the stack is full, below.
        r.top = 0;
    }
    let (not_run, skip) = simulated(r, cfg, armed);
    if not_run {
        bump(stat_index(PROG_MAIN, stat::SIMULATED_NOT_RUN));
    } else {
        // Every run, armed or not, of any socket: user space compares this
        // with a perf counter of the tracepoint's firings.
        bump(stat_index(PROG_MAIN, stat::RUNS));
    }
    if skip {
        // Behave exactly like a skipped run: leave no identity.
        bump(stat_index(PROG_MAIN, stat::SIMULATED_SKIP));
    } else {
        // Pushed even while not armed, so that at the arming (and disarming)
        // edge the catcher never takes a transition for a skipped one; and
        // for a simulated not-run, so that the catcher leaves it alone too.
        let mut top = r.top as usize;
        if top >= RECENT_SLOTS && r.depth == 1 && r.catcher_depth == 0 {
            // Full of stale identities: pushed where the kernel skipped the
            // catcher in its own prologue or epilogue, which catcher_depth
            // cannot see, and nothing else takes them while armed. Left
            // full, every later firing would go unpushed and its catcher
            // would deliver it again: start over, at the risk of the wipe
            // above for a firing whose catcher has not run yet.
            bump(stat_index(PROG_MAIN, stat::RECENT_FULL));
            r.top = 0;
            top = 0;
        }
        if top < RECENT_SLOTS {
            r.ids[top] = transition_id(args.0, args.1, args.2);
            r.top += 1;
        } else {
            bump(stat_index(PROG_MAIN, stat::RECENT_FULL));
        }
        if armed
            && !not_run
            && let Some(t) = read_btf(&ctx, args, cfg, PROG_MAIN, &mut r.net[PROG_MAIN as usize])
        {
            handle(PROG_MAIN, &t, cfg, 0, true);
        }
    }
    r.depth -= 1;
    0
}

/// Fault injection (test builds): whether this run acts as never run, or as
/// skipped. The two are exclusive: a run both skipped and never run would
/// be caught by the catcher and still counted as not run.
#[cfg(feature = "fault-injection")]
#[inline(always)]
fn simulated(r: &mut Recent, cfg: &ProbeConfig, armed: bool) -> (bool, bool) {
    let seq = r.next;
    r.next = seq.wrapping_add(1);
    let not_run_every = cfg.simulate_not_run_every as u64;
    let not_run = armed && not_run_every != 0 && seq % not_run_every == 0;
    let every = cfg.simulate_skip_every as u64;
    let skip = !not_run && armed && every != 0 && seq % every == 0;
    (not_run, skip)
}

/// The production object injects nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
fn simulated(_: &mut Recent, _: &ProbeConfig, _: bool) -> (bool, bool) {
    (false, false)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpwatch_catch(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    if cfg.hook != HOOK_BTF {
        return 0;
    }
    let Some(r) = RECENT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, see tcpwatch_main.
    let r = unsafe { &mut *r };
    let args = btf_args(&ctx, &mut r.sk_slot[PROG_CATCHER as usize]);
    r.catcher_depth += 1;
    let id = transition_id(args.0, args.1, args.2);
    let mut found = false;
    let top = r.top;
    let mut keep = top;
    // Top down, over constant indices (a form the verifier bounds).
    for j in 0..RECENT_SLOTS {
        let i = RECENT_SLOTS - 1 - j;
        if (i as u64) < top && r.ids[i] == id {
            // The main program handled it (the normal case). Entries above
            // belong to nested runs that have finished: drop them too.
            keep = i as u64;
            r.top = keep;
            found = true;
            break;
        }
    }
    if !found && armed() {
        bump(stat_index(PROG_CATCHER, stat::CAUGHT));
        if let Some(t) = read_btf(
            &ctx,
            args,
            cfg,
            PROG_CATCHER,
            &mut r.net[PROG_CATCHER as usize],
        ) {
            handle(PROG_CATCHER, &t, cfg, FLAG_CAUGHT, false);
        }
    }
    // Identities pushed by main runs nested in this one are stale: their
    // own catcher runs were skipped (the catcher never nests in itself).
    r.top = keep;
    r.catcher_depth -= 1;
    0
}

/// Counts-only mode (`daemon --counts-only`): per (namespace, error at
/// close, state pair), summed per CPU. User space reads it every tick.
/// Sized by user space: `COUNT_KEYS` in that mode, one slot otherwise.
#[map]
static COUNTS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(1, 0);

/// The counts program's last namespace seen on each CPU (see `sk_netns_seen`).
#[map]
static COUNT_NET: PerCpuArray<NetSeen> = PerCpuArray::with_max_entries(1, 0);

/// The counts-only mode's one program, in the main program's place and
/// with its statistics slots: it counts each transition per namespace and
/// pair (and per error at close) in the kernel and sends nothing. No
/// catcher backs it: a run the kernel skips is counted by the kernel in
/// this program's `recursion_misses`, as lost. What the daemon then lacks
/// (owners, ports, durations, chains) is what per-event records give.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpwatch_count(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    if cfg.hook != HOOK_BTF {
        return 0;
    }
    // Every run, armed or not, as the main program counts them: the
    // witness compares this with the tracepoint's firings.
    bump(stat_index(PROG_MAIN, stat::RUNS));
    if !armed() {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let (old, new) = (ctx.arg::<i32>(1) as u8, ctx.arg::<i32>(2) as u8);
    // SAFETY: the BTF offset of `sk_protocol`, checked by user space and
    // by the verifier.
    let protocol: u16 = unsafe { field(sk, off32(&CONFIG.sk_protocol)) };
    let Some(seen) = COUNT_NET.get_ptr_mut(0) else {
        bump(stat_index(PROG_MAIN, stat::READ_FAILED));
        return 0;
    };
    // SAFETY: `sk` is the hook's socket argument; `seen` is this CPU's
    // value, this program's alone (it never nests in itself on one CPU).
    let netns = unsafe { sk_netns_seen(sk, cfg, &mut *seen) };
    if !admit(PROG_MAIN, protocol, netns, cfg) {
        return 0;
    }
    match transition_index(PROG_MAIN, old, new) {
        Some(i) => bump(i),
        None => bump(stat_index(PROG_MAIN, stat::BAD_STATE)),
    }
    let mut error = 0;
    if new == TCP_CLOSE && cfg.sk_err != 0 {
        // SAFETY: `sk_err` is an int at this BTF offset of struct sock.
        error = unsafe { field::<i32>(sk, off32(&CONFIG.sk_err)) } as u16;
    }
    if new == TCP_LISTEN || old == TCP_LISTEN && new == TCP_CLOSE {
        // The signal programs tell a server's side by its listener. A
        // listener bound to port 0 has released it by its close, so the
        // port is read as `read_btf` reads it.
        // SAFETY: `sk` is the hook's socket argument, at `count_skaddr`.
        let port = unsafe { local_port(PROG_MAIN, sk, cfg, || count_skaddr(&ctx)) };
        note_listener_at(PROG_MAIN, netns, port, new == TCP_LISTEN);
    }
    if old == TCP_SYN_SENT && new == TCP_CLOSE && cfg.socket_sk != 0 {
        // For the connect() that may be returning this failure, as the
        // main program does (`handle`).
        let end = ConnectEnd {
            // SAFETY: as in `read_btf`.
            cookie: unsafe { generated::bpf_get_socket_cookie(sk as *mut c_void) },
            had_error: u64::from(error != 0),
        };
        // The connect() program's key: the socket's address.
        if let Some(skaddr) = count_skaddr(&ctx) {
            let _ = CONNECT_ENDS.insert(&skaddr, &end, 0);
        }
    }
    let key = count_key(netns, error, old, new);
    if !count_in(&COUNTS, key) {
        // Counted per pair above, in no namespace: user space reports it
        // as unattributed.
        bump(stat_index(PROG_MAIN, stat::MAP_UPDATE_FAILED));
    }
    0
}

/// The socket's address as a number (see `btf_args`), through the main
/// program's slot, which is the counts program's alone in its mode.
#[inline(always)]
fn count_skaddr(ctx: &BtfTracePointContext) -> Option<u64> {
    let r = RECENT.get_ptr_mut(0)?;
    // SAFETY: this CPU's value of a per-CPU array, valid for the run.
    Some(btf_args(ctx, unsafe { &mut (*r).sk_slot[PROG_MAIN as usize] }).0)
}

/// One more for `key` in this CPU's value of a per-CPU hash; false when
/// the key is new and the map full. The caller is the map's one program,
/// which never nests in itself on one CPU.
#[inline(always)]
fn count_in(map: &PerCpuHashMap<u64, u64>, key: u64) -> bool {
    match map.get_ptr_mut(&key) {
        Some(n) => {
            // SAFETY: this CPU's value for the key, valid for the run; no
            // other run of the calling program touches it meanwhile.
            unsafe { *n += 1 };
            true
        }
        None => map.insert(&key, &1, 0).is_ok(),
    }
}

/// The bench's floor (`tcpwatch floor`, never loaded otherwise): what any
/// program on this hook costs at least, counting every transition and
/// doing nothing else.
#[map]
static FLOOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpwatch_floor(_ctx: BtfTracePointContext) -> i32 {
    if let Some(n) = FLOOR.get_ptr_mut(0) {
        // SAFETY: this CPU's value; the program never nests in itself on
        // one CPU (the kernel skips it instead).
        unsafe { *n += 1 };
    }
    0
}

/// The bench's keyed floor (`tcpwatch floor --keyed`, never loaded
/// otherwise): the least any in-kernel aggregation costs. It reads what a
/// count per namespace needs (protocol, namespace, the two states) and
/// bumps that key's count in a per-CPU hash, nothing else: no port, no
/// owner, no catcher.
#[map]
static FLOOR_KEYED: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// The keyed floor's last namespace seen on each CPU (see `sk_netns_seen`).
#[map]
static FLOOR_NET: PerCpuArray<NetSeen> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpwatch_floor_keyed(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: the BTF offset of `sk_protocol`, checked by user space and
    // by the verifier.
    let protocol: u16 = unsafe { field(sk, off32(&CONFIG.sk_protocol)) };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        return 0;
    }
    let Some(seen) = FLOOR_NET.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `sk` is the hook's socket argument; `seen` is this CPU's
    // value, this program's alone (it never nests in itself on one CPU).
    let netns = unsafe { sk_netns_seen(sk, cfg, &mut *seen) };
    let key = floor_key(netns, ctx.arg::<i32>(1) as u8, ctx.arg::<i32>(2) as u8);
    // A full map shows as transitions the bench finds uncounted.
    let _ = count_in(&FLOOR_KEYED, key);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tcpwatch_classic(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.hook != HOOK_CLASSIC || !armed() {
        return 0;
    }
    if let Some(t) = read_classic(&ctx, cfg) {
        // The ring buffer: nothing keeps this program from nesting in
        // itself on older kernels, and a lane has one producer.
        handle(PROG_MAIN, &t, cfg, 0, false);
    }
    0
}

/// In-kernel counters of resets, SYN-ACK retransmits and early connect
/// failures (see `tcpwatch_common::signal`). A plain hash, not LRU: an
/// entry is never evicted, so no count silently vanishes; once it is full,
/// new keys are counted in `SIGNAL_STATS.unkeyed`, so totals stay exact.
#[map]
static SIGNALS: PerCpuHashMap<SignalKey, u64> =
    PerCpuHashMap::with_max_entries(tcpwatch_common::SIGNAL_KEYS, 0);

#[map]
static SIGNAL_STATS: PerCpuArray<SignalStats> = PerCpuArray::with_max_entries(1, 0);

/// Counts one signal in `SIGNAL_STATS` (`unkeyed`, or `read_failed`).
#[inline(always)]
fn signal_stat(read_failed: bool, kind: u16) {
    let k = kind as usize;
    if k >= signal::COUNT {
        return;
    }
    if let Some(p) = SIGNAL_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's value of a per-CPU array, `k` in bounds. Each
        // kind is counted by programs that never run nested in each other
        // on one CPU (the kernel skips a program that would nest in itself;
        // the two connect programs run in process context, one after the
        // other), so this read-modify-write is not interrupted by another.
        unsafe {
            if read_failed {
                (*p).read_failed[k] += 1;
            } else {
                (*p).unkeyed[k] += 1;
            }
        }
    }
}

/// Adds one to this CPU's counter of `key`.
#[inline(always)]
fn count_signal(key: &SignalKey) {
    let cfg = config();
    if cfg.filter_netns != 0 && key.netns != cfg.filter_netns {
        return;
    }
    if let Some(p) = SIGNALS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of the entry (see signal_stat on why
        // nothing interrupts the increment).
        unsafe { *p += 1 };
        return;
    }
    // NOEXIST: another CPU may have created the entry meanwhile; a new
    // entry's other CPUs start at zero.
    if SIGNALS
        .insert(key, &1, aya_ebpf::bindings::BPF_NOEXIST as u64)
        .is_ok()
    {
        return;
    }
    match SIGNALS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(p) => unsafe { *p += 1 },
        None => signal_stat(false, key.kind),
    }
}

/// Network namespace inode of a socket of any kind (`skc_net` is in
/// `sock_common`, which request and TIME-WAIT sockets share), 0 if unknown.
///
/// # Safety
/// `sk` must be a non-NULL BTF `struct sock *` argument of the hook.
#[inline(always)]
unsafe fn sk_netns(sk: *const u8, cfg: &ProbeConfig) -> u32 {
    if cfg.netns_readable == 0 {
        return 0;
    }
    // SAFETY: as this function's.
    let net = unsafe { sk_net(sk) };
    if net.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL `struct net` of the socket.
    unsafe { net_inum(net) }
}

/// The inode number of namespace `net`.
///
/// # Safety
/// `net` must be a non-NULL `struct net` read from a socket.
#[inline(always)]
unsafe fn net_inum(net: *const u8) -> u32 {
    // SAFETY: `ns.inum` is a u32 at this BTF offset of struct net, checked
    // by user space and by the verifier.
    unsafe { field(net, off32(&CONFIG.net_ns_inum)) }
}

/// The socket's `struct net` (NULL if none).
///
/// # Safety
/// As `sk_netns`, with `netns_readable` set.
#[inline(always)]
unsafe fn sk_net(sk: *const u8) -> *const u8 {
    // SAFETY: `skc_net` is a pointer at this BTF offset of struct sock.
    unsafe { field(sk, off(&CONFIG.sk_net)) }
}

/// As `sk_netns`, through `seen`, the last namespace this program saw on
/// this CPU: a socket of the same namespace (same cookie) costs no read of
/// the inode's cache line, which other CPUs keep writing (see
/// `ProbeConfig::net_cookie`).
///
/// # Safety
/// As `sk_netns`.
#[inline(always)]
unsafe fn sk_netns_seen(sk: *const u8, cfg: &ProbeConfig, seen: &mut NetSeen) -> u32 {
    if cfg.netns_readable == 0 || cfg.net_cookie == 0 {
        // SAFETY: as this function's.
        return unsafe { sk_netns(sk, cfg) };
    }
    // SAFETY: as this function's.
    let net = unsafe { sk_net(sk) };
    if net.is_null() {
        return 0;
    }
    // SAFETY (all): `net` is the socket's non-NULL `struct net`, and
    // `net_cookie` a u64 at this BTF offset of it, checked by user space
    // and by the verifier.
    unsafe {
        let cookie: u64 = field(net, off32(&CONFIG.net_cookie));
        if cookie == 0 {
            // Not made yet (kernels before 5.12 make it on first use).
            return net_inum(net);
        }
        if cookie != seen.cookie {
            // `seen` is this program's alone on this CPU (it never nests
            // in itself), so the pair is never torn.
            seen.cookie = cookie;
            seen.inum = u64::from(net_inum(net));
        }
        seen.inum as u32
    }
}

/// The local port of a socket in a transition: `skc_num` in place while
/// the socket holds its port (it is then `inet_sport`, which the classic
/// tracepoint reads). When 0 (no port yet, or released just before
/// `-> CLOSE`, where `inet_sport` keeps it), `inet_sport` through the
/// socket seen as a `struct tcp_sock` (a helper call, the cast), or a
/// helper read at its address (`skaddr`, asked only then) for MPTCP's own
/// socket, which is no tcp_sock.
///
/// # Safety
/// As `sk_netns`; `skaddr` gives `sk`'s address.
#[inline(always)]
unsafe fn local_port(
    prog: u32,
    sk: *const u8,
    cfg: &ProbeConfig,
    skaddr: impl FnOnce() -> Option<u64>,
) -> u16 {
    let num: u16 = if cfg.sk_num != 0 {
        // SAFETY: `skc_num` is a u16 at this BTF offset of struct sock.
        unsafe { field(sk, off(&CONFIG.sk_num)) }
    } else {
        0
    };
    if num != 0 {
        return num;
    }
    // SAFETY: as this function's.
    match unsafe { tcp_local_port(sk) } {
        Some(port) => port,
        None => skaddr()
            .and_then(|a| read_kernel::<u16>(prog, a + cfg.inet_sport as u64))
            .map_or(0, u16::from_be),
    }
}

/// Local port of a full TCP socket, `None` for any other kind.
///
/// # Safety
/// As `sk_netns`.
#[inline(always)]
unsafe fn tcp_local_port(sk: *const u8) -> Option<u16> {
    // SAFETY: the helper checks the socket's type itself.
    let tp = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut c_void) };
    if tp.is_null() {
        return None;
    }
    // SAFETY: `inet_sport` is a u16 at this BTF offset of struct inet_sock,
    // which starts struct tcp_sock.
    let be: u16 = unsafe { field(tp as *const u8, off32(&CONFIG.inet_sport)) };
    Some(u16::from_be(be))
}

/// Where a signal of a socket is counted: under its local port for a
/// server's socket, under the remote port for a client's (as transitions
/// are). A socket whose local port is listening in its namespace is taken
/// for a server's (a client bound to a listening port's number is counted
/// there too); a packet that found no socket at all, or a listener's own
/// signal (`local_side`), is a local port's.
#[inline(always)]
fn signal_key(netns: u32, kind: u16, local_side: bool, local: u16, remote: u16) -> SignalKey {
    // SAFETY: the value is not kept.
    let inbound = local_side || unsafe { LISTENERS.get(&listener_key(netns, local)) }.is_some();
    SignalKey {
        netns,
        tgid: 0,
        kind,
        errno: 0,
        port: if inbound { local } else { remote },
        direction: if inbound { DIR_IN } else { DIR_OUT },
        comm: zeroed(),
    }
}

/// A signal of full TCP socket `sk` (a reset received or sent by it, a
/// SYN-ACK its listener retransmitted).
#[inline(always)]
fn socket_signal(sk: *const u8, kind: u16, cfg: &ProbeConfig, listener: bool) {
    if sk.is_null() {
        signal_stat(true, kind);
        return;
    }
    // SAFETY: a non-NULL socket argument of the hook.
    let Some(local) = (unsafe { tcp_local_port(sk) }) else {
        signal_stat(true, kind);
        return;
    };
    // SAFETY: as above; `skc_dport` is a big-endian u16 at this offset.
    let (netns, remote) = unsafe {
        (
            sk_netns(sk, cfg),
            u16::from_be(field::<u16>(sk, off(&CONFIG.sk_dport))),
        )
    };
    // A listener's signal is its port's, inbound, whether or not the
    // probe saw it start listening (one older than the daemon, in a
    // namespace other than the daemon's, is in no seeded table).
    count_signal(&signal_key(netns, kind, listener, local, remote));
}

/// `tcp:tcp_receive_reset(sk)`: a reset arrived for one of our sockets.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcpwatch_rst_in(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    if cfg.hook == HOOK_BTF && armed() {
        socket_signal(ctx.arg(0), signal::RST_RECEIVED, cfg, false);
    }
    0
}

/// `tcp:tcp_retransmit_synack(sk, req)`: `sk` is the listener.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcpwatch_synack(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    if cfg.hook == HOOK_BTF && armed() {
        socket_signal(ctx.arg(0), signal::SYNACK_RETRANSMIT, cfg, true);
    }
    0
}

/// `tcp:tcp_send_reset(sk, skb, ...)`. With `skb`, the reset answers that
/// packet, whose ports are ours reversed; without a socket (a closed port)
/// its device says the namespace. Without `skb`, a full socket aborts its
/// own connection.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcpwatch_rst_out(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    if cfg.hook != HOOK_BTF || !armed() {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if skb.is_null() {
        socket_signal(sk, signal::RST_SENT, cfg, false);
        return 0;
    }
    if cfg.skb_data == 0 {
        signal_stat(true, signal::RST_SENT);
        return 0;
    }
    // SAFETY: `data` is a pointer at this BTF offset of struct sk_buff;
    // when the reset is sent it points at the TCP header of the packet
    // answered: source port at byte 0, destination (ours) at byte 2.
    let data: u64 = unsafe { field(skb, off32(&CONFIG.skb_data)) };
    let Some(ports) = read_kernel_quiet::<[u16; 2]>(data) else {
        signal_stat(true, signal::RST_SENT);
        return 0;
    };
    let netns = if sk.is_null() {
        // SAFETY: `skb` is the hook's non-NULL packet argument.
        unsafe { skb_netns(skb, cfg) }
    } else {
        // SAFETY: a non-NULL socket argument of the hook (any kind: its
        // sock_common is all that is read).
        unsafe { sk_netns(sk, cfg) }
    };
    let key = signal_key(
        netns,
        signal::RST_SENT,
        sk.is_null(),
        u16::from_be(ports[1]),
        u16::from_be(ports[0]),
    );
    count_signal(&key);
    0
}

/// Namespace of a received packet, by its device (0 if unknown).
///
/// # Safety
/// `skb` must be NULL or the hook's BTF `struct sk_buff *` argument.
#[inline(always)]
unsafe fn skb_netns(skb: *const u8, cfg: &ProbeConfig) -> u32 {
    if skb.is_null() || cfg.skb_dev == 0 || cfg.netns_readable == 0 {
        return 0;
    }
    // SAFETY: see the caller.
    unsafe {
        let dev: *const u8 = field(skb, off32(&CONFIG.skb_dev));
        if dev.is_null() {
            return 0;
        }
        let net: *const u8 = field(dev, off32(&CONFIG.dev_nd_net));
        if net.is_null() {
            return 0;
        }
        field(net, off32(&CONFIG.net_ns_inum))
    }
}

/// Reads a `T` at kernel address `addr` without counting a failure in the
/// transition statistics (the signal programs count their own).
#[inline(always)]
fn read_kernel_quiet<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the source address itself.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Per socket, the cookie of the socket whose SYN-SENT -> CLOSE was last
/// seen at that address, and whether it carried an error: the connect()
/// returning that failure must not count it again.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConnectEnd {
    cookie: u64,
    had_error: u64,
}

#[map]
static CONNECT_ENDS: LruHashMap<u64, ConnectEnd> = LruHashMap::with_max_entries(8192, 0);

/// Offset of `ret` in the `syscalls:sys_exit_connect` record (checked by
/// user space against its format file before the program acts).
const SYS_RET: usize = 16;

/// The socket behind the current task's file descriptor `fd` (which the
/// caller knows is a socket), as a kernel address.
#[inline(always)]
fn socket_of_fd(cfg: &ProbeConfig, fd: u64) -> Option<u64> {
    // SAFETY: a helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files = read_kernel_quiet::<u64>(task + cfg.task_files as u64)?;
    let fdt = read_kernel_quiet::<u64>(files + cfg.files_fdt as u64)?;
    let max = read_kernel_quiet::<u32>(fdt + cfg.fdt_max_fds as u64)?;
    if fd >= max as u64 {
        return None;
    }
    let fds = read_kernel_quiet::<u64>(fdt + cfg.fdt_fd as u64)?;
    let file = read_kernel_quiet::<u64>(fds + 8 * fd)?;
    let socket = read_kernel_quiet::<u64>(file + cfg.file_private_data as u64)?;
    let sk = read_kernel_quiet::<u64>(socket + cfg.socket_sk as u64)?;
    (sk != 0).then_some(sk)
}

/// Not failures of a connect(): in progress (non-blocking, or interrupted
/// and going on in the background: EINTR, or ERESTARTSYS as the syscall's
/// exit still sees it), already connected; and not TCP's at all: a bad fd
/// or one that is no socket.
const CONNECT_NOT_FAILED: [i64; 7] = [-115, -114, -4, -512, -106, -9, -88];

/// `syscalls:sys_exit_connect(ret)`: a TCP connect() that failed, when no
/// transition carried its error. Only the return value is read on the way
/// out of every connect(); a failure reads the call's arguments back from
/// the task's saved registers (a program at the syscall's entry too cost
/// ~1 us per connect() here, most of it a hash update). Where the kernel
/// allows fexit, `tcpwatch_connect_fexit` is attached instead.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn tcpwatch_connect_exit(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.hook != HOOK_BTF || cfg.socket_sk == 0 || cfg.task_files == 0 {
        return 0;
    }
    // SAFETY: `ret` is an aligned 8-byte word at this offset of the
    // record (checked by user space), which a tracepoint program may load
    // directly (the verifier checks the offset against the record's
    // bounds); no helper call on the way out of every connect().
    let ret: i64 =
        unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(SYS_RET).cast()) };
    if ret >= 0 || CONNECT_NOT_FAILED.contains(&ret) || !armed() {
        return 0;
    }
    // SAFETY: helpers without preconditions; the task is the current one.
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as u64 };
    let (Some(fd), Some(uaddr)) = (
        read_kernel_quiet::<u64>(regs + cfg.regs_arg0 as u64),
        read_kernel_quiet::<u64>(regs + cfg.regs_arg1 as u64),
    ) else {
        signal_stat(true, signal::CONNECT_FAILED);
        return 0;
    };
    let Some(sk) = socket_of_fd(cfg, fd) else {
        signal_stat(true, signal::CONNECT_FAILED);
        return 0;
    };
    connect_failed(cfg, sk, ret, || {
        // The destination's port: byte 2 of sockaddr_in and sockaddr_in6.
        // SAFETY: a checked read of the caller's own memory.
        unsafe { aya_ebpf::helpers::bpf_probe_read_user((uaddr + 2) as *const u16) }.unwrap_or(0)
    });
    0
}

/// fexit on `inet_stream_connect(sock, uaddr, addr_len, flags)`, the TCP
/// connect of every caller (and MPTCP's from 6.3): what
/// `tcpwatch_connect_exit` does, run per connect() only (a program on a
/// syscall tracepoint sends every system call of every task through the
/// kernel's tracing path), with the socket and the kernel's copy of the
/// address as arguments. Only sockets with a file: a kernel socket's
/// connect is no process's, and before 6.3 MPTCP connects its subflow's
/// socket (no file) through here, where the MPTCP socket's own
/// SYN-SENT -> CLOSE already counts the failure.
#[fexit(function = "inet_stream_connect")]
pub fn tcpwatch_connect_fexit(ctx: FExitContext) -> u32 {
    let cfg = config();
    if cfg.hook != HOOK_BTF || cfg.socket_sk == 0 || cfg.socket_file == 0 {
        return 0;
    }
    // The return value follows the four arguments; an int, so its low 32
    // bits (read from the context, not with bpf_get_func_ret: 5.17+).
    let ret = i64::from(ctx.arg::<u64>(4) as u32 as i32);
    if ret >= 0 || CONNECT_NOT_FAILED.contains(&ret) || !armed() {
        return 0;
    }
    let (sock, uaddr): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if read_kernel_quiet::<u64>(sock + cfg.socket_file as u64).unwrap_or(0) == 0 {
        return 0;
    }
    let Some(sk) = read_kernel_quiet::<u64>(sock + cfg.socket_sk as u64).filter(|&sk| sk != 0)
    else {
        signal_stat(true, signal::CONNECT_FAILED);
        return 0;
    };
    // The destination's port: byte 2 of sockaddr_in and sockaddr_in6.
    connect_failed(cfg, sk, ret, || {
        read_kernel_quiet::<u16>(uaddr + 2).unwrap_or(0)
    });
    0
}

/// Counts a failed connect() of socket `sk` (errno `-ret`) unless its
/// SYN-SENT -> CLOSE carried the error; `port_be` reads the destination
/// port (network order) when it is counted.
#[inline(always)]
fn connect_failed(cfg: &ProbeConfig, sk: u64, ret: i64, port_be: impl FnOnce() -> u16) {
    let protocol = read_kernel_quiet::<u16>(sk + cfg.sk_protocol as u64).unwrap_or(0);
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        return;
    }
    let cookie = read_kernel_quiet::<u64>(sk + cfg.sk_cookie as u64).unwrap_or(0);
    // SAFETY: the value is copied out at once.
    let end = unsafe { CONNECT_ENDS.get(&sk) }.copied();
    let _ = CONNECT_ENDS.remove(&sk);
    let kind = match end {
        // This socket's SYN-SENT -> CLOSE carried the error: counted there.
        Some(e) if cookie != 0 && e.cookie == cookie && e.had_error != 0 => return,
        // It counted the failure, without an errno.
        Some(e) if cookie != 0 && e.cookie == cookie => signal::CONNECT_ERRNO,
        _ => signal::CONNECT_FAILED,
    };
    let netns = match read_kernel_quiet::<u64>(sk + cfg.sk_net as u64) {
        Some(net) if net != 0 && cfg.netns_readable != 0 => {
            read_kernel_quiet::<u32>(net + cfg.net_ns_inum as u64).unwrap_or(0)
        }
        _ => 0,
    };
    let key = SignalKey {
        netns,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        kind,
        errno: ret.unsigned_abs() as u16,
        port: u16::from_be(port_be()),
        direction: DIR_OUT,
        comm: current_comm(),
    };
    count_signal(&key);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and tp_btf programs need it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
