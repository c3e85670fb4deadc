//! Appending ASCII text to a line without copies of a size known only at
//! run time: those were `memcpy` calls, a third of the time `trace --json`
//! spent formatting a line. A piece is copied whole, a size known when
//! compiling, and the line cut back to the piece's real length; digits
//! are written in place in room made for them. (Digits built in a stack
//! buffer and then copied out stall each copy on the bytes just stored.)

/// Appends the first `len` bytes of `piece` (text made before this line:
/// a table, a name kept in the event).
#[inline(always)]
pub fn put<const N: usize>(out: &mut Vec<u8>, piece: &[u8; N], len: usize) {
    debug_assert!(len <= N);
    out.extend_from_slice(piece);
    out.truncate(out.len() - (N - len.min(N)));
}

/// Makes room for `N` bytes at the end of `out`: returns where it begins.
#[inline(always)]
fn room<const N: usize>(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[b'0'; N]);
    at
}

const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// How many decimal digits `v` has.
#[inline(always)]
fn digits(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// The low decimal digits of `v` into all of `out`, zero-padded.
#[inline(always)]
pub fn write_decimal(out: &mut [u8], mut v: u64) {
    let mut end = out.len();
    while end >= 2 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        out[end - 2] = PAIRS[pair];
        out[end - 1] = PAIRS[pair + 1];
        end -= 2;
    }
    if end == 1 {
        out[0] = b'0' + (v % 10) as u8;
    }
}

/// `v` in decimal.
#[inline]
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    let len = digits(v);
    let at = room::<20>(out);
    write_decimal(&mut out[at..at + len], v);
    out.truncate(at + len);
}

/// `v`'s low `N` decimal digits, zero-padded.
#[inline]
pub fn put_padded<const N: usize>(out: &mut Vec<u8>, v: u64) {
    let at = room::<N>(out);
    write_decimal(&mut out[at..], v);
}

/// `v` as `{:#x}` writes it: `0x` and lowercase digits without leading
/// zeros.
#[inline]
pub fn put_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1) as usize;
    let at = room::<18>(out);
    let text = &mut out[at..at + 2 + digits];
    text[1] = b'x';
    for i in 0..digits {
        text[2 + digits - 1 - i] = DIGITS[(v >> (4 * i) & 0xf) as usize];
    }
    out.truncate(at + 2 + digits);
}

/// An IPv4 address in dotted decimal.
#[inline]
pub fn put_ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    let start = room::<16>(out);
    let text = &mut out[start..];
    let mut at = 0;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            text[at] = b'.';
            at += 1;
        }
        let len = digits(u64::from(o));
        write_decimal(&mut text[at..at + len], u64::from(o));
        at += len;
    }
    out.truncate(start + at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_the_texts_std_writes() {
        let mut edges = vec![0u64, 1, 9, 10, 99, 100, u64::MAX, u64::MAX / 10];
        for p in 1..20 {
            let t = 10u64.pow(p);
            edges.extend([t - 1, t, t + 1]);
        }
        let mut out = Vec::new();
        for v in edges {
            out.clear();
            put_u64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
            out.clear();
            put_hex(&mut out, v);
            assert_eq!(out, format!("{v:#x}").as_bytes());
            out.clear();
            put_padded::<6>(&mut out, v);
            assert_eq!(out, format!("{:06}", v % 1_000_000).as_bytes());
        }
        for octets in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [255, 255, 255, 255],
            [10, 9, 100, 1],
        ] {
            out.clear();
            put_ipv4(&mut out, octets);
            assert_eq!(out, std::net::Ipv4Addr::from(octets).to_string().as_bytes());
        }
        // What was there stays; only the piece's length is added.
        let mut out = b"x".to_vec();
        put(&mut out, b"abcdef", 3);
        assert_eq!(out, b"xabc");
    }
}
