//! The CPU backend: runs the core's plans on [`CpuModel`] with a host KV cache addressed by the
//! core's KV slots, so it follows exactly the memory plan (prefix hits, chunked prefill,
//! retraction) the GPU backend will.

use crate::constraint::{mask_words, TokenMatcher};
use crate::cpu_tp::{RankMemory, TpModel, TpRunError};
use crate::model::{
    CpuModel, ForwardErrorKind, KvCache, LoadError, LoadReport, LogitsWanted, ModelConfig, SeqInput,
};
use crate::sampling::{logprobs, RequestSampler};
use doppel_core::{
    Backend, KvSlot, Plan, RequestId, StepResult, TimeNs, TokenId, TokenLogprob, FUTURE_TOKEN,
};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// What can go wrong while executing a plan.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The forward pass refused its input.
    #[error("step {step}: {source}")]
    Forward {
        /// Plan step.
        step: u64,
        /// Why.
        source: ForwardErrorKind,
    },
    /// The tensor-parallel group failed.
    #[error("step {step}: {source}")]
    Tp {
        /// Plan step.
        step: u64,
        /// Why.
        source: TpRunError,
    },
    /// A FUTURE_TOKEN placeholder for a request with no sampled token at that position.
    #[error(
        "step {step}: request {id} has no sampled token for output index {index} (FUTURE_TOKEN)"
    )]
    NoFutureToken {
        /// Plan step.
        step: u64,
        /// The request.
        id: RequestId,
        /// Output index needed.
        index: usize,
    },
    /// collect without a matching launch.
    #[error("collect for step {0} without a launched plan")]
    NothingLaunched(u64),
    /// A constraint handle this backend did not compile.
    #[error("step {step}: request {id} carries a constraint this backend cannot follow")]
    ForeignConstraint {
        /// Plan step.
        step: u64,
        /// The request.
        id: RequestId,
    },
}

struct Done {
    step: u64,
    tokens: Vec<TokenId>,
    logprobs: Vec<Option<TokenLogprob>>,
    prompt_logprobs: Vec<(usize, Vec<TokenLogprob>)>,
    done_at: TimeNs,
}

/// Logits recorded for a sampled position (for tests comparing memory plans).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedLogits {
    /// The request.
    pub id: RequestId,
    /// Output index of the token sampled from these logits.
    pub index: usize,
    /// The raw logits row.
    pub logits: Vec<f32>,
}

/// What runs the forward pass: the whole model on the engine thread, or its shards on
/// tensor-parallel worker threads.
enum Runner {
    Whole { model: CpuModel, kv: KvCache },
    Tp(TpModel),
}

/// Runs plans on the CPU model.
pub struct CpuBackend {
    runner: Runner,
    /// Mirror of the core's request-to-token table.
    rows: Vec<Vec<KvSlot>>,
    samplers: HashMap<RequestId, RequestSampler>,
    /// Grammar state of constrained requests.
    matchers: HashMap<RequestId, TokenMatcher>,
    mask: Vec<u32>,
    seed: u64,
    pending: VecDeque<Done>,
    record: Option<Vec<RecordedLogits>>,
    tokens_computed: u64,
}

impl CpuBackend {
    /// A backend for `model` with room for `kv_capacity_tokens` (the scheduler's capacity; slot 0
    /// is the padding dummy, so one more slot is allocated). `seed` derives the sampling seed of
    /// requests that bring none.
    pub fn new(model: CpuModel, kv_capacity_tokens: usize, seed: u64) -> CpuBackend {
        let kv = model.kv_cache(kv_capacity_tokens + 1);
        CpuBackend::with_runner(Runner::Whole { model, kv }, seed)
    }

    /// [`CpuBackend::new`] over a tensor-parallel group (each rank holds its heads' KV).
    pub fn tensor_parallel(
        mut tp: TpModel,
        kv_capacity_tokens: usize,
        seed: u64,
    ) -> Result<CpuBackend, TpRunError> {
        tp.alloc_kv(kv_capacity_tokens + 1)?;
        Ok(CpuBackend::with_runner(Runner::Tp(tp), seed))
    }

    fn with_runner(runner: Runner, seed: u64) -> CpuBackend {
        CpuBackend {
            runner,
            rows: Vec::new(),
            samplers: HashMap::new(),
            matchers: HashMap::new(),
            mask: Vec::new(),
            seed,
            pending: VecDeque::new(),
            record: None,
            tokens_computed: 0,
        }
    }

