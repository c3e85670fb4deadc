//! Plain data shared by the eBPF programs and user space: the transition
//! event, the probe configuration user space fills in before load, the layout
//! of the per-CPU statistics array, and the TCP state numbers and names.
//!
//! One source of truth: nothing else in tcpwatch re-declares these. The crate
//! is `no_std`; the `user` feature adds `aya::Pod` impls for user space.
#![no_std]

pub mod state;

pub use state::TcpState;

/// Bumped whenever the layout of [`TransitionEvent`], [`ProbeConfig`]
/// or the statistics array changes. The eBPF object carries it in
/// its configuration; user space refuses to run an object of another version.
pub const LAYOUT_VERSION: u32 = 8;

/// `sk_protocol` values the programs report (everything else is ignored).
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_MPTCP: u16 = 262;

/// Address families as the kernel reports them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// [`TransitionEvent::flags`]: the owner fields are meaningful: the
/// transition ran in its owner's context (a system call of the process
/// holding the socket). Without it user space follows the owner from the
/// socket's earlier transitions (never the softirq's interrupted task).
pub const FLAG_OWNER_KNOWN: u16 = 1 << 0;
/// [`TransitionEvent::flags`]: delivered by the catcher program because the
/// kernel skipped the main program for this transition (recursion guard).
pub const FLAG_CAUGHT: u16 = 1 << 2;

/// A task's command name as the kernel keeps it: 16 bytes, NUL-padded.
///
/// 8-byte aligned on purpose: BPF has no unaligned loads, so the programs
/// copy a plain `[u8; 16]` one byte at a time (32 instructions per copy, and
/// an event's comm is copied several times); aligned, it is two words. The
/// fields that hold it sit at 8-byte offsets, so the layouts do not change.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskComm(pub [u8; 16]);

/// What every ring-buffer record starts with: its kind and size, so user
/// space dispatches records of several kinds (and counts the ones it does
/// not know) without guessing from sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// The whole record's size in bytes, header included.
    pub size: u16,
    pub _pad: u32,
}

/// Record kinds ([`EventHeader::kind`]).
pub mod kind {
    /// A [`super::TransitionEvent`].
    pub const TRANSITION: u16 = 1;
    /// A header alone, in a CPU's ring buffer: that CPU's lane (see
    /// [`super::LanePos`]) just filled to its wakeup mark. It only wakes
    /// user space; it is no transition.
    pub const LANE_WAKE: u16 = 2;
}

/// One CPU's lane: the main program's transitions, in a ring of
/// `ProbeConfig::lane_slots` events in a memory-mapped array that user
/// space reads in place (a BPF ring buffer record, reserved and submitted,
/// cost ~110 ns per event here; a lane costs two loads and a store).
/// `head` is written only by the main program, which never runs nested in
/// itself on one CPU (the kernel skips it instead: the catcher's case,
/// which uses the ring buffer), and `tail` only by user space; each on a
/// cache line of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanePos {
    /// Events written so far (the next slot is `head % lane_slots`).
    pub head: u64,
    /// The program's last read of `tail`, kept beside `head`: it reads
    /// `tail` again only near the wake mark, not on every event (each read
    /// after user space moved it was a cache miss).
    pub tail_seen: u64,
    pub _pad: [u64; 6],
    /// Events user space has read so far.
    pub tail: u64,
    pub _pad2: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<LanePos>() == 128);

