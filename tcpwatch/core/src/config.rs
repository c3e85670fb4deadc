//! The daemon's configuration: one TOML file, every setting with a default
//! and a range, unknown keys refused. Parsing and checking are pure (text
//! in, a [`Config`] or an error naming the line out); reading the file and
//! applying it is the daemon's.
use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/tcpwatch/tcpwatch.toml";

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: Daemon,
    pub probe: Probe,
    pub metrics: Metrics,
    pub control: Control,
    pub limits: Limits,
    pub detect: Detect,
    pub alertmanager: Alertmanager,
}

/// Where alerts are sent; a restart applies changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alertmanager {
    /// `http://HOST:PORT`; empty: no sink.
    #[serde(deserialize_with = "am_url")]
    pub url: String,
    /// Seconds between re-sends of the unchanged list.
    #[serde(deserialize_with = "resend")]
    pub resend: f64,
    /// The `instance` label; empty: this host's name.
    #[serde(deserialize_with = "instance")]
    pub instance: String,
}

/// Whether a name can be the instance label and sit in a URL as is.
pub fn valid_instance(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

fn instance<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if valid_instance(&s) {
        Ok(s)
    } else {
        Err(D::Error::custom(format!(
            "{s:?} is not an instance name (letters, digits, - . _ :)"
        )))
    }
}

impl Default for Alertmanager {
    fn default() -> Self {
        Alertmanager {
            url: String::new(),
            resend: 60.0,
            instance: String::new(),
        }
    }
}

/// An Alertmanager URL's address and path prefix (plain HTTP only).
pub fn parse_am_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "{url:?} is not an http:// URL (HTTPS is not supported; put a local proxy in front)"
        )
    })?;
    let (hostport, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{url:?}: bad port {p:?}"))
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        // [v6] or [v6]:port
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed ["))?;
        let port = match after {
            "" => 80,
            p => port_of(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{url:?}: junk after ]"))?,
            )?,
        };
        (h.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!("{url:?}: an IPv6 address goes in brackets"));
            }
            Some((h, p)) => (h.to_string(), port_of(p)?),
            None => (hostport.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host, port, format!("/{}", path.trim_end_matches('/'))))
}

fn am_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.is_empty() {
        parse_am_url(&s).map_err(D::Error::custom)?;
    }
    Ok(s)
}

fn resend<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::RESEND_S, "a number of seconds")
}

/// The detectors' thresholds (`crate::detect`); they change live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detect {
    /// Seconds after start before anything fires.
    #[serde(deserialize_with = "seconds")]
    pub warmup: f64,
    /// Seconds a condition must be clear before its alert resolves.
    #[serde(deserialize_with = "seconds")]
    pub resolve_after: f64,
    /// SYN flood: request sockets at this fraction of the backlog or more.
    #[serde(deserialize_with = "fraction")]
    pub syn_flood_fill: f64,
    /// Seconds the SYN flood condition holds before it fires.
    #[serde(deserialize_with = "seconds")]
    pub syn_flood_hold: f64,
    /// Seconds the accept-queue overflow condition holds before it fires.
    #[serde(deserialize_with = "seconds")]
    pub accept_overflow_hold: f64,
    /// CLOSE-WAIT leak: at least this many sockets of one process...
    #[serde(deserialize_with = "count")]
    pub close_wait_min: u64,
    /// ...the oldest waiting this many seconds.
    #[serde(deserialize_with = "seconds")]
    pub close_wait_age: f64,
    /// RST storm: resets (sent plus received) per second on one port...
    #[serde(deserialize_with = "per_second")]
    pub rst_storm_rate: f64,
    /// ...and this many times the port's normal rate or more...
    #[serde(deserialize_with = "factor")]
    pub rst_storm_factor: f64,
    /// ...for this many seconds.
    #[serde(deserialize_with = "seconds")]
    pub rst_storm_hold: f64,
    /// Failing connects: one process's failed connects per second...
    #[serde(deserialize_with = "per_second")]
    pub connect_fail_rate: f64,
    /// ...at least this fraction of those it attempts...
    #[serde(deserialize_with = "fraction")]
    pub connect_fail_ratio: f64,
    /// ...for this many seconds.
    #[serde(deserialize_with = "seconds")]
    pub connect_fail_hold: f64,
    /// TIME-WAIT pressure: TIME-WAIT sockets to one destination at this
    /// fraction of the ephemeral port range.
    #[serde(deserialize_with = "fraction")]
    pub time_wait_fill: f64,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            warmup: 5.0,
            resolve_after: 10.0,
            syn_flood_fill: 0.9,
            syn_flood_hold: 1.0,
            accept_overflow_hold: 2.0,
            close_wait_min: 16,
            close_wait_age: 60.0,
            rst_storm_rate: 20.0,
            rst_storm_factor: 10.0,
            rst_storm_hold: 5.0,
            connect_fail_rate: 5.0,
            connect_fail_ratio: 0.5,
            connect_fail_hold: 10.0,
            time_wait_fill: 0.5,
        }
    }
}

