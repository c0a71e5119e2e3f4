//! A deterministic toy backend for tests and benchmarks of the core (no model: tokens are a
//! function of the request's input), plus helpers to drive an engine to completion.

use crate::engine::{Backend, Engine};
use crate::ids::{RequestId, TimeNs, TokenId, FUTURE_TOKEN};
use crate::plan::{Event, Plan, StepResult, TokenLogprob};
use std::collections::{BTreeMap, VecDeque};

/// Echo-style backend: the sampled token is a hash of (request, previous token), so outputs are
/// reproducible and sensitive to the inputs the plan gives; every step takes `step_ns`.
#[derive(Debug, Default)]
pub struct ToyBackend {
    /// Virtual duration of every step.
    pub step_ns: TimeNs,
    /// Token ids that the backend never samples (e.g. EOS), unless `eos_every` says otherwise.
    pub vocab: u32,
    /// Sample the token `eos` when (request id + position) % eos_every == 0 (0 = never).
    pub eos_every: u64,
    /// The EOS token id used with `eos_every`.
    pub eos: TokenId,
    last: BTreeMap<RequestId, TokenId>,
    queue: VecDeque<TimeNs>,
    busy_until: TimeNs,
    /// Plans launched.
    pub launched: u64,
}

impl ToyBackend {
    /// A backend with a 1000-token vocabulary and 1 ms steps.
    pub fn new() -> Self {
        ToyBackend {
            step_ns: 1_000_000,
            vocab: 1000,
            ..Default::default()
        }
    }

    /// The token this backend samples after `input` at `pos` for `id`.
    pub fn next_token(&self, id: RequestId, input: TokenId, pos: usize) -> TokenId {
        if self.eos_every > 0 && (id.0 + pos as u64).is_multiple_of(self.eos_every) {
            return self.eos;
        }
        let x = (id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (input as u64).wrapping_mul(31)
            ^ pos as u64)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        // Keep clear of the EOS id so only `eos_every` produces it.
        let t = ((x >> 33) % self.vocab.max(2) as u64) as TokenId;
        if t == self.eos && self.eos_every > 0 {
            t + 1
        } else {
            t
        }
    }
}

impl Backend for ToyBackend {
    type Error = String;

    fn launch(&mut self, _plan: &Plan, now: TimeNs) -> Result<(), String> {
        let start = now.max(self.busy_until);
        self.busy_until = start + self.step_ns;
        self.queue.push_back(self.busy_until);
        self.launched += 1;
        Ok(())
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), String> {
        out.done_at = self.queue.pop_front().ok_or("collect without launch")?;
        // Plans launched before this one may still have named released requests: drop their
        // state only now that those have been collected.
        for id in &plan.released {
            self.last.remove(id);
        }
        for e in &plan.entries {
            let toks = plan.entry_tokens(e);
            let mut input = *toks.last().ok_or("entry without tokens")?;
            if input == FUTURE_TOKEN {
                input = *self
                    .last
                    .get(&e.id)
                    .ok_or("future token without a previous step")?;
            }
            let t = self.next_token(e.id, input, e.seq_len() - 1);
            if e.need_logits {
                self.last.insert(e.id, t);
            }
            out.tokens.push(t);
        }
        for (i, e) in plan.entries.iter().enumerate() {
            if let Some(rows) = &e.prompt_logprobs {
                let lps = rows
                    .positions()
                    .zip(&rows.targets)
                    .map(|(p, &t)| Self::prompt_logprob(p, t))
                    .collect();
                out.prompt_logprobs.push((i, lps));
            }
        }
        Ok(())
    }
}

impl ToyBackend {
    /// The prompt logprob this backend reports for `target` scored at position `pos`: a
    /// function of both only, so chunking and cache hits cannot change it.
    pub fn prompt_logprob(pos: usize, target: TokenId) -> TokenLogprob {
        TokenLogprob {
            logprob: -(((pos as u64 * 31 + target as u64) % 97) as f32) / 8.0,
            top: Vec::new(),
        }
    }
}

/// Run an engine until idle, submitting nothing new; returns all events. Gives up after
/// `max_iters` iterations (a hang is a test failure, not an infinite loop).
pub fn run_to_idle<B: Backend>(
    engine: &mut Engine<B>,
    mut now: TimeNs,
    max_iters: usize,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for _ in 0..max_iters {
        let it = engine
            .iterate(now, &mut events)
            .map_err(|e| e.to_string())?;
        if let Some(t) = it.completed_at {
            now = now.max(t);
        }
        if it.is_idle() && engine.is_idle() {
            return Ok(events);
        }
    }
    Err(format!("engine not idle after {max_iters} iterations"))
}
