//! Shared by the test crates (included with `#[path]`): how a test that
//! cannot run here says so.

/// Says loudly that `test` skipped, and why, and notes it in the file
/// `cargo xtask test` lists at its end (TCPWATCH_SKIP_LOG), so a skip is
/// seen in the summary, not only in a passing test's output.
pub fn skipped(test: &str, why: &str) {
    eprintln!("\n!!!!!!!!\n!!! SKIPPED {test}: {why}\n!!!!!!!!\n");
    if let Some(log) = std::env::var_os("TCPWATCH_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Whether `tool` runs here; in CI its absence fails the test (the
/// project's set-up installs it), elsewhere the test is skipped loudly.
pub fn tool_available(test: &str, tool: &str, package: &str) -> bool {
    if std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {tool} missing in CI: cargo xtask setup installs {package}"
    );
    skipped(
        test,
        &format!("no `{tool}` (apt-get install {package}, or cargo xtask setup)"),
    );
    false
}
