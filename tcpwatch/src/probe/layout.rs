//! Where the running kernel keeps the fields the probes read: `struct sock`
//! offsets from BTF (for the tp_btf hook) and the classic tracepoint record
//! from its format file. The result is a [`ProbeConfig`] for the loader; a
//! layout the programs cannot read is refused here with the reason.
use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use tcpwatch_common::{HOOK_BTF, HOOK_CLASSIC, ProbeConfig, TP_RECORD_READ};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading BTF from {path}")]
    Btf { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error(
        "kernel BTF: {what} is at offset {offset} size {size}, outside what the probe reads ({limit} bytes)"
    )]
    OutOfRange {
        what: String,
        offset: usize,
        size: usize,
        limit: usize,
    },
    #[error("kernel BTF: {what} has size {found}, expected {expected}")]
    Size {
        what: String,
        found: usize,
        expected: usize,
    },
    #[error("tracepoint format: field `{field}` {problem}")]
    Format { field: String, problem: String },
}

/// Byte offset and size of a (possibly nested, possibly inside anonymous
/// unions) member of a named struct.
fn member(btf: &Btf, strukt: &str, path: &[&str]) -> Result<(usize, usize), LayoutError> {
    let what = || format!("struct {strukt}.{}", path.join("."));
    let mut ty = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| LayoutError::Missing(format!("struct {strukt}")))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| LayoutError::Missing(format!("struct {strukt}")))?;
    let mut offset = 0usize;
    for name in path {
        let (off, next) =
            find_member(btf, &ty, name).ok_or_else(|| LayoutError::Missing(what()))?;
        offset += off;
        ty = next;
    }
    let size =
        type_size(btf, &ty).ok_or_else(|| LayoutError::Missing(format!("size of {}", what())))?;
    Ok((offset, size))
}

/// Finds `name` among the members of a struct or union, descending into
/// anonymous members (sock_common keeps most fields in anonymous unions).
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Option<(usize, Type)> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return None;
    };
    for m in &s.members {
        if m.bitfield_size().is_some_and(|b| b != 0) {
            continue;
        }
        let off = (m.bit_offset() / 8) as usize;
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = strip(btf, btf.resolve_chained_type(m).ok()?)?;
        if mname == name {
            return Some((off, mty));
        }
        if mname.is_empty()
            && let Some((inner, t)) = find_member(btf, &mty, name)
        {
            return Some((off + inner, t));
        }
    }
    None
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        match &ty {
            Type::Typedef(t) => ty = btf.resolve_chained_type(t).ok()?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                ty = btf.resolve_chained_type(t).ok()?
            }
            Type::TypeTag(t) => ty = btf.resolve_chained_type(t).ok()?,
            _ => return Some(ty),
        }
    }
    None
}

fn type_size(btf: &Btf, ty: &Type) -> Option<usize> {
    match strip(btf, ty.clone())? {
        Type::Int(i) => Some(i.size()),
        Type::Struct(s) | Type::Union(s) => Some(s.size()),
        Type::Enum(e) => Some(e.size()),
        Type::Ptr(_) => Some(8),
        Type::Array(a) => {
            let elem = strip(btf, btf.resolve_chained_type(&a).ok()?)?;
            Some(a.len() * type_size(btf, &elem)?)
        }
        _ => None,
    }
}

fn expect_size(what: &str, found: usize, expected: usize) -> Result<(), LayoutError> {
    if found == expected {
        Ok(())
    } else {
        Err(LayoutError::Size {
            what: what.into(),
            found,
            expected,
        })
    }
}

/// Offset of a `sock_common` field in `struct sock`.
fn sock_common_field(btf: &Btf, name: &str, size: usize) -> Result<u16, LayoutError> {
    let (off, found) = member(btf, "sock", &["__sk_common", name])?;
    expect_size(&format!("struct sock.{name}"), found, size)?;
    u16::try_from(off).map_err(|_| LayoutError::OutOfRange {
        what: format!("struct sock.{name}"),
        offset: off,
        size,
        limit: u16::MAX as usize,
    })
}

