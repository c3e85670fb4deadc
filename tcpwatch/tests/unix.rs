//! The commands as Unix tools, run against the committed recordings (no
//! root): a closed pipe ends them quietly, a full disk is one sentence and
//! a failure exit, a cut recording is replayed up to the cut, numeric
//! options have ranges, and process names reach a terminal escaped.
use std::{
    io::{Read, Write},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");
const BASIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/basic.rec");
const BUSY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/top-busy.rec");

/// A file of the test's own, removed on drop.
struct Temp(std::path::PathBuf);

impl Temp {
    fn new(tag: &str, bytes: &[u8]) -> Temp {
        let p = std::env::temp_dir().join(format!("tcpwatch-unix-{tag}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        Temp(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs tcpwatch with stdout a pipe whose read end is closed before it
/// starts (as `| head` is once it has read its lines).
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (read, write) = std::io::pipe().unwrap();
    drop(read);
    Command::new(BIN)
        .args(args)
        .stdout(write)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn to_dev_full(args: &[&str], stream: &str) -> std::process::Output {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut c = Command::new(BIN);
    c.args(args);
    if stream == "stdout" {
        c.stdout(full()).stderr(Stdio::piped());
    } else {
        c.stdout(Stdio::piped()).stderr(full());
    }
    c.output().unwrap()
}

#[test]
fn a_closed_pipe_ends_a_command_quietly_with_141() {
    for args in [
        &["replay", BUSY][..],
        &["replay", "--json", BUSY],
        &["config", "default"],
    ] {
        let out = with_closed_stdout(args);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: quiet, not {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_full_disk_is_one_sentence_and_a_failure_exit() {
    for args in [&["replay", BASIC][..], &["config", "default"]] {
        let out = to_dev_full(args, "stdout");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("No space left on device"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // With stderr full the error cannot be said, and nothing panics: the
    // exit status still tells.
    let out = to_dev_full(&["replay", "/nonexistent.rec"], "stderr");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// The recording's first `n` bytes.
fn head(path: &str, n: usize) -> Vec<u8> {
    let mut all = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    all.truncate(n);
    all
}

#[test]
fn a_recording_cut_mid_line_is_replayed_up_to_the_cut() {
    let all = head(BASIC, usize::MAX);
    // Cut in the middle of a line past the header.
    let lines: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    assert!(lines.len() > 20);
    let cut_at = lines[10] + 5;
    let cut = Temp::new("cut", &all[..cut_at]);
    let whole = Temp::new("whole", &all[..=lines[10]]);
    let replay = |p: &str| {
        Command::new(BIN)
            .args(["replay", "--json", p])
            .output()
            .unwrap()
    };
    let (a, b) = (replay(cut.path()), replay(whole.path()));
    assert!(a.status.success(), "{a:?}");
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(
        err.contains("line 12 is cut short") && err.contains("replayed the 11 lines before it"),
        "{err}"
    );
    assert_eq!(a.stdout, b.stdout, "the same as the lines before the cut");
}

#[test]
fn a_line_too_long_for_a_recording_is_refused_with_its_number() {
    let mut bytes = head(BASIC, usize::MAX);
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    bytes.truncate(header_end);
    bytes.extend(std::iter::repeat_n(b'x', 17 << 20));
    let long = Temp::new("long", &bytes);
    let out = Command::new(BIN)
        .args(["replay", long.path()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2 is longer than 16777216 bytes"),
        "{err}"
    );
}

#[test]
fn numeric_options_out_of_range_are_usage_errors() {
    for args in [
        &["replay", "--speed", "1e-300", BASIC][..],
        &["replay", "--speed=-1", BASIC],
        &["daemon", "--interval", "1e300"],
        &["daemon", "--interval", "0"],
        &["daemon", "--census-budget", "0"],
        &["trace", "-d", "0"],
        &["trace", "-c", "0"],
        &["trace", "-d", "inf"],
        &["trace", "--ring-kib", "0"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid value"), "{args:?}: {err}");
    }
}

#[test]
fn a_hostile_process_name_reaches_the_terminal_escaped() {
    // A recording whose one process named itself to clear the screen and
    // forge a line; replayed as text, the bytes arrive escaped.
    let all = String::from_utf8(head(BASIC, usize::MAX)).unwrap();
    let comm = serde_json::to_string("\u{1b}[2J\nFAKE").unwrap();
    let forged = all.replace("\"comm\":\"python3\"", &format!("\"comm\":{comm}"));
    assert_ne!(forged, all, "the recording names python3");
    let rec = Temp::new("hostile", forged.as_bytes());
    let mut child = Command::new(BIN)
        .args(["replay", rec.path()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("\\x1b[2J\\nFAKE"), "{text}");
    let _ = std::io::stdout().flush();
}

#[test]
fn a_namespace_that_does_not_exist_is_a_usage_error_everywhere() {
    for args in [
        &["trace", "--netns", "4294967290"][..],
        &["states", "--netns", "4294967290"],
        &["states", "--netns", "/nonexistent/netns"],
        &["daemon", "--netns", "no-such-name-here"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--netns"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

/// A FIFO named as a recording: replay says it waits for a writer, then
/// replays what the writer sends; with no writer, Ctrl-C ends the wait.
#[test]
fn a_fifo_is_waited_for_saying_so_and_ctrl_c_ends_the_wait() {
    use std::io::{BufRead, BufReader};
    let fifo = |tag: &str| {
        let p = std::env::temp_dir().join(format!("tcpwatch-unix-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        Temp(p)
    };
    let spawn = |path: &str| {
        Command::new(BIN)
            .args(["replay", path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The wait is said before replay blocks: read that line first.
    let said = |child: &mut std::process::Child| {
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("is a FIFO: waiting for a writer"), "{line}");
        err
    };

    let f = fifo("fifo");
    let mut child = spawn(f.path());
    let mut rest = said(&mut child);
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap()
        .write_all(&std::fs::read(BASIC).unwrap())
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    rest.read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    let direct = Command::new(BIN).args(["replay", BASIC]).output().unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(
        out,
        String::from_utf8_lossy(&direct.stdout),
        "the same replay as from the file"
    );

    let f = fifo("fifo-int");
    let mut child = spawn(f.path());
    let _rest = said(&mut child);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
}
