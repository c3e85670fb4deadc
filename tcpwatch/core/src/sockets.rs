//! Each socket's owner, side and time in its state, followed in user space
//! from the transitions themselves. The kernel sends the current task only
//! on the transitions that run in the owner's context and keeps no table
//! (one fewer map operation per transition in the kernel, where every ns
//! counts: the README's "What it costs"). The ring buffers deliver every
//! transition or count it as dropped, so user space can follow each socket.
//!
//! The promise is the probe's: an owner is unknown, never wrong. A socket
//! whose chain breaks (a transition of it was lost) starts over, as if seen
//! for the first time, and so does one past the table's bound.
use std::collections::{HashMap, HashSet, hash_map::Entry};
use std::net::SocketAddr;
use std::time::Duration;

use tcpwatch_common::state::{
    TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2,
    TCP_LAST_ACK, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT,
};

use crate::census::SockEntry;
use crate::model::{Owner, Protocol, Transition};

/// Sockets followed at most (about 16 MiB); past it new sockets are not
/// followed (their owner is what their own transitions carry) until others
/// close, and that is counted.
pub const MAX_SOCKETS: usize = 1 << 18;

/// Listening ports followed at most, per (netns, port).
pub const MAX_LISTENERS: usize = 1 << 14;

/// Listening sockets followed at most on one port (SO_REUSEPORT groups,
/// v4 and v6); past it the port's children have no owner.
pub const MAX_PER_PORT: usize = 64;

#[derive(Clone, Debug)]
struct Followed {
    /// The state the socket last went to.
    state: u8,
    last_ns: u64,
    owner: Option<Owner>,
    /// Said by the socket's first transition, for good.
    passive: Option<bool>,
    /// Its namespace (0: unknown) and, in a state a census must show,
    /// its address pair ([`pair_key`]; 0 otherwise): see
    /// [`Follower::vanished`].
    netns: u32,
    pair: u64,
    /// The last census of its namespace did not show it (see
    /// [`Follower::vanished`]).
    missed: bool,
}

/// States in which a TCP socket is a full socket in its namespace's
/// established hash from before its transition into them until its
/// transition out (SYN-SENT and SYN-RECV are not: a socket enters them
/// before it is hashed), so a census always lists it.
pub fn censused(state: u8) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING
    )
}

/// A socket's (local, remote) addresses and ports as one number, the same
/// from its transitions and from a census; never 0. Two pairs may share
/// one: then a vanished socket goes unnamed, never the other way round.
pub fn pair_key(local: SocketAddr, remote: SocketAddr) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mix = |w: u64| h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    for a in [local, remote] {
        match a.ip() {
            std::net::IpAddr::V4(ip) => mix(u64::from(u32::from(ip))),
            std::net::IpAddr::V6(ip) => {
                let v = u128::from(ip);
                mix(v as u64);
                mix((v >> 64) as u64 | 1 << 63);
            }
        }
        mix(u64::from(a.port()) << 48);
    }
    h.max(1)
}

/// What a census of one namespace found: the pairs of its full sockets in
/// the states [`censused`] covers, and when its dump began.
#[derive(Clone, Debug, Default)]
pub struct OpenPairs {
    pub netns: u32,
    pub taken_ns: u64,
    /// When the dump ended: the check waits until every transition up to
    /// then (and a margin) has been followed.
    pub done_ns: u64,
    pub pairs: HashSet<u64>,
}

impl OpenPairs {
    /// The full sockets of a census (a TIME-WAIT or FIN-WAIT-2
    /// minisocket is what is left of one that closed: not one of them).
    pub fn of(netns: u32, taken_ns: u64, done_ns: u64, entries: &[SockEntry]) -> OpenPairs {
        OpenPairs {
            netns,
            taken_ns,
            done_ns,
            pairs: entries
                .iter()
                .filter(|e| !e.minisock && censused(e.state))
                .map(|e| pair_key(e.local, e.remote))
                .collect(),
        }
    }
}

/// A followed socket a census no longer showed: its last transitions
/// (at least the one to CLOSE) were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vanished {
    pub skaddr: u64,
    pub netns: u32,
    /// The state it was last seen going to.
    pub state: u8,
}

