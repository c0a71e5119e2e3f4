//! The trace format (traces/README.md documents every field): model/profile, engine config, seed,
//! workload and arrivals. Parsing gives errors with file, line, column and field.

use crate::error::SimError;
use crate::profile::Profile;
use doppel_core::{EvictionPolicy, Policy, SchedulerConfig};
use serde::{Deserialize, Serialize};

mod validate;

fn default_seed() -> u64 {
    1
}
fn default_policy() -> String {
    "fcfs".into()
}
fn default_eviction() -> String {
    "lru".into()
}
fn one() -> usize {
    1
}
fn default_max_prefill() -> usize {
    16_384
}
fn yes() -> bool {
    true
}
fn default_conservativeness() -> f64 {
    1.0
}

/// A whole trace file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// Short name (defaults to the file stem).
    #[serde(default)]
    pub name: Option<String>,
    /// What the trace exercises.
    #[serde(default)]
    pub description: Option<String>,
    /// Profile name (see `doppel sim profiles`) or a path to a profile YAML file.
    pub profile: String,
    /// Seed for every generator (bench_serving's default is 1).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Vocabulary the prompts' token ids are drawn from (absent: the profile model's). A bench
    /// run made with `doppel bench serve --vocab N` replays exactly with `vocab: N`: the draws
    /// that follow a prompt's (a shared-prefix workload's group order) depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// Engine configuration.
    #[serde(default)]
    pub engine: EngineSpec,
    /// What the clients send.
    pub workload: Workload,
    /// When they send it.
    #[serde(default)]
    pub arrival: Arrival,
}

/// The serving engine's configuration (SGLang's server arguments).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Waiting-queue policy: fcfs, lpm, dfs-weight, lof, random, priority.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Radix cache eviction: lru, lfu, fifo, mru, filo, priority.
    #[serde(default = "default_eviction")]
    pub eviction: String,
    /// Tokens per KV page.
    #[serde(default = "one")]
    pub page_size: usize,
    /// Chunk size; absent = SGLang's default by GPU memory; -1 = no chunking.
    #[serde(default)]
    pub chunked_prefill_size: Option<i64>,
    /// Prefill token budget per batch.
    #[serde(default = "default_max_prefill")]
    pub max_prefill_tokens: usize,
    /// Cap on running requests (absent = SGLang's default).
    #[serde(default)]
    pub max_running_requests: Option<usize>,
    /// KV pool size in tokens (takes precedence over mem_fraction_static).
    #[serde(default)]
    pub kv_capacity_tokens: Option<usize>,
    /// Fraction of GPU memory for weights + KV (absent = SGLang's default for the GPU).
    #[serde(default)]
    pub mem_fraction_static: Option<f64>,
    /// SGLang's overlap scheduler (CPU scheduling hidden behind the GPU step).
    #[serde(default = "yes")]
    pub overlap: bool,
    /// Tensor-parallel size.
    #[serde(default = "one")]
    pub tp_size: usize,
    /// Carry decode tokens inside prefill batches.
    #[serde(default)]
    pub enable_mixed_chunk: bool,
    /// With mixing, the token budget of a mixed step while its decode rows leave room
    /// (`SchedulerConfig::mixed_step_tokens`).
    #[serde(default)]
    pub mixed_step_tokens: Option<usize>,
    /// Disable prefix caching.
    #[serde(default)]
    pub disable_radix_cache: bool,
    /// SGLang's schedule_conservativeness.
    #[serde(default = "default_conservativeness")]
    pub schedule_conservativeness: f64,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            policy: default_policy(),
            eviction: default_eviction(),
            page_size: 1,
            chunked_prefill_size: None,
            max_prefill_tokens: default_max_prefill(),
            max_running_requests: None,
            kv_capacity_tokens: None,
            mem_fraction_static: None,
            overlap: true,
            tp_size: 1,
            enable_mixed_chunk: false,
            mixed_step_tokens: None,
            disable_radix_cache: false,
            schedule_conservativeness: 1.0,
        }
    }
}

fn zero_ratio() -> f64 {
    0.0
}

/// One explicitly listed request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExplicitRequest {
    /// When the client sends it (ms from the start).
    #[serde(default)]
    pub arrival_ms: f64,
    /// Prompt token ids (give this or prompt_len).
    #[serde(default)]
    pub prompt: Option<Vec<u32>>,
    /// Prompt length, with seeded random tokens (give this or prompt).
    #[serde(default)]
    pub prompt_len: Option<usize>,
    /// Requests with the same group share their first prefix_len tokens.
    #[serde(default)]
    pub prefix_group: Option<u32>,
    /// Length of the shared prefix (with prefix_group; at most prompt_len).
    #[serde(default)]
    pub prefix_len: Option<usize>,
    /// Chained hashes of the prompt's full pages of the workload's `page_len` tokens (a
    /// recorded trace, `doppel exec serve --record`): requests whose first k hashes are equal
    /// share their first k pages; the rest of the prompt is their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<Vec<u64>>,
    /// Tokens to generate.
    pub output_len: usize,
    /// Ignore EOS (the simulator never samples EOS; kept for the record).
    #[serde(default = "yes")]
    pub ignore_eos: bool,
}

