//! `doppel exec serve`: the HTTP server (see docs/server.md).

use super::parse_device;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// `doppel exec serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory (with --device cpu); with --backend sim, an optional tokenizer directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// `engine` (a real model on --device) or `sim` (the simulator in real time, --profile).
    #[arg(long, default_value = "engine")]
    backend: String,
    /// Device for --backend engine: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CUDA: share of device memory for weights + KV cache (default: SGLang's rule).
    #[arg(long)]
    mem_fraction_static: Option<f64>,
    /// CUDA: largest decode batch replayed from a CUDA graph (0 = no graphs).
    #[arg(long, default_value_t = 256)]
    cuda_graph_max_bs: usize,
    /// Simulator profile (built-in name or .yaml file) for --backend sim.
    #[arg(long)]
    profile: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free port).
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Model name clients pass as `model` (default: the model directory's or profile's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// KV cache capacity in tokens (default: 8192 on the CPU, the profile's memory rule for sim).
    #[arg(long)]
    kv_capacity: Option<usize>,
    /// KV page size in tokens.
    #[arg(long, default_value_t = 1)]
    page_size: usize,
    /// Chunked prefill size (0 = off).
    #[arg(long, default_value_t = 8192)]
    chunked_prefill_size: usize,
    /// Longest prompt + output served (SGLang's flag; default: the model's
    /// max_position_embeddings; longer only with YaRN rope scaling).
    #[arg(long)]
    context_length: Option<usize>,
    /// Cap on running requests.
    #[arg(long)]
    max_running_requests: Option<usize>,
    /// Prefill token budget per batch.
    #[arg(long)]
    max_prefill_tokens: Option<usize>,
    /// Waiting-queue policy: fcfs, lpm, dfs-weight, lof, random, priority.
    #[arg(long, default_value = "fcfs")]
    schedule_policy: String,
    /// Turn the prefix cache off.
    #[arg(long)]
    disable_radix_cache: bool,
    /// Run the plain loop instead of SGLang's overlap order.
    #[arg(long)]
    disable_overlap_schedule: bool,
    /// Answer 503 when this many requests are waiting.
    #[arg(long)]
    max_queued_requests: Option<usize>,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// On SIGTERM, seconds live requests may keep running before they are aborted.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Sampling seed of requests that bring none.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// debug, info, warning or error.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// What executes plans: one of doppel-exec's backends, or the simulator's virtual GPU
/// (doppel-measure) with a profile.
enum Serving {
    Engine(doppel_exec::server::BackendKind),
    Sim(String),
}

pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    use doppel_exec::server::{log, run_blocking, BackendKind, Server, ServerConfig};
    let level = log::Level::parse(&a.log_level).ok_or_else(|| {
        anyhow!(
            "--log-level {}: expected debug, info, warning or error",
            a.log_level
        )
    })?;
    log::set_level(level);
    let backend = match (a.backend.as_str(), a.device.as_str()) {
        ("sim", _) => Serving::Sim(
            a.profile
                .clone()
                .ok_or_else(|| anyhow!("--backend sim needs --profile"))?,
        ),
        ("engine", d) => Serving::Engine(match parse_device(d)? {
            None => BackendKind::Cpu,
            Some(device) => BackendKind::Cuda {
                device,
                mem_fraction_static: a.mem_fraction_static,
                cuda_graph_max_bs: a.cuda_graph_max_bs,
            },
        }),
        (b, _) => bail!("--backend {b}: expected engine or sim"),
    };
    let policy = doppel_core::Policy::parse(&a.schedule_policy).ok_or_else(|| {
        anyhow!(
            "--schedule-policy {}: expected fcfs, lpm, dfs-weight, lof, random or priority",
            a.schedule_policy
        )
    })?;
    if !(a.shutdown_timeout.is_finite() && a.shutdown_timeout >= 0.0) {
        bail!(
            "--shutdown-timeout {}: must be a number >= 0",
            a.shutdown_timeout
        );
    }
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads")?;
    }
    let cfg = ServerConfig {
        model: a.model,
        served_model_name: a.served_model_name,
        kv_capacity: a.kv_capacity,
        page_size: a.page_size,
        chunked_prefill_size: (a.chunked_prefill_size > 0).then_some(a.chunked_prefill_size),
        context_length: a.context_length,
        max_running_requests: a.max_running_requests,
        max_prefill_tokens: a.max_prefill_tokens,
        policy,
        disable_radix_cache: a.disable_radix_cache,
        overlap: !a.disable_overlap_schedule,
        max_queued_requests: a.max_queued_requests,
        max_body_bytes: a.max_body_bytes,
        shutdown_timeout: std::time::Duration::from_secs_f64(a.shutdown_timeout),
        seed: a.seed,
        log_batches: true,
        conn: Default::default(),
    };
    let server = match backend {
        Serving::Engine(kind) => Server::build(cfg, kind)?,
        Serving::Sim(profile) => doppel_measure::sim_server::build(cfg, &profile)?,
    };
    run_blocking(server, &a.host, a.port)?;
    Ok(ExitCode::SUCCESS)
}
