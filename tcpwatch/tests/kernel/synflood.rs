//! Half-open connections the way a SYN flood makes them: raw SYNs from a
//! spoofed source nobody answers for. Only inside a namespace the test made
//! (the network rule): the source is in the test's own subnet, its
//! neighbour entry is static and points at a MAC no interface has, so the
//! SYN-ACKs leave through a veth whose peer drops them and no RST ever
//! comes back. The count is the caller's, bounded, and sending stops by
//! itself.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

/// The test subnet's listener side and the spoofed, unanswered source.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In the calling thread's (test-made) namespace: a veth pair with LOCAL on
/// one end, both up, and a permanent neighbour entry for SPOOFED.
pub fn setup() {
    ip(&[
        "link", "add", "tw-syn0", "type", "veth", "peer", "name", "tw-syn1",
    ]);
    ip(&["addr", "add", "10.77.0.1/24", "dev", "tw-syn0"]);
    ip(&["link", "set", "tw-syn0", "up"]);
    ip(&["link", "set", "tw-syn1", "up"]);
    ip(&[
        "neigh",
        "add",
        "10.77.0.99",
        "lladdr",
        "02:00:00:00:77:99",
        "nud",
        "permanent",
        "dev",
        "tw-syn0",
    ]);
}

fn checksum(chunks: &[&[u8]]) -> u16 {
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
fn syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> [u8; 40] {
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
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tsum = checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&tsum.to_be_bytes());
    p
}

/// Sends `count` SYNs from SPOOFED (source ports 40000..) to `dst`.
pub fn send_spoofed_syns(dst: SocketAddrV4, count: u16) {
    assert!(count <= 1000, "bounded floods only");
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    for i in 0..count {
        let p = syn(
            SocketAddrV4::new(SPOOFED, 40000 + i),
            dst,
            0x1000_0000 + i as u32,
        );
        // SAFETY: p and to outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(n, 40, "sendto: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
}

#[test]
fn checksums_verify() {
    let p = syn(
        SocketAddrV4::new(SPOOFED, 40000),
        SocketAddrV4::new(LOCAL, 80),
        1,
    );
    // A correct checksum makes the sum over the covered bytes zero.
    assert_eq!(checksum(&[&p[..20]]), 0);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&SPOOFED.octets());
    pseudo[4..8].copy_from_slice(&LOCAL.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    assert_eq!(checksum(&[&pseudo, &p[20..]]), 0);
}
