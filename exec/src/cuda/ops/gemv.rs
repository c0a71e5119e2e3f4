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
