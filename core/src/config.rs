//! Scheduler configuration with SGLang's defaults, and its validation.

/// Order of the waiting queue (SGLang's --schedule-policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    /// First come, first served (arrival order).
    Fcfs,
    /// Longest cached prefix first; FCFS above 128 waiting requests.
    Lpm,
    /// Depth-first over the radix tree, heavier subtrees first.
    DfsWeight,
    /// Longest max_new_tokens first.
    Lof,
    /// Seeded random shuffle.
    Random,
    /// Larger priority value first, then arrival.
    Priority,
}

impl Policy {
    /// All policies, in a fixed order.
    pub const ALL: [Policy; 6] = [
        Policy::Fcfs,
        Policy::Lpm,
        Policy::DfsWeight,
        Policy::Lof,
        Policy::Random,
        Policy::Priority,
    ];

    /// SGLang's spelling of the policy name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Fcfs => "fcfs",
            Policy::Lpm => "lpm",
            Policy::DfsWeight => "dfs-weight",
            Policy::Lof => "lof",
            Policy::Random => "random",
            Policy::Priority => "priority",
        }
    }

    /// Parse SGLang's spelling.
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the policy reads the radix cache.
    pub fn is_cache_aware(self) -> bool {
        matches!(self, Policy::Lpm | Policy::DfsWeight)
    }
}

/// Which evictable leaf of the radix cache goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EvictionPolicy {
    /// Least recently used.
    Lru,
    /// Least frequently used (hits counted on match), then LRU.
    Lfu,
    /// Oldest created first.
    Fifo,
    /// Most recently used.
    Mru,
    /// Newest created first.
    Filo,
    /// Lowest priority first, then LRU.
    Priority,
}

impl EvictionPolicy {
    /// All eviction policies, in a fixed order.
    pub const ALL: [EvictionPolicy; 6] = [
        EvictionPolicy::Lru,
        EvictionPolicy::Lfu,
        EvictionPolicy::Fifo,
        EvictionPolicy::Mru,
        EvictionPolicy::Filo,
        EvictionPolicy::Priority,
    ];

    /// SGLang's spelling.
    pub fn name(self) -> &'static str {
        match self {
            EvictionPolicy::Lru => "lru",
            EvictionPolicy::Lfu => "lfu",
            EvictionPolicy::Fifo => "fifo",
            EvictionPolicy::Mru => "mru",
            EvictionPolicy::Filo => "filo",
            EvictionPolicy::Priority => "priority",
        }
    }

    /// Parse SGLang's spelling.
    pub fn parse(s: &str) -> Option<EvictionPolicy> {
        EvictionPolicy::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Output tokens per request that admission reserves at most (SGLang's CLIP_MAX_NEW_TOKENS).
pub const CLIP_MAX_NEW_TOKENS: usize = 4096;
/// Decode steps of headroom per request that retraction leaves (SGLang's retract_decode_steps).
pub const RETRACT_DECODE_STEPS: usize = 20;
/// LPM falls back to FCFS above this many waiting requests.
pub const LPM_FALLBACK_QUEUE_LEN: usize = 128;
/// In-batch prefix caching: only requests whose cached prefix is at most this long are checked.
pub const IN_BATCH_PREFIX_CHECK_THRESHOLD: usize = 32;
/// In-batch prefix caching: a scratch-tree match at least this long defers the request.
pub const IN_BATCH_PREFIX_DEPRIORITIZE_THRESHOLD: usize = 32;

/// Everything the scheduler needs to know; `Default` gives SGLang's defaults for an 80 GB GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// KV pool capacity in tokens (SGLang's max_total_num_tokens).
    pub kv_capacity_tokens: usize,
    /// Tokens per KV page (1 = token-granular).
    pub page_size: usize,
    /// Model context length: prompt + output never exceeds it.
    pub context_len: usize,
    /// Cap on running requests; None = min(kv_capacity/2, request pool rows).
    pub max_running_requests: Option<usize>,
    /// Rows of the request-to-token table; None = SGLang's rule from capacity and context.
    pub req_pool_size: Option<usize>,
    /// Prefill token budget per batch (the first request may exceed it).
    pub max_prefill_tokens: usize,
    /// Chunk size for chunked prefill; None disables chunking.
    pub chunked_prefill_size: Option<usize>,
    /// Waiting-queue policy.
    pub policy: Policy,
    /// Radix cache eviction policy.
    pub eviction: EvictionPolicy,
    /// Disable prefix sharing (requests free all their KV when they finish).
    pub disable_radix_cache: bool,
    /// Carry one decode token per running request inside prefill batches.
    pub enable_mixed_chunk: bool,
    /// With mixing: while the decode rows leave at least a page under this many tokens and at
    /// most one request waits, a mixed step's prefill fills only the rest of this budget, so
    /// prompts spread over the decode steps' idle compute; otherwise the chunked-prefill budget.
    pub mixed_step_tokens: Option<usize>,
    /// Multiplier on the initial new-token ratio (SGLang's schedule_conservativeness).
    pub schedule_conservativeness: f64,
    /// Initial new_token_ratio before conservativeness (0.7).
    pub init_new_token_ratio: f64,
    /// Floor as a fraction of the initial ratio (0.14, giving 0.098).
    pub min_new_token_ratio_factor: f64,
    /// Decode steps over which the ratio decays from init to min (600).
    pub new_token_ratio_decay_steps: usize,
    /// Model EOS token ids.
    pub eos_token_ids: Vec<u32>,
    /// Seed for the random policy.
    pub seed: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            kv_capacity_tokens: 600_000,
            page_size: 1,
            context_len: 40_960,
            max_running_requests: None,
            req_pool_size: None,
            max_prefill_tokens: 16_384,
            chunked_prefill_size: Some(8192),
            policy: Policy::Fcfs,
            eviction: EvictionPolicy::Lru,
            disable_radix_cache: false,
            enable_mixed_chunk: false,
            mixed_step_tokens: None,
            schedule_conservativeness: 1.0,
            init_new_token_ratio: 0.7,
            min_new_token_ratio_factor: 0.14,
            new_token_ratio_decay_steps: 600,
            eos_token_ids: Vec::new(),
            seed: 0,
        }
    }
}

