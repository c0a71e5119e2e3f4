//! The scheduler: waiting queue, running batch, admission, decode, retraction, completion.
//!
//! Behaviour follows SGLang (shared/reference/sglang-semantics.md sections 2-4); the differences
//! are listed in docs/core.md. Request state lives in a slab indexed by `handle`; plans carry the
//! handle so applying results needs no map lookups.

mod complete;
mod decode;
mod prefill;
mod req;
#[cfg(test)]
mod tests;

use crate::config::{ConfigError, SchedulerConfig, CLIP_MAX_NEW_TOKENS};
use crate::ids::{KvSlot, RequestId, TimeNs};
use crate::plan::{Event, FinishInfo, Plan, StepResult};
use crate::pool::{KvAllocator, ReqToTokenPool};
use crate::radix::RadixCache;
use crate::request::{Admitted, FinishReason, RequestSpec, SubmitError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use req::{Req, State};
use std::collections::HashMap;

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

impl MemoryStats {
    /// Tokens in use as SGLang counts them (capacity - free - evictable).
    pub fn used(&self) -> usize {
        self.capacity - self.free - self.evictable
    }
}

/// Cumulative cache and scheduler counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Steps formed.
    pub steps: u64,
    /// Prefill (extend or mixed) steps.
    pub prefill_steps: u64,
    /// Of those, mixed steps: decode tokens of running requests rode along.
    pub mixed_steps: u64,
    /// Decode steps.
    pub decode_steps: u64,
    /// Prompt tokens admitted (including re-prefills after retraction).
    pub prompt_tokens: u64,
    /// Of those, tokens served from the prefix cache.
    pub cached_tokens: u64,
    /// Tokens evicted from the cache.
    pub evicted_tokens: u64,
    /// Retractions.
    pub retractions: u64,
    /// Requests finished (any reason).
    pub finished: u64,
    /// Generated tokens applied.
    pub generated_tokens: u64,
    /// Peak KV tokens in use (capacity - free - evictable).
    pub peak_used_tokens: usize,
}

/// The scheduler. Single owner, deterministic: the same calls give the same plans.
pub struct Scheduler {
    cfg: SchedulerConfig,
    max_running: usize,
    alloc: KvAllocator,
    table: ReqToTokenPool,
    tree: RadixCache,
    reqs: Vec<Option<Req>>,
    by_id: HashMap<RequestId, u32>,
    free_handles: Vec<u32>,
    // Handles freed in this step / the previous one: plans still in flight may name them.
    freed_now: Vec<u32>,
    quarantine: Vec<u32>,
    waiting: Vec<u32>,
    running: Vec<u32>,
    chunked: Option<u32>,
    new_token_ratio: f64,
    next_seq: u64,
    step: u64,
    now: TimeNs,
    rng: ChaCha8Rng,
    counters: Counters,
    released: Vec<RequestId>,
    deferred: Vec<Event>,
    scratch: Scratch,
}

/// Reusable buffers, so steady-state scheduling allocates nothing.
#[derive(Default)]
struct Scratch {
    slots: Vec<KvSlot>,
    prefix_slots: Vec<KvSlot>,
    key: Vec<crate::ids::TokenId>,
    cands: Vec<crate::policy::Candidate>,
    batch: Vec<u32>,
    admitted: Vec<prefill::Admit>,
    in_batch: Option<RadixCache>,
    zeros: Vec<KvSlot>,
}

impl Scheduler {
    /// A scheduler for a validated configuration.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Scheduler {
            max_running: cfg.effective_max_running(),
            alloc: KvAllocator::new(cfg.kv_capacity_tokens, cfg.page_size),
            table: ReqToTokenPool::new(cfg.effective_req_pool_size()),
            tree: RadixCache::new(cfg.page_size, cfg.eviction),
            reqs: Vec::new(),
            by_id: HashMap::new(),
            free_handles: Vec::new(),
            freed_now: Vec::new(),
            quarantine: Vec::new(),
            waiting: Vec::new(),
            running: Vec::new(),
            chunked: None,
            new_token_ratio: cfg.init_ratio(),
            next_seq: 0,
            step: 0,
            now: 0,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            counters: Counters::default(),
            released: Vec::new(),
            deferred: Vec::new(),
            scratch: Scratch::default(),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The effective cap on running requests.
    pub fn max_running_requests(&self) -> usize {
        self.max_running
    }

