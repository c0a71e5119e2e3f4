//! Launch wrappers for the fused kernels: q/k norm + RoPE + KV store in one pass, the gate/up
//! GEMV with SiLU-and-mul, and GEMVs with the RMSNorm before them or the residual add after
//! them folded in (small-batch decode: two fewer launches per layer).

use crate::cuda::args::{
    GemvGateUpSilu, GemvGateUpSiluNorm, GemvNorm, GemvNormQkv, GemvResAdd, QkNormRopeStore,
};
use crate::cuda::launch::Mode;
use crate::cuda::ops::{ceil_div, cfg, check, int, need};
use crate::cuda::{CudaError, DPtr, Gpu, Result};
use half::bf16;

/// The fused qkv buffer: `tokens` rows `row_stride` apart, each the q heads, then the k heads,
/// then the v heads (`head_dim` each).
#[derive(Clone, Copy, Debug)]
pub struct QkvLayout {
    /// Rows (tokens).
    pub tokens: usize,
    /// Query heads.
    pub nq: usize,
    /// KV heads.
    pub nk: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Elements from one row to the next.
    pub row_stride: usize,
}

impl QkvLayout {
    /// Fail unless each row holds `heads` heads and `qkv` holds every row (`kernel` names the
    /// caller in the error).
    pub(crate) fn need_rows(
        &self,
        kernel: &'static str,
        qkv: &DPtr<bf16>,
        heads: usize,
    ) -> Result<()> {
        let (stride, width) = (self.row_stride, heads * self.head_dim);
        check(kernel, stride >= width, || {
            format!("row stride {stride} too small")
        })?;
        need(
            kernel,
            "qkv",
            qkv,
            self.tokens.saturating_sub(1) * stride + width,
        )
    }
}

/// The rows a norm-folded GEMV normalises before its projection: `bf16(rmsnorm(x_b) * w)` over
/// rows of `hidden` elements (the projection's k).
#[derive(Clone, Copy, Debug)]
pub struct NormIn {
    /// The rows, `[batch, hidden]`.
    pub x: DPtr<bf16>,
    /// The norm weight (`hidden`).
    pub w: DPtr<bf16>,
    /// Row width.
    pub hidden: usize,
    /// The norm's epsilon.
    pub eps: f32,
}

/// What the fused q/k-norm + RoPE + KV-store kernel reads and writes besides qkv.
#[derive(Clone, Copy, Debug)]
pub struct QkvPost {
    /// Per-head q and k RMSNorm weights (`head_dim` each), or None (no q/k norm).
    pub qk_norm: Option<(DPtr<bf16>, DPtr<bf16>)>,
    /// Position of each token.
    pub positions: DPtr<i32>,
    /// The RoPE cos/sin table (`[max_pos, head_dim]`).
    pub cos_sin: DPtr<f32>,
    /// This layer's K cache, `[num_slots, nk * head_dim]`.
    pub k_cache: DPtr<bf16>,
    /// This layer's V cache, same shape.
    pub v_cache: DPtr<bf16>,
    /// KV slot of each token.
    pub slots: DPtr<u32>,
    /// The input RMSNorm's row scale still to apply (the qkv projection ran on the raw residual
    /// stream with the norm weight folded in): only the decode attention's q/k pass takes it.
    pub row_scale: Option<RowScale>,
}

impl QkvPost {
    /// Refuse a row scale in a pass that would ignore it (only the decode attention's applies one).
    fn refuse_row_scale(&self, kernel: &'static str) -> Result<()> {
        check(kernel, self.row_scale.is_none(), || {
            "a row scale is applied by the decode attention's q/k pass only".into()
        })
    }
}

/// The rows whose 1 / rms scales q, k and v in the decode attention's q/k pass
/// ([`QkvPost::row_scale`]).
#[derive(Clone, Copy, Debug)]
pub struct RowScale {
    /// The residual stream, `[tokens, hidden]`.
    pub x: DPtr<bf16>,
    /// Its width (a multiple of 8).
    pub hidden: usize,
    /// The input RMSNorm's epsilon.
    pub eps: f32,
}