/// The sockets listening on one port, each with its owner if known. A
/// child's owner is known only while every one of them has the same
/// process: with two processes on the port a child cannot be told apart,
/// so its owner is unknown rather than possibly wrong.
#[derive(Clone, Debug, Default)]
struct Listeners {
    /// (listening socket, owner); skaddr 0 for the one seeded from procfs.
    open: Vec<(u64, Option<Owner>)>,
    /// More listened on the port than `MAX_PER_PORT`: owners unknown
    /// until every one of them has closed.
    overflowed: bool,
}

impl Listeners {
    fn owner(&self) -> Option<Owner> {
        if self.overflowed {
            return None;
        }
        let (_, first) = self.open.first()?;
        let first = (*first)?;
        self.open
            .iter()
            .all(|(_, o)| o.is_some_and(|o| o.pid == first.pid))
            .then_some(first)
    }
}

/// Kernel addresses and ports no client chooses: the fast hasher is safe.
type Fast = foldhash::fast::RandomState;

#[derive(Clone, Debug, Default)]
pub struct Follower {
    socks: HashMap<u64, Followed, Fast>,
    listeners: HashMap<(u32, u16), Listeners, Fast>,
    /// Transitions of sockets not followed (the table was full).
    pub untracked: u64,
    /// LISTEN transitions not remembered (the listener table was full).
    pub listeners_untracked: u64,
}

impl Follower {
    /// The owner of the listeners that predate the probe on a port (from
    /// procfs), None if they are not all one process's or not all known.
    /// Listeners the probe sees later are added beside it.
    pub fn seed_listener(&mut self, netns: Option<u32>, port: u16, owner: Option<Owner>) {
        if self.listeners.len() < MAX_LISTENERS {
            let l = self
                .listeners
                .entry((netns.unwrap_or(0), port))
                .or_default();
            if l.open.is_empty() {
                l.open.push((0, owner));
            }
        }
    }

    /// Completes `t` (as the kernel sent it: an owner only where the owner
    /// ran it) with its socket's owner, side and time in its old state.
    pub fn follow(&mut self, t: &mut Transition) {
        let (old, new) = (t.old.raw(), t.new.raw());
        let key = (t.netns.unwrap_or(0), t.local.port());
        let child = old == TCP_LISTEN && new == TCP_SYN_RECV;
        let full = self.socks.len() >= MAX_SOCKETS;
        match self.socks.entry(t.skaddr) {
            // A socket in LISTEN never goes to SYN-RECV itself: a child at
            // that address is a new socket, whatever was followed there (a
            // listener whose close was lost, say).
            Entry::Occupied(mut e) if e.get().state == old && !child => {
                let s = e.get_mut();
                t.in_old = t.ts_ns.checked_sub(s.last_ns).map(Duration::from_nanos);
                match &t.owner {
                    Some(o) => s.owner = Some(*o),
                    None => t.owner = s.owner,
                }
                t.passive = s.passive;
                s.state = new;
                s.last_ns = t.ts_ns;
                s.pair = pair_of(t, new);
                s.missed = false;
                if new == TCP_CLOSE {
                    // The address is reused once freed: forget it now.
                    e.remove();
                }
            }
            slot => {
                // First seen, or its chain broke: what we knew may be stale.
                if t.owner.is_none() && child {
                    t.owner = self.listeners.get(&key).and_then(Listeners::owner);
                }
                t.passive = if child {
                    Some(true)
                } else if old == TCP_CLOSE && new == TCP_SYN_SENT {
                    Some(false)
                } else {
                    None
                };
                let fresh = Followed {
                    state: new,
                    last_ns: t.ts_ns,
                    owner: t.owner,
                    passive: t.passive,
                    netns: t.netns.unwrap_or(0),
                    pair: pair_of(t, new),
                    missed: false,
                };
                match slot {
                    Entry::Occupied(mut e) if new != TCP_CLOSE => {
                        e.insert(fresh);
                    }
                    Entry::Occupied(e) => {
                        e.remove();
                    }
                    Entry::Vacant(_) if new == TCP_CLOSE => {}
                    Entry::Vacant(_) if full => self.untracked += 1,
                    Entry::Vacant(v) => {
                        v.insert(fresh);
                    }
                }
            }
        }
        if new == TCP_LISTEN {
            self.listen(key, t);
        } else if old == TCP_LISTEN && new == TCP_CLOSE {
            self.unlisten(key, t.skaddr);
        }
    }

