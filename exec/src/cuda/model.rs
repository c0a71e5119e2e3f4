//! The decoder (Qwen3 / Llama) on the GPU: bf16 weights, a paged KV pool addressed by the core's
//! slots, and one forward pass over a mixed batch of extend and decode entries.
//!
//! Per layer: RMSNorm (fused with the residual add from the previous layer), one fused QKV
//! projection, Qwen3's q/k norm, RoPE, KV store, attention (extend kernel for extend entries,
//! split-KV decode kernel for decode entries), output projection, fused add + RMSNorm, one fused
//! gate/up projection, SiLU-and-mul, down projection. Projections use the custom GEMV for up to
//! `gemv_max_tokens` tokens and cuBLAS above. Only the rows that need logits reach the LM head.

use super::attention::{AttnEntry, AttnShape, DecodeMeta, ExtendMeta, ExtendVariant, KvView};
use super::ops::{QkvPost, SamplingBufs};
use super::rope::cos_sin_table;
use super::{CudaError, DPtr, DriverCtx, Gpu, Result};
use crate::model::weights::{LayerNames, EMBED, FINAL_NORM, LM_HEAD};
use crate::model::{DType, ModelConfig, TensorRef, WeightStore};
use cudarc::driver::CudaSlice;
use half::bf16;

/// One decoder layer's weights on the GPU.
pub struct LayerWeights {
    input_norm: CudaSlice<bf16>,
    /// [q; k; v] rows: [(nq + 2 nk) * D, H].
    qkv: CudaSlice<bf16>,
    q_norm: Option<CudaSlice<bf16>>,
    k_norm: Option<CudaSlice<bf16>>,
    o: CudaSlice<bf16>,
    post_norm: CudaSlice<bf16>,
    /// [gate; up] rows: [2 I, H].
    gate_up: CudaSlice<bf16>,
    down: CudaSlice<bf16>,
}

/// The model's weights and constant tables on the GPU.
pub struct GpuModel {
    /// The configuration.
    pub cfg: ModelConfig,
    embed: CudaSlice<bf16>,
    lm_head: Option<CudaSlice<bf16>>,
    final_norm: CudaSlice<bf16>,
    layers: Vec<LayerWeights>,
    cos_sin: CudaSlice<f32>,
    /// Positions the RoPE table covers.
    pub max_pos: usize,
    /// Bytes of weights held.
    pub weight_bytes: usize,
    /// Projections with at most this many tokens use the custom GEMV (at most 8; default 4, where
    /// it stops beating cuBLAS on the H100: docs/cuda.md).
    pub gemv_max_tokens: usize,
    /// Use the fused kernels (q/k norm + RoPE + KV store in one pass; gate/up GEMV with
    /// SiLU-and-mul) instead of the separate ones. Both paths are tested; the flag exists to
    /// measure the difference.
    pub fused: bool,
}

fn unsupported(msg: String) -> CudaError {
    CudaError::Invalid {
        kernel: "model",
        msg,
    }
}

/// A stored tensor as bf16 (bf16 is copied as is; f32/f16 are rounded).
fn to_bf16(t: &TensorRef<'_>) -> Vec<bf16> {
    match t.dtype {
        DType::BF16 => t
            .bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]))
            .collect(),
        _ => t.to_f32().into_iter().map(bf16::from_f32).collect(),
    }
}

