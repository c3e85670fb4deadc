//! Failures end to end: refused connects, aborted connections, a silent
//! and an absent peer, in a namespace of the test's own, counted by a
//! daemon of its own on the side where each happens; and a connect loop
//! to a closed port raising the alerts it should.
use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    alerts::{active_named, daemon_with, tempdir, until},
    common::{root_available, tool_available},
    daemon::{Daemon, NsWorker, samples, value, value_now},
    synflood::{self, SpoofNet},
};

/// A port of 127.0.0.1 nothing listens on (bound a moment, then closed).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Closes `s` with a reset instead of a FIN (SO_LINGER on, 0 s).
fn abort(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger struct
    // and its exact size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(s);
}

/// `n` connections to `l` that its server side aborts: each client reads
/// ECONNRESET.
fn aborted_by_server(l: &TcpListener, n: usize) {
    for _ in 0..n {
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        abort(a);
        let e = c.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET), "{e}");
    }
}

#[test]
fn resets_and_errors_are_counted_exactly_on_the_side_they_happen() {
    let test = "resets_and_errors_are_counted_exactly_on_the_side_they_happen";
    if !root_available(test) || !tool_available(test, "curl", "curl") {
        return;
    }
    const REFUSED: usize = 50;
    const ABORTED: usize = 10;
    let ns = NsWorker::new();
    let d = Daemon::start(&["--netns", &ns.path]);
    let (closed, server) = ns.run(|| {
        let closed = closed_port();
        for _ in 0..REFUSED {
            let e = TcpStream::connect(("127.0.0.1", closed)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        aborted_by_server(&l, ABORTED);
        (closed, l.local_addr().unwrap().port())
    });
    let netns = ns.inode;
    let resets = |text: &str, port: u16, dir: &str, side: &str| {
        value(
            text,
            "tcpwatch_port_resets_total",
            &format!("netns=\"{netns}\",port=\"{port}\",direction=\"{dir}\",side=\"{side}\""),
        )
    };
    // The signal counters are read every interval: wait for all of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = d.scrape();
        let sent = value_now(
            &text,
            "tcpwatch_resets_total",
            &format!("netns=\"{netns}\",side=\"sent\""),
        );
        let received = value_now(
            &text,
            "tcpwatch_resets_total",
            &format!("netns=\"{netns}\",side=\"received\""),
        );
        let sent_all = if every_reset_sent_traced() {
            REFUSED
        } else {
            0
        } + ABORTED;
        if sent >= Some(sent_all as f64) && received >= Some((REFUSED + ABORTED) as f64) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "resets not all counted in 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let n = |x: usize| x as f64;
    // A refused connect: the closed port resets ("in": a port of this
    // host), the client receives it ("out": the service it connects to).
    // Before 6.10 the kernel traces no reset sent without a full socket,
    // and the daemon says so at load.
    let every = every_reset_sent_traced();
    let refused_sent = if every { REFUSED } else { 0 };
    if every {
        assert_eq!(resets(&text, closed, "in", "sent"), n(REFUSED));
    } else {
        assert_eq!(
            value_now(
                &text,
                "tcpwatch_port_resets_total",
                &format!("netns=\"{netns}\",port=\"{closed}\",direction=\"in\",side=\"sent\"")
            ),
            None,
            "this kernel traces no reset of a closed port"
        );
    }
    assert_eq!(resets(&text, closed, "out", "received"), n(REFUSED));
    // An aborted connection: the server resets, the client receives.
    assert_eq!(resets(&text, server, "in", "sent"), n(ABORTED));
    assert_eq!(resets(&text, server, "out", "received"), n(ABORTED));
    let ns_label = format!("netns=\"{netns}\"");
    for (side, all) in [
        ("sent", refused_sent + ABORTED),
        ("received", REFUSED + ABORTED),
    ] {
        assert_eq!(
            value(
                &text,
                "tcpwatch_resets_total",
                &format!("{ns_label},side=\"{side}\"")
            ),
            n(all),
            "nothing else in our namespace"
        );
    }
    assert_eq!(
        value(
            &text,
            "tcpwatch_connect_errors_total",
            &format!("{ns_label},error=\"ECONNREFUSED\"")
        ),
        n(REFUSED)
    );
    assert_eq!(
        value(
            &text,
            "tcpwatch_port_connect_errors_total",
            &format!("{ns_label},port=\"{closed}\",direction=\"out\",error=\"ECONNREFUSED\"")
        ),
        n(REFUSED)
    );
    assert_eq!(
        value(
            &text,
            "tcpwatch_close_errors_total",
            &format!("{ns_label},error=\"ECONNRESET\"")
        ),
        n(ABORTED)
    );
    assert_eq!(
        value(&text, "tcpwatch_failed_connects_total", &ns_label),
        n(REFUSED)
    );
    for name in [
        "tcpwatch_signals_unattributed_total",
        "tcpwatch_signals_unreadable_total",
    ] {
        assert_eq!(value(&text, name, ""), 0.0, "{name}");
    }
    assert!(d.stop().success());
}

/// A listener older than the daemon, in the namespace it watches (which
/// is not the daemon's own): once the census has seen it, the server's
/// resets count on its port, inbound, as those of a listener the probe saw
/// open do.
#[test]
fn resets_of_a_listener_older_than_the_daemon_count_on_its_port() {
    let test = "resets_of_a_listener_older_than_the_daemon_count_on_its_port";
    if !root_available(test) || !tool_available(test, "curl", "curl") {
        return;
    }
    const ABORTED: usize = 10;
    let ns = NsWorker::new();
    let l = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let server = l.local_addr().unwrap().port();
    let d = Daemon::start(&["--netns", &ns.path]);
    let netns = ns.inode;
    let t = Instant::now();
    until(
        t,
        Duration::from_secs(10),
        "the listener in a census",
        || {
            value_now(
                &d.scrape(),
                "tcpwatch_listener_backlog",
                &format!("netns=\"{netns}\",address=\"127.0.0.1\",port=\"{server}\""),
            )
            .is_some()
        },
    );
    ns.run(move || aborted_by_server(&l, ABORTED));
    let resets = |text: &str, dir: &str, side: &str| {
        value_now(
            text,
            "tcpwatch_port_resets_total",
            &format!("netns=\"{netns}\",port=\"{server}\",direction=\"{dir}\",side=\"{side}\""),
        )
    };
    let t = Instant::now();
    let mut text = String::new();
    until(t, Duration::from_secs(10), "the resets counted", || {
        text = d.scrape();
        resets(&text, "out", "received") >= Some(ABORTED as f64)
    });
    assert_eq!(resets(&text, "in", "sent"), Some(ABORTED as f64), "{text}");
    assert_eq!(
        resets(&text, "out", "received"),
        Some(ABORTED as f64),
        "{text}"
    );
    assert!(d.stop().success());
}

#[test]
fn a_silent_peer_times_out_and_an_absent_one_is_unreachable() {
    let test = "a_silent_peer_times_out_and_an_absent_one_is_unreachable";
    if !root_available(test) || !tool_available(test, "curl", "curl") {
        return;
    }
    let ns = NsWorker::new();
    ns.run(|| {
        // One SYN retry: a silent peer times out in ~3 s, not ~2 min.
        std::fs::write("/proc/sys/net/ipv4/tcp_syn_retries", "1").unwrap();
        // Goes with the namespace (the thread's), which the test's end removes.
        std::mem::forget(SpoofNet::new());
        // One address-resolution probe of 200 ms: an absent host is
        // unreachable long before that timeout.
        for (knob, v) in [("mcast_solicit", "1"), ("retrans_time_ms", "200")] {
            let path = format!("/proc/sys/net/ipv4/neigh/{}/{knob}", synflood::DEV);
            std::fs::write(&path, v).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    });
    let d = Daemon::start(&["--netns", &ns.path]);
    const PORT: u16 = 9999;
    // SPOOFED has a static neighbour entry for a MAC no interface has: the
    // SYNs leave and nothing answers. ABSENT has none: its address never
    // resolves, and the kernel says the host is unreachable.
    const ABSENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
    let (timed_out, unreachable) = ns.run(|| {
        // Both at once; threads start in their creator's namespace.
        let a = std::thread::spawn(|| TcpStream::connect((synflood::SPOOFED, PORT)).unwrap_err());
        let b = std::thread::spawn(|| TcpStream::connect((ABSENT, PORT)).unwrap_err());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        timed_out.raw_os_error(),
        Some(libc::ETIMEDOUT),
        "{timed_out}"
    );
    assert_eq!(
        unreachable.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "{unreachable}"
    );
    let netns = ns.inode;
    let error = |text: &str, name: &str| {
        value_now(
            text,
            "tcpwatch_port_connect_errors_total",
            &format!("netns=\"{netns}\",port=\"{PORT}\",direction=\"out\",error=\"{name}\""),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = d.scrape();
        if error(&text, "ETIMEDOUT") == Some(1.0) && error(&text, "EHOSTUNREACH") == Some(1.0) {
            let failed = value(
                &text,
                "tcpwatch_failed_connects_total",
                &format!("netns=\"{netns}\""),
            );
            assert_eq!(failed, 2.0, "nothing else failed in our namespace");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ETIMEDOUT and EHOSTUNREACH on port {PORT} within 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.stop().success());
}

#[test]
fn a_connect_loop_to_a_closed_port_is_a_reset_storm_and_failing_connects() {
    let test = "a_connect_loop_to_a_closed_port_is_a_reset_storm_and_failing_connects";
    if !root_available(test) {
        return;
    }
    let ns = NsWorker::new();
    let dir = tempdir::Dir::new("failures-storm");
    // Short holds, so the test is short; the defaults are the unit tests'.
    let d = daemon_with(
        &ns,
        &dir,
        "rst_storm_hold = 1.0\nconnect_fail_hold = 1.0\n",
        &[],
    );
    let closed = ns.run(closed_port);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let worker = &ns;
    std::thread::scope(|s| {
        // About 200 refused connects a second, for at most 20 s.
        let looping = s.spawn(|| {
            let stop = stop.clone();
            worker.run(move || {
                let began = Instant::now();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(20) {
                    let _ = TcpStream::connect(("127.0.0.1", closed));
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                n
            })
        });
        let mut storm = Vec::new();
        let mut failing = Vec::new();
        // The storm is seen where the resets are: sent by the closed port
        // ("in"), or, on kernels that trace no reset without a socket,
        // received by the client ("out").
        let every = every_reset_sent_traced();
        let storm_dir = if every { "in" } else { "out" };
        let fired = until(start, Duration::from_secs(15), "both alerts", || {
            storm = active_named(&d, "RstStorm")
                .into_iter()
                .filter(|a| {
                    a["key"]["subject"]["port"]["port"] == closed
                        && a["key"]["subject"]["port"]["direction"] == storm_dir
                })
                .collect();
            failing = active_named(&d, "ConnectFailures")
                .into_iter()
                .filter(|a| a["key"]["subject"]["process"]["pid"] == std::process::id())
                .collect();
            !storm.is_empty() && !failing.is_empty()
        });
        stop.store(true, Ordering::Relaxed);
        let attempts = looping.join().unwrap();
        eprintln!("{test}: both alerts {fired:?} after the loop began ({attempts} connects)");
        let (storm, failing) = (&storm[0], &failing[0]);
        assert_eq!(storm["key"]["netns"], ns.inode, "{storm}");
        let side = if every {
            assert!(
                storm["description"]
                    .as_str()
                    .unwrap()
                    .contains("nothing listens"),
                "{storm}"
            );
            "resets_sent_per_s"
        } else {
            "resets_received_per_s"
        };
        assert!(storm["evidence"][side].as_f64().unwrap() > 20.0, "{storm}");
        let summary = failing["summary"].as_str().unwrap();
        assert!(summary.contains("ECONNREFUSED"), "{failing}");
        assert!(
            failing["description"]
                .as_str()
                .unwrap()
                .contains(&format!("port {closed}")),
            "{failing}"
        );
    });
    assert!(d.stop().success());
}

#[test]
fn time_wait_toward_one_destination_near_the_port_range_is_pressure() {
    let test = "time_wait_toward_one_destination_near_the_port_range_is_pressure";
    if !root_available(test) {
        return;
    }
    const CONNECTIONS: usize = 150;
    let ns = NsWorker::new();
    // 200 ephemeral ports in the test's namespace: 150 TIME-WAIT sockets
    // to one destination hold three quarters of them.
    ns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40199").unwrap();
    });
    let dir = tempdir::Dir::new("failures-tw");
    let d = daemon_with(&ns, &dir, "", &[]);
    let start = Instant::now();
    let port = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..CONNECTIONS {
            // The client closes first: its side keeps the TIME-WAIT.
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut a, _) = l.accept().unwrap();
            drop(c);
            assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0, "the client's FIN");
        }
        l.local_addr().unwrap().port()
    });
    let mut seen = Vec::new();
    let fired = until(start, Duration::from_secs(10), "TimeWaitPressure", || {
        seen = active_named(&d, "TimeWaitPressure")
            .into_iter()
            .filter(|a| {
                a["key"]["subject"]["destination"]["port"] == port
                    && a["key"]["subject"]["destination"]["address"] == "127.0.0.1"
            })
            .collect();
        !seen.is_empty()
    });
    eprintln!("{test}: fired {fired:?} after the first connect");
    let a = &seen[0];
    assert_eq!(a["key"]["netns"], ns.inode, "{a}");
    assert_eq!(a["evidence"]["ephemeral_ports"], 200.0, "{a}");
    assert!(
        a["evidence"]["time_wait"].as_f64().unwrap() >= 100.0,
        "at least half the range: {a}"
    );
    assert!(a["description"].as_str().unwrap().contains("EADDRNOTAVAIL"));
    assert!(d.stop().success());
}

/// connect(2) on a new TCP socket with the given address length (a short
/// one is EINVAL); the errno.
fn raw_connect(to: std::net::SocketAddrV4, len: usize) -> i32 {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain syscalls on a socket this function owns and closes;
    // `addr` outlives the call and `len` is at most its size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        assert!(len <= size_of::<libc::sockaddr_in>());
        let r = libc::connect(fd, (&raw const addr).cast(), len as libc::socklen_t);
        let errno = if r == 0 { 0 } else { *libc::__errno_location() };
        libc::close(fd);
        errno
    }
}