    fn listen(&mut self, key: (u32, u16), t: &Transition) {
        let full = self.listeners.len() >= MAX_LISTENERS;
        let l = match self.listeners.entry(key) {
            Entry::Occupied(l) => l.into_mut(),
            Entry::Vacant(_) if full => {
                self.listeners_untracked += 1;
                return;
            }
            Entry::Vacant(v) => v.insert(Listeners::default()),
        };
        l.open.retain(|(sk, _)| *sk != t.skaddr);
        if l.open.len() < MAX_PER_PORT {
            l.open.push((t.skaddr, t.owner));
        } else {
            l.overflowed = true;
        }
    }

    /// A listener closed (or a listen() failed: the kernel goes to LISTEN
    /// before it finds the port taken, then back): only its own entry
    /// goes. A close of a socket never seen listening is the seeded one's.
    fn unlisten(&mut self, key: (u32, u16), skaddr: u64) {
        let Entry::Occupied(mut l) = self.listeners.entry(key) else {
            return;
        };
        let open = &mut l.get_mut().open;
        match open.iter().position(|(sk, _)| *sk == skaddr) {
            Some(i) => {
                open.remove(i);
            }
            None => open.retain(|(sk, _)| *sk != 0),
        }
        if open.is_empty() {
            l.remove();
        }
    }

