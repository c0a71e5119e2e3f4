//! Typed launch wrappers: one method on [`Gpu`] per kernel. Each checks that every buffer is
//! large enough for the shapes it is given and that the shapes suit the kernel (vector widths,
//! head sizes), so a wrong call is an error rather than a stray memory access.

pub mod attention;
pub mod fused;
pub mod rope;
pub mod sample;

use crate::cuda::args::{
    AddBiasRows, EmbeddingGather, FusedAddRmsNorm, GatherRows, Gemv, GemvF32Out, KvStore,
    QkRmsNorm, RmsNorm, RopeNeox, ScaleCols, SiluAndMul, StoreLastToken, TableScatter,
};
pub use crate::cuda::fused::{NormIn, QkvLayout, QkvPost, RowScale};
use crate::cuda::launch::Mode;
use crate::cuda::{CudaError, DPtr, Gpu, Result};
use cudarc::driver::LaunchConfig;
use half::bf16;

pub use crate::cuda::sample::{argmax_scratch_len, LastTokenStore, SamplingBufs, ARGMAX_CHUNKS};

pub(crate) fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Check that `p` holds at least `n` elements.
pub(crate) fn need<T>(kernel: &'static str, what: &str, p: &DPtr<T>, n: usize) -> Result<()> {
    if p.len() < n {
        return Err(CudaError::Invalid {
            kernel,
            msg: format!("{what} holds {} elements, {n} needed", p.len()),
        });
    }
    Ok(())
}

/// Fail with `msg` unless `ok`.
pub(crate) fn check(kernel: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Invalid { kernel, msg: msg() })
    }
}

/// A size as the kernels' `int`.
pub(crate) fn int(kernel: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Invalid {
        kernel,
        msg: format!("{v} does not fit in an int"),
    })
}

pub(crate) fn ceil_div(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}