/// Opens the kernel's BTF for a few lookups. Mapped, not parsed: parsing
/// all of vmlinux's ~5 MB into btf-rs's indexes took ~30 MB of heap, the
/// daemon's whole peak RSS (44 MB against 15 MB once running); mapped, the
/// lookups scan the file instead, a few ms for the handful tcpwatch makes.
/// Older kernels cannot map the sysfs file (that came in 2025, with 6.16):
/// parsed there.
fn open_btf(path: &Path) -> Result<Btf, btf_rs::Error> {
    Btf::from_file_with_backend(path, Backend::Mmap).or_else(|_| Btf::from_file(path))
}

/// Whether `tcp_send_reset` fires for every reset this kernel sends, also
/// one without a full socket (a closed port, TIME-WAIT): since 6.10, which
/// also added `enum sk_rst_reason` to its arguments. Before (6.1 measured),
/// only full sockets' resets are traced.
pub fn traces_every_reset_sent(btf_path: &Path) -> bool {
    open_btf(btf_path).is_ok_and(|btf| {
        btf.resolve_ids_by_name("sk_rst_reason")
            .is_ok_and(|ids| !ids.is_empty())
    })
}

/// Offsets of `struct sock` for the tp_btf program, from the kernel's BTF.
/// The namespace fields are optional: without them events carry netns 0.
pub fn btf_config(btf_path: &Path) -> Result<ProbeConfig, LayoutError> {
    let btf = open_btf(btf_path).map_err(|source| LayoutError::Btf {
        path: btf_path.display().to_string(),
        source,
    })?;
    config_from_btf(&btf)
}

fn config_from_btf(btf: &Btf) -> Result<ProbeConfig, LayoutError> {
    // The BTF-typed hook exists only if the kernel declares its typedef.
    btf.resolve_ids_by_name("btf_trace_inet_sock_set_state")
        .ok()
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| {
            LayoutError::Missing(
                "btf_trace_inet_sock_set_state (tracepoint sock:inet_sock_set_state)".into(),
            )
        })?;

    let mut cfg = ProbeConfig::UNSET;
    cfg.hook = HOOK_BTF;
    cfg.sk_family = sock_common_field(btf, "skc_family", 2)?;
    cfg.sk_dport = sock_common_field(btf, "skc_dport", 2)?;
    // Optional: without it the port is read through `inet_sport` alone.
    cfg.sk_num = sock_common_field(btf, "skc_num", 2).unwrap_or(0);
    cfg.sk_rcv_saddr = sock_common_field(btf, "skc_rcv_saddr", 4)?;
    cfg.sk_daddr = sock_common_field(btf, "skc_daddr", 4)?;
    cfg.sk_v6_rcv_saddr = sock_common_field(btf, "skc_v6_rcv_saddr", 16)?;
    cfg.sk_v6_daddr = sock_common_field(btf, "skc_v6_daddr", 16)?;
    let (proto_off, proto_size) = member(btf, "sock", &["sk_protocol"])?;
    expect_size("struct sock.sk_protocol", proto_size, 2)?;
    cfg.sk_protocol = proto_off as u32;
    let (sport_off, sport_size) = member(btf, "inet_sock", &["inet_sport"])?;
    expect_size("struct inet_sock.inet_sport", sport_size, 2)?;
    cfg.inet_sport = sport_off as u32;
    netns_fields(btf, &mut cfg);
    task_fields(btf, &mut cfg);
    error_fields(btf, &mut cfg);
    packet_fields(btf, &mut cfg);
    fd_fields(btf, &mut cfg);
    Ok(cfg)
}

