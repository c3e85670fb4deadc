//! What `deploy/` ships, checked by the tools that will read it: promtool
//! (the rules, their unit tests, the scrape config), systemd-analyze (the
//! unit) and tcpwatch itself (the default configuration file); the Grafana
//! dashboards' structure (their queries run against a real Prometheus in
//! the kernel suite's `grafana`). No root.
use std::{path::Path, process::Command};

#[path = "shared/dashboards.rs"]
mod dashboards;
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

/// What Grafana's file provisioning needs of a dashboard, and what makes
/// one usable on any Grafana: no numeric id, a unique uid, every panel on
/// the chosen Prometheus (the `datasource` variable), inside the 24-column
/// grid, each query with a refId and no variable the dashboard lacks; the
/// provider points where the package puts the files, and the fleet
/// dashboard reads only recording rules the shipped rule file records.
#[test]
fn the_grafana_dashboards_are_provisioning_ready() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/tcpwatch.rules.yml")).unwrap();
    let recorded: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .collect();
    let mut uids = Vec::new();
    for (name, d) in dashboards::all() {
        assert!(
            d["id"].is_null(),
            "{name}: a provisioned dashboard has no id"
        );
        let uid = d["uid"].as_str().unwrap_or_default().to_string();
        assert!(
            !uid.is_empty() && !uids.contains(&uid),
            "{name}: uid {uid:?}"
        );
        uids.push(uid);
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
        assert!(d["schemaVersion"].as_u64() >= Some(36), "{name}");
        let vars = dashboards::variable_names(&d);
        assert_eq!(
            vars.first().map(String::as_str),
            Some("datasource"),
            "{name}"
        );
        assert_eq!(d["templating"]["list"][0]["query"], "prometheus", "{name}");
        // Every variable and Grafana's own interval given a value: an
        // unknown `$name` in a query is the error.
        let mut values: Vec<(&str, &str)> = vars.iter().map(|v| (v.as_str(), "x")).collect();
        values.push(("__rate_interval", "1m"));
        for (var, query) in dashboards::variables(&d) {
            let promql = dashboards::label_values_promql(&query);
            dashboards::expand(&promql, &values).unwrap_or_else(|e| panic!("{name}: ${var}: {e}"));
        }
        let mut ids = Vec::new();
        for p in dashboards::panels(&d) {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {title}: no id"));
            assert!(!ids.contains(&id), "{name}: panel id {id} twice");
            ids.push(id);
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(
                x + w <= 24 && g["h"].as_u64() > Some(0),
                "{name}: {title}: {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: {title}");
            assert_eq!(p["datasource"]["type"], "prometheus", "{name}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            let mut refs = Vec::new();
            for t in targets {
                let r = t["refId"].as_str().expect("refId");
                assert!(!refs.contains(&r), "{name}: {title}: refId {r} twice");
                refs.push(r);
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{name}: {title}");
            }
        }
        for (title, expr) in dashboards::queries(&d) {
            dashboards::expand(&expr, &values).unwrap_or_else(|e| panic!("{name}: {title}: {e}"));
            // A recording rule's name has a colon; plain metrics have none.
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
                if word.contains(':') && word.contains("tcpwatch") {
                    assert!(
                        recorded.contains(&word),
                        "{name}: {title}: {word} is not recorded"
                    );
                }
            }
        }
    }
    let provider =
        std::fs::read_to_string(dashboards::dir().join("provisioning/tcpwatch.yml")).unwrap();
    let cargo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        provider.contains("path: /usr/share/tcpwatch/grafana/dashboards\n"),
        "{provider}"
    );
    assert!(
        cargo.contains(
            "\"../deploy/grafana/dashboards/*.json\", \"usr/share/tcpwatch/grafana/dashboards/\""
        ),
        "the package does not put the dashboards where the provider reads them"
    );
}
