//! Namespace enumeration and per-namespace kernel counters against the real
//! kernel: namespaces made here (one `ip netns add`, one held only by an
//! unshared thread) must be found, and their counters must move by exactly
//! the connections made inside them.
use std::path::Path;

use tcpwatch::host::{clock::thread_cpu_ns, counters, netns};

use crate::common::{NamedNetns, connect_n, inode_of, netns_thread, root_available};

fn field(m: &std::collections::BTreeMap<String, i64>, name: &str) -> i64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("{name} missing from {:?}", m.keys()))
}

#[test]
fn all_finds_the_host_a_named_and_a_thread_only_namespace() {
    let test = "all_finds_the_host_a_named_and_a_thread_only_namespace";
    if !root_available(test) {
        return;
    }
    let host = inode_of(Path::new("/proc/self/ns/net"));
    let named = NamedNetns::new("enum");
    let named_ino = inode_of(Path::new(&named.path()));
    // Held by one thread of this process only: /proc/PID/ns/net shows the
    // host, so only /proc/PID/task/TID/ns/net leads to it.
    let (thread_ino, release, holder) = netns_thread(|| ());
    assert_ne!(thread_ino, host);
    assert_ne!(named_ino, host);

    let all = netns::all();
    let inodes: Vec<u32> = all.iter().map(|n| n.inode).collect();
    let mut sorted = inodes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(inodes, sorted, "sorted by inode, each once");
    for ino in [host, named_ino, thread_ino] {
        let found = all
            .iter()
            .find(|n| n.inode == ino)
            .unwrap_or_else(|| panic!("namespace {ino} not found in {all:#?}"));
        // The path must open that namespace (checked while it still lives).
        assert_eq!(inode_of(&found.path), ino, "{found:?}");
        // `--netns INODE` resolves through the same scan: the named one has
        // no process in it, the thread-only one no process-wide path.
        let by_inode = netns::path(&ino.to_string()).unwrap();
        assert_eq!(inode_of(&by_inode), ino, "{}", by_inode.display());
    }
    release.send(()).unwrap();
    holder.join().unwrap();

    let n = all.iter().find(|n| n.inode == named_ino).unwrap();
    assert_eq!(n.name.as_deref(), Some(named.0.as_str()));
    assert_eq!(n.path, Path::new(&named.path()));
    let t = all.iter().find(|n| n.inode == thread_ino).unwrap();
    assert_eq!(t.name, None);
    assert!(
        t.path.to_string_lossy().contains("/task/"),
        "a thread-only namespace is reached through its task: {t:?}"
    );
}

#[test]
fn read_in_counts_exactly_the_connects_made_in_that_namespace() {
    let test = "read_in_counts_exactly_the_connects_made_in_that_namespace";
    if !root_available(test) {
        return;
    }
    let named = NamedNetns::new("counters");
    let (thread_ino, release, holder) = netns_thread(|| ());
    let thread_path = netns::all()
        .into_iter()
        .find(|n| n.inode == thread_ino)
        .expect("the thread's namespace is enumerated")
        .path;
    // Different counts per namespace, so counters read from the wrong one
    // cannot pass.
    for (path, n) in [(Path::new(&named.path()), 7), (thread_path.as_path(), 13)] {
        let before = counters::read_in(path).unwrap();
        // From a thread inside, thread-self/net is that namespace too.
        let inside = netns::run_in(path, counters::read_current)
            .unwrap()
            .unwrap();
        assert_eq!(
            field(&inside, "Tcp.ActiveOpens"),
            field(&before, "Tcp.ActiveOpens"),
            "{}",
            path.display()
        );
        netns::run_in(path, || connect_n(n)).unwrap();
        let after = counters::read_in(path).unwrap();
        for f in ["Tcp.ActiveOpens", "Tcp.PassiveOpens"] {
            assert_eq!(
                field(&after, f) - field(&before, f),
                n as i64,
                "{f} in {}",
                path.display()
            );
        }
        assert!(after.contains_key("TcpExt.ListenOverflows"));
    }
    release.send(()).unwrap();
    holder.join().unwrap();
}

/// The daemon's census budget must see the work done in another namespace,
/// which runs on a helper thread: before, it read only its own thread's
/// CPU clock and kept to its budget on paper while spending ~5× more.
#[test]
fn work_in_another_namespace_is_charged_to_the_caller() {
    if !root_available("work_in_another_namespace_is_charged_to_the_caller") {
        return;
    }
    let ns = NamedNetns::new("cpu");
    let (own0, all0) = (thread_cpu_ns(), netns::thread_cpu_with_helpers_ns());
    // ~100 ms of CPU on the helper thread.
    let spun = netns::run_in(Path::new(&ns.path()), || {
        let start = thread_cpu_ns();
        let mut x = 0u64;
        while thread_cpu_ns() - start < 100_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        x
    })
    .unwrap();
    assert!(spun > 0);
    let own = thread_cpu_ns() - own0;
    let all = netns::thread_cpu_with_helpers_ns() - all0;
    assert!(own < 50_000_000, "the caller itself only waited: {own} ns");
    assert!(
        all >= 100_000_000,
        "the helper's CPU was not counted: {all} ns"
    );
}