/// For the connect() failures no transition carries: the socket's own
/// fields (both connect() programs and the transitions' marks), then the
/// way from a task to the socket of one of its file descriptors and the
/// system call's arguments in its saved registers (the syscall program
/// only; only where `struct pt_regs` names x86-64's argument registers).
/// Each group all or nothing.
fn fd_fields(btf: &Btf, cfg: &mut ProbeConfig) {
    let socket = (|| {
        Some([
            member(btf, "sock", &["__sk_common", "skc_cookie"])
                .ok()
                .filter(|m| m.1 == 8)?
                .0,
            member(btf, "socket", &["sk"]).ok().filter(|m| m.1 == 8)?.0,
            member(btf, "socket", &["file"])
                .ok()
                .filter(|m| m.1 == 8)?
                .0,
        ])
    })();
    let Some([cookie, sk, file]) = socket else {
        return;
    };
    cfg.sk_cookie = cookie as u32;
    // Non-zero marks the group known (neither is first in struct socket).
    cfg.socket_sk = sk as u32;
    cfg.socket_file = file as u32;
    let fd_path = (|| {
        Some([
            member(btf, "pt_regs", &["di"]).ok().filter(|m| m.1 == 8)?.0,
            member(btf, "pt_regs", &["si"]).ok().filter(|m| m.1 == 8)?.0,
            member(btf, "task_struct", &["files"])
                .ok()
                .filter(|m| m.1 == 8)?
                .0,
            member(btf, "files_struct", &["fdt"])
                .ok()
                .filter(|m| m.1 == 8)?
                .0,
            member(btf, "fdtable", &["fd"]).ok().filter(|m| m.1 == 8)?.0,
            member(btf, "fdtable", &["max_fds"])
                .ok()
                .filter(|m| m.1 == 4)?
                .0,
            member(btf, "file", &["private_data"])
                .ok()
                .filter(|m| m.1 == 8)?
                .0,
        ])
    })();
    if let Some([di, si, files, fdt, fd, max_fds, private_data]) = fd_path {
        cfg.regs_arg0 = di as u32;
        cfg.regs_arg1 = si as u32;
        // Non-zero marks the group known (`files` is not first in
        // struct task_struct).
        cfg.task_files = files as u32;
        cfg.files_fdt = fdt as u32;
        cfg.fdt_fd = fd as u32;
        cfg.fdt_max_fds = max_fds as u32;
        cfg.file_private_data = private_data as u32;
    }
}

/// Whether the `sys_exit_connect` record is as the probe reads it: `ret`
/// an 8-byte word at 16. The text of its format file.
pub fn connect_format_matches(exit: &str) -> Result<(), LayoutError> {
    let expect = |text: &str, name: &str, offset: usize| {
        let fields = parse_format(text);
        match fields.iter().find(|f| f.name == name) {
            Some(f) if f.offset == offset && f.size == 8 => Ok(()),
            Some(f) => Err(LayoutError::Format {
                field: name.into(),
                problem: format!(
                    "is at {} ({} bytes), expected {offset} (8)",
                    f.offset, f.size
                ),
            }),
            None => Err(LayoutError::Format {
                field: name.into(),
                problem: "is missing".into(),
            }),
        }
    };
    expect(exit, "ret", 16)
}

/// `sock.sk_err`, the errno a transition to CLOSE carries; left unknown
/// (no errors reported) if BTF lacks it.
fn error_fields(btf: &Btf, cfg: &mut ProbeConfig) {
    if let Ok((off, 4)) = member(btf, "sock", &["sk_err"]) {
        cfg.sk_err = off as u32;
    }
}

/// Where a packet keeps its TCP header and device, and a device its
/// namespace: for resets sent without a socket. Each optional.
fn packet_fields(btf: &Btf, cfg: &mut ProbeConfig) {
    if let Ok((off, 8)) = member(btf, "sk_buff", &["data"]) {
        cfg.skb_data = off as u32;
    }
    let dev = member(btf, "sk_buff", &["dev"]);
    let net = member(btf, "net_device", &["nd_net", "net"]);
    if let (Ok((dev, 8)), Ok((net, 8))) = (dev, net) {
        cfg.skb_dev = dev as u32;
        cfg.dev_nd_net = net as u32;
    }
}