/// What the sampler and the event loop do; all of it changes live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    #[serde(deserialize_with = "interval")]
    pub interval: f64,
    #[serde(deserialize_with = "budget")]
    pub census_budget: f64,
    #[serde(deserialize_with = "owners_every")]
    pub owners_every: u32,
    /// "own", "all", or one namespace (inode, NAME, /run/netns/NAME,
    /// /proc/PID/ns/net). Needs a restart.
    pub netns: String,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            interval: 1.0,
            census_budget: 2.0,
            owners_every: 10,
            netns: "own".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Auto,
    Btf,
    Classic,
}

/// Where connect() calls that fail before a SYN leaves are caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectHook {
    /// fexit on the TCP connect where the kernel allows it, else the
    /// syscall tracepoint.
    Auto,
    /// The `sys_exit_connect` tracepoint: it also sees connects an LSM
    /// refuses, and sends every system call of every task through the
    /// kernel's tracing path.
    Syscall,
    /// Not caught: no per-system-call cost, no count of those failures.
    Off,
}

/// The kernel side; needs a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Probe {
    pub hook: Hook,
    /// Each CPU's ring buffer; None: 4 MiB shared out, at least 256 KiB
    /// per CPU.
    #[serde(deserialize_with = "ring_kib", skip_serializing_if = "Option::is_none")]
    pub ring_kib: Option<u32>,
    pub witness: bool,
    /// Count transitions per namespace and pair in the kernel, and follow
    /// no socket (the daemon only): the cost of a bare counter, without
    /// per-port or per-process transitions, durations or chains.
    pub counts_only: bool,
    pub connect_hook: ConnectHook,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            hook: Hook::Auto,
            ring_kib: None,
            witness: false,
            counts_only: false,
            connect_hook: ConnectHook::Auto,
        }
    }
}

/// The metrics endpoint; needs a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub enabled: bool,
    pub addr: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 19100)),
        }
    }
}

/// The control socket (`tcpwatch top`, scripts); needs a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    pub enabled: bool,
    pub path: std::path::PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            enabled: true,
            path: "/run/tcpwatch/tcpwatch.sock".into(),
        }
    }
}

/// Cardinality caps; they change live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(deserialize_with = "cap")]
    pub max_ports: usize,
    #[serde(deserialize_with = "cap")]
    pub max_processes: usize,
    #[serde(deserialize_with = "netns_cap")]
    pub max_netns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ports: 64,
            max_processes: 64,
            max_netns: 256,
        }
    }
}

/// The ranges of the settings, shared with the command line's flags.
pub mod range {
    use std::ops::RangeInclusive;

    /// Seconds between ticks.
    pub const INTERVAL_S: RangeInclusive<f64> = 0.01..=3600.0;
    /// At least 0.01 %: the census interval is stretched by 100/budget.
    pub const BUDGET_PCT: RangeInclusive<f64> = 0.01..=100.0;
    pub const OWNERS_EVERY: RangeInclusive<u32> = 1..=10_000;
    pub const RING_KIB: RangeInclusive<u32> = 4..=1_048_576;
    /// Keys one table may track: each costs a few KiB of windows.
    pub const CAP: RangeInclusive<usize> = 1..=10_000;
    pub const NETNS_CAP: RangeInclusive<usize> = 1..=4096;
    /// Detector delays and ages, in seconds.
    pub const SECONDS: RangeInclusive<f64> = 0.0..=86_400.0;
    pub const FRACTION: RangeInclusive<f64> = 0.01..=1.0;
    pub const COUNT: RangeInclusive<u64> = 1..=1_000_000;
    pub const RESEND_S: RangeInclusive<f64> = 1.0..=3600.0;
    pub const PER_SECOND: RangeInclusive<f64> = 0.01..=10_000_000.0;
    pub const FACTOR: RangeInclusive<f64> = 1.0..=1_000_000.0;
}

/// A value in `range`, or an error saying it is not `what` in it.
fn ranged<'de, D, T>(d: D, range: std::ops::RangeInclusive<T>, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + fmt::Display + PartialOrd,
{
    let v = T::deserialize(d)?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(D::Error::custom(format!(
            "{v} is not {what} from {} to {}",
            range.start(),
            range.end()
        )))
    }
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::SECONDS, "a number of seconds")
}

fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::FRACTION, "a fraction")
}

fn per_second<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::PER_SECOND, "a rate per second")
}

fn factor<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::FACTOR, "a factor")
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, range::COUNT, "a count")
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::INTERVAL_S, "a number of seconds")
}

fn budget<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    ranged(d, range::BUDGET_PCT, "a percentage")
}

fn owners_every<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, range::OWNERS_EVERY, "a number of censuses")
}

fn ring_kib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, range::RING_KIB, "a size in KiB").map(Some)
}

fn cap<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, range::CAP, "a cap")
}

fn netns_cap<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, range::NETNS_CAP, "a cap")
}

/// A configuration that could not be used: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and checks a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            reason: e.message().trim().to_string(),
        })
    }

    /// What differs from `running` and cannot change without a restart,
    /// by key name.
    pub fn needs_restart(&self, running: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.daemon.netns != running.daemon.netns {
            out.push("daemon.netns");
        }
        if self.probe != running.probe {
            out.push("probe");
        }
        if self.metrics != running.metrics {
            out.push("metrics");
        }
        if self.control != running.control {
            out.push("control");
        }
        if self.alertmanager != running.alertmanager {
            out.push("alertmanager");
        }
        out
    }
}

/// `tcpwatch config default`: every setting at its default, commented.
pub const DEFAULT_TEXT: &str = r#"# tcpwatch daemon configuration (/etc/tcpwatch/tcpwatch.toml).
# Every key is optional; these are the defaults. Command-line flags
# override the file. SIGHUP reloads it: [daemon] (but netns) and [limits]
# change live, as does [detect]; [probe], [metrics], [control],
# [alertmanager] and daemon.netns need a restart. A file
# that does not parse is refused with its line, and on SIGHUP the running
# configuration is kept.

[daemon]
# Seconds between ticks: snapshots, censuses and counter samples (0.01-3600).
interval = 1.0
# Most of one core the census may use, in percent (0.01-100); a census that
# takes longer stretches its interval.
census_budget = 2.0
# Scan /proc for socket owners every N censuses (1-10000).
owners_every = 10
# Network namespaces covered: "own" (the daemon's), "all", or one namespace
# (inode, NAME, /run/netns/NAME, /proc/PID/ns/net). Restart to change.
netns = "own"

[probe]
# Kernel hook: "auto" (BTF where the kernel has it), "btf" or "classic".
hook = "auto"
# Each CPU's ring buffer in KiB (4-1048576), rounded up to a power of two.
# Unset: 4 MiB shared out between CPUs, at least 256 KiB each.
# ring_kib = 2048
# Count tracepoint firings the kernel ran no program for (a perf counter,
# host-wide: an audit that costs ~370 ns per transition; off by default).
witness = false
# Count transitions per namespace and state pair in the kernel and follow
# no socket: about the cost of a bare counter, but no per-port or
# per-process transitions, durations, CLOSE-WAIT ages or chain checks
# (daemon only; needs the BTF hook; see README, "Counts-only mode").
counts_only = false
# Where connect() calls that fail before any SYN (ENETUNREACH, EADDRNOTAVAIL,
# EINVAL) are caught: "auto" (fexit on the TCP connect where the kernel
# allows it, else the syscall tracepoint), "syscall" (the sys_exit_connect
# tracepoint: it also sees connects an LSM refuses, but every system call of
# every task then takes the kernel's tracing path), or "off" (not counted;
# refusals, resets and timeouts still are).
connect_hook = "auto"

[metrics]
enabled = true
# Loopback by default: any other address exposes this host's connections.
addr = "127.0.0.1:19100"

[control]
# A Unix socket (mode 0660, group tcpwatch when it exists) where local
# clients such as `tcpwatch top` read the daemon's snapshots.
enabled = true
path = "/run/tcpwatch/tcpwatch.sock"

[limits]
# Keys tracked individually; the rest are summed as "other" (1-10000).
max_ports = 64
max_processes = 64
# Network namespaces kept apart (1-4096).
max_netns = 256

