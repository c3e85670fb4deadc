//! The core's boundary, checked before every test run: `tcpwatch-core` may
//! depend only on the crates listed here (data and encoding). A kernel,
//! runtime or OS crate in its manifest fails `cargo xtask test`, so an
//! arrow from the core to an edge cannot land.
use std::process::Command;

use anyhow::{Context as _, bail};

/// What the core may use. Adding a crate here is a design decision: it must
/// do no I/O and read no clock.
const ALLOWED: &[&str] = &[
    "tcpwatch-common",
    "serde",
    "serde_json",
    "thiserror",
    "foldhash",
    "prometheus-client",
    "toml",
    // dev-dependency: snapshot tests.
    "insta",
];

/// The core's dependencies that are not allowed, from `cargo metadata`.
pub fn check(root: &std::path::Path) -> anyhow::Result<()> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bad = forbidden(&meta)?;
    if !bad.is_empty() {
        bail!(
            "tcpwatch-core must stay pure, but depends on {}: move that code to an edge \
             (tcpwatch/src/{{probe,host,daemon,serve}}) or, if it truly does no I/O and \
             reads no clock, add it to xtask/src/purity.rs's ALLOWED with the reason",
            bad.join(", ")
        );
    }
    Ok(())
}

fn forbidden(meta: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    let core = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "tcpwatch-core"))
        .context("no tcpwatch-core package in the workspace")?;
    Ok(core["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str())
        .filter(|n| !ALLOWED.contains(n))
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(deps: &[&str]) -> serde_json::Value {
        let deps: Vec<_> = deps
            .iter()
            .map(|d| serde_json::json!({ "name": d }))
            .collect();
        serde_json::json!({ "packages": [
            { "name": "tcpwatch", "dependencies": [{ "name": "aya" }] },
            { "name": "tcpwatch-core", "dependencies": deps },
        ]})
    }

    #[test]
    fn an_edge_crate_in_the_core_is_refused_by_name() {
        let bad = forbidden(&meta(&["serde", "aya", "tokio", "libc"])).unwrap();
        assert_eq!(bad, ["aya", "tokio", "libc"]);
        assert!(
            forbidden(&meta(&["serde", "tcpwatch-common"]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_workspace_core_is_pure_today() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        check(&root).unwrap();
    }
}
