//! The decoder (Qwen3 / Llama) on the GPU: bf16 weights, a paged KV pool addressed by the core's
//! slots, and one forward pass over a mixed batch of extend and decode entries.
//!
//! Per layer: RMSNorm (fused with the residual add from the previous layer), one fused QKV
//! projection, Qwen3's q/k norm, RoPE, KV store, attention (extend kernel for extend entries,
//! split-KV decode kernel for decode entries), output projection, fused add + RMSNorm, one fused
//! gate/up projection, SiLU-and-mul, down projection. Projections use the custom GEMV (norms
//! folded in) up to `gemv_max_tokens` tokens, the skinny tensor-core GEMM up to
//! `KernelChoice::skinny_max_tokens`, and cuBLAS above. Only the rows that need logits reach the LM head.
//! This file holds the weights; the forward pass, KV pool and workspace are in `forward.rs`.

use super::attention::{ExtendVariant, MIN_KEYS_PER_SPLIT};
pub use super::forward::{KvPool, RowSampling, StepInput, TokenPick, Workspace};
use super::rope::cos_sin_table_scaled;
use super::{CudaError, DriverCtx, Gpu, Result};
use crate::model::weights::{LayerNames, EMBED, FINAL_NORM, LM_HEAD};
use crate::model::{DType, ModelConfig, TensorRef, WeightStore};
use cudarc::driver::CudaSlice;
use half::bf16;

/// One decoder layer's weights on the GPU.
pub struct LayerWeights {
    pub(super) input_norm: CudaSlice<bf16>,
    /// [q; k; v] rows: [(nq + 2 nk) * D, H].
    pub(super) qkv: CudaSlice<bf16>,
    /// [q; k; v] biases (Qwen2), added to the projection's output before the q/k pass.
    pub(super) qkv_bias: Option<CudaSlice<bf16>>,
    pub(super) q_norm: Option<CudaSlice<bf16>>,
    pub(super) k_norm: Option<CudaSlice<bf16>>,
    pub(super) o: CudaSlice<bf16>,
    pub(super) post_norm: CudaSlice<bf16>,
    /// [gate; up] rows: [2 I, H].
    pub(super) gate_up: CudaSlice<bf16>,
    pub(super) down: CudaSlice<bf16>,
}

/// A layer's projection weights with the RMSNorm before each folded into their columns
/// (`W diag(w)`, built once at load), read by the decode path.
pub struct FoldedWeights {
    /// `qkv` with the input norm's weight folded in: the projection of the raw residual stream,
    /// whose rows the decode attention's q/k pass then scales by 1 / rms
    /// ([`KernelChoice::qkv_prenorm`]).
    pub(super) qkv: CudaSlice<bf16>,
    /// `gate_up` with the post-attention norm's weight folded in, for the tiled GEMM's norm
    /// epilogue ([`KernelChoice::gate_up_prenorm`]).
    pub(super) gate_up: CudaSlice<bf16>,
}

/// The model's weights and constant tables on the GPU.
pub struct GpuModel {
    /// The configuration.
    pub cfg: ModelConfig,
    pub(super) embed: CudaSlice<bf16>,
    pub(super) lm_head: Option<CudaSlice<bf16>>,
    pub(super) final_norm: CudaSlice<bf16>,
    pub(super) layers: Vec<LayerWeights>,
    /// Per layer, the projection weights with their norms folded in.
    pub(super) folded: Vec<FoldedWeights>,
    pub(super) cos_sin: CudaSlice<f32>,
    /// Positions the RoPE table covers.
    pub max_pos: usize,
    /// Bytes of the checkpoint's weights held.
    pub weight_bytes: usize,
    /// Bytes of weights derived from them at load (the qkv and gate/up weights with the norms
    /// before them folded in, [`KernelChoice::qkv_prenorm`], [`KernelChoice::gate_up_prenorm`]).
    pub prenorm_bytes: usize,
    /// Projections with at most this many tokens use the custom GEMV with the norms folded in
    /// (at most 8; default 1: from 2 tokens the skinny GEMM is faster, run 6: b=4 graph 1.53 →
    /// 1.23 ms; docs/cuda.md).
    pub gemv_max_tokens: usize,
    /// Use the fused kernels (q/k norm + RoPE + KV store in one pass; gate/up GEMV with
    /// SiLU-and-mul) instead of the separate ones. Both paths are tested; the flag exists to
    /// measure the difference.
    pub fused: bool,
    /// Kernel choices kept switchable so the GPU runs can compare them on the whole model.
    pub kernels: KernelChoice,
}

