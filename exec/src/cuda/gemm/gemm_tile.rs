//! Launch wrapper for the tiled tensor-core GEMM (`kernels/gemm_tile.cu`): `y = x wᵀ` for 17-64
//! tokens through shared-memory stages, with the RMSNorm before a projection, the SiLU-and-mul
//! after gate/up and the residual add after o/down folded in (6 launches per layer instead of 9
//! with cuBLAS).

use crate::cuda::args::GemmTile;
use crate::cuda::launch::Mode;
use crate::cuda::ops::{check, int, need};
use crate::cuda::skinny::{GemmIo, SkinnyScratch, SKINNY_COUNTERS, SKINNY_MAX_SPLITS};
use crate::cuda::{DPtr, Gpu, Result};
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Most tokens (rows of x) one launch takes.
pub const TILE_MAX_M: usize = 64;
/// k per shared-memory stage: K (per split) must be a multiple of it.
const TILE_KC: usize = 128;
/// Ring depths compiled (stages in flight while one is consumed: one fewer).
pub const TILE_DEPTHS: [usize; 2] = [4, 6];
/// `TilePlan::flags`: no L2 prefetch of the weight slice before waiting on the previous kernel.
pub const TILE_NO_PREFETCH: i32 = 1;
/// `TilePlan::flags`: each column tile starts its K loop at a different chunk.
pub const TILE_ROTATE: i32 = 2;
/// `TilePlan::flags`: the norm epilogues' weights already hold the RMSNorm weight in their
/// columns (`W diag(norm)`, built at load): only 1 / rms is applied and `norm` is not read.
pub const TILE_PRESCALED: i32 = 4;

/// What the GEMM does around the product.
#[derive(Clone, Copy, Debug)]
pub enum TileEpilogue {
    /// `y = bf16(bf16(x wᵀ) + y)`: o/down added into the residual stream in place.
    ResAdd,
    /// x is the residual stream: `y = bf16(((x ⊙ norm) wᵀ) / rms(x))`, the RMSNorm with weight
    /// `norm` folded in.
    Norm {
        /// The RMSNorm weight (`k` elements).
        norm: DPtr<bf16>,
        /// The RMSNorm epsilon.
        eps: f32,
    },
    /// As `Norm` over `w = [gate; up]` (`[2 I, k]`), then `y[m, i] = silu(gate) * up` (`[m, I]`).
    NormSilu {
        /// The RMSNorm weight (`k` elements).
        norm: DPtr<bf16>,
        /// The RMSNorm epsilon.
        eps: f32,
    },
}

/// An epilogue's kind (what a plan depends on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKind {
    /// [`TileEpilogue::ResAdd`].
    ResAdd,
    /// [`TileEpilogue::Norm`].
    Norm,
    /// [`TileEpilogue::NormSilu`].
    NormSilu,
}

impl TileEpilogue {
    /// Its kind.
    pub fn kind(&self) -> TileKind {
        match self {
            TileEpilogue::ResAdd => TileKind::ResAdd,
            TileEpilogue::Norm { .. } => TileKind::Norm,
            TileEpilogue::NormSilu { .. } => TileKind::NormSilu,
        }
    }

    fn silu(&self) -> bool {
        self.kind().silu()
    }
}

impl TileKind {
    fn silu(self) -> bool {
        self == TileKind::NormSilu
    }
}

/// A launch's layout: `nj` n8 tiles per CTA (`8 nj` weight rows) and `splits` CTAs along K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// n8 tiles (of weight rows) per CTA.
    pub nj: usize,
    /// CTAs along K (ResAdd only; the norm epilogues need a row's whole sum of squares).
    pub splits: usize,
    /// Shared-memory ring depth (one of [`TILE_DEPTHS`]).
    pub stages: usize,
    /// Kernel switches ([`TILE_NO_PREFETCH`], [`TILE_ROTATE`]).
    pub flags: i32,
}

