//! What `doppel exec serve` takes: the backend kind, the server's settings, its start-up errors.

use super::conn::ConnLimits;
use super::options::LoadFormat;
use doppel_core::Policy;
use std::path::PathBuf;
use std::time::Duration;

/// Which of doppel-exec's backends executes plans (others come in through
/// [`Server::build_with`]).
#[derive(Clone, Debug, PartialEq)]
pub enum BackendKind {
    /// The CPU reference model (needs `model`).
    Cpu,
    /// The CUDA backend (needs `model`).
    Cuda {
        /// Device ordinal.
        device: usize,
        /// SGLang's mem_fraction_static (None: SGLang's default for the card); ignored when
        /// `kv_capacity` is set.
        mem_fraction_static: Option<f64>,
        /// Largest decode batch replayed from a CUDA graph (0 = none).
        cuda_graph_max_bs: usize,
        /// The kernel thresholds of every step plan (`KernelChoice::default()`: the engine's).
        kernels: crate::cuda::model::KernelChoice,
    },
}

/// Everything `doppel exec serve` takes.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Checkpoint directory (CPU), or a tokenizer directory for the simulator (optional there).
    pub model: Option<PathBuf>,
    /// Name clients pass as `model` (default: the directory name, or the profile name).
    pub served_model_name: Option<String>,
    /// KV capacity in tokens (default: 8192 on the CPU, the profile's memory rule for sim).
    pub kv_capacity: Option<usize>,
    /// KV page size.
    pub page_size: usize,
    /// Chunked prefill size (None = off).
    pub chunked_prefill_size: Option<usize>,
    /// Longest prompt + output (SGLang's `--context-length`; None: the model's
    /// max_position_embeddings or the external backend's context; longer only with YaRN).
    pub context_length: Option<usize>,
    /// Cap on running requests.
    pub max_running_requests: Option<usize>,
    /// Prefill token budget per batch.
    pub max_prefill_tokens: Option<usize>,
    /// Waiting-queue policy.
    pub policy: Policy,
    /// Turn the prefix cache off.
    pub disable_radix_cache: bool,
    /// Decode tokens ride in prefill steps (SGLang's `--enable-mixed-chunk`).
    pub enable_mixed_chunk: bool,
    /// With mixing, a mixed step's token budget while its decode rows leave room
    /// (`SchedulerConfig::mixed_step_tokens`; doppel's, not SGLang's).
    pub mixed_step_tokens: Option<usize>,
    /// SGLang's overlap order.
    pub overlap: bool,
    /// Requests beyond this many waiting get 503 (None = unbounded).
    pub max_queued_requests: Option<usize>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// On shutdown, how long live requests may run before they are aborted.
    pub shutdown_timeout: Duration,
    /// Seed of requests that bring none.
    pub seed: u64,
    /// Print SGLang's batch log lines.
    pub log_batches: bool,
    /// Tokenizer directory when it is not `model` (SGLang's `--tokenizer-path`).
    pub tokenizer: Option<PathBuf>,
    /// A Jinja chat template file replacing the tokenizer's (SGLang's `--chat-template`).
    pub chat_template: Option<PathBuf>,
    /// Bearer token every route but /health requires (SGLang's `--api-key`).
    pub api_key: Option<String>,
    /// Where the weights come from.
    pub load_format: LoadFormat,
    /// SGLang's `--tool-call-parser` name (default: from the model's architecture).
    pub tool_call_parser: Option<String>,
    /// SGLang's `--reasoning-parser` name (default: none).
    pub reasoning_parser: Option<String>,
    /// Header and body read timeouts, the connection cap.
    pub conn: ConnLimits,
    /// Tensor-parallel ranks (`--tp-size`: CPU worker threads, or GPUs from the CUDA device).
    pub tp_size: usize,
    /// Record every request as a trace (None: off).
    pub record: Option<super::record::RecordConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: None,
            served_model_name: None,
            kv_capacity: None,
            page_size: 1,
            chunked_prefill_size: Some(8192),
            context_length: None,
            max_running_requests: None,
            max_prefill_tokens: None,
            policy: Policy::Fcfs,
            disable_radix_cache: false,
            enable_mixed_chunk: false,
            mixed_step_tokens: None,
            overlap: true,
            max_queued_requests: None,
            max_body_bytes: 16 << 20,
            shutdown_timeout: Duration::from_secs(30),
            seed: 0,
            log_batches: true,
            tokenizer: None,
            chat_template: None,
            api_key: None,
            load_format: LoadFormat::Auto,
            tool_call_parser: None,
            reasoning_parser: None,
            conn: ConnLimits::default(),
            tp_size: 1,
            record: None,
        }
    }
}

/// The server could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// Loading the model, tokenizer or profile failed.
    #[error("{0}")]
    Load(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(String),
}
