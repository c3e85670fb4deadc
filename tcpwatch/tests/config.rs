//! `tcpwatch config` as users run it: no root, no kernel.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");

#[test]
fn the_printed_defaults_check_clean_and_a_bad_file_names_its_line() {
    let dir = std::env::temp_dir().join(format!("tcpwatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let good = dir.join("default.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    let check = Command::new(BIN)
        .args(["config", "check", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).ends_with("default.toml: ok\n"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_ports = 64\nmax_procs = 3\n").unwrap();
    let check = Command::new(BIN)
        .args(["config", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml:3: unknown field `max_procs`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