#[test]
fn a_connect_that_fails_before_any_syn_is_counted_once_with_its_errno() {
    let test = "a_connect_that_fails_before_any_syn_is_counted_once_with_its_errno";
    if !root_available(test) || !tool_available(test, "curl", "curl") {
        return;
    }
    const NO_ROUTE: usize = 5;
    const SHORT: usize = 2;
    let ns = NsWorker::new();
    let d = Daemon::start(&["--netns", &ns.path]);
    // Caught wherever the kernel allows (`the_connect_hook_is_the_one_
    // asked_for_and_said` checks which); counted alike.
    assert!(connect_hook_said(&d).is_some());
    let port = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // Then two ephemeral ports: two connections in TIME-WAIT hold them.
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40001").unwrap();
        // The namespace has only loopback: no route to 10.1.2.3.
        let far = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 8080);
        for _ in 0..NO_ROUTE {
            assert_eq!(
                raw_connect(far, size_of::<libc::sockaddr_in>()),
                libc::ENETUNREACH
            );
        }
        // A UDP socket fails alike: not a TCP connect, not counted.
        for _ in 0..3 {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let e = u.connect(far).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{e}");
        }
        for _ in 0..SHORT {
            assert_eq!(raw_connect(far, 4), libc::EINVAL);
        }
        let std::net::SocketAddr::V4(to) = l.local_addr().unwrap() else {
            unreachable!()
        };
        for _ in 0..2 {
            let c = TcpStream::connect(to).unwrap();
            let (mut a, _) = l.accept().unwrap();
            drop(c);
            assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0, "the client's FIN");
        }
        // Both ports in TIME-WAIT (tw_reuse is off in test namespaces).
        assert_eq!(
            raw_connect(to, size_of::<libc::sockaddr_in>()),
            libc::EADDRNOTAVAIL
        );
        to.port()
    });
    let netns = ns.inode;
    let errors = |text: &str, name: &str| {
        value_now(
            text,
            "tcpwatch_connect_errors_total",
            &format!("netns=\"{netns}\",error=\"{name}\""),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = d.scrape();
        if errors(&text, "ENETUNREACH") >= Some(NO_ROUTE as f64)
            && errors(&text, "EINVAL") >= Some(SHORT as f64)
            && errors(&text, "EADDRNOTAVAIL") >= Some(1.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "errors not all counted in 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        errors(&text, "ENETUNREACH"),
        Some(NO_ROUTE as f64),
        "UDP is not counted"
    );
    assert_eq!(errors(&text, "EINVAL"), Some(SHORT as f64));
    assert_eq!(errors(&text, "EADDRNOTAVAIL"), Some(1.0));
    // Each failure once: those without a transition are added, the one
    // whose SYN-SENT -> CLOSE counted it (EADDRNOTAVAIL) only says its errno.
    assert_eq!(
        value(
            &text,
            "tcpwatch_failed_connects_total",
            &format!("netns=\"{netns}\"")
        ),
        (NO_ROUTE + SHORT + 1) as f64
    );
    assert_eq!(
        value(
            &text,
            "tcpwatch_port_connect_errors_total",
            &format!("netns=\"{netns}\",port=\"8080\",direction=\"out\",error=\"ENETUNREACH\"")
        ),
        NO_ROUTE as f64
    );
    assert_eq!(
        value(
            &text,
            "tcpwatch_port_connect_errors_total",
            &format!("netns=\"{netns}\",port=\"{port}\",direction=\"out\",error=\"EADDRNOTAVAIL\"")
        ),
        1.0
    );
    // And per process: this one (its comm is the thread's, as the kernel
    // names it).
    let mine: Vec<f64> = samples(&text, "tcpwatch_process_connect_errors_total")
        .into_iter()
        .filter(|(l, _)| {
            l.starts_with(&format!(
                "netns=\"{netns}\",pid=\"{}\",",
                std::process::id()
            )) && l.ends_with("error=\"ENETUNREACH\"")
        })
        .map(|(_, v)| v)
        .collect();
    assert_eq!(mine, [NO_ROUTE as f64], "\n{text}");
    assert!(d.stop().success());
}

/// Where a daemon's start line says it catches failed connect() calls
/// ("fexit/inet_stream_connect", "tracepoint/syscalls/sys_exit_connect"),
/// None when it says it does not.
fn connect_hook_said(d: &Daemon) -> Option<String> {
    let log = d.all_stderr();
    let line = log
        .lines()
        .find(|l| l.starts_with("tcpwatch: daemon up via"))
        .unwrap_or_else(|| panic!("no start line:\n{log}"));
    if line.contains("connect() failures before a SYN not caught") {
        return None;
    }
    let hook = line
        .split("connect() failures via ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no connect() hook in the start line: {line}"));
    Some(hook.to_string())
}

