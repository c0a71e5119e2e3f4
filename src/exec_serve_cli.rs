//! `doppel exec serve`: the HTTP server (see docs/server.md). Takes SGLang's launch flags
//! (`--model-path`, `--tp`, `--api-key`, ...) so a user's command line works as typed.

use super::flags::KernelFlags;
use super::{check_tp, local_dir, parse_device};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use doppel_exec::server::{LoadFormat, ServerConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// `doppel exec serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory (with --device cpu); with --backend sim, an optional tokenizer directory.
    #[arg(long, visible_alias = "model-path")]
    model: Option<PathBuf>,
    /// Tokenizer directory when it is not --model's.
    #[arg(long)]
    tokenizer_path: Option<PathBuf>,
    /// A Jinja chat template file replacing the tokenizer's.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// `engine` (a real model on --device) or `sim` (the simulator in real time, --profile).
    #[arg(long, default_value = "engine")]
    backend: String,
    /// Device for --backend engine: cpu, cuda or cuda:N (default cpu).
    #[arg(long)]
    device: Option<String>,
    /// CUDA: share of device memory for weights + KV cache (default: SGLang's rule).
    #[arg(long)]
    mem_fraction_static: Option<f64>,
    /// CUDA: largest decode batch replayed from a CUDA graph (0 = no graphs).
    #[arg(long, default_value_t = 256)]
    cuda_graph_max_bs: usize,
    /// CUDA: no CUDA graphs (same as --cuda-graph-max-bs 0).
    #[arg(long)]
    disable_cuda_graph: bool,
    /// CUDA: the kernel thresholds (for A/B runs on one binary; defaults: the engine's).
    #[command(flatten)]
    kernels: KernelFlags,
    /// `auto` (the checkpoint's weights) or `dummy` (random weights from config.json; CUDA).
    #[arg(long, default_value = "auto")]
    load_format: String,
    /// `auto` or `bfloat16` (what the CUDA backend and the profiles compute in).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Tensor-parallel ranks: the model is split over this many worker threads (--device cpu)
    /// or GPUs from the CUDA device on (NCCL); attention heads, KV heads and MLP width must
    /// divide by it.
    #[arg(long, visible_alias = "tp-size", default_value_t = 1)]
    tp: usize,
    /// Simulator profile for --backend sim: a built-in name (`doppel sim profiles`) or a .yaml
    /// file (default: the calibrated h100-80g/qwen3-0.6b/doppel).
    #[arg(long)]
    profile: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free port).
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Model name clients pass as `model` (default: the model directory's name; with --backend
    /// sim, the profile's model, e.g. Qwen/Qwen3-0.6B).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Bearer token required on every route but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// KV cache capacity in tokens (default: 8192 on the CPU, the profile's memory rule for sim).
    #[arg(long, visible_alias = "max-total-tokens")]
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
    /// Run the running requests' decode tokens in the same step as a prefill chunk (SGLang's
    /// flag).
    #[arg(long)]
    enable_mixed_chunk: bool,
    /// With --enable-mixed-chunk: while the decode rows leave a page under this many tokens and
    /// at most one request waits, a mixed step's prefill takes only the rest of this many tokens,
    /// so a prompt rides several decode steps' idle compute (default: the chunk size; doppel's
    /// flag, not SGLang's).
    #[arg(long, requires = "enable_mixed_chunk")]
    mixed_step_tokens: Option<usize>,
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
    #[arg(long, visible_alias = "random-seed", default_value_t = 0)]
    seed: u64,
    /// debug, info, warning, error or critical.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Record every request (arrival, prompt and output length, hashed prefix pages; no
    /// token ids) as a trace for `sim replay` / `sim plan` / `bench serve --dataset-name trace`.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Rotate the recording at this many MiB (the full file becomes FILE.1).
    #[arg(long, default_value_t = 256)]
    record_max_mib: u64,
    /// Profile the recorded trace names (`sim replay --profile` can replace it).
    #[arg(long, default_value = "h100-80g/qwen3-0.6b/doppel")]
    record_profile: String,
    /// Accepted for SGLang's command lines: /metrics is always on.
    #[arg(long)]
    enable_metrics: bool,
    /// Accepted for SGLang's command lines: doppel runs no code from the model directory.
    #[arg(long)]
    trust_remote_code: bool,
    /// Accepted for SGLang's command lines: doppel sends no warm-up request after start
    /// (CUDA graphs are still captured before serving).
    #[arg(long)]
    skip_server_warmup: bool,
    /// Tool-call format of the model's output: qwen25 (alias qwen), llama3, mistral (default:
    /// from the model's architecture).
    #[arg(long)]
    tool_call_parser: Option<String>,
    /// Split reasoning from the answer: qwen3, deepseek-r1 (default: off).
    #[arg(long)]
    reasoning_parser: Option<String>,
}

/// What executes plans: one of doppel-exec's backends, or the simulator's virtual GPU
/// (doppel-measure) with a profile (None: the default one).
enum Serving {
    Engine(doppel_exec::server::BackendKind),
    Sim(Option<String>),
}