[detect]
# Seconds after start before any alert fires (0-86400).
warmup = 5.0
# Seconds a condition must stay clear before its alert resolves.
resolve_after = 10.0
# SYN flood: a listener's half-open request sockets at this fraction of its
# backlog (0.01-1), while its namespace sends syncookies or drops SYNs,
# for syn_flood_hold seconds. Warning while cookies absorb it, critical
# when SYNs are dropped.
syn_flood_fill = 0.9
syn_flood_hold = 1.0
# Accept-queue overflow: the accept queue at the backlog and ListenOverflows
# rising, for this many seconds.
accept_overflow_hold = 2.0
# CLOSE-WAIT leak: one process holding at least close_wait_min sockets in
# CLOSE-WAIT (1-1000000), the oldest for close_wait_age seconds.
close_wait_min = 16
close_wait_age = 60.0
# RST storm: resets sent plus received on one port (a server's local port,
# a client's remote port) at rst_storm_rate per second or more (0.01-1e7)
# and rst_storm_factor times the port's normal or more (1-1e6; the normal
# follows the port's rate over about an hour), for rst_storm_hold seconds.
rst_storm_rate = 20.0
rst_storm_factor = 10.0
rst_storm_hold = 5.0
# Failing connects: one process's failed connects at connect_fail_rate per
# second or more, and connect_fail_ratio of its attempts or more, for
# connect_fail_hold seconds. Names the errors (ECONNREFUSED, ETIMEDOUT...).
connect_fail_rate = 5.0
connect_fail_ratio = 0.5
connect_fail_hold = 10.0
# TIME-WAIT pressure: TIME-WAIT sockets from one address to one destination
# at this fraction (0.01-1) of net.ipv4.ip_local_port_range: new connects
# there fail with EADDRNOTAVAIL when it runs out. (The census lists them
# by destination only once the namespace's TIME-WAIT reach it.)
time_wait_fill = 0.5

[alertmanager]
# Send alerts to this Alertmanager (plain http://HOST:PORT; empty: none).
# The whole list is posted to /api/v2/alerts on every change and every
# `resend` seconds (1-3600); firing alerts end 4 resends ahead, resolved
# ones are sent for 5 minutes. A dead or slow Alertmanager is retried with
# backoff and never holds up the daemon.
url = ""
resend = 60.0
# The instance label; empty: this host's name.
instance = ""
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_urls_are_plain_http_with_a_host() {
        assert_eq!(
            parse_am_url("http://127.0.0.1:9093"),
            Ok(("127.0.0.1".into(), 9093, "/".into()))
        );
        assert_eq!(
            parse_am_url("http://am.example:80/prefix/"),
            Ok(("am.example".into(), 80, "/prefix".into()))
        );
        assert_eq!(
            parse_am_url("http://[::1]:9093"),
            Ok(("::1".into(), 9093, "/".into()))
        );
        assert_eq!(
            parse_am_url("http://[::1]/prefix"),
            Ok(("::1".into(), 80, "/prefix".into()))
        );
        assert!(parse_am_url("http://fe80::1").is_err(), "unbracketed v6");
        assert!(parse_am_url("https://am:9093").is_err());
        assert!(parse_am_url("http://:9093").is_err());
        assert!(parse_am_url("http://am:notaport").is_err());
        let e = Config::parse("[alertmanager]\nurl = \"ftp://x\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[alertmanager]\ninstance = \"web 1\"\n").unwrap_err();
        assert!(e.to_string().contains("not an instance name"), "{e}");
    }

    #[test]
    fn the_commented_defaults_are_the_defaults() {
        assert_eq!(Config::parse(DEFAULT_TEXT).unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let e = Config::parse("[daemon]\ninterval = 2\n\n[limits]\nmax_port = 5\n").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.reason.contains("unknown field `max_port`"), "{e}");
        let e = Config::parse("[alerts]\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn each_bad_value_names_its_line_and_range() {
        for (text, line, says) in [
            ("[daemon]\ninterval = 0\n", 2, "from 0.01 to 3600"),
            ("[daemon]\n\ninterval = 1e300\n", 3, "from 0.01 to 3600"),
            ("[daemon]\ncensus_budget = 0\n", 2, "percentage"),
            ("[daemon]\nowners_every = -1\n", 2, ""),
            ("[probe]\nring_kib = 3\n", 2, "from 4 to 1048576"),
            ("[probe]\nhook = \"fast\"\n", 2, "unknown variant"),
            ("[metrics]\naddr = \"localhost\"\n", 2, "address"),
            ("[limits]\nmax_ports = 0\n", 2, "from 1 to 10000"),
            ("[limits]\nmax_netns = 100000\n", 2, "from 1 to 4096"),
            ("[daemon]\ninterval = \"fast\"\n", 2, "expected f64"),
            ("[daemon\n", 1, ""),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.reason.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_cap_changes_live_but_the_probe_needs_a_restart() {
        let old = Config::default();
        let caps = Config::parse("[limits]\nmax_ports = 5\n[daemon]\ninterval = 2\n").unwrap();
        assert!(caps.needs_restart(&old).is_empty());
        let probe = Config::parse("[probe]\nring_kib = 8192\n[daemon]\nnetns = \"all\"\n").unwrap();
        assert_eq!(probe.needs_restart(&old), ["daemon.netns", "probe"]);
    }
}