/// Column tiles (CTAs along N) of a launch over a `[n, k]` weight.
pub fn tile_columns(n: usize, silu: bool, nj: usize) -> usize {
    if silu {
        (n / 2).div_ceil(4 * nj)
    } else {
        n.div_ceil(8 * nj)
    }
}

/// The tile widths compiled for an epilogue.
fn widths(kind: TileKind) -> &'static [usize] {
    match kind {
        TileKind::ResAdd | TileKind::Norm => &[4, 8],
        TileKind::NormSilu => &[4, 6, 8],
    }
}

/// The plan for a `[n, k]` weight on `sms` SMs, or None when the shape does not suit the kernel
/// (k not a multiple of 128; the caller then uses cuBLAS). One wave: the narrowest tile whose
/// column tiles fit on the SMs; ResAdd splits K over the most CTAs that still fit in the wave
/// (N = 1024: 32 tiles x 4 splits on 132 SMs).
pub fn tile_plan(n: usize, k: usize, epi: TileKind, sms: usize) -> Option<TilePlan> {
    if n == 0 || k == 0 || !k.is_multiple_of(TILE_KC) || (epi.silu() && !n.is_multiple_of(2)) {
        return None;
    }
    let sms = sms.max(1);
    let ws = widths(epi);
    let nj = ws
        .iter()
        .copied()
        .find(|&nj| tile_columns(n, epi.silu(), nj) <= sms)
        .unwrap_or(ws[ws.len() - 1]);
    let tiles = tile_columns(n, epi.silu(), nj);
    if tiles > SKINNY_COUNTERS {
        return None;
    }
    let splits = match epi {
        TileKind::ResAdd => (1..=SKINNY_MAX_SPLITS)
            .rev()
            .find(|&s| tiles * s <= sms && k.is_multiple_of(TILE_KC * s))
            .unwrap_or(1),
        _ => 1,
    };
    Some(TilePlan {
        nj,
        splits,
        // Run 14: 4 stages as fast as 6 or faster for every shape (not latency-bound).
        stages: 4,
        flags: 0,
    })
}

