//! Which kernel runs each part of a step: the GEMV, skinny, tiled or cuBLAS path for a
//! projection at a row count, the LM head's path and the pick it carries out, and the attention
//! kernels' view of the model (the forward pass in forward.rs follows these).

use super::attention::AttnShape;
use super::buffers::{KvPool, TokenPick};
use super::gemm_tile::{
    tile_plan, TileKind, TilePlan, TILE_MAX_M, TILE_NO_PREFETCH, TILE_PRESCALED,
};
use super::model::{GpuModel, TileUse};
use super::skinny::SKINNY_MAX_M;
use super::Gpu;
use cudarc::driver::CudaSlice;
use half::bf16;

impl GpuModel {
    pub(super) fn lm_head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Whether `m` tokens go through the skinny GEMM (above the GEMV's batch sizes).
    pub(super) fn use_skinny(&self, m: usize) -> bool {
        m > self.gemv_rows() && m <= self.kernels.skinny_max_tokens.min(SKINNY_MAX_M)
    }

    /// Whether an `m`-row cuBLAS GEMM runs the algorithm measured for its shape.
    pub(super) fn gemm_tuned(&self, m: usize) -> bool {
        self.kernels.gemm_lt && m >= self.kernels.gemm_lt_min_tokens
    }

    /// Whether the LM head over `rows` rows runs the f32 GEMV (else cuBLAS).
    pub(super) fn lm_head_on_gemv(&self, rows: usize) -> bool {
        rows <= self.kernels.lm_head_gemv_max.min(8)
    }

    /// `pick` as a forward pass over `rows` logits rows carries it out: `Argmax` only where the
    /// argmax is folded into the LM head (no logits written); elsewhere a greedy step writes the
    /// logits anyway, so it is `ArgmaxKeepLogits` (one decode graph serves both).
    pub fn step_pick(&self, gpu: &Gpu, pick: TokenPick, rows: usize) -> TokenPick {
        let folded = self.kernels.lm_head_argmax
            && rows >= self.kernels.lm_argmax_min_rows
            && gpu.lm_argmax_fits(rows, self.cfg.hidden_size);
        if pick == TokenPick::Argmax && !folded {
            TokenPick::ArgmaxKeepLogits
        } else {
            pick
        }
    }

    /// Whether some `m`-token projections go to cuBLAS (above the GEMV's and the skinny GEMM's
    /// sizes, and not all taken by the tiled GEMM).
    pub(super) fn proj_on_cublas(&self, m: usize) -> bool {
        m > self.gemv_rows()
            && !self.use_skinny(m)
            && !self.tile_plans(m, usize::MAX).iter().all(Option::is_some)
    }

    /// The tiled GEMM's plans for a layer's qkv, o, gate/up and down projections at `m` tokens
    /// on `sms` SMs, for those that path runs (above the skinny GEMM, up to 64 tokens, with the
    /// residual-add projections, per [`TileUse`]; every shape must suit the kernel).
    pub fn tile_plans(&self, m: usize, sms: usize) -> [Option<TilePlan>; 4] {
        let c = &self.cfg;
        let on = self.fused
            && self.kernels.tile_gemm != TileUse::Off
            && self.kernels.proj_resadd
            && m > self.gemv_rows()
            && !self.use_skinny(m)
            && m <= TILE_MAX_M;
        if !on {
            return [None; 4];
        }
        let all = self.kernels.tile_gemm == TileUse::All;
        let (h, qkv, inter) = (
            c.hidden_size,
            c.q_dim() + 2 * c.kv_dim(),
            c.intermediate_size,
        );
        // The norm epilogues skip the L2 prefetch of their weights: run 14 measured gate/up
        // 8.8 us without it, 10.1 with (qkv 7.7 / 7.8).
        let normed = |p: Option<TilePlan>, flags: i32| {
            p.map(|p| TilePlan {
                flags: TILE_NO_PREFETCH | flags,
                ..p
            })
        };
        // gate/up reads the weights with the norm's folded in, where chosen (the forward pass
        // picks the weights by this flag).
        let gate_up = if self.kernels.gate_up_prenorm {
            TILE_PRESCALED
        } else {
            0
        };
        [
            normed(tile_plan(qkv, h, TileKind::Norm, sms), 0).filter(|_| all),
            tile_plan(h, c.q_dim(), TileKind::ResAdd, sms).filter(|_| all),
            normed(tile_plan(2 * inter, h, TileKind::NormSilu, sms), gate_up),
            tile_plan(h, inter, TileKind::ResAdd, sms).filter(|_| all),
        ]
    }

    /// Most tokens the GEMVs take (their kernels hold at most 8 rows).
    pub(super) fn gemv_rows(&self) -> usize {
        self.gemv_max_tokens.min(8)
    }

    /// Whether a decode batch of `rows` runs the tensor-core decode attention: at most
    /// `KernelChoice::decode_mma_max_tokens` rows, on a GPU whose blocks can hold its 3-stage
    /// shared memory (109 KB at head_dim 128: not sm_86/sm_89).
    pub fn decode_mma(&self, gpu: &Gpu, rows: usize) -> bool {
        rows <= self.kernels.decode_mma_max_tokens
            && super::attention::decode_mma_smem(self.cfg.head_dim, 3) <= gpu.smem_per_block
    }

    /// The attention kernels' view of this model over `kv` (q rows in the fused qkv buffer), with
    /// the decode choices of `self.kernels` (the tensor-core decode attention kernels are chosen
    /// per step: [`GpuModel::decode_mma`], `KernelChoice::decode_reg_mma_max_tokens`).
    pub fn attn_shape(&self, kv: &KvPool) -> AttnShape {
        let c = &self.cfg;
        AttnShape {
            nq: c.num_heads,
            nk: c.num_kv_heads,
            head_dim: c.head_dim,
            q_stride: c.q_dim() + 2 * c.kv_dim(),
            table_stride: kv.max_ctx,
            table_rows: kv.rows,
            num_slots: kv.num_slots,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            split_min_keys: self.kernels.decode_split_min_keys,
            decode_pipelined: self.kernels.decode_pipelined,
            decode_prefetch_rows: self.kernels.decode_prefetch_rows,
            decode_early_kv: self.kernels.decode_early_kv,
            decode_kv_before_qk: self.kernels.decode_kv_before_qk,
            decode_prefetch_next: None,
            decode_prefetch_next_early: self.kernels.decode_prefetch_o_early,
            decode_mma: false,
            decode_reg_mma: false,
        }
    }
}
