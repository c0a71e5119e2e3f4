//! The norm kernels' wrappers: RMSNorm (optionally of gathered rows), the residual add with
//! RMSNorm, the per-head q/k norm, and the fold of a norm weight into a projection at load.

use super::{ceil_div, cfg, check, int, need};
use crate::cuda::args::{FusedAddRmsNorm, QkRmsNorm, RmsNorm, ScaleCols};
use crate::cuda::launch::Mode;
use crate::cuda::ops::QkvLayout;
use crate::cuda::{DPtr, Gpu, Result};
use cudarc::driver::LaunchConfig;
use half::bf16;

impl Gpu {
    /// `out[r, c] = w[r, c] * nw[c]` for a `[rows, cols]` weight: an RMSNorm weight folded into
    /// the columns of the projection after it (at load). `out` may be `w` (in place).
    pub fn scale_cols(
        &self,
        out: DPtr<bf16>,
        w: DPtr<bf16>,
        nw: DPtr<bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const K: &str = "scale_cols";
        check(K, cols.is_multiple_of(8), || {
            format!("cols {cols} is not a multiple of 8")
        })?;
        need(K, "out", &out, rows * cols)?;
        need(K, "w", &w, rows * cols)?;
        need(K, "nw", &nw, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (ceil_div(rows * cols / 8, 256).min(4096), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        ScaleCols {
            out,
            w,
            nw,
            rows: int(K, rows)?,
            cols: int(K, cols)?,
        }
        .launch(self, K, cfg, Mode::Pdl)
    }

    /// `out = x / rms(x) * w` row-wise.
    pub fn rmsnorm(
        &self,
        out: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        tokens: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_rows(out, x, None, w, (tokens, hidden), eps)
    }

    /// `out[i] = rmsnorm(x[rows[i]]) * w` for `i < n`: [`Gpu::gather_rows`] and [`Gpu::rmsnorm`]
    /// in one launch (the rows that need logits, before the LM head).
    pub fn rmsnorm_gather(
        &self,
        out: DPtr<bf16>,
        x: DPtr<bf16>,
        rows: DPtr<u32>,
        w: DPtr<bf16>,
        (n, hidden): (usize, usize),
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_rows(out, x, Some(rows), w, (n, hidden), eps)
    }

    /// The `rmsnorm` kernel over `tokens` rows of `x`, or over the rows `rows` picks.
    fn rmsnorm_rows(
        &self,
        out: DPtr<bf16>,
        x: DPtr<bf16>,
        rows: Option<DPtr<u32>>,
        w: DPtr<bf16>,
        (tokens, hidden): (usize, usize),
        eps: f32,
    ) -> Result<()> {
        const K: &str = "rmsnorm";
        check(K, hidden.is_multiple_of(8), || {
            format!("hidden {hidden} is not a multiple of 8")
        })?;
        need(K, "out", &out, tokens * hidden)?;
        need(K, "w", &w, hidden)?;
        match &rows {
            Some(r) => {
                check(K, hidden > 0, || "hidden is 0".into())?;
                need(K, "rows", r, tokens)?;
                // Row indices are device data: the kernel reads whole rows, so x must at least
                // hold one; the caller's indices come from validated step inputs.
                need(K, "x", &x, hidden)?;
            }
            None => need(K, "x", &x, tokens * hidden)?,
        }
        if tokens == 0 {
            return Ok(());
        }
        RmsNorm {
            out,
            x,
            w,
            num_tokens: int(K, tokens)?,
            hidden: int(K, hidden)?,
            eps,
            rows,
        }
        .launch(
            self,
            K,
            cfg((tokens as u32, 1, 1), norm_block(hidden)),
            Mode::Pdl,
        )
    }

    /// `residual = bf16(x + residual); x = residual / rms(residual) * w`, in place.
    pub fn fused_add_rmsnorm(
        &self,
        x: DPtr<bf16>,
        residual: DPtr<bf16>,
        w: DPtr<bf16>,
        tokens: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        const K: &str = "fused_add_rmsnorm";
        check(K, hidden.is_multiple_of(8), || {
            format!("hidden {hidden} is not a multiple of 8")
        })?;
        need(K, "x", &x, tokens * hidden)?;
        need(K, "residual", &residual, tokens * hidden)?;
        need(K, "w", &w, hidden)?;
        if tokens == 0 {
            return Ok(());
        }
        FusedAddRmsNorm {
            x,
            residual,
            w,
            num_tokens: int(K, tokens)?,
            hidden: int(K, hidden)?,
            eps,
        }
        .launch(
            self,
            K,
            cfg((tokens as u32, 1, 1), norm_block(hidden)),
            Mode::Pdl,
        )
    }

    /// Per-head RMSNorm of the q and k heads inside the fused qkv buffer, in place.
    pub fn qk_rmsnorm(
        &self,
        qkv: DPtr<bf16>,
        layout: QkvLayout,
        (wq, wk): (DPtr<bf16>, DPtr<bf16>),
        eps: f32,
    ) -> Result<()> {
        const K: &str = "qk_rmsnorm";
        let QkvLayout {
            tokens,
            nq,
            nk,
            head_dim,
            row_stride,
        } = layout;
        check(K, head_dim.is_multiple_of(64) && head_dim <= 256, || {
            format!("head_dim {head_dim} is not 64, 128, 192 or 256")
        })?;
        layout.need_rows(K, &qkv, nq + nk)?;
        need(K, "wq", &wq, head_dim)?;
        need(K, "wk", &wk, head_dim)?;
        if tokens == 0 {
            return Ok(());
        }
        QkRmsNorm {
            qkv,
            wq,
            wk,
            num_tokens: int(K, tokens)?,
            nq: int(K, nq)?,
            nk: int(K, nk)?,
            head_dim: int(K, head_dim)?,
            row_stride: int(K, row_stride)?,
            eps,
        }
        .launch(
            self,
            K,
            cfg((ceil_div(tokens * (nq + nk), 4), 1, 1), 128),
            Mode::Pdl,
        )
    }
}

/// Threads per row for the norm kernels: one 8-element chunk per thread up to 1024 threads.
fn norm_block(hidden: usize) -> u32 {
    let chunks = hidden / 8;
    (chunks.div_ceil(32) * 32).clamp(32, 1024) as u32
}
