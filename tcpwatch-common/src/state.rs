//! TCP state numbers (include/net/tcp_states.h) and the names `ss` prints.

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
pub const TCP_NEW_SYN_RECV: u8 = 12;
pub const TCP_BOUND_INACTIVE: u8 = 13;

/// A TCP state as the kernel numbers it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    Established = TCP_ESTABLISHED,
    SynSent = TCP_SYN_SENT,
    SynRecv = TCP_SYN_RECV,
    FinWait1 = TCP_FIN_WAIT1,
    FinWait2 = TCP_FIN_WAIT2,
    TimeWait = TCP_TIME_WAIT,
    Close = TCP_CLOSE,
    CloseWait = TCP_CLOSE_WAIT,
    LastAck = TCP_LAST_ACK,
    Listen = TCP_LISTEN,
    Closing = TCP_CLOSING,
    NewSynRecv = TCP_NEW_SYN_RECV,
    BoundInactive = TCP_BOUND_INACTIVE,
}

impl TcpState {
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    pub const fn from_u8(v: u8) -> Option<TcpState> {
        if v >= TCP_ESTABLISHED && v <= TCP_BOUND_INACTIVE {
            Some(Self::ALL[(v - 1) as usize])
        } else {
            None
        }
    }

    /// The name `ss` and `netstat` users read (SYN-SENT, CLOSE-WAIT, ...).
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW-SYN-RECV",
            TcpState::BoundInactive => "BOUND-INACTIVE",
        }
    }

    /// Parses either the `ss` name or the kernel's (`SYN_SENT`, `TCP_SYN_SENT`),
    /// case-insensitively.
    pub fn parse(s: &str) -> Option<TcpState> {
        let norm = |c: u8| {
            if c == b'_' {
                b'-'
            } else {
                c.to_ascii_uppercase()
            }
        };
        let bytes = s.as_bytes();
        let bytes = if bytes.len() > 4 && bytes[..4].eq_ignore_ascii_case(b"tcp_") {
            &bytes[4..]
        } else {
            bytes
        };
        Self::ALL.into_iter().find(|st| {
            let name = st.name().as_bytes();
            let alt: &[u8] = match st {
                TcpState::FinWait1 => b"FIN-WAIT1",
                TcpState::FinWait2 => b"FIN-WAIT2",
                _ => name,
            };
            [name, alt]
                .iter()
                .any(|n| n.len() == bytes.len() && n.iter().zip(bytes).all(|(a, b)| *a == norm(*b)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for st in TcpState::ALL {
            assert_eq!(TcpState::from_u8(st as u8), Some(st));
        }
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(14), None);
    }

    #[test]
    fn parses_ss_and_kernel_names() {
        assert_eq!(TcpState::parse("close-wait"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::parse("TCP_FIN_WAIT1"), Some(TcpState::FinWait1));
        assert_eq!(TcpState::parse("FIN-WAIT-2"), Some(TcpState::FinWait2));
        assert_eq!(TcpState::parse("syn_recv"), Some(TcpState::SynRecv));
        assert_eq!(TcpState::parse("bogus"), None);
    }
}