/// `task_struct.flags`, to tell kernel threads from owners; left unknown
/// (never checked) if BTF lacks it. And `pid`, `tgid` (right after it) and
/// `comm`, which the BTF program reads in place; left unknown (helpers read
/// them) if BTF lacks them or places them otherwise.
fn task_fields(btf: &Btf, cfg: &mut ProbeConfig) {
    if let Ok((off, 4)) = member(btf, "task_struct", &["flags"]) {
        cfg.task_flags = off as u32;
    }
    let pid = member(btf, "task_struct", &["pid"]);
    let tgid = member(btf, "task_struct", &["tgid"]);
    let comm = member(btf, "task_struct", &["comm"]);
    if let (Ok((pid, 4)), Ok((tgid, 4)), Ok((comm, 16))) = (pid, tgid, comm)
        && tgid == pid + 4
    {
        cfg.task_pid = pid as u32;
        cfg.task_comm = comm as u32;
    }
}

/// `sk->__sk_common.skc_net.net->ns.inum`; left unreadable if any link is
/// missing (e.g. a kernel built without network namespaces).
fn netns_fields(btf: &Btf, cfg: &mut ProbeConfig) {
    let net = sock_common_field(btf, "skc_net", 8);
    let inum = member(btf, "net", &["ns", "inum"]);
    if let (Ok(net), Ok((inum, 4))) = (net, inum) {
        cfg.sk_net = net;
        cfg.net_ns_inum = inum as u32;
        cfg.netns_readable = 1;
        if let Ok((cookie, 8)) = member(btf, "net", &["net_cookie"]) {
            cfg.net_cookie = cookie as u32;
        }
    }
}

/// Adds the namespace and task offsets to a classic-hook configuration when
/// BTF is there to give them.
pub fn add_netns_from_btf(btf_path: &Path, cfg: &mut ProbeConfig) {
    if let Ok(btf) = open_btf(btf_path) {
        netns_fields(&btf, cfg);
        task_fields(&btf, cfg);
        error_fields(&btf, cfg);
    }
}

/// One `field:` line of a tracepoint format file.
#[derive(Debug, PartialEq)]
struct FormatField {
    name: String,
    offset: usize,
    size: usize,
}

fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?.to_owned();
            let num = |key: &str| {
                line.split(';')
                    .find_map(|p| p.trim().strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
            };
            Some(FormatField {
                name,
                offset: num("offset:")?,
                size: num("size:")?,
            })
        })
        .collect()
}

