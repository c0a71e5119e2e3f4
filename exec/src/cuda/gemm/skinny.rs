//! Launch wrapper for the skinny tensor-core GEMM (`kernels/gemm_skinny.cu`): `y = x wᵀ` for
//! up to 64 tokens, weights streamed by one wave of CTAs straight into tensor-core fragments
//! (K can be split over CTAs, though no split measured faster), with the residual add or
//! SiLU-and-mul folded into the epilogue. Each CTA asks L2 for its slab before the PDL wait only
//! where the GEMVs prefetch rows ([`crate::cuda::ops::gemv::row_prefetch_bytes`]).

use crate::cuda::args::GemmSkinny;
use crate::cuda::launch::Mode;
use crate::cuda::ops::{cfg, check, int, need};
use crate::cuda::{DPtr, Gpu, Result};
use half::bf16;

/// Most tokens (rows of x) the skinny GEMM takes (four 16-row mma tiles).
pub const SKINNY_MAX_M: usize = 64;
/// Most K splits a plan may use (sizes the partial-sum scratch).
pub const SKINNY_MAX_SPLITS: usize = 8;
/// Column-tile counters a scratch must hold (≥ the most column tiles of any launch).
pub const SKINNY_COUNTERS: usize = 4096;

/// What the GEMM does with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkinnyEpilogue {
    /// `y = bf16(x wᵀ)`.
    Plain,
    /// `y = bf16(bf16(x wᵀ) + y)`: the projection added into the residual stream in place.
    ResAdd,
    /// `w` is `[gate; up]` (`[2 I, k]`), `y[m, i] = silu(gate) * up` (`[m, I]`).
    SiluMul,
}

/// How a launch is laid out: `wn` warps along N per CTA (1, 2 or 4; 32 columns each, 16 output
/// columns for SiLU), and `splits` CTAs along K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkinnyPlan {
    /// Warps along N per CTA.
    pub wn: usize,
    /// CTAs along K.
    pub splits: usize,
}

/// The per-launch scratch of split-K plans: f32 partials (`splits * m * n`) and one counter
/// per column tile (zero between launches; each launch's last CTA re-arms its counters).
#[derive(Clone, Copy, Debug)]
pub struct SkinnyScratch {
    /// f32 partial sums.
    pub part: DPtr<f32>,
    /// Column-tile counters.
    pub counters: DPtr<u32>,
}

/// Output columns of one warp.
fn warp_cols(epi: SkinnyEpilogue) -> usize {
    if epi == SkinnyEpilogue::SiluMul {
        16
    } else {
        32
    }
}

/// Column tiles (CTAs along N) of a launch over a `[n, k]` weight.
pub fn skinny_tiles(n: usize, epi: SkinnyEpilogue, wn: usize) -> usize {
    let nout = if epi == SkinnyEpilogue::SiluMul {
        n / 2
    } else {
        n
    };
    nout.div_ceil(warp_cols(epi) * wn)
}

/// The default plan for a `[n, k]` weight on a device with `sms` SMs. One 256-thread CTA fits
/// per SM (140-188 registers), so the grid is kept to one wave: the fewest warps along N (1, 2,
/// 4) whose column tiles fit on the SMs. K is not split: in the measured sweep every split was
/// slower than none, even for the 32 column tiles of N = 1024 (o at 16 tokens: 6.4 µs unsplit,
/// 8.3 µs with 4 splits), so split plans are only used when asked for.
pub fn skinny_plan(n: usize, _k: usize, epi: SkinnyEpilogue, sms: usize) -> SkinnyPlan {
    let sms = sms.max(1);
    let wn = [1, 2, 4]
        .into_iter()
        .find(|&wn| skinny_tiles(n, epi, wn) <= sms)
        .unwrap_or(4);
    SkinnyPlan { wn, splits: 1 }
}

/// The operands of a tensor-core GEMM launch (`y = x wᵀ`, y's row stride `ldy`).
#[derive(Clone, Copy, Debug)]
pub struct GemmIo {
    /// The output, `[m, ldy]`.
    pub y: DPtr<bf16>,
    /// The input, `[m, k]`.
    pub x: DPtr<bf16>,
    /// The weight, `[n, k]`.
    pub w: DPtr<bf16>,
    /// y's row stride.
    pub ldy: usize,
}

impl GemmIo {
    /// The checks the skinny and tiled GEMMs share: `[gate; up]` rows even for SiLU, y's stride,
    /// the extents of y, x and w, and with `splits` > 1 the partials and one counter per column
    /// tile. Returns the output columns.
    pub(crate) fn check(
        &self,
        kernel: &'static str,
        (m, n, k): (usize, usize, usize),
        silu: bool,
        splits: usize,
        scratch: &SkinnyScratch,
        tiles: usize,
    ) -> Result<usize> {
        let nout = if silu {
            check(kernel, n.is_multiple_of(2), || {
                format!("[gate; up] rows {n} odd")
            })?;
            n / 2
        } else {
            n
        };
        let ldy = self.ldy;
        check(kernel, ldy >= nout, || {
            format!("ldy {ldy} < {nout} columns")
        })?;
        need(kernel, "y", &self.y, (m - 1) * ldy + nout)?;
        need(kernel, "x", &self.x, m * k)?;
        need(kernel, "w", &self.w, n * k)?;
        if splits > 1 {
            need(kernel, "partials", &scratch.part, splits * m * n)?;
            need(kernel, "counters", &scratch.counters, tiles)?;
        }
        Ok(nout)
    }
}

