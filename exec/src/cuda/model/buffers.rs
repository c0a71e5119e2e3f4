//! The GPU memory a forward pass works in: the paged KV pool with its request-to-slot table, the
//! fixed workspace buffers, and a step's inputs (split out of forward.rs, which runs the pass).

use crate::cuda::attention::AttnEntry;
use crate::cuda::blas::bucket_rows;
use crate::cuda::model::GpuModel;
use crate::cuda::skinny::{SkinnyScratch, SKINNY_COUNTERS, SKINNY_MAX_M, SKINNY_MAX_SPLITS};
use crate::cuda::{CudaError, Gpu, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

/// The KV pool: per layer a K and a V buffer of `[num_slots, nk * head_dim]` bf16, plus the
/// request-to-slot table mirror and each row's last sampled token (for FUTURE_TOKEN).
pub struct KvPool {
    pub(in crate::cuda) k: Vec<CudaSlice<bf16>>,
    pub(in crate::cuda) v: Vec<CudaSlice<bf16>>,
    /// Slots per layer buffer (slot 0 is the padding dummy).
    pub num_slots: usize,
    /// `[rows, max_ctx]` slot table.
    pub table: CudaSlice<u32>,
    /// Rows of the table.
    pub rows: usize,
    /// Positions per row.
    pub max_ctx: usize,
    /// Last sampled token per row.
    pub last_token: CudaSlice<u32>,
}

impl KvPool {
    /// Allocate `num_slots` slots for `model`, and a `rows` x `max_ctx` slot table.
    pub fn new(
        gpu: &Gpu,
        model: &GpuModel,
        num_slots: usize,
        rows: usize,
        max_ctx: usize,
    ) -> Result<KvPool> {
        let w = model.cfg.kv_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..model.cfg.num_layers {
            k.push(gpu.zeros::<bf16>(num_slots * w)?);
            v.push(gpu.zeros::<bf16>(num_slots * w)?);
        }
        Ok(KvPool {
            k,
            v,
            num_slots,
            table: gpu.zeros::<u32>(rows * max_ctx)?,
            rows,
            max_ctx,
            last_token: gpu.zeros::<u32>(rows)?,
        })
    }

    /// Bytes of K/V held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 2).sum()
    }
}

/// Fixed-size device buffers for one forward pass of up to `max_tokens` tokens and `max_seqs`
/// sequences. Fixed addresses are what lets a captured CUDA graph be replayed.
pub struct Workspace {
    /// Capacity in tokens.
    pub max_tokens: usize,
    /// Capacity in sequences (logit rows).
    pub max_seqs: usize,
    /// Decode split capacity.
    pub max_splits: usize,
    pub(in crate::cuda) hidden: CudaSlice<bf16>,
    pub(in crate::cuda) residual: CudaSlice<bf16>,
    pub(in crate::cuda) qkv: CudaSlice<bf16>,
    pub(in crate::cuda) attn: CudaSlice<bf16>,
    pub(in crate::cuda) gate_up: CudaSlice<bf16>,
    pub(in crate::cuda) act: CudaSlice<bf16>,
    /// Input ids (FUTURE_TOKEN resolved on the device).
    pub ids: CudaSlice<u32>,
    /// Table row of each token (for FUTURE_TOKEN).
    pub tok_row: CudaSlice<u32>,
    /// Position of each token.
    pub positions: CudaSlice<i32>,
    /// KV slot of each token.
    pub out_slots: CudaSlice<u32>,
    /// Token index of each logits row.
    pub logit_tok: CudaSlice<u32>,
    /// Table row of each logits row (where its sample is recorded).
    pub logit_row: CudaSlice<u32>,
    pub(in crate::cuda) sel: CudaSlice<bf16>,
    /// Logits of the selected rows, f32 `[max_seqs, vocab]`.
    pub logits: CudaSlice<f32>,
    /// Sampled tokens.
    pub sampled: CudaSlice<u32>,
    /// Sampling parameters: temperature, top_p, min_p, uniform.
    pub samp_f: [CudaSlice<f32>; 4],
    /// Sampling parameter top_k.
    pub samp_k: CudaSlice<i32>,
    /// Counters and per-block partials of the multi-block argmax.
    pub argmax_scratch: CudaSlice<u32>,
    /// Per (decode entry, kv head) counters of the one-launch decode attention.
    pub decode_counters: CudaSlice<u32>,
    pub(in crate::cuda) part_o: CudaSlice<f32>,
    pub(in crate::cuda) part_ml: CudaSlice<f32>,
    /// Split-K partial sums of the skinny GEMM.
    pub(in crate::cuda) skinny_part: CudaSlice<f32>,
    /// Column-tile counters of the skinny GEMM.
    pub(in crate::cuda) skinny_counters: CudaSlice<u32>,
}

