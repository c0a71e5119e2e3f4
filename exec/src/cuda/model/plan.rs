//! The per-step plan: which kernel runs each stage of a forward pass, decided once per step from
//! the batch's shape, the model's shapes, the device and the thresholds of [`KernelChoice`]
//! (docs/cuda.md, "The step plan"). The forward pass (forward.rs, layer.rs) only follows it.

use crate::cuda::attention::decode_mma_smem;
pub use crate::cuda::attention::DecodeKernel;
use crate::cuda::buffers::TokenPick;
use crate::cuda::gemm_tile::{
    tile_columns, tile_plan, TileKind, TilePlan, TILE_MAX_M, TILE_NO_PREFETCH, TILE_PRESCALED,
};
use crate::cuda::model::KernelChoice;
use crate::cuda::skinny::SKINNY_MAX_M;
use crate::cuda::Gpu;
use crate::model::ModelConfig;

/// What the plan needs to know of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCaps {
    /// Streaming multiprocessors.
    pub sms: usize,
    /// Most dynamic shared memory one block may opt into (bytes).
    pub smem_per_block: usize,
    /// L2 cache bytes.
    pub l2_bytes: usize,
}

impl DeviceCaps {
    /// The caps of `gpu`.
    pub fn of(gpu: &Gpu) -> DeviceCaps {
        DeviceCaps {
            sms: gpu.sms,
            smem_per_block: gpu.smem_per_block,
            l2_bytes: gpu.l2_bytes,
        }
    }
}

/// A forward pass's shape, as the plan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    /// Tokens in the batch (extend tokens first, then decode tokens).
    pub tokens: usize,
    /// Whether the batch has extend entries, and if so how many leading tokens are exactly the
    /// extend entries' new tokens (`ExtendMeta::leading_tokens`; None: not a leading block).
    pub extend: Option<Option<usize>>,
    /// Decode rows (a graph's padded size when captured), and the splits per (row, kv head).
    pub decode: Option<(usize, usize)>,
    /// Rows that need logits.
    pub logit_rows: usize,
    /// How those rows become tokens.
    pub pick: TokenPick,
}

/// The path of one projection at a row count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// The custom GEMV (at most 8 rows).
    Gemv,
    /// The skinny tensor-core GEMM.
    Skinny,
    /// cuBLAS, with the algorithm measured for the shape when `tuned`.
    Cublas {
        /// Run the measured algorithm (`KernelChoice::gemm_lt_min_tokens`).
        tuned: bool,
    },
}

/// How the qkv projection gets its input norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvStage {
    /// One GEMV: 1 / rms, the projection and the q/k pass (its last block per head). Never
    /// with q/k/v biases.
    GemvFused,
    /// The GEMV with 1 / rms applied to its input rows.
    GemvNorm,
    /// The projection of the raw residual stream; the decode attention's q/k pass scales each
    /// row by 1 / rms (the norm weight is in the weights). Never with q/k/v biases.
    RawResidual(Gemm),
    /// An RMSNorm kernel (1 / rms only), then the projection.
    Normed(Gemm),
}

/// Where q/k norm, RoPE and the KV store happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkPass {
    /// Inside the qkv GEMV ([`QkvStage::GemvFused`]).
    InQkv,
    /// Inside the decode attention, applying the row scale of [`QkvStage::RawResidual`] after
    /// that stage.
    InDecodeAttention,
    /// k and v of every token, q of the tokens after the first `n`: the extend kernel
    /// normalises and rotates the q of tokens `0..n` as it loads them.
    AfterExtendQ(usize),
    /// One pass over every token.
    Separate,
}

/// The decode attention of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeAttn {
    /// The kernel.
    pub kernel: DecodeKernel,
    /// The combine runs in the last block of each (row, kv head) (one split: it only
    /// normalises) instead of its own kernel.
    pub combine_fused: bool,
    /// The first keys are requested before waiting for the previous kernel (only where that
    /// kernel is ours: not with the q/k pass inside, which follows the qkv GEMM).
    pub early_kv: bool,
    /// The attention asks the o projection's weights into L2 for the GEMM after it.
    pub prefetch_o: bool,
    /// Each block asks L2 for the whole KV rows of the first this many keys of its range before
    /// the wait (0: no prefetch; [`kv_prefetch_keys`]).
    pub prefetch_kv_keys: usize,
}