/// One TCP state transition, as written into a lane or a ring buffer.
///
/// Addresses are in network byte order, IPv4 in the first 4 bytes; ports in
/// host byte order. `ts_ns` is `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    /// `kind::TRANSITION`, `size_of::<TransitionEvent>()`.
    pub header: EventHeader,
    pub ts_ns: u64,
    pub skaddr: u64,
    /// Inode number of the socket's network namespace, 0 if unreadable.
    pub netns: u32,
    /// Owner thread id and process id, valid with `FLAG_OWNER_KNOWN`.
    pub pid: u32,
    pub tgid: u32,
    pub oldstate: u8,
    pub newstate: u8,
    pub family: u16,
    pub protocol: u16,
    pub sport: u16,
    pub dport: u16,
    pub flags: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: TaskComm,
    /// At `-> CLOSE`: the socket's `sk_err` (ECONNREFUSED, ETIMEDOUT,
    /// EHOSTUNREACH, ECONNRESET...), which the kernel sets before the
    /// transition; 0 for a close without error and for other transitions.
    pub error: u16,
    /// Two fields, not a `[u16; 3]`: the program's struct literal made an
    /// array of zeroes a call of its byte-wise `memset`.
    pub _pad2: u16,
    pub _pad3: u32,
}

const _: () = assert!(core::mem::size_of::<TransitionEvent>() == 104);
const _: () = assert!(core::mem::align_of::<TransitionEvent>() == 8);

/// Keys the counts-only mode's map holds (`daemon --counts-only`): about
/// 30 per namespace (state pairs, and errors at close) for 256 namespaces.
/// User space deletes a namespace's keys once it is gone.
pub const COUNT_KEYS: u32 = 8192;

/// Key of the counts-only mode's map: network namespace, the error a
/// socket closed with (`sk_err` at `-> CLOSE`, else 0), and state pair.
pub const fn count_key(netns: u32, error: u16, old: u8, new: u8) -> u64 {
    ((netns as u64) << 32) | ((error as u64) << 16) | ((old as u64) << 8) | new as u64
}

/// The parts of a [`count_key`]: (netns, error, old, new).
pub const fn count_key_parts(key: u64) -> (u32, u16, u8, u8) {
    (
        (key >> 32) as u32,
        (key >> 16) as u16,
        (key >> 8) as u8,
        key as u8,
    )
}

/// Key of the bench's keyed floor (`tcpwatch floor --keyed`): network
/// namespace and state pair.
pub const fn floor_key(netns: u32, old: u8, new: u8) -> u64 {
    ((netns as u64) << 16) | ((old as u64) << 8) | new as u64
}

/// Key of the listening-port map: network namespace and local port.
pub const fn listener_key(netns: u32, port: u16) -> u64 {
    ((netns as u64) << 16) | port as u64
}

/// Which hook the loaded program reads its arguments from.
pub const HOOK_BTF: u32 = 1;
pub const HOOK_CLASSIC: u32 = 2;

/// Bytes of the classic tracepoint record the fallback program copies.
pub const TP_RECORD_READ: usize = 72;