impl Gpu {
    /// `y = epilogue(x[m, k] w[n, k]ᵀ)` for `1 <= m <= 64` (see [`TileEpilogue`]; for
    /// `NormSilu` the output has `n / 2` columns). `ldy` is y's row stride; x's is `k`.
    pub fn gemm_tile(
        &self,
        io: GemmIo,
        scratch: &SkinnyScratch,
        (m, n, k): (usize, usize, usize),
        epi: TileEpilogue,
        plan: TilePlan,
    ) -> Result<()> {
        const K: &str = "gemm_tile";
        let GemmIo { y, x, w, ldy } = io;
        check(K, (1..=TILE_MAX_M).contains(&m), || {
            format!("m {m} is not in 1..={TILE_MAX_M}")
        })?;
        check(K, widths(epi.kind()).contains(&plan.nj), || {
            format!("{} n8 tiles per CTA are not compiled for {epi:?}", plan.nj)
        })?;
        let resadd = epi.kind() == TileKind::ResAdd;
        check(
            K,
            (1..=SKINNY_MAX_SPLITS).contains(&plan.splits) && (resadd || plan.splits == 1),
            || format!("{} splits for {epi:?}", plan.splits),
        )?;
        check(K, k > 0 && k.is_multiple_of(TILE_KC * plan.splits), || {
            format!(
                "k {k} is not a positive multiple of {TILE_KC} x {} splits",
                plan.splits
            )
        })?;
        check(K, TILE_DEPTHS.contains(&plan.stages), || {
            format!("ring depth {} is not compiled", plan.stages)
        })?;
        let tiles = tile_columns(n, epi.silu(), plan.nj);
        let nout = io.check(K, (m, n, k), epi.silu(), plan.splits, scratch, tiles)?;
        let (norm, eps, mode) = match epi {
            TileEpilogue::ResAdd => (None, 0f32, "resadd"),
            TileEpilogue::Norm { norm, eps } => (Some(norm), eps, "norm"),
            TileEpilogue::NormSilu { norm, eps } => (Some(norm), eps, "silu"),
        };
        if let Some(nw) = norm.filter(|_| plan.flags & TILE_PRESCALED == 0) {
            need(K, "norm weight", &nw, k)?;
        }
        if nout == 0 {
            return Ok(());
        }
        let name = tile_entry(mode, plan.nj, plan.stages);
        let smem = plan.stages * (TILE_MAX_M + 8 * plan.nj) * TILE_KC * 2
            + if resadd { 0 } else { k / plan.splits * 2 };
        let c = LaunchConfig {
            grid_dim: (tiles as u32, plan.splits as u32, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        GemmTile {
            y,
            x,
            w,
            nw: norm,
            part: scratch.part,
            counters: scratch.counters,
            m: int(K, m)?,
            n: int(K, n)?,
            k: int(K, k)?,
            ldy: int(K, ldy)?,
            s: int(K, plan.splits)?,
            eps,
            flags: plan.flags,
        }
        .launch(self, name, c, Mode::PdlOptIn)
    }
}

/// The entry point for an epilogue, tile width and ring depth.
fn tile_entry(mode: &str, nj: usize, stages: usize) -> &'static str {
    macro_rules! table {
        ($($mode:literal $nj:literal $st:literal),* $(,)?) => {
            match (mode, nj, stages) {
                $(($mode, $nj, $st) => concat!("gemm_tile_", $mode, "_n", $nj, "_s", $st),)*
                _ => "gemm_tile_unknown",
            }
        };
    }
    table!(
        "resadd" 4 4, "resadd" 4 6, "resadd" 8 4, "resadd" 8 6,
        "norm" 4 4, "norm" 4 6, "norm" 8 4, "norm" 8 6,
        "silu" 4 4, "silu" 4 6, "silu" 6 4, "silu" 6 6, "silu" 8 4, "silu" 8 6,
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
            .find(|s| s.file == "gemm_tile.cu")
            .expect("gemm_tile.cu is listed");
        let mut n = 0;
        for (mode, ws) in [
            ("resadd", &[4usize, 8][..]),
            ("norm", &[4, 8]),
            ("silu", &[4, 6, 8]),
        ] {
            for &nj in ws {
                for st in TILE_DEPTHS {
                    let e = tile_entry(mode, nj, st);
                    assert!(src.entries.contains(&e), "{e} not listed");
                    let args = crate::cuda::args::GemmTile::KERNELS;
                    assert!(args.contains(&e), "{e} has no argument struct");
                    n += 1;
                }
            }
        }
        assert_eq!(src.entries.len(), n);
    }

    #[test]
    fn qwen3_plans_fill_one_wave() {
        // Qwen3-0.6B shapes on a 132-SM H100.
        assert_eq!(
            tile_plan(4096, 1024, TileKind::Norm, 132),
            Some(TilePlan {
                nj: 4,
                splits: 1,
                stages: 4,
                flags: 0
            })
        );
        assert_eq!(
            tile_plan(6144, 1024, TileKind::NormSilu, 132),
            Some(TilePlan {
                nj: 6,
                splits: 1,
                stages: 4,
                flags: 0
            })
        );
        let o = tile_plan(1024, 2048, TileKind::ResAdd, 132);
        assert_eq!(
            o,
            Some(TilePlan {
                nj: 4,
                splits: 4,
                stages: 4,
                flags: 0
            })
        );
        let down = tile_plan(1024, 3072, TileKind::ResAdd, 132);
        assert_eq!(
            down,
            Some(TilePlan {
                nj: 4,
                splits: 4,
                stages: 4,
                flags: 0
            })
        );
        // k not a multiple of 128 per split: no plan (cuBLAS instead).
        assert_eq!(tile_plan(1024, 1000, TileKind::ResAdd, 132), None);
        // Splits only where k divides: 1920 = 15 x 128 splits 3 or 5 ways, not 4.
        let p = tile_plan(1024, 1920, TileKind::ResAdd, 132).expect("plan");
        assert!(
            1920 % (128 * p.splits) == 0 && 32 * p.splits <= 132,
            "{p:?}"
        );
    }
}