impl Gpu {
    /// One pass doing `qk_rmsnorm` (when weights are given), `rope_neox` and `kv_store`: q heads
    /// are normalised and rotated in place; k heads normalised, rotated and stored into the
    /// cache (qkv's k columns are left as they were); v heads stored. head_dim 64 or 128.
    pub fn qk_norm_rope_store(
        &self,
        qkv: DPtr<bf16>,
        layout: QkvLayout,
        post: &QkvPost,
        eps: f32,
    ) -> Result<()> {
        const K: &str = "qk_norm_rope_store";
        let QkvLayout {
            tokens,
            nq,
            nk,
            head_dim,
            row_stride,
        } = layout;
        post.refuse_row_scale(K)?;
        let name = match head_dim {
            64 => "qk_norm_rope_store_d64",
            128 => "qk_norm_rope_store_d128",
            _ => {
                return Err(CudaError::Invalid {
                    kernel: K,
                    msg: format!("head_dim {head_dim} is not 64 or 128"),
                })
            }
        };
        check(K, post.cos_sin.len().is_multiple_of(head_dim), || {
            "cos/sin table is not [max_pos, head_dim]".into()
        })?;
        check(K, post.k_cache.len() == post.v_cache.len(), || {
            "K and V caches differ in size".into()
        })?;
        layout.need_rows(K, &qkv, nq + 2 * nk)?;
        need(K, "positions", &post.positions, tokens)?;
        need(K, "slots", &post.slots, tokens)?;
        if let Some((wq, wk)) = &post.qk_norm {
            need(K, "wq", wq, head_dim)?;
            need(K, "wk", wk, head_dim)?;
        }
        if tokens == 0 {
            return Ok(());
        }
        // One warp per (token, 4 heads), 4 warps per block (QR_HPW in rope.cu).
        let warps = tokens * (nq + 2 * nk).div_ceil(4);
        QkNormRopeStore {
            qkv,
            wq: post.qk_norm.map(|w| w.0),
            wk: post.qk_norm.map(|w| w.1),
            positions: post.positions,
            cos_sin: post.cos_sin,
            k_cache: post.k_cache,
            v_cache: post.v_cache,
            slots: post.slots,
            num_tokens: int(K, tokens)?,
            nq: int(K, nq)?,
            nk: int(K, nk)?,
            row_stride: int(K, row_stride)?,
            eps,
        }
        .launch(self, name, cfg((ceil_div(warps, 4), 1, 1), 128), Mode::Pdl)
    }

    /// Gate/up projection with SiLU-and-mul fused: `w` is `[gate; up]` (`[2 * inter, k]`),
    /// `y[b, n] = silu(x_b . w[n]) * (x_b . w[inter + n])` for `batch <= 8`.
    pub fn gemv_gate_up_silu(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        batch: usize,
        inter: usize,
        k: usize,
    ) -> Result<()> {
        const K: &str = "gemv_gate_up_silu";
        check(K, (1..=8).contains(&batch), || {
            format!("batch {batch} is not in 1..=8")
        })?;
        check(K, k.is_multiple_of(8), || {
            format!("k {k} is not a multiple of 8")
        })?;
        need(K, "y", &y, batch * inter)?;
        need(K, "x", &x, batch * k)?;
        need(K, "w", &w, 2 * inter * k)?;
        GemvGateUpSilu {
            y,
            x,
            w,
            b: int(K, batch)?,
            i: int(K, inter)?,
            k: int(K, k)?,
            pf: self.row_prefetch(K, inter, 2, k)?,
        }
        .launch(self, K, cfg((ceil_div(inter, 8), 1, 1), 256), Mode::Pdl)
    }

    /// The most `batch * k` the norm-folded GEMVs take (their normalised rows sit in 48 KB of
    /// shared memory).
    pub const GEMV_NORM_MAX_ELEMS: usize = 24 * 1024;

    /// `r[b, n] = bf16(bf16(x_b . w[n]) + r[b, n])` for `batch <= 8`: a projection added into the
    /// residual stream in its epilogue (row stride of `r`: `ldr`).
    pub fn gemv_resadd(
        &self,
        r: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (batch, n, k): (usize, usize, usize),
        ldr: usize,
    ) -> Result<()> {
        const K: &str = "gemv_resadd";
        check(K, (1..=8).contains(&batch), || {
            format!("batch {batch} is not in 1..=8")
        })?;
        check(K, k.is_multiple_of(8), || {
            format!("k {k} is not a multiple of 8")
        })?;
        check(K, ldr >= n, || format!("ldr {ldr} < n {n}"))?;
        need(K, "r", &r, (batch - 1) * ldr + n)?;
        need(K, "x", &x, batch * k)?;
        need(K, "w", &w, n * k)?;
        GemvResAdd {
            r,
            x,
            w,
            b: int(K, batch)?,
            n: int(K, n)?,
            k: int(K, k)?,
            ldr: int(K, ldr)?,
            pf: self.row_prefetch(K, n, 1, k)?,
        }
        .launch(self, K, cfg((ceil_div(n, 8), 1, 1), 256), Mode::Pdl)
    }

    fn check_norm_gemv(kernel: &'static str, norm: &NormIn, batch: usize) -> Result<()> {
        let NormIn {
            x: r,
            w: nw,
            hidden: k,
            ..
        } = norm;
        let k = *k;
        check(kernel, (1..=8).contains(&batch), || {
            format!("batch {batch} is not in 1..=8")
        })?;
        check(kernel, k.is_multiple_of(8), || {
            format!("k {k} is not a multiple of 8")
        })?;
        check(kernel, batch * k <= Self::GEMV_NORM_MAX_ELEMS, || {
            format!("batch {batch} x k {k} exceeds the shared-memory rows")
        })?;
        need(kernel, "r", r, batch * k)?;
        need(kernel, "norm weight", nw, k)
    }

