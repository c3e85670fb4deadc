//! Numbers and names as `top` prints them: SI suffixes, short ages, one
//! spelling of an unknown owner, and no byte from a process name that a
//! terminal would obey.

/// A count: exact below 10,000, then three significant digits with a
/// suffix (`12.3k`, `456k`, `7.89M`).
pub fn count(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else {
        scaled(n as f64)
    }
}

/// A rate per second: `-` when unknown (one sample so far), one decimal
/// below 10, whole numbers below 10,000, then suffixed.
pub fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if !r.is_finite() || r < 0.0 => "-".into(),
        Some(0.0) => "0".into(),
        Some(r) if r < 0.05 => "<0.1".into(),
        Some(r) if r < 9.95 => format!("{r:.1}"),
        Some(r) if r < 9_999.5 => format!("{r:.0}"),
        Some(r) => scaled(r),
    }
}

fn scaled(v: f64) -> String {
    const UNITS: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if v >= 999.5e18 {
        // Past any real count: a float's own notation, still short.
        return format!("{v:.0e}");
    }
    let mut v = v;
    let mut unit = 0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let digits = if v < 9.995 {
        2
    } else if v < 99.95 {
        1
    } else {
        0
    };
    format!("{v:.digits$}{}", UNITS[unit])
}

/// A duration in seconds as `850ms`, `42s`, `4m12s`, `3h04m`, `2d03h`.
pub fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 1.0 {
        return format!("{}ms", (secs * 1e3) as u64);
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Memory as `24.6MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// A pid, `-` when the owner is unknown (as `trace` and `states` write it).
pub fn pid(p: Option<u32>) -> String {
    p.map_or("-".into(), |p| p.to_string())
}

/// A process name, `?` when the owner is unknown; control characters and
/// backslashes escaped (`\x1b`, `\n`, `\\`) as `ps` does, since any user
/// names their own processes and root reads this in a terminal.
pub fn comm(c: Option<&str>) -> String {
    let Some(c) = c else {
        return "?".into();
    };
    let mut o = String::with_capacity(c.len());
    for ch in c.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() => o.push_str(&format!("\\x{:02x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// An address as it is written before `:port`: IPv6 in brackets.
pub fn address(a: &str) -> String {
    if a.contains(':') {
        format!("[{a}]")
    } else {
        a.into()
    }
}

/// `s` cut to `width` characters, the cut marked with `…`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.into();
    }
    if width == 0 {
        return String::new();
    }
    let mut o: String = s.chars().take(width - 1).collect();
    o.push('…');
    o
}

/// The last values as a sparkline of `width` cells scaled to their own
/// maximum (a flat zero line is blank bars, not noise).
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().max().unwrap_or(0);
    let mut o: String = " ".repeat(width - tail.len());
    for &v in tail {
        let i = if max == 0 {
            0
        } else {
            ((v as f64 / max as f64) * 7.0).round() as usize
        };
        o.push(BARS[i.min(7)]);
    }
    o
}

/// A horizontal bar of `width` cells for `part` of `whole`, in eighths.
pub fn bar(part: u64, whole: u64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if whole == 0 || width == 0 {
        return " ".repeat(width);
    }
    let eighths = ((part.min(whole) as f64 / whole as f64) * (width * 8) as f64).round() as usize;
    // Anything non-zero shows at least a sliver.
    let eighths = if part > 0 { eighths.max(1) } else { 0 };
    let mut o = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        o.push(EIGHTHS[eighths % 8]);
    }
    let used = o.chars().count();
    o.push_str(&" ".repeat(width - used));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_read_at_a_glance() {
        assert_eq!(count(9999), "9999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(456_789), "457k");
        assert_eq!(count(7_891_234), "7.89M");
        assert_eq!(count(u64::MAX), "18.4E");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0");
        assert_eq!(rate(Some(0.01)), "<0.1");
        assert_eq!(rate(Some(3.25)), "3.2");
        assert_eq!(rate(Some(12.6)), "13");
        assert_eq!(rate(Some(12_345.0)), "12.3k");
        assert_eq!(rate(Some(f64::NAN)), "-");
    }

    #[test]
    fn huge_numbers_stay_short() {
        assert!(count(u64::MAX).chars().count() <= 5, "{}", count(u64::MAX));
        assert!(
            rate(Some(1e300)).chars().count() <= 8,
            "{}",
            rate(Some(1e300))
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(0.25), "250ms");
        assert_eq!(age(42.9), "42s");
        assert_eq!(age(252.0), "4m12s");
        assert_eq!(age(3.0 * 3600.0 + 240.0), "3h04m");
        assert_eq!(age(2.0 * 86400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(age(f64::INFINITY), "-");
    }

    #[test]
    fn unknown_owners_read_one_way_and_names_cannot_drive_the_terminal() {
        assert_eq!((pid(None), comm(None)), ("-".to_string(), "?".to_string()));
        assert_eq!(
            comm(Some("\x1b[2J\x1b]0;PWN\x07")),
            "\\x1b[2J\\x1b]0;PWN\\x07"
        );
        assert_eq!(comm(Some("x\n00:00 FAKE")), "x\\n00:00 FAKE");
        assert_eq!(comm(Some("a\\b")), "a\\\\b");
    }

    #[test]
    fn bars_and_sparklines_fill_their_width() {
        assert_eq!(bar(0, 10, 4), "    ");
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(1, 1000, 4), "▏   ", "a non-zero count is visible");
        assert_eq!(sparkline(&[0, 0], 4), "  ▁▁");
        assert_eq!(sparkline(&[1, 2, 4, 8], 3), "▃▅█");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(bytes(25_794_560), "24.6MiB");
    }
}