impl GpuModel {
    fn check_supported(cfg: &ModelConfig) -> Result<()> {
        if cfg.qkv_bias || cfg.o_bias {
            return Err(unsupported(
                "attention biases (Qwen2) are not supported on the GPU yet".into(),
            ));
        }
        if cfg.head_dim != 64 && cfg.head_dim != 128 {
            return Err(unsupported(format!(
                "head_dim {} (the attention kernels take 64 or 128)",
                cfg.head_dim
            )));
        }
        if cfg.num_kv_heads == 0
            || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads)
            || cfg.num_heads / cfg.num_kv_heads > 8
        {
            return Err(unsupported(format!(
                "{} q heads over {} kv heads",
                cfg.num_heads, cfg.num_kv_heads
            )));
        }
        for (n, v) in [
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
        ] {
            if !v.is_multiple_of(8) {
                return Err(unsupported(format!("{n} {v} is not a multiple of 8")));
            }
        }
        Ok(())
    }

    /// Load a checkpoint's weights (converted to bf16) onto the GPU.
    pub fn load(
        gpu: &Gpu,
        cfg: &ModelConfig,
        store: &WeightStore,
        max_pos: usize,
    ) -> Result<GpuModel> {
        Self::check_supported(cfg)?;
        let (h, q, kv, i, d, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.vocab_size,
        );
        let get = |name: &str, shape: &[usize]| -> Result<Vec<bf16>> {
            store
                .get(name, shape)
                .map(|t| to_bf16(&t))
                .map_err(|e| unsupported(e.to_string()))
        };
        let up = |x: Vec<bf16>| gpu.upload(&x);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let n = LayerNames::new(l);
            let mut qkv = get(&n.q_proj, &[q, h])?;
            qkv.extend(get(&n.k_proj, &[kv, h])?);
            qkv.extend(get(&n.v_proj, &[kv, h])?);
            let mut gu = get(&n.gate_proj, &[i, h])?;
            gu.extend(get(&n.up_proj, &[i, h])?);
            layers.push(LayerWeights {
                input_norm: up(get(&n.input_norm, &[h])?)?,
                qkv: up(qkv)?,
                q_norm: if cfg.qk_norm {
                    Some(up(get(&n.q_norm, &[d])?)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(up(get(&n.k_norm, &[d])?)?)
                } else {
                    None
                },
                o: up(get(&n.o_proj, &[h, q])?)?,
                post_norm: up(get(&n.post_norm, &[h])?)?,
                gate_up: up(gu)?,
                down: up(get(&n.down_proj, &[h, i])?)?,
            });
        }
        let embed = up(get(EMBED, &[v, h])?)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(up(get(LM_HEAD, &[v, h])?)?)
        };
        let final_norm = up(get(FINAL_NORM, &[h])?)?;
        Self::assemble(gpu, cfg, embed, lm_head, final_norm, layers, max_pos)
    }

    /// Random weights of `cfg`'s shapes (for benchmarks): uniform in [-a, a] with a = 0.05 for
    /// matrices and norms around 1. Filled on the device from one uploaded random block.
    pub fn random(gpu: &Gpu, cfg: &ModelConfig, seed: u64, max_pos: usize) -> Result<GpuModel> {
        Self::check_supported(cfg)?;
        let (h, q, kv, i, d, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.vocab_size,
        );
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        const BLOCK: usize = 1 << 22;
        let mat: Vec<bf16> = (0..BLOCK + 4096)
            .map(|_| bf16::from_f32((next() * 2.0 - 1.0) * 0.05))
            .collect();
        let norm: Vec<bf16> = (0..BLOCK + 4096)
            .map(|_| bf16::from_f32(0.8 + 0.4 * next()))
            .collect();
        let (dmat, dnorm) = (gpu.upload(&mat)?, gpu.upload(&norm)?);
        let mut counter = 0usize;
        let mut fill = |n: usize, src: &CudaSlice<bf16>| -> Result<CudaSlice<bf16>> {
            let mut dst = gpu.zeros::<bf16>(n)?;
            let mut done = 0;
            while done < n {
                // A different offset each time, so no two tensors are identical.
                counter = (counter * 7919 + 12345) % 4096;
                let len = (n - done).min(BLOCK);
                let srcv = src.slice(counter..counter + len);
                let mut dstv = dst.slice_mut(done..done + len);
                gpu.stream
                    .memcpy_dtod(&srcv, &mut dstv)
                    .ctx("filling random weights")?;
                done += len;
            }
            Ok(dst)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            layers.push(LayerWeights {
                input_norm: fill(h, &dnorm)?,
                qkv: fill((q + 2 * kv) * h, &dmat)?,
                q_norm: if cfg.qk_norm {
                    Some(fill(d, &dnorm)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(fill(d, &dnorm)?)
                } else {
                    None
                },
                o: fill(h * q, &dmat)?,
                post_norm: fill(h, &dnorm)?,
                gate_up: fill(2 * i * h, &dmat)?,
                down: fill(h * i, &dmat)?,
            });
        }
        let embed = fill(v * h, &dmat)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(fill(v * h, &dmat)?)
        };
        let final_norm = fill(h, &dnorm)?;
        Self::assemble(gpu, cfg, embed, lm_head, final_norm, layers, max_pos)
    }

    fn assemble(
        gpu: &Gpu,
        cfg: &ModelConfig,
        embed: CudaSlice<bf16>,
        lm_head: Option<CudaSlice<bf16>>,
        final_norm: CudaSlice<bf16>,
        layers: Vec<LayerWeights>,
        max_pos: usize,
    ) -> Result<GpuModel> {
        let max_pos = max_pos.max(1);
        let cos_sin = gpu.upload(&cos_sin_table(&cfg.rope_inv_freq(), max_pos))?;
        let mut weight_bytes =
            (embed.len() + final_norm.len() + lm_head.as_ref().map_or(0, |x| x.len())) * 2;
        for l in &layers {
            weight_bytes += 2
                * (l.input_norm.len()
                    + l.qkv.len()
                    + l.q_norm.as_ref().map_or(0, |x| x.len())
                    + l.k_norm.as_ref().map_or(0, |x| x.len())
                    + l.o.len()
                    + l.post_norm.len()
                    + l.gate_up.len()
                    + l.down.len());
        }
        Ok(GpuModel {
            cfg: cfg.clone(),
            embed,
            lm_head,
            final_norm,
            layers,
            cos_sin,
            max_pos,
            weight_bytes,
            gemv_max_tokens: 4,
            fused: true,
        })
    }

    /// Bytes of KV cache per token slot (all layers, K and V).
    pub fn kv_bytes_per_slot(&self) -> usize {
        2 * self.cfg.num_layers * self.cfg.kv_dim() * 2
    }
}