/// Offsets of the classic tracepoint record, from the text of
/// `events/sock/inet_sock_set_state/format`. Refuses any field that is
/// missing, of another size, or beyond what the program copies.
pub fn classic_config(format: &str) -> Result<ProbeConfig, LayoutError> {
    let fields = parse_format(format);
    let get = |name: &str, size: usize| -> Result<u16, LayoutError> {
        let f = fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| LayoutError::Format {
                field: name.into(),
                problem: "is missing".into(),
            })?;
        if f.size != size {
            return Err(LayoutError::Format {
                field: name.into(),
                problem: format!("has size {}, expected {size}", f.size),
            });
        }
        if f.offset + f.size > TP_RECORD_READ {
            return Err(LayoutError::Format {
                field: name.into(),
                problem: format!(
                    "ends at byte {}, beyond the {TP_RECORD_READ} bytes the probe reads",
                    f.offset + f.size
                ),
            });
        }
        Ok(f.offset as u16)
    };
    let mut cfg = ProbeConfig::UNSET;
    cfg.hook = HOOK_CLASSIC;
    cfg.tp_skaddr = get("skaddr", 8)?;
    cfg.tp_oldstate = get("oldstate", 4)?;
    cfg.tp_newstate = get("newstate", 4)?;
    cfg.tp_sport = get("sport", 2)?;
    cfg.tp_dport = get("dport", 2)?;
    cfg.tp_family = get("family", 2)?;
    cfg.tp_protocol = get("protocol", 2)?;
    cfg.tp_saddr = get("saddr", 4)?;
    cfg.tp_daddr = get("daddr", 4)?;
    cfg.tp_saddr_v6 = get("saddr_v6", 16)?;
    cfg.tp_daddr_v6 = get("daddr_v6", 16)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = include_str!("../../tests/data/inet_sock_set_state.format");

    #[test]
    fn the_connect_exit_format_of_6_18_matches_and_others_do_not() {
        let exit = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;";
        assert!(connect_format_matches(exit).is_ok());
        assert!(connect_format_matches(&exit.replace("offset:16", "offset:24")).is_err());
        assert!(connect_format_matches("").is_err());
    }

    #[test]
    fn classic_format_of_6_18_parses() {
        let cfg = classic_config(FORMAT_6_18).unwrap();
        assert_eq!(
            (
                cfg.tp_skaddr,
                cfg.tp_oldstate,
                cfg.tp_newstate,
                cfg.tp_sport,
                cfg.tp_dport
            ),
            (8, 16, 20, 24, 26)
        );
        assert_eq!(
            (cfg.tp_family, cfg.tp_protocol, cfg.tp_saddr, cfg.tp_daddr),
            (28, 30, 32, 36)
        );
        assert_eq!((cfg.tp_saddr_v6, cfg.tp_daddr_v6), (40, 56));
        assert_eq!(cfg.hook, HOOK_CLASSIC);
    }

    #[test]
    fn classic_format_with_a_changed_field_is_refused() {
        let changed = FORMAT_6_18.replace(
            "__u16 sport;\toffset:24;\tsize:2;",
            "__u32 sport;\toffset:24;\tsize:4;",
        );
        assert_ne!(changed, FORMAT_6_18);
        let err = classic_config(&changed).unwrap_err().to_string();
        assert!(err.contains("`sport` has size 4, expected 2"), "{err}");

        let missing = FORMAT_6_18.replace("daddr_v6", "dst_v6");
        let err = classic_config(&missing).unwrap_err().to_string();
        assert!(err.contains("`daddr_v6` is missing"), "{err}");
    }

    /// The running kernel's BTF, or None (said on stderr) where it has none.
    fn kernel_btf() -> Option<&'static Path> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("SKIP: no {} on this machine", path.display());
            return None;
        }
        Some(path)
    }

    #[test]
    fn btf_of_the_running_kernel_gives_sock_offsets() {
        let Some(path) = kernel_btf() else { return };
        let cfg = btf_config(path).unwrap();
        // struct sock_common starts with the address pair; family and the
        // ports follow. Exact values vary by kernel; the order does not.
        assert_eq!(cfg.sk_daddr, 0);
        assert_eq!(cfg.sk_rcv_saddr, 4);
        assert!(cfg.sk_dport > cfg.sk_rcv_saddr);
        assert!(cfg.sk_family > cfg.sk_dport);
        assert_eq!(cfg.sk_num, cfg.sk_dport + 2);
        assert!(cfg.sk_protocol as u16 > cfg.sk_v6_rcv_saddr);
        assert!(cfg.inet_sport > cfg.sk_protocol);
        assert_eq!(cfg.netns_readable, 1);
        assert_ne!(cfg.task_flags, 0);
        // Past sock_common, where struct sock's own fields start.
        assert!(
            cfg.sk_err > u32::from(cfg.sk_v6_daddr),
            "sk_err at {}",
            cfg.sk_err
        );
        assert_ne!(cfg.skb_data, 0);
        assert_ne!(cfg.skb_dev, 0);
        assert_ne!(cfg.dev_nd_net, 0);
        assert_ne!(cfg.socket_sk, 0);
        assert_ne!(cfg.task_files, 0);
        // struct net keeps its cookie past its first 4 KiB, the task its
        // comm past its ids.
        assert!(cfg.net_cookie > cfg.net_ns_inum, "{cfg:?}");
        assert!(
            cfg.task_comm > cfg.task_pid && cfg.task_pid > cfg.task_flags,
            "{cfg:?}"
        );
    }

    #[test]
    fn mapped_btf_gives_the_offsets_parsed_btf_gives() {
        let Some(path) = kernel_btf() else { return };
        // This kernel (6.18) maps the file: the daemon's peak memory
        // depends on it (see open_btf).
        let mapped = Btf::from_file_with_backend(path, Backend::Mmap).unwrap();
        let parsed = Btf::from_file(path).unwrap();
        let (a, b) = (
            config_from_btf(&mapped).unwrap(),
            config_from_btf(&parsed).unwrap(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
