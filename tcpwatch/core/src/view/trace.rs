//! What `tcpwatch trace` shows: the filter, the text columns a `tcpstates`
//! user reads, and the JSON-lines object. Pure functions of a transition.
use std::{fmt::Write as _, time::Duration};

use serde::Serialize;
use tcpwatch_common::TcpState;

use crate::{
    model::{Comm, Protocol, Transition, errno_name},
    view::{line, top::fmt},
};

/// Which transitions to show. Every set field must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Local or remote port.
    pub ports: Vec<u16>,
    pub local_ports: Vec<u16>,
    pub remote_ports: Vec<u16>,
    /// Owner process id.
    pub pids: Vec<u32>,
    /// Old or new state.
    pub states: Vec<TcpState>,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    pub netns: Option<u32>,
}

impl Filter {
    pub fn matches(&self, t: &Transition) -> bool {
        let any = |list: &[u16], p: u16| list.is_empty() || list.contains(&p);
        let (lport, rport) = (t.local.port(), t.remote.port());
        (self.ports.is_empty() || self.ports.contains(&lport) || self.ports.contains(&rport))
            && any(&self.local_ports, lport)
            && any(&self.remote_ports, rport)
            && (self.pids.is_empty()
                || t.owner.as_ref().is_some_and(|o| self.pids.contains(&o.pid)))
            && (self.states.is_empty()
                || self
                    .states
                    .iter()
                    .any(|s| t.old.raw() == *s as u8 || t.new.raw() == *s as u8))
            && self.ip_version.is_none_or(|v| v == t.ip_version())
            && self.netns.is_none_or(|n| t.netns == Some(n))
    }
}

/// Converts event timestamps (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct Clock {
    /// Realtime minus monotonic, in ns, at start.
    pub offset_ns: i128,
}

impl Clock {
    /// From one reading of CLOCK_REALTIME and one of CLOCK_MONOTONIC, taken
    /// together (`host::clock::wall_clock`).
    pub fn from_readings(realtime_ns: i128, monotonic_ns: i128) -> Clock {
        Clock {
            offset_ns: realtime_ns - monotonic_ns,
        }
    }

    /// Unix time in ns of a monotonic timestamp.
    pub fn unix_ns(&self, ts_ns: u64) -> i128 {
        ts_ns as i128 + self.offset_ns
    }

    /// `HH:MM:SS UTC` of a monotonic timestamp (headers).
    pub fn wall_hms(&self, ts_ns: u64) -> String {
        let t = time_of_day(self.unix_ns(ts_ns));
        format!("{} UTC", &t[..8])
    }
}

/// `HH:MM:SS.ffffff` in UTC.
fn time_of_day(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        micros
    )
}

/// RFC 3339 UTC with microseconds, from days-since-epoch arithmetic (no tz
/// database needed for UTC).
pub fn rfc3339(unix_ns: i128) -> String {
    let mut s = Vec::with_capacity(27);
    push_rfc3339(&mut s, unix_ns);
    String::from_utf8(s).expect("ASCII")
}

/// A UTC instant's fields: (year, month, day, second of day, microsecond).
fn civil(unix_ns: i128) -> (i64, i64, i64, i64, i64) {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, sod, micros)
}