impl Workspace {
    /// The split-K scratch the skinny and tiled GEMMs share (partials and re-armed counters).
    pub(in crate::cuda) fn gemm_scratch(&self, gpu: &Gpu) -> SkinnyScratch {
        SkinnyScratch {
            part: gpu.ptr(&self.skinny_part),
            counters: gpu.ptr(&self.skinny_counters),
        }
    }

    /// Buffers for `model` with the given capacities.
    pub fn new(
        gpu: &Gpu,
        model: &GpuModel,
        max_tokens: usize,
        max_seqs: usize,
        max_splits: usize,
    ) -> Result<Workspace> {
        let c = &model.cfg;
        let (t, s) = (max_tokens.max(1), max_seqs.max(1));
        // Room for the row buckets cuBLAS computes on (`blas::bucket_rows`).
        let (tb, sb) = (bucket_rows(t), bucket_rows(s));
        Ok(Workspace {
            max_tokens: t,
            max_seqs: s,
            max_splits,
            hidden: gpu.zeros(tb * c.hidden_size)?,
            residual: gpu.zeros(tb * c.hidden_size)?,
            qkv: gpu.zeros(tb * (c.q_dim() + 2 * c.kv_dim()))?,
            attn: gpu.zeros(tb * c.q_dim())?,
            gate_up: gpu.zeros(tb * 2 * c.intermediate_size)?,
            act: gpu.zeros(tb * c.intermediate_size)?,
            ids: gpu.zeros(t)?,
            tok_row: gpu.zeros(t)?,
            positions: gpu.zeros(t)?,
            out_slots: gpu.zeros(t)?,
            logit_tok: gpu.zeros(s)?,
            logit_row: gpu.zeros(s)?,
            sel: gpu.zeros(sb * c.hidden_size)?,
            logits: gpu.zeros(sb * c.vocab_size)?,
            sampled: gpu.zeros(s)?,
            samp_f: [gpu.zeros(s)?, gpu.zeros(s)?, gpu.zeros(s)?, gpu.zeros(s)?],
            samp_k: gpu.zeros(s)?,
            argmax_scratch: gpu.zeros(crate::cuda::ops::argmax_scratch_len(s))?,
            decode_counters: gpu.zeros(s * c.num_kv_heads)?,
            part_o: gpu.zeros(s * c.num_heads * max_splits * c.head_dim)?,
            part_ml: gpu.zeros(s * c.num_heads * max_splits * 2)?,
            skinny_part: gpu.zeros(
                SKINNY_MAX_SPLITS
                    * t.min(SKINNY_MAX_M)
                    * (c.q_dim() + 2 * c.kv_dim())
                        .max(2 * c.intermediate_size)
                        .max(c.hidden_size),
            )?,
            skinny_counters: gpu.zeros(SKINNY_COUNTERS)?,
        })
    }
}

