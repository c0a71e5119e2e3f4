//! Typed launch wrappers: one method on [`Gpu`] per kernel (the norms in `norm.rs`, the GEMVs
//! in `gemv.rs`, the fused kernels in `fused.rs`, attention and sampling in theirs). Each
//! checks that every buffer is large enough for the shapes it is given and that the shapes suit
//! the kernel (vector widths, head sizes), so a wrong call is an error rather than a stray
//! memory access.

pub mod attention;
pub mod fused;
pub mod gemv;
mod norm;
pub mod prompt_logprobs;
pub mod rope;
pub mod sample;

use crate::cuda::args::{
    AddBiasRows, EmbeddingGather, GatherRows, KvStore, RopeNeox, SiluAndMul, StoreLastToken,
    TableScatter,
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

/// A grid's y extent for `rows` rows of a kernel whose blocks stride over rows (y is at most
/// 65535: a 64 x 1024-token prefill has 65536).
fn grid_rows(rows: usize) -> u32 {
    rows.min(65535) as u32
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
        layout.need_rows(K, &qkv, nq + nk)?;
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
        check(K, k_cache.len() == v_cache.len(), || {
            "K and V caches differ in size".into()
        })?;
        layout.need_rows(K, &qkv, nq + 2 * nk)?;
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
            cfg((ceil_div(inter / 8, 128), grid_rows(tokens), 1), 128),
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
            cfg((ceil_div(width / 2, 256), grid_rows(rows), 1), 256),
            Mode::Pdl,
        )
    }
}