impl Gpu {
    /// `y[m, :] = epilogue(x[m, k] w[n, k]ᵀ)` for `1 <= m <= 64` (see [`SkinnyEpilogue`]; for
    /// `SiluMul` the output has `n / 2` columns). `ldy` is y's row stride; `k % 8 == 0`.
    pub fn gemm_skinny(
        &self,
        io: GemmIo,
        scratch: &SkinnyScratch,
        (m, n, k): (usize, usize, usize),
        epi: SkinnyEpilogue,
        plan: SkinnyPlan,
    ) -> Result<()> {
        const K: &str = "gemm_skinny";
        let GemmIo { y, x, w, ldy } = io;
        check(K, (1..=SKINNY_MAX_M).contains(&m), || {
            format!("m {m} is not in 1..={SKINNY_MAX_M}")
        })?;
        check(K, k.is_multiple_of(8) && k > 0, || {
            format!("k {k} is not a positive multiple of 8")
        })?;
        check(K, [1, 2, 4].contains(&plan.wn), || {
            format!("wn {} is not 1, 2 or 4", plan.wn)
        })?;
        check(
            K,
            (1..=SKINNY_MAX_SPLITS).contains(&plan.splits) && plan.splits <= k.div_ceil(32),
            || format!("{} splits for k {k}", plan.splits),
        )?;
        let tiles = skinny_tiles(n, epi, plan.wn);
        let nout = io.check(
            K,
            (m, n, k),
            epi == SkinnyEpilogue::SiluMul,
            plan.splits,
            scratch,
            tiles,
        )?;
        if nout == 0 {
            return Ok(());
        }
        let mt = m.div_ceil(16);
        let mode = match epi {
            SkinnyEpilogue::Plain => "plain",
            SkinnyEpilogue::ResAdd => "resadd",
            SkinnyEpilogue::SiluMul => "silu",
        };
        let name = skinny_entry(mode, mt, plan.wn);
        let c = cfg((tiles as u32, plan.splits as u32, 1), 256);
        GemmSkinny {
            y,
            x,
            w,
            part: scratch.part,
            counters: scratch.counters,
            m: int(K, m)?,
            n: int(K, n)?,
            k: int(K, k)?,
            ldy: int(K, ldy)?,
            s: int(K, plan.splits)?,
            pf: self.row_prefetch(K, n, 1, k)?,
        }
        .launch(self, name, c, Mode::Pdl)
    }
}

/// The entry point for an epilogue, 16-row tile count and warps along N.
fn skinny_entry(mode: &str, mt: usize, wn: usize) -> &'static str {
    macro_rules! table {
        ($($mode:literal $mt:literal $wn:literal),* $(,)?) => {
            match (mode, mt, wn) {
                $(($mode, $mt, $wn) => concat!("gemm_skinny_", $mode, "_m", $mt, "_w", $wn),)*
                _ => "gemm_skinny_unknown",
            }
        };
    }
    table!(
        "plain" 1 1, "plain" 1 2, "plain" 1 4, "plain" 2 1, "plain" 2 2, "plain" 2 4,
        "plain" 3 1, "plain" 3 2, "plain" 3 4, "plain" 4 1, "plain" 4 2, "plain" 4 4,
        "resadd" 1 1, "resadd" 1 2, "resadd" 1 4, "resadd" 2 1, "resadd" 2 2, "resadd" 2 4,
        "resadd" 3 1, "resadd" 3 2, "resadd" 3 4, "resadd" 4 1, "resadd" 4 2, "resadd" 4 4,
        "silu" 1 1, "silu" 1 2, "silu" 1 4, "silu" 2 1, "silu" 2 2, "silu" 2 4,
        "silu" 3 1, "silu" 3 2, "silu" 3 4, "silu" 4 1, "silu" 4 2, "silu" 4 4,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::KERNEL_SOURCES;

    #[test]
    fn every_entry_is_compiled() {
        let src = KERNEL_SOURCES
            .iter()
            .find(|s| s.file == "gemm_skinny.cu")
            .expect("gemm_skinny.cu is listed");
        for mode in ["plain", "resadd", "silu"] {
            for mt in 1..=4 {
                for wn in [1, 2, 4] {
                    let e = skinny_entry(mode, mt, wn);
                    assert!(src.entries.contains(&e), "{e} not listed");
                    let args = crate::cuda::args::GemmSkinny::KERNELS;
                    assert!(args.contains(&e), "{e} has no argument struct");
                }
            }
        }
        assert_eq!(src.entries.len(), 36);
    }

    #[test]
    fn default_plans_cover_the_sms() {
        // Qwen3-0.6B shapes on a 132-SM H100.
        let p = skinny_plan(4096, 1024, SkinnyEpilogue::Plain, 132);
        assert_eq!(p, SkinnyPlan { wn: 1, splits: 1 });
        let p = skinny_plan(1024, 2048, SkinnyEpilogue::ResAdd, 132);
        assert_eq!(p, SkinnyPlan { wn: 1, splits: 1 });
        let p = skinny_plan(1024, 3072, SkinnyEpilogue::ResAdd, 132);
        assert_eq!(p, SkinnyPlan { wn: 1, splits: 1 });
        // 192 one-warp tiles would need two waves: two warps along N instead.
        let p = skinny_plan(6144, 1024, SkinnyEpilogue::SiluMul, 132);
        assert_eq!(p, SkinnyPlan { wn: 2, splits: 1 });
        // Wide outputs take more warps along N to stay in one wave.
        assert_eq!(skinny_plan(151936, 1024, SkinnyEpilogue::Plain, 132).wn, 4);
    }
}