/// Which decode attention kernels the forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// Run 2's kernel + combine.
    V2,
    /// 16-byte-load kernel + combine.
    V3,
    /// 16-byte-load kernel with the combine in its last block (one launch).
    V3Fused,
    /// V3Fused when a step uses one split (its fused tail only normalises), else V3 + combine:
    /// the fused tail was slower than the separate combine with many splits on the H100
    /// (b=1: 10.6 vs 10.1 us per layer), faster with one (b=64: 23.2 vs 24.1 us). Default.
    Auto,
}

/// Kernel choices of the forward pass (defaults: the fastest measured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// Decode attention.
    pub decode: DecodeKernel,
    /// At GEMV batch sizes, fold the RMSNorms and residual adds into the projections.
    pub fold_norms: bool,
    /// Greedy sampling with run 2's one-block-per-row argmax instead of the multi-block one.
    pub argmax_single_block: bool,
    /// Projections with more tokens than the GEMV takes and at most this many (≤ 64) use the
    /// skinny tensor-core GEMM instead of cuBLAS (0: cuBLAS). Default 16: in run 6's CUDA
    /// graphs cuBLAS was faster at 64 tokens (1.84 vs 2.51 ms per step), the skinny GEMM at 16.
    pub skinny_max_tokens: usize,
    /// Above GEMV batch sizes, the o and down projections add into the residual stream in their
    /// epilogue (skinny GEMM) or through beta = 1 (cuBLAS), so the norms after them are plain
    /// RMSNorms instead of fused add + RMSNorm.
    pub proj_resadd: bool,
    /// The LM head uses the GEMV (f32 logits) for at most this many rows, cuBLAS above.
    pub lm_head_gemv_max: usize,
    /// With the norms folded (GEMV batch sizes), fold q/k norm + RoPE + KV store into the qkv
    /// GEMV too (the last block of each head does it): one launch fewer per layer.
    pub qkv_post_fused: bool,
    /// Extend (prefill) attention.
    pub extend: ExtendVariant,
    /// With a GQA extend kernel and the fused q/k pass: the extend kernel applies q norm and
    /// RoPE to its q rows as it loads them, and the q/k pass handles only k, v and the q of
    /// decode tokens (saves a read and a write of every extend q row).
    pub extend_q_rope: bool,
    /// Fewest keys per decode split at run time (see `AttnShape::split_min_keys`): a CUDA graph
    /// captured with splits for the longest context leaves the extra ones empty on short
    /// sequences. Default [`MIN_KEYS_PER_SPLIT`]; on the H100 with 10 launched splits at ~160
    /// keys, b = 1: 1.179 ms vs 1.190 with every split used (within noise); launching 4 splits
    /// instead took 1.154.
    pub decode_split_min_keys: usize,
    /// Decode attention with the next keys requested before the math on the current ones (GQA
    /// groups of 1-2; others use the plain V3 kernels).
    pub decode_pipelined: bool,
    /// cuBLAS-sized projections and LM heads of at least `gemm_lt_min_tokens` rows run the GEMM
    /// algorithm measured fastest for their shape (cuBLASLt candidates vs cublasGemmEx's
    /// default; `GpuModel::tune_gemms`, before graph capture and in the warm-up); off:
    /// cublasGemmEx's default for every shape.
    pub gemm_lt: bool,
    /// Fewest rows a GEMM needs for `gemm_lt`. Default 4096: on the H100 the measured choice
    /// made the 64 x 128 prefill (8192 rows) 3-4% faster (gate/up 1.13x), gained 0-3% per GEMM
    /// at 1024-2048 rows for ~6 ms of tuning per shape (1.1 s for the warm-up's 49 buckets from
    /// 1024), and left the b=64 decode graph unchanged (docs/cuda.md, "Measured GEMM
    /// algorithms"); from 4096 the warm-up tunes only its largest bucket.
    pub gemm_lt_min_tokens: usize,
    /// Above the skinny GEMM's sizes and up to 64 tokens, which projections run the tiled GEMM
    /// with the RMSNorm, SiLU-and-mul or residual add folded in (`kernels/gemm_tile.cu`)
    /// instead of cuBLAS and the separate kernels. Default [`TileUse::GateUp`].
    pub tile_gemm: TileUse,
    /// Above the GEMV's batch sizes, pure decode steps fold q/k norm + RoPE + KV store into the
    /// decode attention (V3 kernels): one launch per layer fewer, and q read once. On the H100
    /// the b=64 decode graph took 1.638 ms with it, 1.656 without (run 14 r1).
    pub decode_qk_post: bool,
    /// Decode attention (V3): prefetch whole KV rows into L2, each by one of the blocks sharing
    /// the keys (see `AttnShape::decode_prefetch_rows`). Default: on the H100 the b=64 decode
    /// graph took 1.609 ms with it, 1.638 without (run 14 r1).
    pub decode_prefetch_rows: bool,
    /// Decode attention (V3 register path): request the first keys before waiting for the
    /// previous kernel (see `AttnShape::decode_early_kv`); the forward pass uses it only where
    /// that kernel is ours (not before the folded q/k pass, which follows cuBLAS's qkv).
    pub decode_early_kv: bool,
    /// Decode attention with the folded q/k pass (V3 register path and the kernel fed from
    /// registers): request the first keys after waiting for the previous kernel but before the
    /// q/k pass (`AttnShape::decode_kv_before_qk`), so they arrive while it runs.
    pub decode_kv_before_qk: bool,
    /// Pure decode steps of at least this many rows with the folded q/k pass: the decode
    /// attention asks the o projection's weights into L2 for the GEMM after it, each block its
    /// share at its end (`AttnShape::decode_prefetch_next`; usize::MAX: never). Default 32: on
    /// the H100 (run 20, bench-one-batch, random weights) b=64 took 1.587-1.588 ms with it
    /// against 1.602-1.609, b=32 1.445-1.447 against 1.460-1.461 (V3 kernels); b=16 lost 3-8 us.
    pub decode_prefetch_o_min_rows: usize,
    /// The o weights' prefetch at each attention block's start (before the wait) instead of its
    /// end: slower on the H100 (run 20: b=64 1.619-1.624 ms).
    pub decode_prefetch_o_early: bool,
    /// Decode steps with at most this many decode rows run the tensor-core decode attention
    /// (`AttnShape::decode_mma`), larger ones the CUDA-core V3 kernels (0: never). Default 8: on
    /// the H100 (run 15, decode graphs) it took b=1 0.940 vs 0.966 ms, b=4 0.967 vs 1.021, but
    /// b=16 1.230 vs 1.191 and b=64 1.843 vs 1.612 (ncu at b=64: 2.5x fewer instructions but
    /// latency-bound at two blocks per SM, docs/cuda.md run 15).
    pub decode_mma_max_tokens: usize,
    /// Decode steps of up to this many rows that do not run the shared-memory tensor-core kernel
    /// (above `decode_mma_max_tokens` rows, or any size where its shared memory does not fit)
    /// run the tensor-core decode attention fed from registers (`AttnShape::decode_reg_mma`,
    /// `kernels/attention_decode_rmma.cu`) instead of the CUDA-core V3 kernels (0: never).
    /// Default 32, measured on the H100 (bench-one-batch, random weights, runs 19-20): b=16 1.152-1.171 ms
    /// against 1.193-1.203, b=32 1.427-1.431 against 1.445-1.449, but b=64 1.620-1.638 against
    /// 1.589-1.609.
    pub decode_reg_mma_max_tokens: usize,
    /// Greedy steps whose logits nothing reads ([`TokenPick::Argmax`](super::buffers::TokenPick))
    /// with `lm_argmax_min_rows..=64` rows run the LM head with the argmax folded in
    /// (`kernels/lm_head_argmax.cu`): no f32 logits written and read back, one launch fewer.
    /// Default off: on the H100 (run 17) decode graphs replayed back to back took b=4 0.961 vs
    /// 0.977 ms, b=16 1.190 vs 1.202, b=64 1.614 vs 1.618, but bench-one-batch's isolated steps
    /// gained nothing at b=4 and b=64 and lost ~1 % at b=16 (1.211 vs 1.198), and serving's
    /// decode ITLs did not move; the kernel reads the weights at ~2.1 TB/s at 64 rows.
    pub lm_head_argmax: bool,
    /// Fewest rows for `lm_head_argmax` (fewer: the GEMV or cuBLAS and the argmax kernel).
    pub lm_argmax_min_rows: usize,
    /// Pure decode steps above the GEMV's sizes (where the decode attention does the q/k pass)
    /// skip the RMSNorm before the qkv projection: it runs on the raw residual stream with the
    /// norm weight folded into its columns (`LayerWeights::qkv_prenorm`, built at load), and the
    /// q/k pass scales each token's q, k and v by 1 / rms of its residual row (for q and k the
    /// per-head norm cancels that scale anyway). One launch fewer per layer.
    pub qkv_prenorm: bool,
    /// The tiled gate/up GEMM (17-64 tokens, [`TileUse`]) reads gate/up weights with the
    /// post-attention RMSNorm's weight folded into their columns (built at load), so its norm
    /// epilogue only applies 1 / rms: no norm-weight reads and multiplies in its inner loop.
    pub gate_up_prenorm: bool,
}