impl Gpu {
    /// `out[t] = table[ids[t]]`, resolving FUTURE_TOKEN ids from `last_token[tok_row[t]]` (and
    /// writing the resolved id back into `ids`).
    pub fn embedding_gather(
        &self,
        out: DPtr<bf16>,
        table: DPtr<bf16>,
        ids: DPtr<u32>,
        (tok_row, last_token): (DPtr<u32>, DPtr<u32>),
        (tokens, hidden, vocab): (usize, usize, usize),
    ) -> Result<()> {
        const K: &str = "embedding_gather";
        check(K, hidden.is_multiple_of(8), || {
            format!("hidden {hidden} is not a multiple of 8")
        })?;
        need(K, "out", &out, tokens * hidden)?;
        need(K, "table", &table, vocab * hidden)?;
        need(K, "ids", &ids, tokens)?;
        need(K, "tok_row", &tok_row, tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        EmbeddingGather {
            out,
            table,
            ids,
            tok_row,
            last_token,
            num_tokens: int(K, tokens)?,
            hidden: int(K, hidden)?,
            vocab: int(K, vocab)?,
        }
        .launch(self, K, cfg((tokens as u32, 1, 1), 128), Mode::Pdl)
    }

    /// `out[i] = x[rows[i]]` for `n` rows of `width` elements.
    pub fn gather_rows(
        &self,
        out: DPtr<bf16>,
        x: DPtr<bf16>,
        rows: DPtr<u32>,
        n: usize,
        width: usize,
    ) -> Result<()> {
        const K: &str = "gather_rows";
        check(K, width.is_multiple_of(8), || {
            format!("width {width} is not a multiple of 8")
        })?;
        need(K, "out", &out, n * width)?;
        need(K, "rows", &rows, n)?;
        if n == 0 {
            return Ok(());
        }
        GatherRows {
            out,
            x,
            rows,
            n: int(K, n)?,
            width: int(K, width)?,
        }
        .launch(self, K, cfg((n as u32, 1, 1), 128), Mode::Pdl)
    }

    /// `last_token[rows[i]] = tokens[i]` for `n` entries.
    pub fn store_last_token(
        &self,
        last_token: DPtr<u32>,
        rows: DPtr<u32>,
        tokens: DPtr<u32>,
        n: usize,
    ) -> Result<()> {
        const K: &str = "store_last_token";
        need(K, "rows", &rows, n)?;
        need(K, "tokens", &tokens, n)?;
        if n == 0 {
            return Ok(());
        }
        StoreLastToken {
            last_token,
            rows,
            tokens,
            n: int(K, n)?,
        }
        .launch(self, K, cfg((ceil_div(n, 256), 1, 1), 256), Mode::Pdl)
    }

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
        check(K, row_stride >= (nq + nk) * head_dim, || {
            format!("row stride {row_stride} too small")
        })?;
        need(
            K,
            "qkv",
            &qkv,
            tokens.saturating_sub(1) * row_stride + (nq + nk) * head_dim,
        )?;
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

    /// Neox-style RoPE on the q and k heads of the fused qkv buffer, in place. `cos_sin` is the
    /// table from [`crate::cuda::rope::cos_sin_table`]; every position must be below its row count.
    pub fn rope_neox(
        &self,
        qkv: DPtr<bf16>,
        layout: QkvLayout,
        positions: DPtr<i32>,
        cos_sin: DPtr<f32>,
    ) -> Result<()> {
        const K: &str = "rope_neox";
        let QkvLayout {
            tokens,
            nq,
            nk,
            head_dim,
            row_stride,
        } = layout;
        check(K, head_dim.is_multiple_of(2) && head_dim > 0, || {
            format!("head_dim {head_dim} is not even")
        })?;
        check(K, cos_sin.len().is_multiple_of(head_dim), || {
            "cos/sin table is not [max_pos, head_dim]".into()
        })?;
        check(K, row_stride >= (nq + nk) * head_dim, || {
            format!("row stride {row_stride} too small")
        })?;
        need(
            K,
            "qkv",
            &qkv,
            tokens.saturating_sub(1) * row_stride + (nq + nk) * head_dim,
        )?;
        need(K, "positions", &positions, tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        RopeNeox {
            qkv,
            positions,
            cos_sin,
            num_tokens: int(K, tokens)?,
            nq: int(K, nq)?,
            nk: int(K, nk)?,
            head_dim: int(K, head_dim)?,
            row_stride: int(K, row_stride)?,
        }
        .launch(
            self,
            K,
            cfg((ceil_div(tokens * (nq + nk), 4), 1, 1), 128),
            Mode::Pdl,
        )
    }

    /// Store each token's k and v heads (from the fused qkv buffer) into slot `slots[t]` of one
    /// layer's K and V caches (`[num_slots, nk * head_dim]` each). Slots must be below num_slots.
    pub fn kv_store(
        &self,
        (k_cache, v_cache): (DPtr<bf16>, DPtr<bf16>),
        qkv: DPtr<bf16>,
        layout: QkvLayout,
        slots: DPtr<u32>,
    ) -> Result<()> {
        const K: &str = "kv_store";
        let QkvLayout {
            tokens,
            nq,
            nk,
            head_dim,
            row_stride,
        } = layout;
        check(K, (nk * head_dim).is_multiple_of(8), || {
            "nk * head_dim is not a multiple of 8".into()
        })?;
        check(K, row_stride >= (nq + 2 * nk) * head_dim, || {
            format!("row stride {row_stride} too small")
        })?;
        check(K, k_cache.len() == v_cache.len(), || {
            "K and V caches differ in size".into()
        })?;
        need(
            K,
            "qkv",
            &qkv,
            tokens.saturating_sub(1) * row_stride + (nq + 2 * nk) * head_dim,
        )?;
        need(K, "slots", &slots, tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        KvStore {
            k_cache,
            v_cache,
            qkv,
            slots,
            num_tokens: int(K, tokens)?,
            nq: int(K, nq)?,
            nk: int(K, nk)?,
            head_dim: int(K, head_dim)?,
            row_stride: int(K, row_stride)?,
        }
        .launch(self, K, cfg((tokens as u32, 1, 1), 128), Mode::Pdl)
    }

    /// `table[rows[i] * stride + cols[i]] = vals[i]` for `n` writes.
    pub fn table_scatter(
        &self,
        table: DPtr<u32>,
        rows: DPtr<u32>,
        cols: DPtr<u32>,
        vals: DPtr<u32>,
        n: usize,
        stride: usize,
    ) -> Result<()> {
        const K: &str = "table_scatter";
        need(K, "rows", &rows, n)?;
        need(K, "cols", &cols, n)?;
        need(K, "vals", &vals, n)?;
        if n == 0 {
            return Ok(());
        }
        TableScatter {
            table,
            rows,
            cols,
            vals,
            n: int(K, n)?,
            stride: int(K, stride)?,
        }
        .launch(self, K, cfg((ceil_div(n, 256), 1, 1), 256), Mode::Pdl)
    }

    /// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`.
    pub fn silu_and_mul(
        &self,
        out: DPtr<bf16>,
        gate_up: DPtr<bf16>,
        tokens: usize,
        inter: usize,
    ) -> Result<()> {
        const K: &str = "silu_and_mul";
        check(K, inter.is_multiple_of(8), || {
            format!("intermediate size {inter} is not a multiple of 8")
        })?;
        need(K, "out", &out, tokens * inter)?;
        need(K, "gate_up", &gate_up, tokens * 2 * inter)?;
        if tokens == 0 {
            return Ok(());
        }
        SiluAndMul {
            out,
            gate_up,
            num_tokens: int(K, tokens)?,
            inter: int(K, inter)?,
        }
        .launch(
            self,
            K,
            cfg((ceil_div(inter / 8, 128), tokens as u32, 1), 128),
            Mode::Pdl,
        )
    }

    /// `x[t, c] += bias[c]` for `rows` rows of `width` (even) elements, `ld` apart; bf16, f32 add.
    pub fn add_bias_rows(
        &self,
        x: DPtr<bf16>,
        bias: DPtr<bf16>,
        rows: usize,
        width: usize,
        ld: usize,
    ) -> Result<()> {
        const K: &str = "add_bias_rows";
        check(
            K,
            width.is_multiple_of(2) && ld >= width && ld.is_multiple_of(2),
            || format!("width {width} (ld {ld}) must be even and at most ld"),
        )?;
        need(K, "bias", &bias, width)?;
        if rows == 0 {
            return Ok(());
        }
        need(K, "x", &x, (rows - 1) * ld + width)?;
        AddBiasRows {
            x,
            bias,
            rows: int(K, rows)?,
            width: int(K, width)?,
            ld: int(K, ld)?,
        }
        .launch(
            self,
            K,
            cfg((ceil_div(width / 2, 256), rows as u32, 1), 256),
            Mode::Pdl,
        )
    }

    /// Small-batch GEMV: `y[b, n] = sum_k x[b, k] * w[n, k]` for `batch <= 8`; `ldy` is y's row stride.
    pub fn gemv(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (batch, n, k): (usize, usize, usize),
        ldy: usize,
    ) -> Result<()> {
        check_gemv(y.len(), &x, &w, (batch, n, k), ldy)?;
        const K: &str = "gemv_bf16";
        Gemv {
            y,
            x,
            w,
            b: int(K, batch)?,
            n: int(K, n)?,
            k: int(K, k)?,
            ldy: int(K, ldy)?,
        }
        .launch(self, K, cfg((ceil_div(n, 8), 1, 1), 256), Mode::Pdl)
    }

    /// [`Gpu::gemv`] with f32 output (the LM head at small batch: logits stay f32).
    pub fn gemv_f32out(
        &self,
        y: DPtr<f32>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (batch, n, k): (usize, usize, usize),
        ldy: usize,
    ) -> Result<()> {
        check_gemv(y.len(), &x, &w, (batch, n, k), ldy)?;
        const K: &str = "gemv_f32out";
        GemvF32Out {
            y,
            x,
            w,
            b: int(K, batch)?,
            n: int(K, n)?,
            k: int(K, k)?,
            ldy: int(K, ldy)?,
        }
        .launch(self, K, cfg((ceil_div(n, 8), 1, 1), 256), Mode::Pdl)
    }
}

/// The GEMVs' shape checks: 1-8 rows, `k` a multiple of 8, y (`y_len` elements, rows `ldy`
/// apart), x and w large enough.
fn check_gemv(
    y_len: usize,
    x: &DPtr<bf16>,
    w: &DPtr<bf16>,
    (batch, n, k): (usize, usize, usize),
    ldy: usize,
) -> Result<()> {
    const K: &str = "gemv";
    check(K, (1..=8).contains(&batch), || {
        format!("batch {batch} is not in 1..=8")
    })?;
    check(K, k.is_multiple_of(8), || {
        format!("k {k} is not a multiple of 8")
    })?;
    check(K, ldy >= n, || format!("ldy {ldy} < n {n}"))?;
    check(K, y_len >= (batch - 1) * ldy + n, || {
        format!("y holds {y_len} elements, {} needed", (batch - 1) * ldy + n)
    })?;
    need(K, "x", x, batch * k)?;
    need(K, "w", w, n * k)
}

/// Threads per row for the norm kernels: one 8-element chunk per thread up to 1024 threads.
fn norm_block(hidden: usize) -> u32 {
    let chunks = hidden / 8;
    (chunks.div_ceil(32) * 32).clamp(32, 1024) as u32
}
