//! One IPv4 TCP SYN, checksums included: what the SYN-flood demo and the
//! kernel tests send from a spoofed, unanswered source inside a namespace
//! of their own (the kernel tests include this file by path).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A raw IPv4 socket that sends whole packets, headers included.
pub struct RawSender(OwnedFd);

impl RawSender {
    pub fn open() -> std::io::Result<RawSender> {
        // SAFETY: plain socket(2); on success the fd is owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd nobody else owns; closed on drop.
        Ok(RawSender(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Sends one packet (its own IP header says where) toward `to`.
    pub fn send(&self, packet: &[u8], to: Ipv4Addr) -> std::io::Result<()> {
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: packet and to outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n == packet.len() as isize {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv4 + TCP SYN, checksums included.
pub fn syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45; // IPv4, 20-byte header
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = 6; // TCP
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ipsum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ipsum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4; // 20-byte header
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let tsum = checksum(&[&pseudo_header(src, dst), &p[20..]]);
    p[36..38].copy_from_slice(&tsum.to_be_bytes());
    p
}

pub fn pseudo_header(src: SocketAddrV4, dst: SocketAddrV4) -> [u8; 12] {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    pseudo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let src = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 77, 0, 99), 40000);
        let dst = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 77, 0, 1), 80);
        let p = syn(src, dst, 1);
        // A correct checksum makes the sum over the covered bytes zero.
        assert_eq!(checksum(&[&p[..20]]), 0);
        assert_eq!(checksum(&[&pseudo_header(src, dst), &p[20..]]), 0);
    }
}