/// Which 17-64-token projections run the tiled GEMM ([`KernelChoice::tile_gemm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileUse {
    /// None: cuBLAS with the separate RMSNorm and SiLU-and-mul kernels.
    Off,
    /// The gate/up projection with the post-attention RMSNorm and SiLU-and-mul folded in (two
    /// launches fewer per layer). On the H100 at 64 tokens: 8.8 us against 9.9 for cuBLAS +
    /// norm + SiLU (run 14, `cuda_bench`).
    GateUp,
    /// All four (qkv with the input norm, o and down adding into the residual with K split
    /// over CTAs): 7.7 / 6.3 / 7.7 us against 7.1 / 5.4 / 7.3 for cuBLAS (+ norm) at 64 tokens
    /// in run 14, so not the default; every CTA re-reads all of x from L2 (2x the weight bytes
    /// for qkv).
    All,
}

impl Default for KernelChoice {
    fn default() -> Self {
        KernelChoice {
            decode: DecodeKernel::Auto,
            fold_norms: true,
            argmax_single_block: false,
            skinny_max_tokens: 16,
            proj_resadd: true,
            lm_head_gemv_max: 2,
            qkv_post_fused: true,
            extend: ExtendVariant::Gqa,
            extend_q_rope: true,
            decode_split_min_keys: MIN_KEYS_PER_SPLIT,
            decode_pipelined: true,
            gemm_lt: true,
            gemm_lt_min_tokens: 4096,
            tile_gemm: TileUse::GateUp,
            decode_qk_post: true,
            decode_prefetch_rows: true,
            decode_early_kv: true,
            decode_kv_before_qk: false,
            decode_prefetch_o_min_rows: 32,
            decode_prefetch_o_early: false,
            decode_mma_max_tokens: 8,
            decode_reg_mma_max_tokens: 32,
            lm_head_argmax: false,
            lm_argmax_min_rows: 2,
            qkv_prenorm: true,
            gate_up_prenorm: true,
        }
    }
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
        if cfg.o_bias {
            return Err(unsupported(
                "an o_proj bias (attention_bias on a Llama config) is not supported on the GPU"
                    .into(),
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
            let qkv_bias = if cfg.qkv_bias {
                let mut b = get(&n.q_bias, &[q])?;
                b.extend(get(&n.k_bias, &[kv])?);
                b.extend(get(&n.v_bias, &[kv])?);
                Some(up(b)?)
            } else {
                None
            };
            layers.push(LayerWeights {
                input_norm: up(get(&n.input_norm, &[h])?)?,
                qkv: up(qkv)?,
                qkv_bias,
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
                qkv_bias: if cfg.qkv_bias {
                    Some(fill(q + 2 * kv, &dmat)?)
                } else {
                    None
                },
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
        // The qkv and gate/up weights with the norm before each folded into their columns
        // (KernelChoice::qkv_prenorm, gate_up_prenorm).
        let h = cfg.hidden_size;
        let fold = |w: &CudaSlice<bf16>, nw: &CudaSlice<bf16>| -> Result<CudaSlice<bf16>> {
            let out = gpu.zeros::<bf16>(w.len())?;
            gpu.scale_cols(gpu.ptr(&out), gpu.ptr(w), gpu.ptr(nw), w.len() / h, h)?;
            Ok(out)
        };
        let folded = layers
            .iter()
            .map(|l| {
                Ok(FoldedWeights {
                    qkv: fold(&l.qkv, &l.input_norm)?,
                    gate_up: fold(&l.gate_up, &l.post_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let prenorm_bytes = folded
            .iter()
            .map(|f| 2 * (f.qkv.len() + f.gate_up.len()))
            .sum();
        let cos_sin = gpu.upload(&cos_sin_table_scaled(
            &cfg.rope_inv_freq(),
            max_pos,
            cfg.rope_attention_factor(),
        ))?;
        let mut weight_bytes =
            (embed.len() + final_norm.len() + lm_head.as_ref().map_or(0, |x| x.len())) * 2;
        for l in &layers {
            weight_bytes += 2
                * (l.input_norm.len()
                    + l.qkv.len()
                    + l.qkv_bias.as_ref().map_or(0, |x| x.len())
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
            folded,
            cos_sin,
            max_pos,
            weight_bytes,
            prenorm_bytes,
            gemv_max_tokens: 1,
            fused: true,
            kernels: KernelChoice::default(),
        })
    }

    /// The weights held, for start-up lines: "weights X GB (+ Y GB of ... folded in)".
    pub fn weights_summary(&self) -> String {
        format!(
            "weights {:.2} GB (+ {:.2} GB of qkv and gate/up weights with their norms folded in)",
            self.weight_bytes as f64 / 1e9,
            self.prenorm_bytes as f64 / 1e9
        )
    }

    /// Bytes of KV cache per token slot (all layers, K and V).
    pub fn kv_bytes_per_slot(&self) -> usize {
        2 * self.cfg.num_layers * self.cfg.kv_dim() * 2
    }
}
