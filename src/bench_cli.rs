//! `doppel bench ...` subcommands.

use clap::Subcommand;
use std::process::ExitCode;

/// `doppel bench` subcommands.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Placeholder until this family of subcommands lands.
    Status,
}

/// Run a `doppel bench` subcommand.
pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Status => {
            eprintln!("doppel bench: not built yet");
            Ok(ExitCode::from(2))
        }
    }
}