    /// The (whole) model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match &self.runner {
            Runner::Whole { model, .. } => model.config(),
            Runner::Tp(tp) => tp.config(),
        }
    }

    /// Bytes of KV cache held (all ranks together).
    pub fn kv_bytes(&self) -> usize {
        match &self.runner {
            Runner::Whole { kv, .. } => kv.bytes(),
            Runner::Tp(tp) => tp.kv_bytes(),
        }
    }

    /// Each tensor-parallel rank's memory (empty for a whole model).
    pub fn tp_rank_memory(&self) -> &[RankMemory] {
        match &self.runner {
            Runner::Whole { .. } => &[],
            Runner::Tp(tp) => tp.rank_memory(),
        }
    }

    /// Tokens run through the model so far.
    pub fn tokens_computed(&self) -> u64 {
        self.tokens_computed
    }

    /// Start keeping every sampled position's logits (tests).
    pub fn record_logits(&mut self) {
        self.record = Some(Vec::new());
    }

    /// Take the recorded logits.
    pub fn take_recorded(&mut self) -> Vec<RecordedLogits> {
        self.record.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Requests with sampling or grammar state (tests check that released ones are dropped).
    pub fn live_requests(&self) -> usize {
        self.samplers.len().max(self.matchers.len())
    }

    fn run(&mut self, plan: &Plan, now: TimeNs) -> Result<Done, CpuError> {
        let start = Instant::now();
        for id in &plan.released {
            self.samplers.remove(id);
            self.matchers.remove(id);
        }
        for w in &plan.table_writes {
            let row = row_mut(&mut self.rows, w.row.index(), w.start + w.len);
            row[w.start..w.start + w.len].copy_from_slice(plan.write_values(w));
        }
        // Resolve placeholders and write each entry's output slots into its row.
        let mut ids: Vec<TokenId> = Vec::with_capacity(plan.num_tokens());
        for e in &plan.entries {
            let row = row_mut(&mut self.rows, e.row.index(), e.seq_len());
            row[e.positions()].copy_from_slice(plan.entry_slots(e));
            for (p, &t) in e.positions().zip(plan.entry_tokens(e)) {
                if t == FUTURE_TOKEN {
                    let index = p.saturating_sub(e.prompt_len);
                    let tok = self
                        .samplers
                        .get(&e.id)
                        .and_then(|s| s.generated().get(index).copied())
                        .filter(|_| p >= e.prompt_len)
                        .ok_or(CpuError::NoFutureToken {
                            step: plan.step,
                            id: e.id,
                            index,
                        })?;
                    ids.push(tok);
                } else {
                    ids.push(t);
                }
            }
        }
        let seqs: Vec<SeqInput<'_>> = plan
            .entries
            .iter()
            .map(|e| SeqInput {
                tokens: &ids[e.offset..e.offset + e.extend_len],
                kv_row: &self.rows[e.row.index()][..e.seq_len()],
                logits: match (&e.prompt_logprobs, e.need_logits) {
                    // Prompt rows run to the entry's end (or to its sampled last position).
                    (Some(r), _) => LogitsWanted::Tail(e.seq_len() - r.first),
                    (None, true) => LogitsWanted::Last,
                    (None, false) => LogitsWanted::None,
                },
            })
            .collect();
        let mut logits = Vec::new();
        let step = plan.step;
        match &mut self.runner {
            Runner::Whole { model, kv } => model
                .forward(kv, &seqs, &mut logits)
                .map_err(|source| CpuError::Forward { step, source })?,
            Runner::Tp(tp) => tp
                .forward(&seqs, &mut logits)
                .map_err(|source| CpuError::Tp { step, source })?,
        }
        self.tokens_computed += ids.len() as u64;
        let vocab = self.config().vocab_size;
        let want_lp = plan.entries.iter().any(|e| e.sampling.return_logprob);
        let mut done = Done {
            step: plan.step,
            tokens: Vec::with_capacity(plan.entries.len()),
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            done_at: 0,
        };
        let mut rows = logits.chunks_exact_mut(vocab.max(1));
        for (i, e) in plan.entries.iter().enumerate() {
            if let Some(pr) = &e.prompt_logprobs {
                // Raw log-softmax of each row at the next prompt token (SGLang's input logprobs
                // are not temperature-scaled).
                let lps = pr
                    .targets
                    .iter()
                    .zip(rows.by_ref())
                    .map(|(&t, row)| logprobs(row, Some(t), e.sampling.top_logprobs))
                    .collect();
                done.prompt_logprobs.push((i, lps));
            }
            let sampler = self.samplers.entry(e.id).or_insert_with(|| {
                RequestSampler::new(RequestSampler::seed_for(&e.sampling, self.seed, e.id.0))
            });
            // Generated tokens re-fed after a retraction: keep the penalty history in step.
            for (p, &t) in e.positions().zip(&ids[e.offset..e.offset + e.extend_len]) {
                if p >= e.prompt_len {
                    sampler.record(p - e.prompt_len, t);
                }
            }
            if !e.need_logits {
                done.tokens.push(0);
                if want_lp {
                    done.logprobs.push(None);
                }
                continue;
            }
            let Some(row) = rows.next() else {
                done.tokens.push(0);
                continue;
            };
            let index = e.seq_len() - e.prompt_len.min(e.seq_len());
            if let Some(rec) = self.record.as_mut() {
                rec.push(RecordedLogits {
                    id: e.id,
                    index,
                    logits: row.to_vec(),
                });
            }
            let s = match &e.sampling.constraint {
                None => sampler.sample(row, &e.sampling, index),
                Some(h) => {
                    let m = match self.matchers.entry(e.id) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(TokenMatcher::open(h).ok_or(CpuError::ForeignConstraint {
                                step: plan.step,
                                id: e.id,
                            })?)
                        }
                    };
                    self.mask.resize(mask_words(vocab), 0);
                    // A matcher that fails allows only EOS from then on, ending the request.
                    let _ =
                        m.catch_up(&sampler.generated()[..index.min(sampler.generated().len())]);
                    m.fill_mask(&mut self.mask);
                    let s = sampler.sample_masked(row, &e.sampling, index, Some(&self.mask));
                    let _ = m.advance(index, s.token);
                    s
                }
            };
            done.tokens.push(s.token);
            if want_lp {
                done.logprobs.push(s.logprob);
            }
        }
        done.done_at = now + start.elapsed().as_nanos() as u64;
        Ok(done)
    }
}