/// Configuration user space writes into the program's read-only data before
/// load: offsets come from the running kernel (BTF, or the tracepoint's
/// format file), never from headers compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub layout_version: u32,
    /// `HOOK_BTF` or `HOOK_CLASSIC`; 0 means "not configured": programs do nothing.
    pub hook: u32,
    /// Only transitions in this network namespace are counted and emitted (0: all).
    pub filter_netns: u32,
    /// 1 when `sk_net`/`net_ns_inum` are valid.
    pub netns_readable: u32,
    // Offsets in `struct sock`, for HOOK_BTF: the program reads these fields
    // in place, and the verifier checks each access against BTF.
    pub sk_family: u16,
    /// `skc_num`, the local port in host order: equal to `inet_sport`
    /// while the port is held, read in place where `inet_sport` (past
    /// `struct sock`) needs a helper call.
    pub sk_num: u16,
    pub sk_dport: u16,
    pub sk_rcv_saddr: u16,
    pub sk_daddr: u16,
    pub sk_v6_rcv_saddr: u16,
    pub sk_v6_daddr: u16,
    pub sk_net: u16,
    /// Offset of the u16 `sk_protocol` in `struct sock` (outside sock_common).
    pub sk_protocol: u32,
    /// Offset of `ns.inum` in `struct net`.
    pub net_ns_inum: u32,
    /// Offset of the big-endian `inet_sport` in `struct inet_sock`: the local
    /// port survives there after `skc_num` is cleared when the port is
    /// released (just before `-> CLOSE`), as the classic tracepoint reads it.
    pub inet_sport: u32,
    /// Events are submitted without waking user space (a wakeup is an IPI,
    /// a VM exit on virtual machines: microseconds per event), except once
    /// when the unread data crosses this many bytes. User space also polls.
    pub wakeup_bytes: u32,
    // Offsets in the classic tracepoint record (within `TP_RECORD_READ`), for HOOK_CLASSIC.
    pub tp_skaddr: u16,
    pub tp_oldstate: u16,
    pub tp_newstate: u16,
    pub tp_sport: u16,
    pub tp_dport: u16,
    pub tp_family: u16,
    pub tp_protocol: u16,
    pub tp_saddr: u16,
    pub tp_daddr: u16,
    pub tp_saddr_v6: u16,
    pub tp_daddr_v6: u16,
    /// Fault injection for tests: when non-zero, every n-th armed run of the
    /// main program on each CPU acts as if the kernel had never run the
    /// programs for that firing (no run counted, nothing handled, the
    /// catcher kept out): only the perf witness can see those. Always 0 in
    /// normal use.
    pub simulate_not_run_every: u16,
    /// Fault injection for tests: when non-zero, the main program acts as if
    /// the kernel skipped every n-th run on each CPU (the catcher must then
    /// handle exactly those). Always 0 in normal use.
    pub simulate_skip_every: u32,
    /// Offset of `flags` in `struct task_struct` (0: unknown). A transition
    /// made by a kernel thread (deferred fput, MPTCP path manager, a socket
    /// destroyed by `ss -K`) does not name the owner even in syscall paths.
    pub task_flags: u32,
    /// Offset of the int `sk_err` in `struct sock` (0: unknown, no errors).
    pub sk_err: u32,
    /// Offsets in `struct sk_buff` of `data` and `dev`, and of `nd_net.net`
    /// in `struct net_device`: a reset sent for a packet no socket wants
    /// has only that packet to say port and namespace (0: unknown).
    pub skb_data: u32,
    pub skb_dev: u32,
    pub dev_nd_net: u32,
    /// From a task to the socket behind one of its file descriptors:
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`,
    /// `fdtable.max_fds`, `file.private_data`, `socket.sk` (0: unknown,
    /// early connect failures are not counted).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// Where `struct pt_regs` keeps a system call's first two arguments
    /// after it returns (x86-64: `di`, `si`; 0: unknown, as above).
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    /// Offset of `skc_cookie` in `struct sock` (0: unknown, as above).
    pub sk_cookie: u32,
    /// Events in each CPU's lane (a power of two), 0 for none: then the
    /// main program writes to the ring buffers too.
    pub lane_slots: u32,
    /// Offset of the u64 `net_cookie` in `struct net` (0: unknown). It is
    /// never reused and sits in a read-mostly cache line, where `ns.inum`
    /// shares one with the namespace's reference count, which every socket
    /// created or freed writes: the programs read the cookie and keep the
    /// last (cookie, inode) pair per CPU (`Recent::net`).
    pub net_cookie: u32,
    /// Offsets of `pid` (with `tgid` right after it) and `comm` in
    /// `struct task_struct` (0: unknown, read by helpers instead).
    pub task_pid: u32,
    pub task_comm: u32,
    /// Offset of `file` in `struct socket` (0: unknown): the fexit connect
    /// program counts only sockets with a file (not kernel sockets, nor
    /// MPTCP's subflows, whose MPTCP socket is counted).
    pub socket_file: u32,
}

const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 152);

impl ProbeConfig {
    /// The configuration compiled into the object: inert until user space
    /// overrides it.
    pub const UNSET: ProbeConfig = ProbeConfig {
        layout_version: LAYOUT_VERSION,
        hook: 0,
        filter_netns: 0,
        netns_readable: 0,
        sk_family: 0,
        sk_num: 0,
        sk_dport: 0,
        sk_rcv_saddr: 0,
        sk_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_v6_daddr: 0,
        sk_net: 0,
        sk_protocol: 0,
        net_ns_inum: 0,
        inet_sport: 0,
        wakeup_bytes: 0,
        tp_skaddr: 0,
        tp_oldstate: 0,
        tp_newstate: 0,
        tp_sport: 0,
        tp_dport: 0,
        tp_family: 0,
        tp_protocol: 0,
        tp_saddr: 0,
        tp_daddr: 0,
        tp_saddr_v6: 0,
        tp_daddr_v6: 0,
        simulate_not_run_every: 0,
        simulate_skip_every: 0,
        task_flags: 0,
        sk_err: 0,
        skb_data: 0,
        skb_dev: 0,
        dev_nd_net: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_fd: 0,
        fdt_max_fds: 0,
        file_private_data: 0,
        socket_sk: 0,
        regs_arg0: 0,
        regs_arg1: 0,
        sk_cookie: 0,
        lane_slots: 0,
        net_cookie: 0,
        task_pid: 0,
        task_comm: 0,
        socket_file: 0,
    };
}

/// Kinds of [`SignalKey`]: what the signal programs count in the kernel,
/// per port or per process, instead of sending an event each (a reset
/// storm or a connect loop must not flood the ring buffer).
pub mod signal {
    /// A reset sent from local port `port` (`tcp:tcp_send_reset`).
    pub const RST_SENT: u16 = 1;
    /// A reset received by a socket on local port `port` (`tcp:tcp_receive_reset`).
    pub const RST_RECEIVED: u16 = 2;
    /// A SYN-ACK retransmitted by the listener on `port` (`tcp:tcp_retransmit_synack`).
    pub const SYNACK_RETRANSMIT: u16 = 3;
    /// A TCP `connect()` that failed before any SYN left, with no state
    /// transition at all (ENETUNREACH without a route, EINVAL, EACCES...):
    /// process `tgid` (`comm`), destination port `port`, `errno`.
    /// Failures after the SYN (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH) are
    /// in the transition's `error` instead.
    pub const CONNECT_FAILED: u16 = 4;
    /// A TCP `connect()` that failed after SYN-SENT -> CLOSE without an
    /// error on the socket (EADDRNOTAVAIL: no free local port): the
    /// transition counted the failure, this says its errno.
    pub const CONNECT_ERRNO: u16 = 5;
    /// Kinds are 1..COUNT; index 0 of [`super::SignalStats`] is unused.
    pub const COUNT: usize = 6;
}

/// Keys the signal table holds. User space walks all of them every read
/// (two syscalls a key, 7-8 ms for a full table here), and a full table
/// stays full: the probe never deletes, so no count can vanish.
pub const SIGNAL_KEYS: u32 = 4096;

/// Key of the in-kernel signal counters (a per-CPU hash, one u64 each).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignalKey {
    pub netns: u32,
    /// The process (`CONNECT_FAILED`), else 0.
    pub tgid: u32,
    /// One of [`signal`].
    pub kind: u16,
    /// The errno (`CONNECT_FAILED`), else 0.
    pub errno: u16,
    /// The port the signal is counted under, as transitions are: a
    /// server's local port (`DIR_IN`), or for a client's socket the remote
    /// port, its service's (`DIR_OUT`).
    pub port: u16,
    /// `DIR_IN` or `DIR_OUT`.
    pub direction: u16,
    /// The process's command (`CONNECT_*`), else zeros.
    pub comm: TaskComm,
}

/// [`SignalKey::direction`]: the port is local (a server's, or a closed
/// port a packet was sent to).
pub const DIR_IN: u16 = 0;
/// [`SignalKey::direction`]: the port is the remote one (a client's socket).
pub const DIR_OUT: u16 = 1;

const _: () = assert!(core::mem::size_of::<SignalKey>() == 32);

/// Per kind, signals counted but not keyed because the map was full (so
/// the totals stay exact), and signals the programs could not read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalStats {
    pub unkeyed: [u64; signal::COUNT],
    pub read_failed: [u64; signal::COUNT],
}

/// Programs that write statistics. Each has its own slots, because the
/// catcher runs nested inside the main program on the same CPU and a shared
/// per-CPU slot would lose increments (read-modify-write interrupted).
pub const PROG_MAIN: u32 = 0;
pub const PROG_CATCHER: u32 = 1;
pub const NUM_PROGS: u32 = 2;

/// Transition counters: one slot per (old, new) pair of states 0..16.
pub const STATE_SLOTS: u32 = 16;
pub const TRANSITION_SLOTS: u32 = STATE_SLOTS * STATE_SLOTS;

/// Per-program event counters that are not transitions.
pub mod stat {
    /// Events emitted into the ring buffer.
    pub const EMITTED: u32 = 0;
    /// `bpf_ringbuf_reserve` failed: the event is counted, not delivered.
    pub const RINGBUF_FULL: u32 = 1;
    /// A kernel read (`bpf_probe_read_kernel`) failed; the transition is still
    /// counted but its event lacks fields.
    pub const READ_FAILED: u32 = 2;
    /// The per-socket or listener map could not be updated (full, busy).
    pub const MAP_UPDATE_FAILED: u32 = 3;
    /// Catcher only: transitions it handled because the main program had not
    /// (before the netns filter; compare with the main program's
    /// `recursion_misses`).
    pub const CAUGHT: u32 = 4;
    /// Transitions of sockets that are neither TCP nor MPTCP (ignored).
    pub const OTHER_PROTOCOL: u32 = 5;
    /// Transitions outside the netns filter (ignored).
    pub const FILTERED: u32 = 6;
    /// Transitions whose state numbers are >= STATE_SLOTS (counted here only).
    pub const BAD_STATE: u32 = 7;
    /// Main only: runs that behaved as if the kernel had skipped them, for
    /// `ProbeConfig::simulate_skip_every` (fault injection in tests).
    pub const SIMULATED_SKIP: u32 = 8;
    /// Main only: runs that started while another run of the main program
    /// was in progress on the same CPU. The design assumes the kernel never
    /// lets that happen (it skips instead); this counter checks it.
    pub const NESTED: u32 = 9;
    /// Main only: the identity stack was full, so the catcher will handle
    /// that transition a second time (reported as double-counted).
    pub const RECENT_FULL: u32 = 10;
    /// Main only: every run the kernel gave the program, armed or not, of
    /// any protocol or namespace. Against a perf counting event on the same
    /// tracepoint (user space's witness), the difference less the
    /// program's `recursion_misses` is the firings the kernel never ran the
    /// program for and never counted as missed.
    pub const RUNS: u32 = 11;
    /// Main only: runs that behaved as if never run, for
    /// `ProbeConfig::simulate_not_run_every` (fault injection in tests).
    pub const SIMULATED_NOT_RUN: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// Slots per program in the statistics array.
pub const PROG_SLOTS: u32 = TRANSITION_SLOTS + stat::COUNT;
/// Length of the per-CPU statistics array.
pub const STATS_LEN: u32 = NUM_PROGS * PROG_SLOTS;

/// Every per-CPU counter, as one value of a one-entry per-CPU array: user
/// space reads them all with one lookup per tick (it took one per slot).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub slots: [u64; STATS_LEN as usize],
}

/// Index of the counter of `old -> new` for `prog`, or `None` for states
/// outside 0..STATE_SLOTS.
#[inline(always)]
pub const fn transition_index(prog: u32, old: u8, new: u8) -> Option<u32> {
    if old as u32 >= STATE_SLOTS || new as u32 >= STATE_SLOTS {
        return None;
    }
    Some(prog * PROG_SLOTS + old as u32 * STATE_SLOTS + new as u32)
}

/// Index of statistic `which` (a `stat::*` constant) for `prog`.
#[inline(always)]
pub const fn stat_index(prog: u32, which: u32) -> u32 {
    prog * PROG_SLOTS + TRANSITION_SLOTS + which
}

/// Depth of the per-CPU stack of transitions the main program handled.
pub const RECENT_SLOTS: usize = 8;

/// Per-CPU memory of the transitions the main program handled, so the
/// catcher (a second program on the same hook, run after it) handles
/// exactly those the kernel skipped the main program for.
///
/// A stack, because runs nested on one CPU finish in reverse order: the
/// main program pushes each transition's identity; the catcher searches
/// from the top and cuts the stack back to its match, which also discards
/// identities of nested runs that have finished.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Recent {
    pub ids: [u64; RECENT_SLOTS],
    pub top: u64,
    /// Sequence of main-program runs on this CPU (fault injection).
    pub next: u64,
    /// Runs of the main program in progress on this CPU (see stat::NESTED).
    pub depth: u64,
    /// Runs of the catcher in progress on this CPU.
    pub catcher_depth: u64,
    /// Per program, where the hook's socket pointer is stored and read back
    /// as a number (see `tcpwatch_probes::btf_args`). One slot per program
    /// suffices: the kernel never runs a program nested in itself on a CPU.
    pub sk_slot: [u64; NUM_PROGS as usize],
    /// Per program (the same reason), the namespace of the last socket
    /// seen: its `net_cookie` and inode (see `ProbeConfig::net_cookie`).
    pub net: [NetSeen; NUM_PROGS as usize],
}

/// A namespace's never-reused cookie and its inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSeen {
    pub cookie: u64,
    pub inum: u64,
}

/// Identity of one transition: the socket address's low 48 bits (kernel
/// addresses all share their top 16) with the two states in the top bytes.
#[inline(always)]
pub const fn transition_id(skaddr: u64, old: u8, new: u8) -> u64 {
    (skaddr & 0x0000_ffff_ffff_ffff) | ((old as u64) << 56) | ((new as u64) << 48)
}

/// `task_struct.flags` bit of kernel threads.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Transitions that only ever run in the owning task's process context with
/// the socket locked (connect, listen, close, shutdown), so `current` is the
/// owner. Every other transition can run in softirq, where `current` is
/// whoever was interrupted, and never sets the owner.
#[inline(always)]
pub const fn owner_runs_transition(old: u8, new: u8) -> bool {
    use state::*;
    matches!(
        (old, new),
        (TCP_CLOSE, TCP_SYN_SENT)
            | (TCP_CLOSE, TCP_LISTEN)
            | (TCP_LISTEN, TCP_CLOSE)
            | (TCP_ESTABLISHED, TCP_FIN_WAIT1)
            | (TCP_SYN_RECV, TCP_FIN_WAIT1)
            | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
    )
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers and byte arrays with
    // explicit padding fields, so every bit pattern is a valid value and
    // there are no implicit padding bytes (asserted by the size checks above).
    unsafe impl aya::Pod for super::TransitionEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Recent {}
    // SAFETY: as above: an array of u64, no padding.
    unsafe impl aya::Pod for super::Stats {}
    // SAFETY: as above (its padding is an explicit field).
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above: u64s only, no padding.
    unsafe impl aya::Pod for super::LanePos {}
    // SAFETY: as above (its padding is an explicit field).
    unsafe impl aya::Pod for super::SignalKey {}
    // SAFETY: as above: arrays of u64, no padding.
    unsafe impl aya::Pod for super::SignalStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn a_count_key_gives_back_its_parts() {
        for (netns, error, old, new) in [
            (0, 0, 0, 0),
            (u32::MAX, u16::MAX, 12, 7),
            (4026531833, 111, 2, 7),
        ] {
            assert_eq!(
                count_key_parts(count_key(netns, error, old, new)),
                (netns, error, old, new)
            );
        }
    }

    #[test]
    fn event_layout_is_stable() {
        assert_eq!(
            LAYOUT_VERSION, 8,
            "layout changed: bump LAYOUT_VERSION and these offsets"
        );
        assert_eq!(core::mem::size_of::<EventHeader>(), 8);
        assert_eq!(core::mem::size_of::<TransitionEvent>(), 104);
        assert_eq!(offset_of!(TransitionEvent, header), 0);
        assert_eq!(offset_of!(TransitionEvent, ts_ns), 8);
        assert_eq!(offset_of!(TransitionEvent, skaddr), 16);
        assert_eq!(offset_of!(TransitionEvent, netns), 24);
        assert_eq!(offset_of!(TransitionEvent, pid), 28);
        assert_eq!(offset_of!(TransitionEvent, tgid), 32);
        assert_eq!(offset_of!(TransitionEvent, oldstate), 36);
        assert_eq!(offset_of!(TransitionEvent, newstate), 37);
        assert_eq!(offset_of!(TransitionEvent, family), 38);
        assert_eq!(offset_of!(TransitionEvent, protocol), 40);
        assert_eq!(offset_of!(TransitionEvent, sport), 42);
        assert_eq!(offset_of!(TransitionEvent, dport), 44);
        assert_eq!(offset_of!(TransitionEvent, flags), 46);
        assert_eq!(offset_of!(TransitionEvent, saddr), 48);
        assert_eq!(offset_of!(TransitionEvent, daddr), 64);
        assert_eq!(offset_of!(TransitionEvent, comm), 80);
        assert_eq!(offset_of!(TransitionEvent, error), 96);
        assert_eq!(offset_of!(SignalKey, kind), 8);
        assert_eq!(offset_of!(SignalKey, port), 12);
        assert_eq!(core::mem::size_of::<Stats>(), STATS_LEN as usize * 8);
    }

    #[test]
    fn config_layout_is_stable() {
        assert_eq!(core::mem::size_of::<ProbeConfig>(), 152);
        assert_eq!(offset_of!(ProbeConfig, sk_err), 80);
        assert_eq!(offset_of!(ProbeConfig, sk_protocol), 32);
        assert_eq!(offset_of!(ProbeConfig, inet_sport), 40);
        assert_eq!(offset_of!(ProbeConfig, tp_skaddr), 48);
        assert_eq!(offset_of!(ProbeConfig, lane_slots), 132);
        assert_eq!(offset_of!(ProbeConfig, net_cookie), 136);
        assert_eq!(offset_of!(ProbeConfig, task_comm), 144);
        assert_eq!(offset_of!(LanePos, tail), 64);
        assert_eq!(ProbeConfig::UNSET.layout_version, LAYOUT_VERSION);
    }

    #[test]
    fn stats_indices_do_not_overlap() {
        let last_main = transition_index(PROG_MAIN, 15, 15).unwrap();
        assert!(last_main < stat_index(PROG_MAIN, 0));
        assert!(
            stat_index(PROG_MAIN, stat::COUNT - 1) < transition_index(PROG_CATCHER, 0, 0).unwrap()
        );
        assert_eq!(stat_index(PROG_CATCHER, stat::COUNT - 1), STATS_LEN - 1);
        assert_eq!(transition_index(PROG_MAIN, 16, 1), None);
    }

    #[test]
    fn transition_ids_differ_by_state_and_socket() {
        let sk = 0xffff_8880_1234_5678;
        assert_ne!(transition_id(sk, 1, 4), transition_id(sk, 4, 5));
        assert_ne!(transition_id(sk, 1, 4), transition_id(sk + 8, 1, 4));
        assert_ne!(transition_id(sk, 1, 4), 0);
    }

    #[test]
    fn only_syscall_transitions_name_the_owner() {
        use state::*;
        assert!(owner_runs_transition(TCP_CLOSE, TCP_SYN_SENT));
        assert!(!owner_runs_transition(TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(!owner_runs_transition(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!owner_runs_transition(TCP_ESTABLISHED, TCP_CLOSE));
    }
}