/// The KV pool: per layer a K and a V buffer of `[num_slots, nk * head_dim]` bf16, plus the
/// request-to-slot table mirror and each row's last sampled token (for FUTURE_TOKEN).
pub struct KvPool {
    k: Vec<CudaSlice<bf16>>,
    v: Vec<CudaSlice<bf16>>,
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
    hidden: CudaSlice<bf16>,
    residual: CudaSlice<bf16>,
    qkv: CudaSlice<bf16>,
    attn: CudaSlice<bf16>,
    gate_up: CudaSlice<bf16>,
    act: CudaSlice<bf16>,
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
    sel: CudaSlice<bf16>,
    /// Logits of the selected rows, f32 `[max_seqs, vocab]`.
    pub logits: CudaSlice<f32>,
    /// Sampled tokens.
    pub sampled: CudaSlice<u32>,
    /// Sampling parameters: temperature, top_p, min_p, uniform.
    pub samp_f: [CudaSlice<f32>; 4],
    /// Sampling parameter top_k.
    pub samp_k: CudaSlice<i32>,
    part_o: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
}

impl Workspace {
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
        Ok(Workspace {
            max_tokens: t,
            max_seqs: s,
            max_splits,
            hidden: gpu.zeros(t * c.hidden_size)?,
            residual: gpu.zeros(t * c.hidden_size)?,
            qkv: gpu.zeros(t * (c.q_dim() + 2 * c.kv_dim()))?,
            attn: gpu.zeros(t * c.q_dim())?,
            gate_up: gpu.zeros(t * 2 * c.intermediate_size)?,
            act: gpu.zeros(t * c.intermediate_size)?,
            ids: gpu.zeros(t)?,
            tok_row: gpu.zeros(t)?,
            positions: gpu.zeros(t)?,
            out_slots: gpu.zeros(t)?,
            logit_tok: gpu.zeros(s)?,
            logit_row: gpu.zeros(s)?,
            sel: gpu.zeros(s * c.hidden_size)?,
            logits: gpu.zeros(s * c.vocab_size)?,
            sampled: gpu.zeros(s)?,
            samp_f: [gpu.zeros(s)?, gpu.zeros(s)?, gpu.zeros(s)?, gpu.zeros(s)?],
            samp_k: gpu.zeros(s)?,
            part_o: gpu.zeros(s * c.num_heads * max_splits * c.head_dim)?,
            part_ml: gpu.zeros(s * c.num_heads * max_splits * 2)?,
        })
    }
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

