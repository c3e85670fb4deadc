//! The kernel's TCP counters of a network namespace: the `Tcp` group of
//! /proc/net/snmp and the `TcpExt` group of /proc/net/netstat, every field
//! by name (SYN cookies, listen-queue overflows, request-queue drops, aborts,
//! retransmits, ...). procfs parses /proc/net/snmp into a fixed struct and
//! not /proc/net/netstat at all; both files share one simple format, so
//! this reads them by name and keeps fields a newer kernel adds.
use std::collections::BTreeMap;

/// The groups kept; the rest (Ip, Udp, MPTcpExt, ...) is not TCP state.
const GROUPS: [&str; 2] = ["Tcp", "TcpExt"];

/// Parses the "Group: Name Name ...\nGroup: value value ..." line pairs of
/// /proc/net/snmp and /proc/net/netstat into "Group.Name" -> value, for the
/// TCP groups. Values are i64 (Tcp.MaxConn is -1).
pub fn parse(text: &str, out: &mut BTreeMap<String, i64>) -> Result<(), String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(names) = lines.next() {
        let (group, names) = names
            .split_once(':')
            .ok_or_else(|| format!("line without a group: {names:?}"))?;
        // Field names never start with a digit or '-'; a line whose first
        // field does is values whose header is missing, and would otherwise
        // be reported as a header without values, naming the wrong line.
        if names
            .split_whitespace()
            .next()
            .is_some_and(|f| f.starts_with(|c: char| c.is_ascii_digit() || c == '-'))
        {
            return Err(format!("{group}: values line without its header"));
        }
        let values = lines
            .next()
            .ok_or_else(|| format!("{group}: header without a values line"))?;
        let (vgroup, values) = values
            .split_once(':')
            .ok_or_else(|| format!("{group}: values line without a group"))?;
        if vgroup != group {
            return Err(format!("{group}: header followed by {vgroup}'s values"));
        }
        if !GROUPS.contains(&group) {
            continue;
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            return Err(format!(
                "{group}: {} names but {} values",
                names.len(),
                values.len()
            ));
        }
        for (n, v) in names.iter().zip(values) {
            let v: i64 = v
                .parse()
                .map_err(|_| format!("{group}.{n}: {v:?} is not a number"))?;
            out.insert(format!("{group}.{n}"), v);
        }
    }
    Ok(())
}

/// Whether a field is a level, not a counter (everything else only grows).
pub fn is_gauge(name: &str) -> bool {
    matches!(
        name,
        "Tcp.RtoAlgorithm" | "Tcp.RtoMin" | "Tcp.RtoMax" | "Tcp.MaxConn" | "Tcp.CurrEstab"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_tcp_field_of_the_real_files() {
        let mut m = BTreeMap::new();
        parse(include_str!("../../tests/data/proc_net_snmp"), &mut m).unwrap();
        parse(include_str!("../../tests/data/proc_net_netstat"), &mut m).unwrap();
        assert_eq!(m["Tcp.MaxConn"], -1);
        for f in [
            "Tcp.ActiveOpens",
            "Tcp.PassiveOpens",
            "Tcp.AttemptFails",
            "Tcp.EstabResets",
            "Tcp.RetransSegs",
            "TcpExt.SyncookiesSent",
            "TcpExt.SyncookiesRecv",
            "TcpExt.SyncookiesFailed",
            "TcpExt.ListenOverflows",
            "TcpExt.ListenDrops",
            "TcpExt.TCPReqQFullDoCookies",
            "TcpExt.TCPReqQFullDrop",
            "TcpExt.TCPAbortOnData",
            "TcpExt.TCPAbortOnTimeout",
        ] {
            assert!(m.contains_key(f), "{f}");
        }
        assert!(
            !m.keys()
                .any(|k| k.starts_with("Ip.") || k.starts_with("Udp"))
        );
        assert!(m.len() > 100, "{}", m.len());
    }

    #[test]
    fn bad_input_names_the_group_and_field() {
        let mut m = BTreeMap::new();
        let e = |t: &str| parse(t, &mut BTreeMap::new()).unwrap_err();
        assert_eq!(e("Tcp: A B\nTcp: 1\n"), "Tcp: 2 names but 1 values");
        assert_eq!(e("Tcp: A B\nTcp: 1 x\n"), "Tcp.B: \"x\" is not a number");
        assert_eq!(e("Tcp: A\n"), "Tcp: header without a values line");
        assert_eq!(
            e("Tcp: A\nUdp: 1\n"),
            "Tcp: header followed by Udp's values"
        );
        assert_eq!(e("garbage\n"), "line without a group: \"garbage\"");
        assert_eq!(e("Tcp: 1 200\n"), "Tcp: values line without its header");
        assert_eq!(
            e("Tcp: A B\nTcp: 1 2\nTcp: -1 3\n"),
            "Tcp: values line without its header"
        );
        // Groups tcpwatch does not keep are not checked field by field.
        parse("Udp: A\nUdp: x\n", &mut m).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn gauges_are_exactly_the_five_tcp_levels_of_the_real_file() {
        // Spelled as the kernel spells them, or they would be exported as
        // counters.
        let mut m = BTreeMap::new();
        parse(include_str!("../../tests/data/proc_net_snmp"), &mut m).unwrap();
        parse(include_str!("../../tests/data/proc_net_netstat"), &mut m).unwrap();
        let gauges: Vec<&str> = m
            .keys()
            .map(String::as_str)
            .filter(|k| is_gauge(k))
            .collect();
        assert_eq!(
            gauges,
            [
                "Tcp.CurrEstab",
                "Tcp.MaxConn",
                "Tcp.RtoAlgorithm",
                "Tcp.RtoMax",
                "Tcp.RtoMin"
            ]
        );
    }
}
