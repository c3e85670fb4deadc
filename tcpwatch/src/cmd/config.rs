//! `tcpwatch config default | check FILE`: the daemon's configuration file,
//! without starting anything.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use tcpwatch::{core::config::DEFAULT_TEXT, daemon::config::read};

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Print every setting at its default, commented (a starting file).
    Default,
    /// Check a file as the daemon would read it: exit 0, or 2 with
    /// FILE:LINE: reason.
    Check { file: PathBuf },
}

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Default => {
            super::print(DEFAULT_TEXT)?;
            Ok(ExitCode::SUCCESS)
        }
        What::Check { file } => {
            read(&file)?;
            super::print(&format!("{}: ok\n", file.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