/// The gate/up projection with SiLU-and-mul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateUp {
    /// The GEMV with SiLU-and-mul in its epilogue.
    GemvSilu,
    /// The skinny GEMM with SiLU-and-mul in its epilogue.
    SkinnySilu,
    /// The tiled GEMM with 1 / rms and SiLU-and-mul folded in (no norm kernel before it).
    Tiled(TilePlan),
    /// cuBLAS into the gate/up buffer, then the SiLU-and-mul kernel.
    CublasThenSilu {
        /// As [`Gemm::Cublas`].
        tuned: bool,
    },
}

/// A layer's MLP half: o projection, post-attention norm, gate/up, down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpStage {
    /// Three GEMVs: o and down add into the residual stream, gate/up applies 1 / rms and SiLU.
    GemvFolded,
    /// o and down add into the residual stream in their epilogues; an RMSNorm kernel (1 / rms)
    /// before gate/up unless the tiled GEMM does it.
    Separate {
        /// The o projection.
        o: Gemm,
        /// The gate/up projection.
        gate_up: GateUp,
        /// The down projection.
        down: Gemm,
    },
}

/// The LM head and the pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadStage {
    /// The LM head's path (f32 logits).
    pub lm: Gemm,
    /// Greedy (argmax over the logits), the sampler, or no pick yet (`Logits`: a step with
    /// constrained rows picks after its token masks, backend/constrain.rs).
    pub pick: TokenPick,
}

/// Every per-step decision of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// The qkv projection.
    pub qkv: QkvStage,
    /// The q/k pass.
    pub qk: QkPass,
    /// The extend attention applies q norm + RoPE to the q of the leading extend tokens.
    pub extend_q_rope: bool,
    /// The decode attention, when the step has decode rows.
    pub decode: Option<DecodeAttn>,
    /// The MLP half of each layer.
    pub mlp: MlpStage,
    /// The head, when some rows need logits.
    pub head: Option<HeadStage>,
    /// The path of the step's cuBLAS-sized projections (what the GEMM tuning measures).
    pub proj: Gemm,
}

impl StepPlan {
    /// The plan of a step of `shape` on `cfg`'s shapes.
    pub fn new(cfg: &ModelConfig, k: &KernelChoice, dev: DeviceCaps, shape: StepShape) -> StepPlan {
        let m = shape.tokens;
        let proj = gemm_path(k, m);
        // Small batches fold each RMSNorm into the GEMV after it and each residual add into the
        // GEMV before it: 7 launches per layer instead of 9.
        let fold = m > 0 && m <= gemv_rows(k) && m * cfg.hidden_size <= Gpu::GEMV_NORM_MAX_ELEMS;
        // The extend kernel ropes the q of the leading extend tokens itself.
        let q_rope = shape.extend.flatten().filter(|&n| n > 0);
        // Pure decode steps off the GEMV path: the decode attention does the q/k pass, on the
        // raw residual stream's projection (one RMSNorm launch fewer per layer).
        let qk_in_attn = shape.extend.is_none() && shape.decode.is_some() && !fold;
        // q/k/v biases (Qwen2) go after the whole norm: not into the fused GEMV (no room for
        // the add) nor after a GEMM whose 1 / rms comes after it (it would scale the bias).
        let bias = cfg.qkv_bias;
        let (qkv, qk) = match (fold, q_rope) {
            (true, None) if bias => (QkvStage::GemvNorm, QkPass::Separate),
            (true, None) => (QkvStage::GemvFused, QkPass::InQkv),
            (true, Some(n)) => (QkvStage::GemvNorm, QkPass::AfterExtendQ(n)),
            (false, _) if qk_in_attn && bias => (QkvStage::Normed(proj), QkPass::InDecodeAttention),
            (false, _) if qk_in_attn => (QkvStage::RawResidual(proj), QkPass::InDecodeAttention),
            (false, Some(n)) => (QkvStage::Normed(proj), QkPass::AfterExtendQ(n)),
            (false, None) => (QkvStage::Normed(proj), QkPass::Separate),
        };
        let decode = shape.decode.map(|(rows, splits)| DecodeAttn {
            kernel: decode_kernel(cfg, k, dev, rows),
            combine_fused: splits == 1,
            early_kv: !qk_in_attn,
            prefetch_o: qk_in_attn && rows >= k.decode_prefetch_o_min_rows,
            prefetch_kv_keys: if rows <= k.decode_prefetch_kv_max_rows {
                kv_prefetch_keys(dev, rows * cfg.num_kv_heads * splits, cfg.head_dim)
            } else {
                0
            },
        });
        let mlp = if fold {
            MlpStage::GemvFolded
        } else {
            MlpStage::Separate {
                o: proj,
                gate_up: gate_up_path(cfg, k, dev, m),
                down: proj,
            }
        };
        let head = (shape.logit_rows > 0).then(|| HeadStage {
            lm: if shape.logit_rows <= k.lm_head_gemv_max.min(8) {
                Gemm::Gemv
            } else {
                Gemm::Cublas {
                    tuned: shape.logit_rows >= k.gemm_lt_min_tokens,
                }
            },
            pick: shape.pick,
        });
        StepPlan {
            qkv,
            qk,
            extend_q_rope: q_rope.is_some(),
            decode,
            mlp,
            head,
            proj,
        }
    }
}

