//! The scheduler: waiting queue, running batch, admission, decode, retraction, completion.

use crate::config::{ConfigError, SchedulerConfig};
use crate::ids::{RequestId, TimeNs};
use crate::plan::{Event, Plan, StepResult};
use crate::request::{Admitted, FinishReason, RequestSpec, SubmitError};

/// KV pool accounting at one instant, in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Usable capacity.
    pub capacity: usize,
    /// Free slots.
    pub free: usize,
    /// Cached in the radix tree and evictable (unlocked).
    pub evictable: usize,
    /// Cached in the radix tree and locked by live requests.
    pub protected: usize,
    /// Held by live requests outside the tree (fresh prefill and decode tokens).
    pub held: usize,
}

/// Cumulative cache and scheduler counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Steps formed.
    pub steps: u64,
    /// Prefill (extend or mixed) steps.
    pub prefill_steps: u64,
    /// Decode steps.
    pub decode_steps: u64,
    /// Prompt tokens admitted (including re-prefills).
    pub prompt_tokens: u64,
    /// Prefix tokens served from the cache at admission.
    pub cached_tokens: u64,
    /// Tokens evicted from the cache.
    pub evicted_tokens: u64,
    /// Retractions.
    pub retractions: u64,
    /// Requests finished (any reason).
    pub finished: u64,
    /// Generated tokens applied.
    pub generated_tokens: u64,
    /// Peak KV tokens in use.
    pub peak_used_tokens: usize,
}

/// The scheduler. Single owner, deterministic.
pub struct Scheduler {
    cfg: SchedulerConfig,
}

impl Scheduler {
    /// A scheduler for a validated configuration.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        todo!()
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queue a request, or refuse it with the reason it can never run.
    pub fn submit(&mut self, spec: RequestSpec) -> Result<Admitted, SubmitError> {
        let _ = spec;
        todo!()
    }

    /// Finish a live request from outside (stop string, client disconnect): frees everything at once
    /// and emits its `Finished` event. Returns false if the id is not live.
    pub fn abort(&mut self, id: RequestId, reason: FinishReason, at: TimeNs, events: &mut Vec<Event>) -> bool {
        let _ = (id, reason, at, events);
        todo!()
    }

    /// Form the next step into `plan` (cleared first). Returns false when there is nothing to run.
    pub fn schedule(&mut self, plan: &mut Plan) -> bool {
        let _ = plan;
        todo!()
    }

    /// Apply a step's results: append tokens, finish requests, cache prefixes, free memory.
    pub fn complete(&mut self, plan: &Plan, result: &StepResult, events: &mut Vec<Event>) {
        let _ = (plan, result, events);
        todo!()
    }

    /// No request waiting or running.
    pub fn is_idle(&self) -> bool {
        todo!()
    }

    /// Requests waiting.
    pub fn num_waiting(&self) -> usize {
        todo!()
    }

    /// Requests running (decoding or being prefilled).
    pub fn num_running(&self) -> usize {
        todo!()
    }

    /// KV pool accounting.
    pub fn memory(&self) -> MemoryStats {
        todo!()
    }

    /// Cumulative counters.
    pub fn counters(&self) -> Counters {
        todo!()
    }

    /// Drop every cached prefix; refused (false) unless idle.
    pub fn flush_cache(&mut self) -> bool {
        todo!()
    }
}
