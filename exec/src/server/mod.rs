//! `doppel exec serve`: SGLang-native and OpenAI-compatible HTTP serving on axum.
//!
//! The engine (core loop + backend) runs on its own OS thread ([`engine`]); handlers validate,
//! tokenize, apply chat templates and stream detokenized text, and talk to the engine through
//! channels. See docs/server.md.

mod chat;
mod chatout;
pub mod client;
mod codec;
mod config;
mod conn;
mod constrain;
pub mod engine;
mod error;
mod fields;
mod forced;
mod gen;
pub mod log;
mod metrics;
mod native;
mod openai;
mod options;
mod params;
mod probe;
mod prompt;
mod reasoning;
pub mod record;
mod routes;
mod setup;
mod toolcall;
mod wire;

pub use codec::Codec;
pub use config::{BackendKind, ServerConfig, ServerError};
pub use conn::ConnLimits;
pub use error::ApiError;
pub use options::{load_tokenizer, LoadFormat};
pub use setup::{run_blocking, ExternalBackend, Server};

use engine::{Command, Shared};
use metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// Fixed facts about the served model and configuration.
#[derive(Clone, Debug)]
pub struct Info {
    /// Name clients use in `model`.
    pub model_name: String,
    /// Checkpoint (or tokenizer) directory, if any.
    pub model_path: Option<String>,
    /// Tokenizer directory, if any.
    pub tokenizer_path: Option<String>,
    /// "cpu" or "sim:<profile>".
    pub backend: String,
    /// Vocabulary size (token ids must be below it).
    pub vocab: usize,
    /// Context length.
    pub context_len: usize,
    /// KV capacity in tokens.
    pub capacity: usize,
    /// KV page size.
    pub page_size: usize,
    /// Chunked prefill size (None = off).
    pub chunked_prefill_size: Option<usize>,
    /// Cap on running requests.
    pub max_running_requests: usize,
    /// Cap on waiting requests (None = unbounded).
    pub max_queued_requests: Option<usize>,
    /// Scheduling policy name.
    pub policy: String,
    /// Prefix cache off.
    pub disable_radix_cache: bool,
    /// Mixed prefill + decode steps.
    pub enable_mixed_chunk: bool,
    /// Mixed steps' token budget while the decode rows leave room.
    pub mixed_step_tokens: Option<usize>,
    /// Overlap order.
    pub overlap: bool,
    /// Tensor-parallel ranks.
    pub tp_size: usize,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Architecture name (for /get_model_info).
    pub arch: String,
    /// Unix time the server started (OpenAI's `created`).
    pub created: u64,
    /// Tool-call format of the model's output (`--tool-call-parser`).
    pub tool_call_parser: Option<toolcall::ToolFormat>,
    /// Reasoning format (`--reasoning-parser`).
    pub reasoning_parser: Option<reasoning::ReasoningFormat>,
}

/// What every handler shares.
pub struct AppState {
    cmd: Sender<Command>,
    shared: Arc<Shared>,
    codec: prompt::PromptCodec,
    info: Info,
    metrics: Metrics,
    next_id: AtomicU64,
    draining: AtomicBool,
    defaults: doppel_core::SamplingParams,
    /// The constraint compiler, or why this server cannot constrain outputs.
    grammars: Result<crate::constraint::Grammars, String>,
    /// Live generations by rid (for /abort_request).
    rids: std::sync::Mutex<std::collections::HashMap<String, doppel_core::RequestId>>,
    /// Bearer token required on every route but /health.
    api_key: Option<String>,
}

impl AppState {
    fn with_rids<T>(
        &self,
        f: impl FnOnce(&mut std::collections::HashMap<String, doppel_core::RequestId>) -> T,
    ) -> T {
        match self.rids.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}
