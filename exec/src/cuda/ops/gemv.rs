//! The small-batch GEMVs' wrappers (1-8 rows; bf16 or f32 out).

use super::{ceil_div, cfg, check, int, need};
use crate::cuda::args::{Gemv, GemvF32Out};
use crate::cuda::launch::Mode;
use crate::cuda::{DPtr, Gpu, Result};
use half::bf16;

impl Gpu {
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
            pf: self.row_prefetch(K, n, 1, k)?,
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
            pf: self.row_prefetch(K, n, 1, k)?,
        }
        .launch(self, K, cfg((ceil_div(n, 8), 1, 1), 256), Mode::Pdl)
    }

    /// [`row_prefetch_bytes`] on this device, as the kernel's `pf` argument.
    pub(crate) fn row_prefetch(
        &self,
        kernel: &'static str,
        warps: usize,
        rows_per_warp: usize,
        k: usize,
    ) -> Result<i32> {
        let shape = RowPrefetch {
            warps,
            rows_per_warp,
            row_bytes: 2 * k,
        };
        int(kernel, row_prefetch_bytes(self.l2_bytes, shape))
    }
}

/// A small-batch GEMV's weight reads: one warp per output, each reading `rows_per_warp` rows
/// (gate and up: 2) of `row_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct RowPrefetch {
    /// Warps in the grid.
    pub warps: usize,
    /// Weight rows each warp reads.
    pub rows_per_warp: usize,
    /// Bytes of one weight row.
    pub row_bytes: usize,
}

/// Bytes of each weight row a small-batch GEMV (or the skinny GEMM, `gemm/skinny.rs`) asks L2
/// for before its PDL wait: whole rows when the whole weight fits in half the L2, else none. A
/// small GEMV is over in a few microseconds, so the rows arriving during the previous kernel's
/// tail are much of its time; a large one is bandwidth-bound throughout, and at Llama-3.1-8B's
/// shapes every prefetch measured slower than none, whole rows of qkv and o (fitting the L2) and
/// the L2's share of gate/up, down and the LM head alike (docs/cuda.md, "Projections").
pub fn row_prefetch_bytes(l2_bytes: usize, g: RowPrefetch) -> usize {
    let weight = g.warps * g.rows_per_warp * g.row_bytes;
    if weight <= l2_bytes / 2 {
        g.row_bytes
    } else {
        0
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

#[cfg(test)]
mod tests {
    use super::*;

    const H100_L2: usize = 50 << 20;

    fn pf(warps: usize, rows_per_warp: usize, k: usize) -> usize {
        let g = RowPrefetch {
            warps,
            rows_per_warp,
            row_bytes: 2 * k,
        };
        row_prefetch_bytes(H100_L2, g)
    }

    #[test]
    fn row_prefetch_is_whole_rows_of_weights_within_half_the_l2_else_none() {
        // Qwen3-0.6B (hidden 1024, inter 3072, qkv 4096 rows): whole rows; its LM head
        // (151936 rows, 311 MB): none.
        for (warps, rows, k) in [
            (4096, 1, 1024),
            (1024, 1, 2048),
            (3072, 2, 1024),
            (1024, 1, 3072),
        ] {
            assert_eq!(pf(warps, rows, k), 2 * k);
        }
        assert_eq!(pf(151_936, 1, 1024), 0);
        // Llama-3.1-8B (hidden 4096, inter 14336, vocab 128256): none anywhere.
        for (warps, rows, k) in [
            (6144, 1, 4096),
            (4096, 1, 4096),
            (14_336, 2, 4096),
            (4096, 1, 14_336),
            (128_256, 1, 4096),
        ] {
            assert_eq!(pf(warps, rows, k), 0, "{warps} x {rows} x {k}");
        }
        // No L2 (or one the caller zeroes to turn it off): no prefetch.
        let g = RowPrefetch {
            warps: 64,
            rows_per_warp: 1,
            row_bytes: 2048,
        };
        assert_eq!(row_prefetch_bytes(0, g), 0);
    }
}