    /// Slots an executor's KV buffer needs (capacity plus the dummy page).
    pub fn kv_buffer_slots(&self) -> usize {
        self.alloc.total_slots()
    }

    /// Rows an executor's request-table mirror needs.
    pub fn table_rows(&self) -> usize {
        self.table.size()
    }

    /// The scheduler's current slots of a request-table row (for checking executor mirrors).
    pub fn table_row(&self, row: crate::ids::RowId) -> &[KvSlot] {
        self.table.row(row)
    }

    /// Queue a request, or refuse it with the reason it can never run.
    pub fn submit(&mut self, spec: RequestSpec) -> Result<Admitted, SubmitError> {
        let id = spec.id;
        let prompt_len = spec.prompt.len();
        if prompt_len == 0 {
            return Err(SubmitError::EmptyPrompt(id));
        }
        if spec.sampling.max_new_tokens == 0 {
            return Err(SubmitError::ZeroMaxNewTokens(id));
        }
        if prompt_len >= self.cfg.context_len {
            return Err(SubmitError::PromptTooLong {
                id,
                prompt_len,
                context_len: self.cfg.context_len,
            });
        }
        // Prompt + output never exceeds the context (SGLang clips the same way; we report it).
        let max_new = spec
            .sampling
            .max_new_tokens
            .min(self.cfg.context_len - prompt_len);
        let reserved = max_new.min(CLIP_MAX_NEW_TOKENS);
        let needed = prompt_len.div_ceil(self.cfg.page_size) * self.cfg.page_size + reserved;
        let capacity = self.alloc.capacity();
        // Admission refuses when needed >= free + evictable; with an idle pool that is capacity.
        if needed >= capacity {
            return Err(SubmitError::ExceedsPool {
                id,
                prompt_len,
                reserved,
                needed,
                capacity,
            });
        }
        if self.by_id.contains_key(&id) {
            return Err(SubmitError::DuplicateId(id));
        }
        if spec.arrival > self.now {
            self.now = spec.arrival;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let root = self.tree.root(spec.namespace);
        let req = Req::new(spec, seq, max_new, root);
        let handle = match self.free_handles.pop() {
            Some(h) => {
                self.reqs[h as usize] = Some(req);
                h
            }
            None => {
                self.reqs.push(Some(req));
                (self.reqs.len() - 1) as u32
            }
        };
        self.by_id.insert(id, handle);
        self.insert_waiting(handle);
        Ok(Admitted {
            max_new_tokens: max_new,
            clipped: max_new < self.req(handle).spec.sampling.max_new_tokens,
        })
    }

    /// Finish a live request from outside (stop string, client disconnect): frees everything at
    /// once and emits its `Finished` event. Returns false if the id is not live.
    pub fn abort(
        &mut self,
        id: RequestId,
        reason: FinishReason,
        at: TimeNs,
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(&h) = self.by_id.get(&id) else {
            return false;
        };
        self.now = self.now.max(at);
        events.append(&mut self.deferred);
        self.finish(h, reason, at, events);
        true
    }

    /// Form the next step into `plan` (cleared first). Returns false when there is nothing to run.
    pub fn schedule(&mut self, plan: &mut Plan) -> bool {
        plan.clear();
        plan.step = self.step;
        let formed = self.form_prefill(plan) || self.form_decode(plan);
        if !formed {
            if self.is_idle() {
                self.new_token_ratio = self.cfg.init_ratio();
            }
            return false;
        }
        self.step += 1;
        self.counters.steps += 1;
        self.table
            .drain_writes(&mut plan.table_writes, &mut plan.write_slots);
        plan.released.append(&mut self.released);
        let mem = self.memory();
        plan.stats.used_tokens = mem.used();
        plan.stats.capacity_tokens = mem.capacity;
        plan.stats.queue_reqs = self.waiting.len();
        plan.stats.mode = plan.mode;
        plan.stats.batch_size = plan.entries.len();
        plan.stats.has_chunked = self.chunked.is_some();
        plan.stats.kv_tokens = plan.entries.iter().map(|e| e.seq_len()).sum();
        plan.stats.new_token_ratio = self.new_token_ratio;
        self.counters.peak_used_tokens = self.counters.peak_used_tokens.max(mem.used());
        true
    }

    /// Move events produced while scheduling (requests aborted for lack of memory) into `events`.
    pub fn take_events(&mut self, events: &mut Vec<Event>) {
        events.append(&mut self.deferred);
    }

    /// Apply a step's results: append tokens, finish requests, cache prefixes, free memory.
    pub fn complete(&mut self, plan: &Plan, result: &StepResult, events: &mut Vec<Event>) {
        events.append(&mut self.deferred);
        self.now = self.now.max(result.done_at);
        self.apply(plan, result, events);
        // Handles freed two completions ago can no longer be named by an in-flight plan.
        self.free_handles.append(&mut self.quarantine);
        std::mem::swap(&mut self.quarantine, &mut self.freed_now);
    }

    /// No request waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.chunked.is_none()
    }