impl ServeArgs {
    fn serving(&self) -> anyhow::Result<Serving> {
        use doppel_exec::server::BackendKind;
        let kernel_flag = self.kernels.first_set();
        match self.backend.as_str() {
            "sim" if self.tp != 1 => bail!(
                "--tp {}: only --backend engine runs tensor parallelism",
                self.tp
            ),
            "sim" => {
                if let Some(d) = &self.device {
                    bail!("--device {d} has no effect with --backend sim (the simulator models the profile's GPU); drop it or pick --profile");
                }
                if self.disable_cuda_graph {
                    bail!("--disable-cuda-graph has no effect with --backend sim (a profile models its engine as measured, graphs included); drop it");
                }
                if let Some(f) = kernel_flag {
                    bail!("{f} has no effect with --backend sim (it sets a CUDA kernel threshold); drop it");
                }
                Ok(Serving::Sim(self.profile.clone()))
            }
            "engine" => {
                if let Some(p) = &self.profile {
                    bail!("--profile {p} needs --backend sim");
                }
                let d = self.device.as_deref().unwrap_or("cpu");
                let graphs = if self.disable_cuda_graph {
                    0
                } else {
                    self.cuda_graph_max_bs
                };
                let dev = parse_device(d)?;
                if self.disable_cuda_graph && dev.is_none() {
                    bail!("--disable-cuda-graph has no effect with --device cpu (no CUDA graphs there); drop it");
                }
                check_tp(self.tp)?;
                if let (Some(f), None) = (kernel_flag, dev) {
                    bail!("{f} has no effect with --device cpu (it sets a CUDA kernel threshold); drop it");
                }
                Ok(Serving::Engine(match dev {
                    None => BackendKind::Cpu,
                    Some(device) => BackendKind::Cuda {
                        device,
                        mem_fraction_static: self.mem_fraction_static,
                        cuda_graph_max_bs: graphs,
                        kernels: self.kernels.choice(),
                    },
                }))
            }
            b => bail!("--backend {b}: expected engine or sim"),
        }
    }

    /// `--dtype`: the CPU backend computes in f32, the CUDA backend and the profiles in bf16.
    fn check_dtype(&self, serving: &Serving) -> anyhow::Result<()> {
        use doppel_exec::server::BackendKind;
        match (self.dtype.as_str(), serving) {
            ("auto", _) => Ok(()),
            ("bfloat16" | "bf16", Serving::Engine(BackendKind::Cpu)) => bail!(
                "--dtype {}: the CPU backend computes in float32; use --dtype auto",
                self.dtype
            ),
            ("bfloat16" | "bf16", _) => Ok(()),
            (d, _) => bail!("--dtype {d}: expected auto or bfloat16"),
        }
    }

    fn config(self) -> anyhow::Result<ServerConfig> {
        let policy = doppel_core::Policy::parse(&self.schedule_policy).ok_or_else(|| {
            anyhow!(
                "--schedule-policy {}: expected fcfs, lpm, dfs-weight, lof, random or priority",
                self.schedule_policy
            )
        })?;
        if !(self.shutdown_timeout.is_finite() && self.shutdown_timeout >= 0.0) {
            bail!(
                "--shutdown-timeout {}: must be a number >= 0",
                self.shutdown_timeout
            );
        }
        let load_format = LoadFormat::parse(&self.load_format)
            .ok_or_else(|| anyhow!("--load-format {}: expected auto or dummy", self.load_format))?;
        if let Some(k) = self.api_key.as_deref() {
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("--api-key: must be non-empty, without spaces or control characters");
            }
        }
        Ok(ServerConfig {
            model: self.model,
            served_model_name: self.served_model_name,
            kv_capacity: self.kv_capacity,
            page_size: self.page_size,
            chunked_prefill_size: (self.chunked_prefill_size > 0)
                .then_some(self.chunked_prefill_size),
            max_running_requests: self.max_running_requests,
            max_prefill_tokens: self.max_prefill_tokens,
            policy,
            disable_radix_cache: self.disable_radix_cache,
            enable_mixed_chunk: self.enable_mixed_chunk,
            mixed_step_tokens: self.mixed_step_tokens,
            overlap: !self.disable_overlap_schedule,
            max_queued_requests: self.max_queued_requests,
            max_body_bytes: self.max_body_bytes,
            shutdown_timeout: std::time::Duration::from_secs_f64(self.shutdown_timeout),
            seed: self.seed,
            log_batches: true,
            tp_size: self.tp,
            tokenizer: self.tokenizer_path,
            chat_template: self.chat_template,
            context_length: self.context_length,
            api_key: self.api_key,
            load_format,
            tool_call_parser: self.tool_call_parser,
            reasoning_parser: self.reasoning_parser,
            conn: Default::default(),
            record: self
                .record
                .map(|path| doppel_exec::server::record::RecordConfig {
                    path,
                    max_bytes: self.record_max_mib.max(1) << 20,
                    profile: self.record_profile,
                }),
        })
    }
}

pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    use doppel_exec::server::{log, run_blocking, Server};
    let level = log::Level::parse(&a.log_level).ok_or_else(|| {
        anyhow!(
            "--log-level {}: expected debug, info, warning, error or critical",
            a.log_level
        )
    })?;
    log::set_level(level);
    let serving = a.serving()?;
    a.check_dtype(&serving)?;
    if let Some(m) = &a.model {
        local_dir("--model", m)?;
    }
    if let Some(t) = &a.tokenizer_path {
        local_dir("--tokenizer-path", t)?;
    }
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads")?;
    }
    let (host, port) = (a.host.clone(), a.port);
    let cfg = a.config()?;
    let server = match serving {
        Serving::Engine(kind) => Server::build(cfg, kind)?,
        Serving::Sim(profile) => doppel_measure::sim_server::build(cfg, profile.as_deref())?,
    };
    run_blocking(server, &host, port)?;
    Ok(ExitCode::SUCCESS)
}
