//! The trace format (traces/README.md documents every field): model/profile, engine config, seed,
//! workload and arrivals. Parsing gives errors with file, line, column and field.

use crate::error::SimError;
use crate::profile::Profile;
use doppel_core::{EvictionPolicy, Policy, SchedulerConfig};
use serde::{Deserialize, Serialize};

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

/// Where a dotted field sits in the YAML text: the line of its last component found (best effort).
fn find_line(text: &str, field: &str) -> Option<usize> {
    field
        .split('.')
        .rev()
        .map(|k| k.split('[').next().unwrap_or(k))
        .find_map(|k| crate::error::locate(text, k))
        .map(|(l, _)| l)
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

    /// The trace's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("trace")
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), SimError> {
        let bad = |field: &str, value: String, why: &str| SimError::Invalid {
            file: origin.to_string(),
            field: field.to_string(),
            value,
            why: why.to_string(),
            line: find_line(text, field),
        };
        let e = &self.engine;
        if Policy::parse(&e.policy).is_none() {
            let known: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
            return Err(bad(
                "engine.policy",
                e.policy.clone(),
                &format!("unknown policy; known: {}", known.join(", ")),
            ));
        }
        if EvictionPolicy::parse(&e.eviction).is_none() {
            let known: Vec<_> = EvictionPolicy::ALL.iter().map(|p| p.name()).collect();
            return Err(bad(
                "engine.eviction",
                e.eviction.clone(),
                &format!("unknown eviction policy; known: {}", known.join(", ")),
            ));
        }
        if let Some(c) = e.chunked_prefill_size {
            if c == 0 || c < -1 {
                return Err(bad(
                    "engine.chunked_prefill_size",
                    c.to_string(),
                    "must be a positive chunk size or -1 (no chunking)",
                ));
            }
        }
        if e.tp_size == 0 || !e.tp_size.is_power_of_two() {
            return Err(bad(
                "engine.tp_size",
                e.tp_size.to_string(),
                "must be a power of two (1, 2, 4, 8)",
            ));
        }
        if let Some(f) = e.mem_fraction_static {
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad(
                    "engine.mem_fraction_static",
                    f.to_string(),
                    "must be in (0, 1]",
                ));
            }
        }
        if e.kv_capacity_tokens == Some(0) {
            return Err(bad(
                "engine.kv_capacity_tokens",
                "0".into(),
                "must be at least 1",
            ));
        }
        let rate_needed = |rate: Option<f64>| -> Result<f64, SimError> {
            match rate {
                Some(r) if r.is_finite() && r > 0.0 => Ok(r),
                Some(r) => Err(bad(
                    "arrival.rate",
                    r.to_string(),
                    "must be a positive number of requests per second",
                )),
                None => Err(bad(
                    "arrival.rate",
                    "(missing)".into(),
                    "poisson and gamma arrivals need a rate",
                )),
            }
        };
        match self.arrival.pattern {
            ArrivalPattern::Burst => {}
            ArrivalPattern::Poisson => {
                rate_needed(self.arrival.rate)?;
            }
            ArrivalPattern::Gamma => {
                rate_needed(self.arrival.rate)?;
                match self.arrival.burstiness {
                    Some(b) if b.is_finite() && b > 0.0 => {}
                    Some(b) => {
                        return Err(bad("arrival.burstiness", b.to_string(), "must be positive"))
                    }
                    None => {
                        return Err(bad(
                            "arrival.burstiness",
                            "(missing)".into(),
                            "gamma arrivals need a burstiness",
                        ))
                    }
                }
            }
            ArrivalPattern::Concurrency => {
                if self.arrival.max_concurrency.is_none() {
                    return Err(bad(
                        "arrival.max_concurrency",
                        "(missing)".into(),
                        "the concurrency pattern needs max_concurrency",
                    ));
                }
            }
        }
        if self.arrival.max_concurrency == Some(0) {
            return Err(bad(
                "arrival.max_concurrency",
                "0".into(),
                "must be at least 1",
            ));
        }
        let positive = |field: &str, v: usize| -> Result<(), SimError> {
            if v == 0 {
                Err(bad(field, "0".into(), "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let ratio = |field: &str, r: f64| -> Result<(), SimError> {
            if (0.0..=1.0).contains(&r) {
                Ok(())
            } else {
                Err(bad(field, r.to_string(), "must be in [0, 1]"))
            }
        };
        match &self.workload {
            Workload::Requests { requests } => {
                if requests.is_empty() {
                    return Err(bad(
                        "workload.requests",
                        "[]".into(),
                        "needs at least one request",
                    ));
                }
                for (i, r) in requests.iter().enumerate() {
                    let f = |name: &str| format!("workload.requests[{i}].{name}");
                    if !(r.arrival_ms.is_finite() && r.arrival_ms >= 0.0) {
                        return Err(bad(
                            &f("arrival_ms"),
                            r.arrival_ms.to_string(),
                            "must be a non-negative time",
                        ));
                    }
                    let len = match (&r.prompt, r.prompt_len) {
                        (Some(p), None) => p.len(),
                        (None, Some(l)) => l,
                        _ => {
                            return Err(bad(
                                &f("prompt"),
                                "(prompt and prompt_len)".into(),
                                "give exactly one of prompt and prompt_len",
                            ));
                        }
                    };
                    positive(&f("prompt_len"), len)?;
                    positive(&f("output_len"), r.output_len)?;
                    match (r.prefix_group, r.prefix_len) {
                        (Some(_), Some(p)) if p <= len && r.prompt.is_none() => {}
                        (Some(_), Some(p)) if r.prompt.is_some() => {
                            return Err(bad(&f("prefix_group"), p.to_string(), "prefix groups apply to prompt_len requests, not explicit token lists"));
                        }
                        (Some(_), Some(p)) => {
                            return Err(bad(
                                &f("prefix_len"),
                                p.to_string(),
                                &format!("longer than prompt_len {len}"),
                            ));
                        }
                        (None, None) => {}
                        _ => {
                            return Err(bad(
                                &f("prefix_group"),
                                "(one of two)".into(),
                                "prefix_group and prefix_len go together",
                            ))
                        }
                    }
                }
            }
            Workload::Random {
                num_requests,
                input_len,
                output_len,
                range_ratio,
            } => {
                positive("workload.num_requests", *num_requests)?;
                positive("workload.input_len", *input_len)?;
                positive("workload.output_len", *output_len)?;
                ratio("workload.range_ratio", *range_ratio)?;
            }
            Workload::SharedPrefix {
                num_groups,
                prompts_per_group,
                system_prompt_len,
                question_len,
                output_len,
            } => {
                positive("workload.num_groups", *num_groups)?;
                positive("workload.prompts_per_group", *prompts_per_group)?;
                positive("workload.system_prompt_len", *system_prompt_len)?;
                positive("workload.question_len", *question_len)?;
                positive("workload.output_len", *output_len)?;
            }
            Workload::MultiTurn {
                num_sessions,
                turns,
                first_prompt_len,
                turn_prompt_len,
                output_len,
                think_time_ms,
            } => {
                positive("workload.num_sessions", *num_sessions)?;
                positive("workload.turns", *turns)?;
                positive("workload.first_prompt_len", *first_prompt_len)?;
                positive("workload.turn_prompt_len", *turn_prompt_len)?;
                positive("workload.output_len", *output_len)?;
                if !(think_time_ms.is_finite() && *think_time_ms >= 0.0) {
                    return Err(bad(
                        "workload.think_time_ms",
                        think_time_ms.to_string(),
                        "must be a non-negative time",
                    ));
                }
            }
            Workload::LongContext {
                num_requests,
                input_len,
                output_len,
                range_ratio,
                short_fraction,
                short_input_len,
            } => {
                positive("workload.num_requests", *num_requests)?;
                positive("workload.input_len", *input_len)?;
                positive("workload.output_len", *output_len)?;
                ratio("workload.range_ratio", *range_ratio)?;
                ratio("workload.short_fraction", *short_fraction)?;
                if *short_fraction > 0.0 {
                    positive("workload.short_input_len", *short_input_len)?;
                }
            }
        }
        Ok(())
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
mod tests {
    use super::*;

    const GOOD: &str = "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: random\n  num_requests: 10\n  input_len: 100\n  output_len: 10\n";

    #[test]
    fn defaults_are_sglangs() {
        let t = Trace::parse(GOOD, "t.yaml").unwrap();
        assert_eq!(t.name(), "t");
        assert_eq!(t.seed, 1);
        assert_eq!(t.engine, EngineSpec::default());
        assert_eq!(t.arrival.pattern, ArrivalPattern::Burst);
        let p = Profile::load(&t.profile).unwrap();
        let cfg = t.scheduler_config(&p, "t.yaml").unwrap();
        assert_eq!(cfg.chunked_prefill_size, Some(8192));
        assert!(
            cfg.kv_capacity_tokens > 500_000,
            "{}",
            cfg.kv_capacity_tokens
        );
    }

    #[test]
    fn unknown_field_has_line_column_and_name() {
        let text = GOOD.replace("  input_len: 100", "  input_lenn: 100");
        let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
        assert!(e.starts_with("bad.yaml:"), "{e}");
        assert!(e.contains("input_lenn"), "{e}");
        assert!(!e.contains(":0:0:"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = GOOD.replace("num_requests: 10", "num_requests: ten");
        let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
        assert!(
            e.contains("bad.yaml:") && e.contains("ten") || e.contains("invalid"),
            "{e}"
        );
    }

    #[test]
    fn bad_policy_lists_known_ones_with_line() {
        let text = format!("{GOOD}engine:\n  policy: shortest\n");
        let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
        assert!(
            e.contains("bad.yaml:8") && e.contains("engine.policy") && e.contains("lpm"),
            "{e}"
        );
    }

    #[test]
    fn poisson_needs_a_rate() {
        let text = format!("{GOOD}arrival:\n  pattern: poisson\n");
        let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
        assert!(e.contains("arrival.rate"), "{e}");
    }

    #[test]
    fn pool_too_small_is_reported() {
        let text = format!("{GOOD}engine:\n  kv_capacity_tokens: 1\n");
        let t = Trace::parse(&text, "small.yaml").unwrap();
        let p = Profile::load(&t.profile).unwrap();
        let e = t
            .scheduler_config(&p, "small.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("small.yaml") && e.contains("smaller than one request"),
            "{e}"
        );
    }

    #[test]
    fn explicit_requests_need_one_prompt_form() {
        let text = "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: requests\n  requests:\n    - {output_len: 4}\n";
        let e = Trace::parse(text, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("workload.requests[0].prompt"), "{e}");
    }
}
