//! Shared by the test crates (included with `#[path]`): how a skipped test
//! says so.

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