    /// Sockets followed now.
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// The followed sockets that two censuses in a row of their namespace
    /// should have shown and did not, forgotten here: each went to a state
    /// a census lists ([`censused`]) before the census began, and nothing
    /// of it was seen since. Twice, because a dump is no snapshot: a socket
    /// removed from a hash chain between two of its reads shifts the
    /// sockets after it, and one of those can be skipped once. Call it only
    /// once every transition up to each census's end (and a margin) has
    /// been followed: a socket that closed during a dump has its close
    /// followed by then. One pass, whatever the number of namespaces.
    pub fn vanished(&mut self, found: &[OpenPairs]) -> Vec<Vanished> {
        let by_netns: HashMap<u32, &OpenPairs, Fast> = found.iter().map(|o| (o.netns, o)).collect();
        let mut gone = Vec::new();
        self.socks.retain(|&skaddr, s| {
            let Some(o) = by_netns.get(&s.netns) else {
                return true;
            };
            if s.pair == 0 || s.last_ns >= o.taken_ns {
                return true;
            }
            if o.pairs.contains(&s.pair) {
                s.missed = false;
                return true;
            }
            if !s.missed {
                s.missed = true;
                return true;
            }
            gone.push(Vanished {
                skaddr,
                netns: s.netns,
                state: s.state,
            });
            false
        });
        gone
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// The namespaces of the sockets followed in a state a census must
    /// show: where a last census can name a lost close. Sorted.
    pub fn open_netns(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .socks
            .values()
            .filter(|s| s.pair != 0 && s.netns != 0)
            .map(|s| s.netns)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The pair a census must show the socket under after transition `t`, or
/// 0: not TCP (MPTCP's own sockets are not in a TCP census), its namespace
/// unknown, or a state a census need not list.
fn pair_of(t: &Transition, new: u8) -> u64 {
    if t.protocol == Protocol::Tcp && t.netns.is_some() && censused(new) {
        pair_key(t.local, t.remote)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tcpwatch_common::{TcpState, TcpState::*};

    use super::*;
    use crate::model::{Comm, Protocol, State};

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            tid: pid,
            comm: Comm::from_bytes(format!("p{pid}").as_bytes()),
        }
    }

    /// As the kernel sends it: the owner only if given.
    fn t(sk: u64, ns: u64, old: TcpState, new: TcpState, by: Option<u32>) -> Transition {
        Transition {
            ts_ns: ns,
            skaddr: sk,
            netns: Some(7),
            owner: by.map(owner),
            old: State::from_raw(old as u8),
            new: State::from_raw(new as u8),
            protocol: Protocol::Tcp,
            local: SocketAddr::from(([127, 0, 0, 1], 8080)),
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            in_old: None,
            caught: false,
            passive: None,
            error: None,
        }
    }

    fn run(f: &mut Follower, mut t: Transition) -> Transition {
        f.follow(&mut t);
        t
    }

    #[test]
    fn a_server_child_inherits_its_listener_and_keeps_its_times() {
        let mut f = Follower::default();
        let l = run(&mut f, t(1, 10, Close, Listen, Some(100)));
        assert_eq!(l.owner.unwrap().pid, 100);
        // The child's first transition runs in softirq: no owner sent.
        let c = run(&mut f, t(2, 20, Listen, SynRecv, None));
        assert_eq!(c.owner.as_ref().unwrap().pid, 100);
        assert_eq!(c.passive, Some(true));
        assert_eq!(c.in_old, None, "nothing known of the time before");
        let e = run(&mut f, t(2, 25, SynRecv, Established, None));
        assert_eq!(e.owner.as_ref().unwrap().pid, 100);
        assert_eq!(e.in_old, Some(Duration::from_nanos(5)));
        assert_eq!(e.passive, Some(true));
        // accept()ed and closed by another process: it owns it from then on.
        let w = run(&mut f, t(2, 40, Established, FinWait1, Some(200)));
        assert_eq!(w.owner.unwrap().pid, 200);
        let x = run(&mut f, t(2, 41, FinWait1, FinWait2, None));
        assert_eq!(x.owner.unwrap().pid, 200);
        let z = run(&mut f, t(2, 42, FinWait2, Close, None));
        assert_eq!(z.in_old, Some(Duration::from_nanos(1)));
        assert!(!f.socks.contains_key(&2), "a closed socket is forgotten");
    }

    #[test]
    fn a_broken_chain_forgets_the_owner_rather_than_guess() {
        let mut f = Follower::default();
        run(&mut f, t(1, 10, Close, SynSent, Some(100)));
        run(&mut f, t(1, 11, SynSent, Established, None));
        // Lost: ESTABLISHED -> FIN-WAIT-1 by another owner, and
        // FIN-WAIT-1 -> FIN-WAIT-2.
        let after = run(&mut f, t(1, 50, FinWait2, Close, None));
        assert_eq!(after.owner, None);
        assert_eq!(after.in_old, None);
        assert_eq!(after.passive, None);
    }

    #[test]
    fn a_reused_address_starts_a_new_socket() {
        let mut f = Follower::default();
        run(&mut f, t(1, 10, Close, SynSent, Some(100)));
        run(&mut f, t(1, 11, SynSent, Established, None));
        // Its close was lost; the address now holds another process's child.
        run(&mut f, t(9, 12, Close, Listen, Some(300)));
        let mut child = t(1, 20, Listen, SynRecv, None);
        child.local = SocketAddr::from(([127, 0, 0, 1], 8080));
        let c = run(&mut f, child);
        assert_eq!(c.owner.unwrap().pid, 300);
        assert_eq!(c.passive, Some(true));
    }

    #[test]
    fn two_processes_on_one_port_leave_children_unowned_until_one_is_left() {
        let mut f = Follower::default();
        run(&mut f, t(1, 10, Close, Listen, Some(100)));
        run(&mut f, t(2, 11, Close, Listen, Some(101)));
        assert_eq!(run(&mut f, t(3, 12, Listen, SynRecv, None)).owner, None);
        // A failed listen() on the port goes to LISTEN and back: only its
        // own entry goes.
        run(&mut f, t(4, 13, Close, Listen, Some(102)));
        run(&mut f, t(4, 14, Listen, Close, Some(102)));
        assert_eq!(run(&mut f, t(5, 15, Listen, SynRecv, None)).owner, None);
        run(&mut f, t(2, 16, Listen, Close, Some(101)));
        let c = run(&mut f, t(6, 17, Listen, SynRecv, None));
        assert_eq!(c.owner.unwrap().pid, 100);
        run(&mut f, t(1, 18, Listen, Close, Some(100)));
        assert!(!f.listeners.contains_key(&(7, 8080)));
    }

    #[test]
    fn one_process_closing_one_of_its_listeners_keeps_the_other() {
        let mut f = Follower::default();
        run(&mut f, t(1, 10, Close, Listen, Some(100)));
        run(&mut f, t(2, 11, Close, Listen, Some(100)));
        run(&mut f, t(2, 12, Listen, Close, Some(100)));
        // Another process listens beside the first one's remaining socket.
        run(&mut f, t(3, 13, Close, Listen, Some(200)));
        assert_eq!(run(&mut f, t(4, 14, Listen, SynRecv, None)).owner, None);
    }

    #[test]
    fn a_seeded_listener_stays_beside_the_probes_own() {
        let mut f = Follower::default();
        f.seed_listener(Some(7), 8080, Some(owner(50)));
        let c = run(&mut f, t(3, 1, Listen, SynRecv, None));
        assert_eq!(c.owner.unwrap().pid, 50);
        // A second process listens: the seeded one still may accept.
        run(&mut f, t(1, 2, Close, Listen, Some(60)));
        assert_eq!(run(&mut f, t(4, 3, Listen, SynRecv, None)).owner, None);
        // A port whose owner procfs could not tell: unknown.
        f.seed_listener(Some(7), 9090, None);
        let mut c = t(5, 4, Listen, SynRecv, None);
        c.local.set_port(9090);
        assert_eq!(run(&mut f, c).owner, None);
    }

    #[test]
    fn a_listener_whose_close_was_lost_gives_its_address_to_a_new_child() {
        let mut f = Follower::default();
        run(&mut f, t(1, 10, Close, Listen, Some(100)));
        // Its LISTEN -> CLOSE was lost; a child of another listener (port
        // 9090, owner 300) now has the address.
        let mut l = t(2, 11, Close, Listen, Some(300));
        l.local.set_port(9090);
        run(&mut f, l);
        let mut c = t(1, 12, Listen, SynRecv, None);
        c.local.set_port(9090);
        let c = run(&mut f, c);
        assert_eq!(c.owner.unwrap().pid, 300);
        assert_eq!(c.passive, Some(true));
        assert_eq!(c.in_old, None);
    }

    #[test]
    fn the_tables_are_bounded_and_say_what_they_did_not_follow() {
        let mut f = Follower::default();
        for sk in 0..MAX_SOCKETS as u64 + 10 {
            run(&mut f, t(sk + 1, 1, Close, SynSent, Some(1)));
        }
        assert_eq!(f.len(), MAX_SOCKETS);
        assert_eq!(f.untracked, 10);
        // An unfollowed socket still shows what its own transitions carry.
        let o = run(
            &mut f,
            t(MAX_SOCKETS as u64 + 5, 2, SynSent, FinWait1, Some(9)),
        );
        assert_eq!(o.owner.unwrap().pid, 9);
        for port in 0..MAX_LISTENERS as u16 + 3 {
            let mut l = t(1_000_000 + port as u64, 1, Close, Listen, Some(1));
            l.local.set_port(port);
            run(&mut f, l);
        }
        assert_eq!(f.listeners.len(), MAX_LISTENERS);
        assert_eq!(f.listeners_untracked, 3);
    }

    fn open(netns: u32, taken_ns: u64, pairs: &[u64]) -> OpenPairs {
        OpenPairs {
            netns,
            taken_ns,
            done_ns: taken_ns + 1,
            pairs: pairs.iter().copied().collect(),
        }
    }

    fn at(sk: u64, ns: u64, old: TcpState, new: TcpState, lport: u16) -> Transition {
        let mut x = t(sk, ns, old, new, None);
        x.local.set_port(lport);
        x
    }

    #[test]
    fn a_socket_the_census_no_longer_shows_lost_its_last_transitions() {
        let mut f = Follower::default();
        // Socket 1 is still open; socket 2's FIN-WAIT-1 -> ... -> CLOSE
        // were lost; socket 3 went to FIN-WAIT-1 after the dump began.
        let still = run(&mut f, at(1, 10, SynSent, Established, 5001));
        run(&mut f, at(2, 11, Established, FinWait1, 5002));
        run(&mut f, at(3, 30, Established, FinWait1, 5003));
        let kept = pair_key(still.local, still.remote);
        // Missed once: a dump can skip a socket; not named yet.
        assert_eq!(f.vanished(&[open(7, 20, &[kept])]), []);
        let gone = f.vanished(&[open(7, 21, &[kept])]);
        assert_eq!(
            gone,
            [Vanished {
                skaddr: 2,
                netns: 7,
                state: FinWait1 as u8
            }]
        );
        // Named once: it is forgotten. Socket 3 now, at its second miss.
        assert_eq!(f.vanished(&[open(7, 40, &[kept])]), []);
        assert_eq!(f.vanished(&[open(7, 50, &[kept])]).len(), 1);
        assert_eq!(f.vanished(&[open(7, 60, &[kept])]), []);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_socket_missed_once_then_seen_or_moving_is_not_named() {
        let mut f = Follower::default();
        let s1 = run(&mut f, at(1, 10, SynSent, Established, 5001));
        run(&mut f, at(2, 10, SynSent, Established, 5002));
        let p1 = pair_key(s1.local, s1.remote);
        // Both missed once (a skipping dump); then 2 moves on and 1 is seen
        // again: neither is named at the next census.
        assert_eq!(f.vanished(&[open(7, 20, &[])]), []);
        run(&mut f, at(2, 25, Established, FinWait1, 5002));
        assert_eq!(f.vanished(&[open(7, 30, &[p1])]), [], "2 moved since");
        let second = |v: Vec<Vanished>| v.iter().map(|v| v.skaddr).collect::<Vec<_>>();
        assert_eq!(second(f.vanished(&[open(7, 40, &[p1])])), [2]);
        assert_eq!(
            f.vanished(&[open(7, 50, &[])]),
            [],
            "1 was seen at 30 and 40"
        );
        assert_eq!(second(f.vanished(&[open(7, 60, &[])])), [1]);
    }

    #[test]
    fn only_states_a_census_must_show_and_censused_namespaces_count() {
        let mut f = Follower::default();
        // Not hashed yet when they enter these states, or not TCP's.
        run(&mut f, at(1, 10, Close, SynSent, 5001));
        run(&mut f, at(2, 10, Listen, SynRecv, 5002));
        let mut mptcp = at(3, 10, SynSent, Established, 5003);
        mptcp.protocol = Protocol::Mptcp;
        run(&mut f, mptcp);
        let mut unknown = at(4, 10, SynSent, Established, 5004);
        unknown.netns = None;
        run(&mut f, unknown);
        // Another namespace's census says nothing of namespace 7.
        run(&mut f, at(5, 10, SynSent, Established, 5005));
        // Only socket 5's namespace needs a last census at a stop.
        assert_eq!(f.open_netns(), [7]);
        for ns in [8, 8, 8] {
            assert_eq!(f.vanished(&[open(ns, 20, &[])]), []);
        }
        assert_eq!(f.vanished(&[open(7, 20, &[])]), []);
        assert_eq!(f.vanished(&[open(7, 21, &[])]).len(), 1);
        assert_eq!(f.len(), 4);
        assert!(f.open_netns().is_empty());
    }

    #[test]
    fn pair_keys_tell_addresses_and_ports_apart() {
        let a = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        let k = pair_key(a([127, 0, 0, 1], 1), a([127, 0, 0, 2], 2));
        assert_ne!(k, pair_key(a([127, 0, 0, 2], 2), a([127, 0, 0, 1], 1)));
        assert_ne!(k, pair_key(a([127, 0, 0, 1], 2), a([127, 0, 0, 2], 1)));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_ne!(k, pair_key(mapped, "[::ffff:127.0.0.2]:2".parse().unwrap()));
        assert_eq!(k, pair_key(a([127, 0, 0, 1], 1), a([127, 0, 0, 2], 2)));
        assert_ne!(k, 0);
    }
}
