//! `doppel exec ...` subcommands.

use clap::Subcommand;
use std::process::ExitCode;

/// `doppel exec` subcommands.
#[derive(Subcommand)]
pub enum ExecCmd {
    /// Placeholder until this family of subcommands lands.
    Status,
}

/// Run a `doppel exec` subcommand.
pub fn run(cmd: ExecCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ExecCmd::Status => {
            eprintln!("doppel exec: not built yet");
            Ok(ExitCode::from(2))
        }
    }
}
