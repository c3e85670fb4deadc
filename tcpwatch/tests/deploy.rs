//! What `deploy/` ships, checked by the tools that will read it: promtool
//! (the rules, their unit tests, the scrape config), systemd-analyze (the
//! unit) and tcpwatch itself (the default configuration file). No root.
use std::{path::Path, process::Command};

#[path = "shared/skip.rs"]
mod skip;
use skip::tool_available;

const BIN: &str = env!("CARGO_BIN_EXE_tcpwatch");

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_prometheus_rules_check_and_pass_their_unit_tests() {
    let test = "the_prometheus_rules_check_and_pass_their_unit_tests";
    if !tool_available(test, "promtool", "prometheus") {
        return;
    }
    let dir = deploy().join("prometheus");
    let rules = run(Command::new("promtool")
        .args(["check", "rules", "tcpwatch.rules.yml"])
        .current_dir(&dir));
    assert!(rules.contains("SUCCESS"), "{rules}");
    let tests = run(Command::new("promtool")
        .args(["test", "rules", "tcpwatch.rules.test.yml"])
        .current_dir(&dir));
    assert!(tests.contains("SUCCESS"), "{tests}");
    let config = run(Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    assert!(config.contains("SUCCESS"), "{config}");
}

/// The shipped file is the defaults `tcpwatch config default` prints (under
/// a header of its own), so the two cannot drift apart, and it checks clean.
#[test]
fn the_shipped_configuration_is_the_default_and_checks_clean() {
    let shipped = deploy().join("tcpwatch.toml");
    let default = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(default.status.success());
    let text = std::fs::read_to_string(&shipped).unwrap();
    assert!(
        text.ends_with(&*String::from_utf8_lossy(&default.stdout)),
        "deploy/tcpwatch.toml does not end with `tcpwatch config default`: regenerate it"
    );
    run(Command::new(BIN).arg("config").arg("check").arg(&shipped));
}

/// systemd-analyze verifies the unit as installed, with the binary where
/// the unit expects it (here: this build, at the same path in a copy).
#[test]
fn the_systemd_unit_verifies() {
    let test = "the_systemd_unit_verifies";
    if !tool_available(test, "systemd-analyze", "systemd") {
        return;
    }
    let unit = std::fs::read_to_string(deploy().join("systemd/tcpwatch.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/tcpwatch daemon"),
        "{unit}"
    );
    let dir = std::env::temp_dir().join(format!("tcpwatch-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tcpwatch.service");
    std::fs::write(&path, unit.replace("/usr/sbin/tcpwatch", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{text}");
    // Only complaints about the host's own units are not the unit's.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("tcpwatch")).collect();
    assert!(ours.is_empty(), "{text}");
}
