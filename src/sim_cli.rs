//! `doppel sim ...` subcommands.

use clap::Subcommand;
use std::process::ExitCode;

/// `doppel sim` subcommands.
#[derive(Subcommand)]
pub enum SimCmd {
    /// Placeholder until this family of subcommands lands.
    Status,
}

/// Run a `doppel sim` subcommand.
pub fn run(cmd: SimCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SimCmd::Status => {
            eprintln!("doppel sim: not built yet");
            Ok(ExitCode::from(2))
        }
    }
}