/// How a step turns its logits rows into tokens (the f32 logits are written either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenPick {
    /// Greedy: the argmax of every row (the GPU LM head with the argmax folded in gained
    /// nothing in serving and was removed: docs/cuda.md, "LM head").
    Argmax,
    /// The GPU sampler per row (temperature, top-k, top-p, min-p; greedy rows too).
    Sample,
    /// Only the f32 logits: the pick comes later ([`GpuModel::pick`](crate::cuda::model::GpuModel)),
    /// after a constraint's token mask, which the host computes while this step runs.
    Logits,
}

/// Per-row sampling parameters for the GPU sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowSampling {
    /// Temperature (<= 0: greedy).
    pub temperature: f32,
    /// Top-k (<= 0: off).
    pub top_k: i32,
    /// Top-p (>= 1: off).
    pub top_p: f32,
    /// Min-p (<= 0: off).
    pub min_p: f32,
    /// Uniform draw in [0, 1).
    pub uniform: f32,
}

/// One forward pass, described on the host. Token-level vectors have one element per token;
/// extend entries' tokens come first, then decode entries' (as in a core plan).
#[derive(Clone, Debug, Default)]
pub struct StepInput {
    /// Token ids (FUTURE_TOKEN allowed: resolved from the row's last sampled token).
    pub ids: Vec<u32>,
    /// Table row of each token.
    pub tok_row: Vec<u32>,
    /// Position of each token.
    pub positions: Vec<i32>,
    /// KV slot each token's K/V goes to.
    pub out_slots: Vec<u32>,
    /// Extend entries (q_start indexes tokens).
    pub extend: Vec<AttnEntry>,
    /// Decode entries.
    pub decode: Vec<AttnEntry>,
    /// Token index of each row that needs logits.
    pub logit_tok: Vec<u32>,
    /// Table row of each such row (its sample becomes that row's last token).
    pub logit_row: Vec<u32>,
    /// Sampling per logits row.
    pub sampling: Vec<RowSampling>,
}

impl StepInput {
    /// Check every index against the model, pool and workspace, so a bad plan is an error
    /// rather than an out-of-bounds access on the device.
    pub fn validate(&self, model: &GpuModel, kv: &KvPool, ws: &Workspace) -> Result<()> {
        let bad = |msg: String| CudaError::Invalid {
            kernel: "forward",
            msg,
        };
        let t = self.ids.len();
        if t > ws.max_tokens || self.logit_tok.len() > ws.max_seqs {
            return Err(bad(format!(
                "{t} tokens / {} logit rows exceed the workspace",
                self.logit_tok.len()
            )));
        }
        if self.tok_row.len() != t || self.positions.len() != t || self.out_slots.len() != t {
            return Err(bad("token vectors differ in length".into()));
        }
        if self.logit_row.len() != self.logit_tok.len()
            || self.sampling.len() != self.logit_tok.len()
        {
            return Err(bad("logit vectors differ in length".into()));
        }
        let vocab = model.cfg.vocab_size as u32;
        for i in 0..t {
            let id = self.ids[i];
            if id != doppel_core::FUTURE_TOKEN && id >= vocab {
                return Err(bad(format!(
                    "token {i}: id {id} outside the vocabulary of {vocab}"
                )));
            }
            if self.positions[i] < 0 || self.positions[i] as usize >= model.max_pos {
                return Err(bad(format!(
                    "token {i}: position {} beyond the RoPE table ({})",
                    self.positions[i], model.max_pos
                )));
            }
            if self.out_slots[i] as usize >= kv.num_slots {
                return Err(bad(format!(
                    "token {i}: slot {} beyond the pool ({})",
                    self.out_slots[i], kv.num_slots
                )));
            }
            if self.tok_row[i] as usize >= kv.rows {
                return Err(bad(format!(
                    "token {i}: row {} beyond the table",
                    self.tok_row[i]
                )));
            }
        }
        for (&tk, &r) in self.logit_tok.iter().zip(&self.logit_row) {
            if tk as usize >= t || r as usize >= kv.rows {
                return Err(bad(format!(
                    "logits row for token {tk} / table row {r} out of range"
                )));
            }
        }
        Ok(())
    }
}