fn row_mut(rows: &mut Vec<Vec<KvSlot>>, row: usize, len: usize) -> &mut Vec<KvSlot> {
    if rows.len() <= row {
        rows.resize_with(row + 1, Vec::new);
    }
    let r = &mut rows[row];
    if r.len() < len {
        r.resize(len, KvSlot(0));
    }
    r
}

impl Backend for CpuBackend {
    type Error = CpuError;

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), CpuError> {
        // The CPU computes synchronously; the result waits for collect (overlap order launches
        // step N+1 before collecting N, and N+1's placeholders need N's tokens, which are ready).
        let done = self.run(plan, now)?;
        self.pending.push_back(done);
        Ok(())
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), CpuError> {
        let done = match self.pending.front() {
            Some(d) if d.step == plan.step => self.pending.pop_front(),
            _ => None,
        }
        .ok_or(CpuError::NothingLaunched(plan.step))?;
        out.tokens = done.tokens;
        out.logprobs = done.logprobs;
        out.prompt_logprobs = done.prompt_logprobs;
        out.done_at = done.done_at;
        Ok(())
    }
}

/// A checkpoint loaded for the CPU: whole, or split over tensor-parallel worker threads.
pub enum CpuLoaded {
    /// One model on the engine thread (`--tp-size 1`).
    Whole(CpuModel),
    /// One shard per worker thread.
    Tp(TpModel),
}

impl CpuLoaded {
    /// Load `dir` for `tp_size` ranks (1: the whole model); a model whose heads or MLP width
    /// do not divide by `tp_size` is refused naming the config.json field.
    pub fn load(
        dir: &std::path::Path,
        tp_size: usize,
        progress: bool,
    ) -> Result<(CpuLoaded, LoadReport), LoadError> {
        if tp_size == 1 {
            let (m, r) = CpuModel::load(dir, progress)?;
            Ok((CpuLoaded::Whole(m), r))
        } else {
            let (tp, r) = TpModel::load(dir, tp_size, progress)?;
            Ok((CpuLoaded::Tp(tp), r))
        }
    }

    /// The whole model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            CpuLoaded::Whole(m) => m.config(),
            CpuLoaded::Tp(tp) => tp.config(),
        }
    }

    /// Ranks (1 for a whole model).
    pub fn tp_size(&self) -> usize {
        match self {
            CpuLoaded::Whole(_) => 1,
            CpuLoaded::Tp(tp) => tp.size(),
        }
    }

    /// The backend with room for `kv_capacity_tokens` (see [`CpuBackend::new`]).
    pub fn into_backend(
        self,
        kv_capacity_tokens: usize,
        seed: u64,
    ) -> Result<CpuBackend, TpRunError> {
        match self {
            CpuLoaded::Whole(m) => Ok(CpuBackend::new(m, kv_capacity_tokens, seed)),
            CpuLoaded::Tp(tp) => CpuBackend::tensor_parallel(tp, kv_capacity_tokens, seed),
        }
    }
}