    /// Requests waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests running (decoding, or being prefilled in chunks).
    pub fn num_running(&self) -> usize {
        self.running.len() + usize::from(self.chunked.is_some())
    }

    /// Live requests (waiting or running).
    pub fn num_live(&self) -> usize {
        self.by_id.len()
    }

    /// Whether a request is live.
    pub fn is_live(&self, id: RequestId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Whether a request is live and in the waiting queue (new, or retracted).
    pub fn is_waiting(&self, id: RequestId) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|&h| matches!(self.req(h).state, State::Waiting))
    }

    /// Current new_token_ratio.
    pub fn new_token_ratio(&self) -> f64 {
        self.new_token_ratio
    }

    /// KV pool accounting.
    pub fn memory(&self) -> MemoryStats {
        let capacity = self.alloc.capacity();
        let free = self.alloc.available_size();
        let evictable = self.tree.evictable_size();
        let protected = self.tree.protected_size();
        MemoryStats {
            capacity,
            free,
            evictable,
            protected,
            held: capacity - free - evictable - protected,
        }
    }

    /// Cumulative counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The radix cache (read-only).
    pub fn tree(&self) -> &RadixCache {
        &self.tree
    }

    /// Drop every cached prefix; refused (false) unless idle.
    pub fn flush_cache(&mut self) -> bool {
        if !self.is_idle() {
            return false;
        }
        self.tree.reset(Some(&mut self.alloc));
        true
    }

    fn req(&self, h: u32) -> &Req {
        self.reqs[h as usize].as_ref().expect("live handle")
    }

    fn req_mut(&mut self, h: u32) -> &mut Req {
        self.reqs[h as usize].as_mut().expect("live handle")
    }

    /// The live request behind a plan entry, if it is still the same request.
    fn lookup(&self, handle: u32, id: RequestId) -> Option<&Req> {
        self.reqs
            .get(handle as usize)?
            .as_ref()
            .filter(|r| r.spec.id == id)
    }

    /// Make `tokens` free slots available, evicting from the cache as needed. Evicts only the
    /// deficit (SGLang evicts the full request size; see docs/core.md).
    fn ensure_free(&mut self, tokens: usize) -> bool {
        let avail = self.alloc.available_size();
        if avail < tokens {
            let freed = self.tree.evict(tokens - avail, &mut self.alloc);
            self.counters.evicted_tokens += freed as u64;
        }
        self.alloc.available_size() >= tokens
    }

    /// End a request: cache what it computed, free the rest, emit `Finished`.
    fn finish(&mut self, h: u32, reason: FinishReason, at: TimeNs, events: &mut Vec<Event>) {
        match self.req(h).state {
            State::Waiting => self.waiting.retain(|&x| x != h),
            State::Running => {
                if self.chunked == Some(h) {
                    self.chunked = None;
                } else {
                    self.running.retain(|&x| x != h);
                }
                self.cache_finished(h);
            }
        }
        let req = self.reqs[h as usize].take().expect("live handle");
        self.by_id.remove(&req.spec.id);
        self.freed_now.push(h);
        self.released.push(req.spec.id);
        self.counters.finished += 1;
        events.push(Event::Finished(FinishInfo {
            id: req.spec.id,
            reason,
            at,
            prompt_tokens: req.spec.prompt.len(),
            output_tokens: req.output.len(),
            cached_tokens: req.cached_tokens,
            retractions: req.retractions,
        }));
    }

    /// Full check of the memory invariants (O(pool size); for tests): every page is exactly one
    /// of free, cached in the tree, or held by one live request, and the counts agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.tree.check()?;
        let ps = self.cfg.page_size;
        let pages = self.alloc.total_slots() / ps;
        let mut owner = vec![0u8; pages];
        let mark = |slot: KvSlot, who: u8, owner: &mut Vec<u8>| -> Result<(), String> {
            let p = slot.index() / ps;
            if p == 0 || p >= pages {
                return Err(format!("slot {} outside the pool", slot.0));
            }
            if owner[p] != 0 && owner[p] != who {
                return Err(format!("page {p} owned twice ({} and {who})", owner[p]));
            }
            owner[p] = who;
            Ok(())
        };
        for s in self.tree.cached_slots() {
            mark(s, 1, &mut owner)?;
        }
        let mut held = 0;
        for r in self.reqs.iter().flatten() {
            if let Some(row) = r.row {
                let slots = &self.table.row(row)[..r.seq_len];
                // The tree-owned prefix must be exactly the tree's slots.
                for &s in &slots[..r.tree_len] {
                    if owner[s.index() / ps] != 1 {
                        return Err(format!(
                            "request {} prefix slot {} not in the tree",
                            r.spec.id, s.0
                        ));
                    }
                }
                let first = r.tree_len.div_ceil(ps) * ps;
                held += r.seq_len.div_ceil(ps) - r.tree_len.div_ceil(ps);
                for &s in &slots[first.min(slots.len())..] {
                    let p = s.index() / ps;
                    if owner[p] == 2 && s.index() % ps == 0 {
                        return Err(format!("page {p} held by two requests"));
                    }
                    if owner[p] == 1 {
                        return Err(format!("request {} holds tree page {p}", r.spec.id));
                    }
                    owner[p] = 2;
                }
            } else if r.seq_len != 0 || r.tree_len != 0 {
                return Err(format!("request {} holds KV without a row", r.spec.id));
            }
        }
        let free_map = self.alloc.free_page_map()?;
        let free_pages = free_map.iter().filter(|&&f| f).count();
        for (p, &own) in owner.iter().enumerate().skip(1) {
            let is_free = free_map.get(p).copied().unwrap_or(false);
            if is_free && own != 0 {
                return Err(format!("page {p} is free and owned"));
            }
            if !is_free && own == 0 {
                return Err(format!("page {p} leaked: neither free nor owned"));
            }
        }
        let m = self.memory();
        if free_pages * ps != m.free {
            return Err(format!(
                "free list says {} tokens, pages say {}",
                m.free,
                free_pages * ps
            ));
        }
        if held * ps != m.held {
            return Err(format!(
                "requests hold {} tokens, accounting says {}",
                held * ps,
                m.held
            ));
        }
        if self.is_idle() && m.free + m.evictable != m.capacity {
            return Err(format!(
                "idle but free {} + evictable {} != capacity {}",
                m.free, m.evictable, m.capacity
            ));
        }
        Ok(())
    }
}