impl GpuModel {
    fn lm_head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// y[m, n] = x[m, k] w^T through the GEMV for small m, cuBLAS otherwise.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        gpu: &Gpu,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: &CudaSlice<bf16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        if m <= self.gemv_max_tokens.min(8) {
            gpu.gemv(y, x, gpu.ptr(w), m, n, k, n)
        } else {
            gpu.blas.gemm_bf16(y, x, gpu.ptr(w), m, n, k, n)
        }
    }

    /// Upload a step's host vectors into the workspace (outside any graph capture).
    pub fn upload_step(&self, gpu: &Gpu, ws: &mut Workspace, s: &StepInput) -> Result<()> {
        fn put<T: cudarc::driver::DeviceRepr>(
            gpu: &Gpu,
            src: &[T],
            dst: &mut CudaSlice<T>,
        ) -> Result<()> {
            if src.is_empty() {
                return Ok(());
            }
            let mut v = dst.slice_mut(0..src.len());
            gpu.stream
                .memcpy_htod(src, &mut v)
                .ctx("uploading step inputs")
        }
        put(gpu, &s.ids, &mut ws.ids)?;
        put(gpu, &s.tok_row, &mut ws.tok_row)?;
        put(gpu, &s.positions, &mut ws.positions)?;
        put(gpu, &s.out_slots, &mut ws.out_slots)?;
        put(gpu, &s.logit_tok, &mut ws.logit_tok)?;
        put(gpu, &s.logit_row, &mut ws.logit_row)?;
        let f = |g: fn(&RowSampling) -> f32| s.sampling.iter().map(g).collect::<Vec<f32>>();
        let [a, b, c, d] = &mut ws.samp_f;
        put(gpu, &f(|r| r.temperature), a)?;
        put(gpu, &f(|r| r.top_p), b)?;
        put(gpu, &f(|r| r.min_p), c)?;
        put(gpu, &f(|r| r.uniform), d)?;
        put(
            gpu,
            &s.sampling.iter().map(|r| r.top_k).collect::<Vec<i32>>(),
            &mut ws.samp_k,
        )
    }

    /// Queue the forward pass for `tokens` tokens (inputs already in `ws`), attention per the
    /// given metadata, logits for `rows` rows, sampling into `ws.sampled` and each sampled row's
    /// last token. `greedy` selects the argmax kernel for all rows. Launches only (capturable).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        kv: &KvPool,
        ws: &Workspace,
        tokens: usize,
        extend: Option<&ExtendMeta>,
        decode: Option<(&DecodeMeta, usize)>,
        rows: usize,
        greedy: bool,
    ) -> Result<()> {
        let c = &self.cfg;
        let (h, nq, nk, d, inter) = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        );
        let qkv_w = (nq + 2 * nk) * d;
        let eps = c.rms_norm_eps as f32;
        let p = |b: &CudaSlice<bf16>| gpu.ptr(b);
        let (hidden, residual, qkv, attn, gu, act) = (
            p(&ws.hidden),
            p(&ws.residual),
            p(&ws.qkv),
            p(&ws.attn),
            p(&ws.gate_up),
            p(&ws.act),
        );
        if tokens > 0 {
            gpu.embedding_gather(
                residual,
                p(&self.embed),
                gpu.ptr(&ws.ids),
                gpu.ptr(&ws.tok_row),
                gpu.ptr(&kv.last_token),
                tokens,
                h,
                c.vocab_size,
            )?;
        }
        let shape = AttnShape {
            nq,
            nk,
            head_dim: d,
            q_stride: qkv_w,
            table_stride: kv.max_ctx,
            table_rows: kv.rows,
            num_slots: kv.num_slots,
            scale: 1.0 / (d as f32).sqrt(),
        };
        for (l, lw) in self.layers.iter().enumerate() {
            if l == 0 {
                gpu.rmsnorm(hidden, residual, p(&lw.input_norm), tokens, h, eps)?;
            } else {
                gpu.fused_add_rmsnorm(hidden, residual, p(&lw.input_norm), tokens, h, eps)?;
            }
            self.linear(gpu, qkv, hidden, &lw.qkv, tokens, qkv_w, h)?;
            let view = KvView {
                k_cache: p(&kv.k[l]),
                v_cache: p(&kv.v[l]),
                table: gpu.ptr(&kv.table),
            };
            if self.fused {
                let post = QkvPost {
                    qk_norm: lw
                        .q_norm
                        .as_ref()
                        .zip(lw.k_norm.as_ref())
                        .map(|(q, k)| (p(q), p(k))),
                    positions: gpu.ptr(&ws.positions),
                    cos_sin: gpu.ptr(&self.cos_sin),
                    k_cache: view.k_cache,
                    v_cache: view.v_cache,
                    slots: gpu.ptr(&ws.out_slots),
                };
                gpu.qk_norm_rope_store(qkv, &post, tokens, (nq, nk), d, qkv_w, eps)?;
            } else {
                if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                    gpu.qk_rmsnorm(qkv, p(qn), p(kn), tokens, (nq, nk), d, qkv_w, eps)?;
                }
                gpu.rope_neox(
                    qkv,
                    gpu.ptr(&ws.positions),
                    gpu.ptr(&self.cos_sin),
                    tokens,
                    (nq, nk),
                    d,
                    qkv_w,
                )?;
                gpu.kv_store(
                    view.k_cache,
                    view.v_cache,
                    qkv,
                    gpu.ptr(&ws.out_slots),
                    tokens,
                    (nq, nk),
                    d,
                    qkv_w,
                )?;
            }
            if let Some(meta) = extend {
                gpu.attention_extend(attn, qkv, view, meta, &shape, ExtendVariant::Fast)?;
            }
            if let Some((meta, splits)) = decode {
                gpu.attention_decode(
                    attn,
                    qkv,
                    view,
                    meta,
                    &shape,
                    gpu.ptr(&ws.part_o),
                    gpu.ptr(&ws.part_ml),
                    splits,
                )?;
            }
            self.linear(gpu, hidden, attn, &lw.o, tokens, h, nq * d)?;
            gpu.fused_add_rmsnorm(hidden, residual, p(&lw.post_norm), tokens, h, eps)?;
            if self.fused && tokens <= self.gemv_max_tokens.min(8) {
                gpu.gemv_gate_up_silu(act, hidden, p(&lw.gate_up), tokens, inter, h)?;
            } else {
                self.linear(gpu, gu, hidden, &lw.gate_up, tokens, 2 * inter, h)?;
                gpu.silu_and_mul(act, gu, tokens, inter)?;
            }
            self.linear(gpu, hidden, act, &lw.down, tokens, h, inter)?;
        }
        if rows == 0 {
            return Ok(());
        }
        // Only the rows that need logits: gather them (hidden and residual), then the final norm.
        let sel = p(&ws.sel);
        let sel_res = attn; // free now: reuse as the gathered residual
        gpu.gather_rows(sel, hidden, gpu.ptr(&ws.logit_tok), rows, h)?;
        gpu.gather_rows(sel_res, residual, gpu.ptr(&ws.logit_tok), rows, h)?;
        gpu.fused_add_rmsnorm(sel, sel_res, p(&self.final_norm), rows, h, eps)?;
        gpu.blas.gemm_bf16_f32out(
            gpu.ptr(&ws.logits),
            sel,
            p(self.lm_head()),
            rows,
            c.vocab_size,
            h,
            c.vocab_size,
        )?;
        if greedy {
            gpu.argmax_rows(
                gpu.ptr(&ws.sampled),
                gpu.ptr(&ws.logits),
                rows,
                c.vocab_size,
            )?;
        } else {
            let [t, tp, mp, u] = &ws.samp_f;
            let bufs = SamplingBufs {
                temperature: gpu.ptr(t),
                top_k: gpu.ptr(&ws.samp_k),
                top_p: gpu.ptr(tp),
                min_p: gpu.ptr(mp),
                uniform: gpu.ptr(u),
            };
            gpu.sample_rows(
                gpu.ptr(&ws.sampled),
                gpu.ptr(&ws.logits),
                &bufs,
                rows,
                c.vocab_size,
            )?;
        }
        gpu.store_last_token(
            gpu.ptr(&kv.last_token),
            gpu.ptr(&ws.logit_row),
            gpu.ptr(&ws.sampled),
            rows,
        )
    }
}