/// What the clients send.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// An explicit request list (arrival times come from the list).
    Requests {
        /// Tokens per hashed page of the requests' `pages`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page_len: Option<usize>,
        /// The requests.
        requests: Vec<ExplicitRequest>,
    },
    /// bench_serving's random dataset: lengths uniform on [max(floor(L*r), 1), L].
    Random {
        /// Requests.
        num_requests: usize,
        /// Maximum input length L.
        input_len: usize,
        /// Maximum output length.
        output_len: usize,
        /// Range ratio r (0 = uniform on [1, L]; 1 = exactly L).
        #[serde(default = "zero_ratio")]
        range_ratio: f64,
    },
    /// System prompts shared by groups of questions.
    SharedPrefix {
        /// Groups (distinct system prompts).
        num_groups: usize,
        /// Questions per group.
        prompts_per_group: usize,
        /// System prompt length.
        system_prompt_len: usize,
        /// Question length.
        question_len: usize,
        /// Output length.
        output_len: usize,
    },
    /// Conversations: each turn's prompt is the whole previous conversation plus a new message.
    MultiTurn {
        /// Sessions.
        num_sessions: usize,
        /// Turns per session.
        turns: usize,
        /// First message length.
        first_prompt_len: usize,
        /// Each later message's length.
        turn_prompt_len: usize,
        /// Output length per turn.
        output_len: usize,
        /// Think time between a reply and the next message (ms).
        think_time_ms: f64,
    },
    /// Long documents, optionally mixed with short chats.
    LongContext {
        /// Requests.
        num_requests: usize,
        /// Maximum document length.
        input_len: usize,
        /// Maximum output length.
        output_len: usize,
        /// Range ratio for both lengths.
        #[serde(default = "zero_ratio")]
        range_ratio: f64,
        /// Fraction of requests that are short chats instead.
        #[serde(default)]
        short_fraction: f64,
        /// Short chat input length.
        #[serde(default)]
        short_input_len: usize,
    },
}

/// When requests are sent.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    /// The pattern.
    #[serde(default)]
    pub pattern: ArrivalPattern,
    /// Requests per second (poisson, gamma).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Gamma shape (1 = Poisson; below 1 burstier).
    #[serde(default)]
    pub burstiness: Option<f64>,
    /// Cap on requests in flight (required for `concurrency`, optional otherwise).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
}

/// Arrival patterns.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalPattern {
    /// Everything at t=0 (bench_serving's request rate inf).
    #[default]
    Burst,
    /// Exponential gaps with mean 1/rate.
    Poisson,
    /// Gamma gaps, shape = burstiness, mean 1/rate.
    Gamma,
    /// A fixed number of requests in flight: the next is sent when one finishes.
    Concurrency,
}

impl Trace {
    /// Read and validate a trace file.
    pub fn load(path: &str) -> Result<Trace, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
            path: path.to_string(),
            source: e,
        })?;
        Trace::parse(&text, path)
    }

    /// Parse and validate trace text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Trace, SimError> {
        let mut t: Trace =
            serde_yaml::from_str(text).map_err(|e| SimError::yaml_in(origin, text, &e))?;
        if t.name.is_none() {
            let stem = std::path::Path::new(origin)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "trace".into());
            t.name = Some(stem);
        }
        t.validate(text, origin)?;
        Ok(t)
    }

    /// The vocabulary prompts are drawn from on a model of `model_vocab` tokens.
    pub fn prompt_vocab(&self, model_vocab: usize) -> usize {
        self.vocab.unwrap_or(model_vocab)
    }

    /// The trace's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("trace")
    }

    /// The scheduler configuration this trace asks for on `profile`.
    pub fn scheduler_config(
        &self,
        profile: &Profile,
        origin: &str,
    ) -> Result<SchedulerConfig, SimError> {
        let e = &self.engine;
        let mem_gib = profile.hardware.memory_mib / 1024.0;
        // SGLang's default chunk by GPU memory.
        let chunk = match e.chunked_prefill_size {
            Some(-1) => None,
            Some(c) => Some(c as usize),
            None if mem_gib >= 75.0 => Some(8192),
            None if mem_gib >= 35.0 => Some(4096),
            None => Some(2048),
        };
        let capacity = match e.kv_capacity_tokens {
            Some(c) => c,
            None => {
                let frac = e
                    .mem_fraction_static
                    .unwrap_or_else(|| profile.default_mem_fraction(chunk, e.tp_size));
                profile.kv_capacity_from_fraction(frac, e.tp_size)
            }
        };
        let cfg = SchedulerConfig {
            kv_capacity_tokens: capacity,
            page_size: e.page_size,
            context_len: profile.model.context_len,
            max_running_requests: e.max_running_requests,
            max_prefill_tokens: e.max_prefill_tokens,
            chunked_prefill_size: chunk,
            policy: Policy::parse(&e.policy).unwrap_or(Policy::Fcfs),
            eviction: EvictionPolicy::parse(&e.eviction).unwrap_or(EvictionPolicy::Lru),
            disable_radix_cache: e.disable_radix_cache,
            enable_mixed_chunk: e.enable_mixed_chunk,
            mixed_step_tokens: e.mixed_step_tokens,
            schedule_conservativeness: e.schedule_conservativeness,
            seed: self.seed,
            ..SchedulerConfig::default()
        };
        cfg.validate().map_err(|source| SimError::Config {
            file: origin.to_string(),
            source,
        })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