/// A configuration the scheduler refuses to run with.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("{field} must be at least 1 (got 0)")]
    Zero {
        /// The field name.
        field: &'static str,
    },
    /// A mixed-step budget without mixed steps would have no effect.
    #[error("mixed_step_tokens needs enable_mixed_chunk (it sizes mixed steps only)")]
    MixedStepWithoutMixing,
    /// Chunks smaller than a page cannot make progress.
    #[error("chunked_prefill_size {chunk} is smaller than page_size {page}")]
    ChunkBelowPage {
        /// The chunk size.
        chunk: usize,
        /// The page size.
        page: usize,
    },
    /// The pool cannot hold even one minimal request.
    #[error("KV pool of {capacity} tokens is smaller than one request needs ({needed} tokens: one page for the prompt and one for output)")]
    PoolTooSmall {
        /// Capacity in tokens.
        capacity: usize,
        /// Minimum needed.
        needed: usize,
    },
    /// A ratio outside its range.
    #[error("{field} must be a finite number in {range} (got {value})")]
    BadRatio {
        /// The field name.
        field: &'static str,
        /// The allowed range, in words.
        range: &'static str,
        /// The value given.
        value: f64,
    },
    /// A slot index would not fit in 32 bits.
    #[error("kv_capacity_tokens {0} is too large (at most 2^31 tokens)")]
    CapacityTooLarge(usize),
}

impl SchedulerConfig {
    /// Check every field; the scheduler only runs with a valid configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Unset optional fields count as positive.
        let opt = |v: Option<usize>| v.unwrap_or(1);
        for (field, v) in [
            ("page_size", self.page_size),
            ("kv_capacity_tokens", self.kv_capacity_tokens),
            ("context_len", self.context_len),
            ("max_prefill_tokens", self.max_prefill_tokens),
            (
                "new_token_ratio_decay_steps",
                self.new_token_ratio_decay_steps,
            ),
            ("max_running_requests", opt(self.max_running_requests)),
            ("req_pool_size", opt(self.req_pool_size)),
            ("mixed_step_tokens", opt(self.mixed_step_tokens)),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.mixed_step_tokens.is_some() && !self.enable_mixed_chunk {
            return Err(ConfigError::MixedStepWithoutMixing);
        }
        if let Some(chunk) = self.chunked_prefill_size {
            if chunk < self.page_size {
                return Err(ConfigError::ChunkBelowPage {
                    chunk,
                    page: self.page_size,
                });
            }
        }
        if self.kv_capacity_tokens > (1 << 31) {
            return Err(ConfigError::CapacityTooLarge(self.kv_capacity_tokens));
        }
        let needed = 2 * self.page_size;
        if self.kv_capacity_tokens / self.page_size * self.page_size < needed {
            return Err(ConfigError::PoolTooSmall {
                capacity: self.kv_capacity_tokens,
                needed,
            });
        }
        for (field, value, range, ok) in [
            (
                "schedule_conservativeness",
                self.schedule_conservativeness,
                "(0, 10]",
                self.schedule_conservativeness > 0.0 && self.schedule_conservativeness <= 10.0,
            ),
            (
                "init_new_token_ratio",
                self.init_new_token_ratio,
                "(0, 1]",
                self.init_new_token_ratio > 0.0 && self.init_new_token_ratio <= 1.0,
            ),
            (
                "min_new_token_ratio_factor",
                self.min_new_token_ratio_factor,
                "[0, 1]",
                (0.0..=1.0).contains(&self.min_new_token_ratio_factor),
            ),
        ] {
            if !ok || !value.is_finite() {
                return Err(ConfigError::BadRatio {
                    field,
                    range,
                    value,
                });
            }
        }
        Ok(())
    }

    /// Usable KV capacity: whole pages only.
    pub fn capacity_tokens(&self) -> usize {
        self.kv_capacity_tokens / self.page_size * self.page_size
    }

    /// Rows of the request table: the configured value or SGLang's rule
    /// min(max(capacity / context * 512, 2048), 4096).
    pub fn effective_req_pool_size(&self) -> usize {
        self.req_pool_size.unwrap_or_else(|| {
            let by_ratio =
                (self.capacity_tokens() as f64 / self.context_len as f64 * 512.0) as usize;
            by_ratio.clamp(2048, 4096)
        })
    }

    /// The running-request cap: the configured value or min(capacity/2, rows), never above the rows.
    pub fn effective_max_running(&self) -> usize {
        let rows = self.effective_req_pool_size();
        let default = (self.capacity_tokens() / 2).min(rows).max(1);
        self.max_running_requests.unwrap_or(default).min(rows)
    }

    /// new_token_ratio at start and after idling.
    pub fn init_ratio(&self) -> f64 {
        (self.init_new_token_ratio * self.schedule_conservativeness).min(1.0)
    }

    /// The ratio's floor.
    pub fn min_ratio(&self) -> f64 {
        self.init_ratio() * self.min_new_token_ratio_factor
    }

    /// The ratio's decrement per decode step.
    pub fn ratio_decay(&self) -> f64 {
        (self.init_ratio() - self.min_ratio()) / self.new_token_ratio_decay_steps as f64
    }
}
