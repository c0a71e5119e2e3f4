//! doppel: one binary, three families of subcommands. CLI only; the work lives in the crates.

mod bench_cli;
mod exec_cli;
mod sim_cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "doppel",
    version,
    about = "An SGLang-style LLM serving engine and its exact-twin simulator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The discrete-event simulator (no GPU needed).
    #[command(subcommand)]
    Sim(sim_cli::SimCmd),
    /// The real engine: generate, serve, benchmark on CPU or CUDA.
    #[command(subcommand)]
    Exec(exec_cli::ExecCmd),
    /// Benchmarks against a running server.
    #[command(subcommand)]
    Bench(bench_cli::BenchCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Sim(c) => sim_cli::run(c),
        Cmd::Exec(c) => exec_cli::run(c),
        Cmd::Bench(c) => bench_cli::run(c),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: many library errors already print their source in
/// their own message (`{path}: {source}`), which `{:#}` would repeat.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