/// Most tokens the GEMVs take (their kernels hold at most 8 rows).
fn gemv_rows(k: &KernelChoice) -> usize {
    k.gemv_max_tokens.min(8)
}

/// The path of an `m`-row projection: the GEMV, the skinny GEMM up to its cut-off, cuBLAS above.
pub fn gemm_path(k: &KernelChoice, m: usize) -> Gemm {
    if m <= gemv_rows(k) {
        Gemm::Gemv
    } else if m <= k.skinny_max_tokens.min(SKINNY_MAX_M) {
        Gemm::Skinny
    } else {
        Gemm::Cublas {
            tuned: m >= k.gemm_lt_min_tokens,
        }
    }
}

/// gate/up at `m` tokens: on cuBLAS's sizes up to 64 tokens the tiled GEMM with the norm and
/// SiLU folded in (8.8 us against 9.9 for cuBLAS + norm + SiLU at 64 tokens on the H100,
/// docs/cuda.md, "Projections"), where the shape suits it and its column tiles fit in one wave:
/// it holds one CTA per SM, and more waves leave the last part-empty and refill the pipeline
/// (Llama-3.1-8B's 448 tiles on 132 SMs ran at 1.74 TB/s where cuBLAS's GEMMs of the same step
/// ran at 2.4-2.6).
fn gate_up_path(cfg: &ModelConfig, k: &KernelChoice, dev: DeviceCaps, m: usize) -> GateUp {
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    match gemm_path(k, m) {
        Gemm::Gemv => GateUp::GemvSilu,
        Gemm::Skinny => GateUp::SkinnySilu,
        Gemm::Cublas { tuned } => {
            // The norm epilogue skips the L2 prefetch of its weights (8.8 us without, 10.1 with);
            // the weights carry the norm's weight (TILE_PRESCALED).
            let plan = (m <= TILE_MAX_M)
                .then(|| tile_plan(2 * inter, h, TileKind::NormSilu, dev.sms))
                .flatten()
                .filter(|p| tile_columns(2 * inter, true, p.nj) <= dev.sms);
            match plan {
                Some(p) => GateUp::Tiled(TilePlan {
                    flags: TILE_NO_PREFETCH | TILE_PRESCALED,
                    ..p
                }),
                None => GateUp::CublasThenSilu { tuned },
            }
        }
    }
}

/// Keys of its range each decode block asks L2 for up front: as many as keep what the blocks
/// resident at once (at most 4 per SM) ask for within the L2's size. A block's prefetch covers
/// head_dim x 4 bytes per key (K and V of every kv head, every nk-th key); past the L2's size
/// the prefetched rows evict each other before they are read (docs/cuda.md, "Decode
/// attention").
fn kv_prefetch_keys(dev: DeviceCaps, blocks: usize, head_dim: usize) -> usize {
    let resident = blocks.min(dev.sms * 4).max(1);
    (dev.l2_bytes / (resident * head_dim * 4)).max(1)
}

/// The decode attention kernel for `rows` decode rows: the shared-memory tensor-core kernel up
/// to `decode_mma_max_tokens` where its 3-stage shared memory fits (not sm_86/sm_89 at
/// head_dim 128), the register-fed one up to `decode_reg_mma_max_tokens`, else CUDA cores,
/// pipelined for GQA groups up to `decode_pipelined_max_group` (at most 4).
pub fn decode_kernel(
    cfg: &ModelConfig,
    k: &KernelChoice,
    dev: DeviceCaps,
    rows: usize,
) -> DecodeKernel {
    if rows <= k.decode_mma_max_tokens && decode_mma_smem(cfg.head_dim, 3) <= dev.smem_per_block {
        DecodeKernel::TensorCore
    } else if rows <= k.decode_reg_mma_max_tokens {
        DecodeKernel::TensorCoreRegs
    } else if cfg.num_heads / cfg.num_kv_heads <= k.decode_pipelined_max_group.min(4) {
        DecodeKernel::CudaCorePipelined
    } else {
        DecodeKernel::CudaCore
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