/// The BPF programs process `pid` holds, as (name cut at 15 bytes, BPF
/// program type), read from its descriptors' fdinfo and the kernel's
/// program table, not from anything tcpwatch says.
pub(crate) fn programs_held(pid: u32) -> Vec<(String, u32)> {
    let mut ids = std::collections::BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    let mut held: Vec<(String, u32)> = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_string();
            (name, p.program_type() as u32)
        })
        .collect();
    held.sort_unstable();
    held
}

/// The connect() programs (both named "tcpwatch_connec" there) `pid`
/// holds, by BPF program type (26 tracing, as fexit is; 5 tracepoint).
fn connect_programs_held(pid: u32) -> Vec<u32> {
    programs_held(pid)
        .into_iter()
        .filter(|(name, _)| name == "tcpwatch_connec")
        .map(|(_, kind)| kind)
        .collect()
}

/// `--connect-hook`: auto takes fexit where the kernel allows it (the
/// kernel matrix requires it on its kernels) and the syscall tracepoint
/// elsewhere, syscall the tracepoint, off none; the start line says which,
/// and the programs the daemon holds agree.
#[test]
fn the_connect_hook_is_the_one_asked_for_and_said() {
    if !root_available("the_connect_hook_is_the_one_asked_for_and_said") {
        return;
    }
    const TRACING: u32 = 26;
    const TRACEPOINT: u32 = 5;
    let expect_auto = std::env::var("TCPWATCH_EXPECT_CONNECT_HOOK").ok();
    for asked in ["auto", "syscall", "off"] {
        let d = Daemon::start(&["--connect-hook", asked]);
        let said = connect_hook_said(&d);
        let held = connect_programs_held(d.pid());
        let want: Vec<u32> = match said.as_deref() {
            Some("fexit/inet_stream_connect") => vec![TRACING],
            Some("tracepoint/syscalls/sys_exit_connect") => vec![TRACEPOINT],
            None => vec![],
            Some(other) => panic!("{asked}: an unknown connect() hook {other}"),
        };
        assert_eq!(held, want, "{asked}: said {said:?}, holds {held:?}");
        match asked {
            "syscall" => assert_eq!(
                said.as_deref(),
                Some("tracepoint/syscalls/sys_exit_connect")
            ),
            "off" => assert_eq!(said, None),
            _ => {
                assert!(said.is_some(), "auto caught nothing");
                if let Some(want) = &expect_auto {
                    assert_eq!(said.as_ref(), Some(want));
                }
            }
        }
        assert!(d.stop().success());
    }
}

/// Whether this kernel traces resets sent without a full socket (6.10+),
/// as the daemon decides it.
fn every_reset_sent_traced() -> bool {
    tcpwatch::probe::layout::traces_every_reset_sent(std::path::Path::new(
        tcpwatch::probe::loader::BTF_PATH,
    ))
}