/// `{y:04}-{m:02}-{d:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z`, the fields
/// as [`civil`] gives them.
fn formatted((y, m, d, sod, micros): (i64, i64, i64, i64, i64)) -> String {
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn push_rfc3339(s: &mut Vec<u8>, unix_ns: i128) {
    const NS: u64 = 1_000_000_000;
    // In 64 bits from 1970 to 2554, the u64 ns range (128-bit division is
    // a call); other times in 128.
    let (secs, sub) = match u64::try_from(unix_ns) {
        Ok(ns) => (i128::from(ns / NS), ns % NS),
        Err(_) => (
            unix_ns.div_euclid(i128::from(NS)),
            unix_ns.rem_euclid(i128::from(NS)) as u64,
        ),
    };
    let micros = sub / 1000;
    // Lines come in bursts within one second: its date and time text
    // (`YYYY-MM-DDTHH:MM:SS.`) is kept from the last line, and only the
    // microseconds are written again (the civil date was ~10 % of
    // `trace --json`'s CPU at full churn).
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != Some(secs) {
            prefix.clear();
            let (y, m, d, sod, _) = civil(unix_ns);
            if (0..10_000).contains(&y) {
                // Digits by hand (a test holds them to `formatted`); every
                // field is non-negative here.
                let mut buf = *b"0000-00-00T00:00:00.";
                for (at, v) in [
                    (0..4, y),
                    (5..7, m),
                    (8..10, d),
                    (11..13, sod / 3600),
                    (14..16, sod / 60 % 60),
                    (17..19, sod % 60),
                ] {
                    line::write_decimal(&mut buf[at], v as u64);
                }
                prefix.extend_from_slice(&buf);
            } else {
                let text = formatted((y, m, d, sod, 0));
                prefix.extend_from_slice(&text.as_bytes()[..text.len() - "000000Z".len()]);
            }
            *second = Some(secs);
        }
        match <&[u8; 20]>::try_from(prefix.as_slice()) {
            Ok(usual) => line::put(s, usual, 20),
            Err(_) => s.extend_from_slice(prefix),
        }
    });
    line::put_padded::<6>(s, micros);
    s.push(b'Z');
}

