//! Each socket's transitions form a chain: a transition's old state is the
//! one the socket's previous transition went to. A break names a lost
//! transition of that very socket, so in the run's scope, and costs the
//! kernel nothing. It names at least one loss per break, not every loss: a
//! socket's first transition, or its last one with nothing after it, can
//! go missing without a break.
use std::collections::{HashMap, hash_map::Entry};

use tcpwatch_common::state::TCP_CLOSE;

use crate::model::Transition;

/// Sockets followed at most (about 8 MiB); past it new sockets are not
/// followed until others close, and that is counted.
pub const MAX_SOCKETS: usize = 1 << 18;

#[derive(Clone, Debug, Default)]
pub struct Chains {
    /// The state each followed socket last went to. Hashed with foldhash,
    /// as the engine's socket maps: kernel addresses no client chooses.
    last: HashMap<u64, u8, foldhash::fast::RandomState>,
    /// Transitions whose old state was not the socket's last new state.
    pub breaks: u64,
    /// Transitions of sockets not followed (the table was full).
    pub untracked: u64,
}

impl Chains {
    /// Follows one delivered transition (every one, before any display
    /// filter); true if it breaks its socket's chain.
    pub fn follow(&mut self, t: &Transition) -> bool {
        let (old, new) = (t.old.raw(), t.new.raw());
        let full = self.last.len() >= MAX_SOCKETS;
        // One lookup per transition (this runs for every one).
        let broke = match self.last.entry(t.skaddr) {
            Entry::Occupied(mut e) => {
                let broke = *e.get() != old;
                if new == TCP_CLOSE {
                    // Closed: a later socket at the same address starts a
                    // new chain.
                    e.remove();
                } else {
                    e.insert(new);
                }
                broke
            }
            Entry::Vacant(_) if new == TCP_CLOSE => false,
            Entry::Vacant(_) if full => {
                self.untracked += 1;
                false
            }
            Entry::Vacant(v) => {
                v.insert(new);
                false
            }
        };
        self.breaks += u64::from(broke);
        broke
    }

    /// Sockets followed now.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tcpwatch_common::{TcpState, TcpState::*};

    use super::*;
    use crate::model::{Protocol, State};

    fn t(skaddr: u64, old: TcpState, new: TcpState) -> Transition {
        Transition {
            ts_ns: 0,
            skaddr,
            netns: Some(1),
            owner: None,
            old: State::Known(old),
            new: State::Known(new),
            protocol: Protocol::Tcp,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            in_old: Some(Duration::ZERO),
            caught: false,
            passive: None,
            error: None,
        }
    }

    const CLIENT: [(TcpState, TcpState); 5] = [
        (Close, SynSent),
        (SynSent, Established),
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ];

    #[test]
    fn whole_chains_do_not_break_and_closed_sockets_are_forgotten() {
        let mut c = Chains::default();
        // Two connections at one address, one after the other, and a
        // simultaneous close through CLOSING on another.
        for _ in 0..2 {
            for (o, n) in CLIENT {
                assert!(!c.follow(&t(1, o, n)));
            }
        }
        for (o, n) in [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, Closing),
            (Closing, Close),
        ] {
            assert!(!c.follow(&t(2, o, n)));
        }
        assert_eq!((c.breaks, c.len()), (0, 0));
    }

    #[test]
    fn a_lost_transition_breaks_the_chain_of_its_socket() {
        let mut c = Chains::default();
        c.follow(&t(1, Close, SynSent));
        // SYN-SENT -> ESTABLISHED lost.
        assert!(c.follow(&t(1, Established, FinWait1)));
        assert!(!c.follow(&t(1, FinWait1, FinWait2)));
        // A lost close shows when the address is used again.
        assert!(c.follow(&t(1, Close, SynSent)));
        // First seen mid-life: nothing to compare with.
        assert!(!c.follow(&t(3, Established, CloseWait)));
        assert_eq!(c.breaks, 2);
    }

    #[test]
    fn the_table_is_bounded_and_says_what_it_did_not_follow() {
        let mut c = Chains::default();
        for s in 0..MAX_SOCKETS as u64 + 10 {
            c.follow(&t(s, Close, Listen));
        }
        assert_eq!((c.len(), c.untracked), (MAX_SOCKETS, 10));
        // A followed one still is, and closing frees its place.
        assert!(!c.follow(&t(0, Listen, Close)));
        c.follow(&t(u64::MAX, Close, Listen));
        assert_eq!(c.untracked, 10);
    }
}