    /// `y[b, n] = bf16(rmsnorm(r_b) * nw) . w[n]` for `batch <= 8`: the RMSNorm before a
    /// projection folded into it (every block normalises the rows into shared memory).
    pub fn gemv_norm(
        &self,
        y: DPtr<bf16>,
        norm: NormIn,
        w: DPtr<bf16>,
        (batch, n): (usize, usize),
    ) -> Result<()> {
        const K: &str = "gemv_norm";
        Self::check_norm_gemv(K, &norm, batch)?;
        let NormIn {
            x: r,
            w: nw,
            hidden: k,
            eps,
        } = norm;
        need(K, "y", &y, batch * n)?;
        need(K, "w", &w, n * k)?;
        let mut c = cfg((ceil_div(n, 8), 1, 1), 256);
        c.shared_mem_bytes = (batch * k * 2) as u32;
        GemvNorm {
            y,
            r,
            nw,
            w,
            b: int(K, batch)?,
            n: int(K, n)?,
            k: int(K, k)?,
            // y holds the rows back to back.
            ldy: int(K, n)?,
            eps,
            pf: self.row_prefetch(K, n, 1, k)?,
        }
        .launch(self, K, c, Mode::Pdl)
    }

    /// [`Gpu::gemv_gate_up_silu`] of `bf16(rmsnorm(r_b) * nw)`: the post-attention norm folded in.
    pub fn gemv_gate_up_silu_norm(
        &self,
        y: DPtr<bf16>,
        norm: NormIn,
        w: DPtr<bf16>,
        (batch, inter): (usize, usize),
    ) -> Result<()> {
        const K: &str = "gemv_gate_up_silu_norm";
        Self::check_norm_gemv(K, &norm, batch)?;
        let NormIn {
            x: r,
            w: nw,
            hidden: k,
            eps,
        } = norm;
        need(K, "y", &y, batch * inter)?;
        need(K, "w", &w, 2 * inter * k)?;
        let mut c = cfg((ceil_div(inter, 8), 1, 1), 256);
        c.shared_mem_bytes = (batch * k * 2) as u32;
        GemvGateUpSiluNorm {
            y,
            r,
            nw,
            w,
            b: int(K, batch)?,
            i: int(K, inter)?,
            k: int(K, k)?,
            eps,
            pf: self.row_prefetch(K, inter, 2, k)?,
        }
        .launch(self, K, c, Mode::Pdl)
    }

    /// [`Gpu::gemv_norm`] for the fused qkv projection with [`Gpu::qk_norm_rope_store`] folded
    /// in (`batch <= 8`): the last block to finish each head (one of `counters` per head, zero
    /// between launches, re-armed by the kernel) normalises, rotates and stores it. qkv is
    /// `[batch, (nq + 2 nk) * head_dim]`, head_dim 64 or 128.
    pub fn gemv_norm_qkv(
        &self,
        qkv: DPtr<bf16>,
        layout: QkvLayout,
        norm: NormIn,
        w: DPtr<bf16>,
        post: &QkvPost,
        counters: DPtr<u32>,
    ) -> Result<()> {
        let QkvLayout {
            tokens: batch,
            nq,
            nk,
            head_dim,
            row_stride,
        } = layout;
        let NormIn {
            x: r,
            w: nw,
            hidden: k,
            eps,
        } = norm;
        const K: &str = "gemv_norm_qkv";
        post.refuse_row_scale(K)?;
        let name = match head_dim {
            64 => "gemv_norm_qkv_d64",
            128 => "gemv_norm_qkv_d128",
            _ => {
                return Err(CudaError::Invalid {
                    kernel: K,
                    msg: format!("head_dim {head_dim} is not 64 or 128"),
                })
            }
        };
        Self::check_norm_gemv(K, &norm, batch)?;
        let heads = nq + 2 * nk;
        let n = heads * head_dim;
        check(K, row_stride == n, || {
            format!("row stride {row_stride}: the GEMV writes rows of {n} back to back")
        })?;
        need(K, "qkv", &qkv, batch * n)?;
        need(K, "w", &w, n * k)?;
        need(K, "counters", &counters, heads)?;
        need(K, "positions", &post.positions, batch)?;
        need(K, "slots", &post.slots, batch)?;
        check(K, post.cos_sin.len().is_multiple_of(head_dim), || {
            "cos/sin table is not [max_pos, head_dim]".into()
        })?;
        check(K, post.k_cache.len() == post.v_cache.len(), || {
            "K and V caches differ in size".into()
        })?;
        if let Some((wq, wk)) = &post.qk_norm {
            need(K, "wq", wq, head_dim)?;
            need(K, "wk", wk, head_dim)?;
        }
        let mut lc = cfg(((n / 8) as u32, 1, 1), 256);
        lc.shared_mem_bytes = (batch * k * 2) as u32;
        GemvNormQkv {
            qkv,
            r,
            nw,
            w,
            b: int(K, batch)?,
            k: int(K, k)?,
            eps,
            wq: post.qk_norm.map(|w| w.0),
            wk: post.qk_norm.map(|w| w.1),
            positions: post.positions,
            cos_sin: post.cos_sin,
            k_cache: post.k_cache,
            v_cache: post.v_cache,
            slots: post.slots,
            nq: int(K, nq)?,
            nk: int(K, nk)?,
            counters,
            pf: self.row_prefetch(K, n, 1, k)?,
        }
        .launch(self, name, lc, Mode::Pdl)
    }
}