thread_local! {
    /// The second [`push_rfc3339`] last wrote, and its text up to the
    /// microseconds.
    static SECOND: std::cell::RefCell<(Option<i128>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// Column header of the text output with address columns `width` wide.
pub fn header(width: usize) -> String {
    format!(
        "TIME(UTC)       SKADDR             PID     COMM             {:<width$} LPORT {:<width$} RPORT OLDSTATE       -> NEWSTATE       MS",
        "LADDR", "RADDR"
    )
}

/// Address columns start 15 wide, as in tcpstates (any IPv4 address fits).
pub const NARROW: usize = 15;
/// The longest text of an IPv6 address (v4-mapped ones included).
pub const WIDE: usize = 39;

/// Text lines whose columns stay under their header: the address columns
/// start at [`NARROW`] and widen once to [`WIDE`] when a longer address
/// comes, and then the header is written again, as vmstat repeats its own.
pub struct TextColumns {
    width: usize,
}

impl TextColumns {
    /// Columns for `-6` start wide, so IPv6 lines never re-head the output.
    pub fn new(wide: bool) -> Self {
        TextColumns {
            width: if wide { WIDE } else { NARROW },
        }
    }

    pub fn header(&self) -> String {
        header(self.width)
    }

    /// One transition's line; preceded by the new header (with its own
    /// newline) on the line that widens the columns.
    pub fn line(&mut self, t: &Transition, clock: &Clock) -> String {
        let longest = t
            .local
            .ip()
            .to_string()
            .len()
            .max(t.remote.ip().to_string().len());
        if longest <= self.width {
            return text_line(t, clock, self.width);
        }
        self.width = WIDE;
        format!("{}\n{}", self.header(), text_line(t, clock, self.width))
    }
}

/// One line of text output with address columns `width` wide, without the
/// newline.
pub fn text_line(t: &Transition, clock: &Clock, width: usize) -> String {
    let mut s = String::with_capacity(200);
    let (pid, comm) = match &t.owner {
        // Escaped: any user names their own processes, and this goes to
        // root's terminal.
        Some(o) => (o.pid.to_string(), fmt::comm(Some(&o.comm.to_str()))),
        None => ("-".to_string(), fmt::comm(None)),
    };
    let ms = match t.in_old {
        Some(d) => format!("{:.3}", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    };
    let _ = write!(
        s,
        "{} {:<18} {:<7} {:<16} {:<width$} {:<5} {:<width$} {:<5} {:<14} -> {:<14} {}",
        time_of_day(clock.unix_ns(t.ts_ns)),
        format!("{:#x}", t.skaddr),
        pid,
        comm,
        t.local.ip(),
        t.local.port(),
        t.remote.ip(),
        t.remote.port(),
        t.old,
        t.new,
        ms
    );
    if t.protocol == Protocol::Mptcp {
        s.push_str(" mptcp");
    }
    if let Some(e) = t.error {
        s.push(' ');
        s.push_str(&errno_name(e));
    }
    s
}

/// The JSON-lines object. Field names are stable (documented in README).
#[derive(Serialize)]
pub struct JsonEvent {
    pub time: String,
    pub ts_ns: u64,
    pub skaddr: String,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<Comm>,
    pub family: u8,
    pub protocol: &'static str,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub oldstate: String,
    pub newstate: String,
    pub ms: Option<f64>,
    pub caught: bool,
    /// At `-> CLOSE` with an error: its name ("ECONNREFUSED") and number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<u16>,
}

/// One JSON line, written into one string: the same text as serializing
/// [`JsonEvent`] (a test holds them equal), without its dozen allocations
/// or `core::fmt` (formatting was 87 % of `trace --json`'s CPU at full
/// churn, most of it `fmt::write` and padding of integers and addresses).
pub fn json_line(t: &Transition, clock: &Clock) -> String {
    let mut s = Vec::with_capacity(320);
    push_json_line(&mut s, t, clock);
    String::from_utf8(s).expect("JSON text is UTF-8")
}

/// Room reserved at once for a line, so that its pieces do not grow the
/// buffer: more than the longest (two IPv6 addresses, a comm of 15
/// escaped bytes, an errno's name), though a longer one would only grow.
const LINE_ROOM: usize = 1024;

/// [`json_line`], appended to `s` (the writer formats a batch into one
/// reused buffer).
pub fn push_json_line(s: &mut Vec<u8>, t: &Transition, clock: &Clock) {
    s.reserve(LINE_ROOM);
    s.extend_from_slice(b"{\"time\":\"");
    push_rfc3339(s, clock.unix_ns(t.ts_ns));
    s.extend_from_slice(b"\",\"ts_ns\":");
    line::put_u64(s, t.ts_ns);
    s.extend_from_slice(b",\"skaddr\":\"");
    line::put_hex(s, t.skaddr);
    s.push(b'"');
    let owner = t.owner.as_ref();
    push_field(s, b",\"netns\":", t.netns);
    push_field(s, b",\"pid\":", owner.map(|o| o.pid));
    push_field(s, b",\"tid\":", owner.map(|o| o.tid));
    s.extend_from_slice(b",\"comm\":");
    match owner {
        Some(o) => push_comm(s, &o.comm),
        None => s.extend_from_slice(b"null"),
    }
    s.extend_from_slice(b",\"family\":");
    s.push(if t.ip_version() == 6 { b'6' } else { b'4' });
    match t.protocol {
        Protocol::Tcp => s.extend_from_slice(b",\"protocol\":\"tcp\",\"laddr\":\""),
        Protocol::Mptcp => s.extend_from_slice(b",\"protocol\":\"mptcp\",\"laddr\":\""),
    }
    push_ip(s, t.local.ip());
    s.extend_from_slice(b"\",\"lport\":");
    line::put_u64(s, u64::from(t.local.port()));
    s.extend_from_slice(b",\"raddr\":\"");
    push_ip(s, t.remote.ip());
    s.extend_from_slice(b"\",\"rport\":");
    line::put_u64(s, u64::from(t.remote.port()));
    s.extend_from_slice(b",\"oldstate\":\"");
    push_state(s, t.old);
    s.extend_from_slice(b"\",\"newstate\":\"");
    push_state(s, t.new);
    s.extend_from_slice(b"\",\"ms\":");
    match t.in_old {
        Some(d) => push_ms(s, d),
        None => s.extend_from_slice(b"null"),
    }
    if t.caught {
        s.extend_from_slice(b",\"caught\":true");
    } else {
        s.extend_from_slice(b",\"caught\":false");
    }
    if let Some(e) = t.error {
        s.extend_from_slice(b",\"error\":");
        push_json_str(s, &errno_name(e));
        s.extend_from_slice(b",\"errno\":");
        line::put_u64(s, u64::from(e));
    }
    s.push(b'}');
}

/// An address as `Display` writes it; IPv4 without `core::fmt`.
fn push_ip(s: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => line::put_ipv4(s, v4.octets()),
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(s, "{v6}");
        }
    }
}

/// The states' names, each in a piece of one size (see [`line`]).
const STATE_NAMES: [([u8; 16], usize); TcpState::ALL.len()] = {
    let mut names = [([0u8; 16], 0); TcpState::ALL.len()];
    let mut i = 0;
    while i < TcpState::ALL.len() {
        // `push_state` indexes by the state's value less one.
        assert!(TcpState::ALL[i] as usize == i + 1);
        let name = TcpState::ALL[i].name().as_bytes();
        let mut j = 0;
        while j < name.len() {
            names[i].0[j] = name[j];
            j += 1;
        }
        names[i].1 = name.len();
        i += 1;
    }
    names
};

fn push_state(s: &mut Vec<u8>, state: crate::model::State) {
    match state {
        crate::model::State::Known(k) => {
            // ALL lists the states in the order of their values, from 1.
            let (piece, len) = &STATE_NAMES[k as usize - 1];
            line::put(s, piece, *len);
        }
        unknown => {
            use std::io::Write as _;
            let _ = write!(s, "{unknown}");
        }
    }
}

/// serde_json's own float text (what the struct form writes), through its
/// formatter into a stack buffer.
fn push_f64(s: &mut Vec<u8>, v: f64) {
    use serde_json::ser::Formatter as _;
    let mut buf = [0u8; 40];
    let mut w: &mut [u8] = &mut buf;
    let left = match serde_json::ser::CompactFormatter.write_f64(&mut w, v) {
        Ok(()) => w.len(),
        Err(_) => {
            s.extend_from_slice(serde_json::Value::from(v).to_string().as_bytes());
            return;
        }
    };
    let used = buf.len() - left;
    s.extend_from_slice(&buf[..used]);
}

/// [`in_old_ms`]'s text as serde writes the float, from integers below
/// 2^40 ns (18 minutes), where the float's rounding to the microsecond is
/// exact and the shortest text of `micros / 1e3` is its three decimals
/// without trailing zeros (float formatting was ~7 % of `trace --json`'s
/// CPU at full churn); the float itself beyond.
fn push_ms(s: &mut Vec<u8>, d: Duration) {
    let ns = d.as_nanos();
    if ns >= 1 << 40 {
        push_f64(s, (ns as f64 / 1e3).round() / 1e3);
        return;
    }
    let micros = (ns as u64 + 500) / 1000;
    line::put_u64(s, micros / 1000);
    let frac = micros % 1000;
    s.push(b'.');
    let at = s.len();
    line::put_padded::<3>(s, frac);
    // "X.0" for a whole millisecond, as for any whole float.
    let len = match frac {
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    s.truncate(at + len);
}

/// To the microsecond: the nanoseconds' float noise (0.055142000000000004)
/// helps nobody.
fn in_old_ms(t: &Transition) -> Option<f64> {
    t.in_old.map(|d| (d.as_nanos() as f64 / 1e3).round() / 1e3)
}

/// `key` is the whole `,"name":` text: one copy of a known length.
#[inline(always)]
fn push_field<const N: usize>(s: &mut Vec<u8>, key: &[u8; N], v: Option<u32>) {
    s.extend_from_slice(key);
    match v {
        Some(v) => line::put_u64(s, u64::from(v)),
        None => s.extend_from_slice(b"null"),
    }
}

/// A comm as a JSON string: in one piece when it needs no escaping (the
/// usual printable ASCII name), else as serde escapes its lossy text.
fn push_comm(s: &mut Vec<u8>, comm: &Comm) {
    let bytes = comm.as_bytes();
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        s.push(b'"');
        line::put(s, comm.padded(), bytes.len());
        s.push(b'"');
    } else {
        push_json_str(s, &comm.to_str());
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn push_json_str(s: &mut Vec<u8>, v: &str) {
    use std::io::Write as _;
    s.push(b'"');
    for c in v.chars() {
        match c {
            '"' => s.extend_from_slice(b"\\\""),
            '\\' => s.extend_from_slice(b"\\\\"),
            '\n' => s.extend_from_slice(b"\\n"),
            '\r' => s.extend_from_slice(b"\\r"),
            '\t' => s.extend_from_slice(b"\\t"),
            '\u{8}' => s.extend_from_slice(b"\\b"),
            '\u{c}' => s.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    s.push(b'"');
}

/// The line as a struct, serialized by serde: the reference `json_line`
/// is held to.
pub fn json_event(t: &Transition, clock: &Clock) -> JsonEvent {
    JsonEvent {
        time: rfc3339(clock.unix_ns(t.ts_ns)),
        ts_ns: t.ts_ns,
        skaddr: format!("{:#x}", t.skaddr),
        netns: t.netns,
        pid: t.owner.as_ref().map(|o| o.pid),
        tid: t.owner.as_ref().map(|o| o.tid),
        comm: t.owner.as_ref().map(|o| o.comm),
        family: t.ip_version(),
        protocol: match t.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Mptcp => "mptcp",
        },
        laddr: t.local.ip().to_string(),
        lport: t.local.port(),
        raddr: t.remote.ip().to_string(),
        rport: t.remote.port(),
        oldstate: t.old.to_string(),
        newstate: t.new.to_string(),
        ms: in_old_ms(t),
        caught: t.caught,
        error: t.error.map(|e| errno_name(e).into_owned()),
        errno: t.error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, State};
    use std::time::Duration;

    fn sample() -> Transition {
        Transition {
            ts_ns: 1_000_000_000,
            skaddr: 0xffff_8880_0abc_d000,
            netns: Some(4026531840),
            owner: Some(Owner {
                pid: 4242,
                tid: 4243,
                comm: "nginx".into(),
            }),
            old: State::Known(TcpState::SynSent),
            new: State::Known(TcpState::Established),
            protocol: Protocol::Tcp,
            local: "127.0.0.1:51000".parse().unwrap(),
            remote: "127.0.0.1:8080".parse().unwrap(),
            in_old: Some(Duration::from_micros(1250)),
            caught: false,
            passive: None,
            error: None,
        }
    }

    // 2026-11-25T06:00:00Z is 1795586400 s after the epoch.
    const CLOCK: Clock = Clock {
        offset_ns: 1_795_586_399_000_000_000,
    };

    #[test]
    fn text_line_has_tcpstates_columns() {
        let line = text_line(&sample(), &CLOCK, NARROW);
        assert!(
            line.starts_with("06:00:00.000000 0xffff88800abcd000"),
            "{line}"
        );
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "06:00:00.000000",
                "0xffff88800abcd000",
                "4242",
                "nginx",
                "127.0.0.1",
                "51000",
                "127.0.0.1",
                "8080",
                "SYN-SENT",
                "->",
                "ESTABLISHED",
                "1.250"
            ]
        );
        assert_eq!(header(NARROW).split_whitespace().count(), cols.len());
    }

    #[test]
    fn columns_stay_under_their_header_with_ipv6_and_mapped_addresses() {
        // Where each line's local port starts must be where its header's
        // LPORT starts, whatever the addresses before it.
        let col = |line: &str, port: &str| line.find(&format!(" {port} ")).unwrap() + 1;
        let mut cols = TextColumns::new(false);
        let mut head = cols.header();
        let v4 = sample();
        let line = cols.line(&v4, &CLOCK);
        assert!(!line.contains('\n'), "an IPv4 line keeps the header");
        assert_eq!(col(&line, "51000"), head.find("LPORT").unwrap());

        let mut mapped = sample();
        mapped.local = "[::ffff:127.0.0.1]:51000".parse().unwrap();
        let mut v6 = sample();
        v6.local = "[2001:db8:1234:5678:9abc:def0:1234:5678]:51000"
            .parse()
            .unwrap();
        v6.remote = "[::1]:8080".parse().unwrap();
        let lines: Vec<String> = [&mapped, &v6, &v4]
            .iter()
            .map(|t| cols.line(t, &CLOCK))
            .collect();
        // The first longer address re-heads the output once, then all stay wide.
        let (new_head, first) = lines[0].split_once('\n').unwrap();
        assert_eq!(new_head, header(WIDE));
        head = new_head.to_string();
        for line in [first, &lines[1], &lines[2]] {
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(col(line, "51000"), head.find("LPORT").unwrap(), "{line}");
            assert_eq!(col(line, "8080"), head.find("RPORT").unwrap(), "{line}");
        }
        // `-6` starts wide: no second header.
        assert!(!TextColumns::new(true).line(&v6, &CLOCK).contains('\n'));
    }

    #[test]
    fn unknown_owner_is_shown_as_unknown() {
        let mut t = sample();
        t.owner = None;
        t.in_old = None;
        let line = text_line(&t, &CLOCK, NARROW);
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[2], cols[3], cols[11]), ("-", "?", "-"));
        let json: serde_json::Value = serde_json::from_str(&json_line(&t, &CLOCK)).unwrap();
        assert!(json["pid"].is_null() && json["comm"].is_null() && json["ms"].is_null());
    }

    #[test]
    fn json_line_is_exactly_what_serde_writes_for_the_struct() {
        let mut cases = vec![sample()];
        let mut t = sample();
        t.owner = None;
        t.in_old = None;
        t.netns = None;
        cases.push(t);
        let mut t = sample();
        t.owner.as_mut().unwrap().comm = Comm::from_bytes(b"a\"b\\c\n\x01\x7f\xff");
        t.local = "[::ffff:127.0.0.1]:1".parse().unwrap();
        t.remote = "[2001:db8::1]:443".parse().unwrap();
        t.error = Some(111);
        t.caught = true;
        t.protocol = Protocol::Mptcp;
        t.in_old = Some(Duration::from_nanos(3_000_000));
        cases.push(t);
        let mut t = sample();
        t.in_old = Some(Duration::from_nanos(1));
        t.error = Some(4242);
        cases.push(t);
        for t in &cases {
            let reference = serde_json::to_string(&json_event(t, &CLOCK)).unwrap();
            assert_eq!(json_line(t, &CLOCK), reference);
        }
    }

    /// The hand-written date digits against `format!` of the same fields,
    /// from before year 0 to past year 9999.
    #[test]
    fn rfc3339_digits_match_formatted_text() {
        let year = 365 * 86_400 * 1_000_000_000i128;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..20_000i128 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Years -3000 to 12000 around the epoch, at any nanosecond.
            let ns = (i * 15_000 / 20_000 - 3_000 - 1_970) * year + (x % (year as u64)) as i128;
            assert_eq!(rfc3339(ns), formatted(civil(ns)), "at {ns}");
            // The same second again (its text kept), and the next one.
            let again = ns - ns.rem_euclid(1_000_000_000) + 999_999_999;
            assert_eq!(rfc3339(again), formatted(civil(again)), "at {again}");
            assert_eq!(
                rfc3339(again + 1),
                formatted(civil(again + 1)),
                "at {}",
                again + 1
            );
        }
    }

    /// `ms` from integers against the float serde writes, at every
    /// rounding edge near the microsecond and across the 2^40 ns switch.
    #[test]
    fn ms_text_is_the_floats_text() {
        let float = |ns: u64| {
            let mut t = sample();
            t.in_old = Some(Duration::from_nanos(ns));
            serde_json::to_string(&in_old_ms(&t)).unwrap()
        };
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut cases: Vec<u64> = (0..5_000).collect();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Around a microsecond's half (…499, …500, …501) at any scale.
            let base = (x >> (x % 44)) / 1000 * 1000;
            cases.extend([base + 499, base + 500, base + 501, base, base + 999]);
        }
        cases.extend([(1 << 40) - 1, 1 << 40, (1 << 40) + 500, u64::MAX]);
        for ns in cases {
            let mut s = Vec::new();
            push_ms(&mut s, Duration::from_nanos(ns));
            assert_eq!(String::from_utf8(s).unwrap(), float(ns), "at {ns} ns");
        }
    }

    /// The hand-written digits against serde over a spread of values: every
    /// width of address, port, time and duration, unknown states, far dates.
    #[test]
    fn json_line_matches_serde_over_many_values() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..5000u64 {
            let r = next();
            let mut t = sample();
            t.skaddr = match i % 4 {
                0 => r,
                1 => r >> (r % 64),
                2 => i,
                _ => 0,
            };
            t.ts_ns = if i % 3 == 0 { r } else { r >> (r % 64) };
            t.old = State::from_raw((r >> 8) as u8 % 16);
            t.new = State::from_raw((r >> 16) as u8);
            let (a, b) = ((r >> 24) as u32 >> (r % 32), (r >> 40) as u16);
            t.local = if i % 5 == 4 {
                std::net::SocketAddr::new(
                    std::net::Ipv6Addr::from(u128::from(r) << 64 | u128::from(a)).into(),
                    b,
                )
            } else {
                std::net::SocketAddr::new(std::net::Ipv4Addr::from(a).into(), b >> (r % 16))
            };
            t.remote = std::net::SocketAddr::new(std::net::Ipv4Addr::from(!a).into(), !b);
            t.in_old = (i % 7 != 0).then(|| Duration::from_nanos(r >> (r % 64)));
            t.netns = (i % 11 != 0).then_some(a);
            t.error = (i % 13 == 0).then_some(b);
            if i % 17 == 0 {
                t.owner = None;
            } else if let Some(o) = &mut t.owner {
                // Every length, the fast path's edges (space, `~`) and
                // what it leaves to the escaping (DEL, quote, backslash,
                // control and non-UTF-8 bytes).
                const BYTES: &[u8] = b" ~azAZ09-_.\x7f\"\\\n\x01\xff\xc3\xa9";
                let len = (r >> 48) as usize % 16;
                let name: Vec<u8> = (0..len)
                    .map(|k| BYTES[((r >> (k % 8 * 4)) as usize ^ k) % BYTES.len()])
                    .collect();
                o.comm = Comm::from_bytes(&name);
            }
            let offset = (r as i64 >> (r % 64)) as i128;
            let clock = Clock {
                // Some past year 9999 or before year 0 (the fallback's).
                offset_ns: match i % 3 {
                    0 => offset,
                    1 => -offset,
                    _ => offset * 1_000_000,
                },
            };
            let reference = serde_json::to_string(&json_event(&t, &clock)).unwrap();
            assert_eq!(json_line(&t, &clock), reference, "case {i}");
        }
    }

    #[test]
    fn json_line_has_stable_fields() {
        let json: serde_json::Value = serde_json::from_str(&json_line(&sample(), &CLOCK)).unwrap();
        assert_eq!(json["time"], "2026-11-25T06:00:00.000000Z");
        assert_eq!(json["pid"], 4242);
        assert_eq!(json["tid"], 4243);
        assert_eq!(json["comm"], "nginx");
        assert_eq!(json["family"], 4);
        assert_eq!(json["lport"], 51000);
        assert_eq!(json["rport"], 8080);
        assert_eq!(json["oldstate"], "SYN-SENT");
        assert_eq!(json["newstate"], "ESTABLISHED");
        assert_eq!(json["ms"], 1.25);
        assert_eq!(json["netns"], 4026531840u32);
        assert_eq!(json["caught"], false);
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 17);
    }

    #[test]
    fn filter_matches_on_every_field() {
        let t = sample();
        assert!(Filter::default().matches(&t));
        let f = |f: Filter| f.matches(&t);
        assert!(f(Filter {
            ports: vec![8080],
            ..Default::default()
        }));
        assert!(f(Filter {
            ports: vec![51000],
            ..Default::default()
        }));
        assert!(!f(Filter {
            ports: vec![22],
            ..Default::default()
        }));
        assert!(f(Filter {
            remote_ports: vec![8080],
            ..Default::default()
        }));
        assert!(!f(Filter {
            local_ports: vec![8080],
            ..Default::default()
        }));
        assert!(f(Filter {
            pids: vec![4242],
            ..Default::default()
        }));
        assert!(!f(Filter {
            pids: vec![1],
            ..Default::default()
        }));
        assert!(f(Filter {
            states: vec![TcpState::SynSent],
            ..Default::default()
        }));
        assert!(!f(Filter {
            states: vec![TcpState::CloseWait],
            ..Default::default()
        }));
        assert!(f(Filter {
            ip_version: Some(4),
            ..Default::default()
        }));
        assert!(!f(Filter {
            ip_version: Some(6),
            ..Default::default()
        }));
        assert!(!f(Filter {
            netns: Some(1),
            ..Default::default()
        }));
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
