//! Launch wrapper for greedy decoding's LM head with the argmax folded in
//! (`kernels/lm_head_argmax.cu`): the token of each row without writing its f32 logits.

use super::ops::{check, int, need};
use super::sample::LastTokenStore;
use super::{DPtr, DriverCtx, Gpu, Result};
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Most rows the LM-head argmax takes (four 16-row mma tiles).
pub const LM_ARGMAX_MAX_M: usize = 64;

/// `u32`s of scratch [`Gpu::lm_head_argmax`] needs for `ctas` CTAs (one per SM): a counter (zero
/// before the first launch; every launch leaves it zero) and a (value, index) pair per row per
/// CTA, placed by the kernel's fixed 64-row stride whatever a launch's row count.
pub fn lm_argmax_scratch_len(ctas: usize) -> usize {
    1 + 2 * LM_ARGMAX_MAX_M * ctas
}

/// The kernel instance for `m` rows of width `k` and its ring slots (`lm_head_argmax.cu`'s
/// LA_ENTRY lines): x's fragments take `16 ⌈m/16⌉ k / 512` registers per thread, so width 1024
/// at up to 64 rows and width 2048 up to 32.
fn instance(m: usize, k: usize) -> Option<(&'static str, usize)> {
    if !(1..=LM_ARGMAX_MAX_M).contains(&m) {
        return None;
    }
    Some(match (m.div_ceil(16), k) {
        (1, 1024) => ("lm_head_argmax_m1_k1024", 12),
        (2, 1024) => ("lm_head_argmax_m2_k1024", 12),
        (3, 1024) => ("lm_head_argmax_m3_k1024", 12),
        (4, 1024) => ("lm_head_argmax_m4_k1024", 12),
        (1, 2048) => ("lm_head_argmax_m1_k2048", 6),
        (2, 2048) => ("lm_head_argmax_m2_k2048", 6),
        _ => return None,
    })
}

/// Dynamic shared memory of a launch over `m` rows of width `k`: the ring of 8-row weight tiles,
/// then the two buffers of the 8 warps' partial tiles (8 columns × (rows + 4) f32 each).
pub fn lm_argmax_smem(m: usize, k: usize) -> usize {
    let slots = instance(m, k).map_or(0, |(_, s)| s);
    slots * 8 * k * 2 + 2 * 8 * 8 * (m.div_ceil(16) * 16 + 4) * 4
}

impl Gpu {
    /// Whether [`Gpu::lm_head_argmax`] takes `m` rows of width `k` on this device (an instance
    /// exists and its shared memory fits a block).
    pub fn lm_argmax_fits(&self, m: usize, k: usize) -> bool {
        instance(m, k).is_some() && lm_argmax_smem(m, k) <= self.smem_per_block
    }

    /// `out[r] = argmax_v (x[r, :] · w[v, :])` for `m` rows (f32 accumulation; lowest index on
    /// ties; NaN never wins; a row of only -inf/NaN gives 0), `w` `[vocab, k]`. `scratch` is
    /// [`lm_argmax_scratch_len`]`(ctas)` `u32`s reserved for this use, zero before the first
    /// launch; the launch uses `min(ctas, SMs)` CTAs. With `store`, each token is also written to
    /// `last_token[rows[r]]`.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_argmax(
        &self,
        out: DPtr<u32>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        scratch: DPtr<u32>,
        (m, vocab, k): (usize, usize, usize),
        store: Option<LastTokenStore>,
    ) -> Result<()> {
        const K: &str = "lm_head_argmax";
        check(K, self.lm_argmax_fits(m, k), || {
            format!(
                "{m} rows of width {k}: needs 1..={LM_ARGMAX_MAX_M} rows of width 1024 (or up to 32 of 2048) and {} bytes of shared memory per block (the device has {})",
                lm_argmax_smem(m, k),
                self.smem_per_block
            )
        })?;
        need(K, "out", &out, m)?;
        need(K, "x", &x, m * k)?;
        need(K, "w", &w, vocab * k)?;
        if let Some(st) = &store {
            need(K, "rows", &st.rows, m)?;
        }
        let ctas = self
            .sms
            .min((scratch.len().saturating_sub(1)) / (2 * LM_ARGMAX_MAX_M));
        check(K, ctas > 0, || {
            format!("scratch of {} u32s holds no CTA's partials", scratch.len())
        })?;
        let (name, _) = instance(m, k).expect("lm_argmax_fits checked the instance");
        let smem = lm_argmax_smem(m, k);
        let f = self.kernels.get_with_smem(name, smem)?;
        let (mi, vi) = (int(K, m)?, int(K, vocab)?);
        let (o, xa, wa, sc) = (out.addr(), x.addr(), w.addr(), scratch.addr());
        let (lt, rw) = store.map_or((0, 0), |st| (st.last_token.addr(), st.rows.addr()));
        let mut b = self.launcher(f);
        b.arg(&o)
            .arg(&xa)
            .arg(&wa)
            .arg(&sc)
            .arg(&mi)
            .arg(&vi)
            .arg(&lt)
            .arg(&rw);
        let c = LaunchConfig {
            grid_dim: (ctas as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        unsafe { b.launch(c) }.ctx(name).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_and_smem_sizes() {
        assert_eq!(lm_argmax_scratch_len(132), 1 + 2 * 64 * 132);
        // Qwen3-0.6B (width 1024): 12 slots of 16 KB and the partials, within the H100's
        // 227 KB per block at every row count.
        assert_eq!(lm_argmax_smem(64, 1024), 12 * 16384 + 2 * 8 * 8 * 68 * 4);
        assert_eq!(lm_argmax_smem(1, 1024), 12 * 16384 + 2 * 8 * 8 * 20 * 4);
        for m in 1..=64 {
            assert!(lm_argmax_smem(m, 1024) <= 232448, "{m} rows");
            assert!(instance(m, 1024).is_some());
        }
        for m in 1..=32 {
            assert!(lm_argmax_smem(m, 2048) <= 232448, "{m} rows");
        }
        assert!(instance(32, 2048).is_some() && instance(33, 2048).is_none());
        assert!(instance(1, 4096).is_none() && instance(65, 1024).is_none());
        assert!(instance(0, 1024).is_none());
    }

    #[test]
    fn every_instance_is_compiled() {
        let src = crate::cuda::KERNEL_SOURCES
            .iter()
            .find(|s| s.file == "lm_head_argmax.cu")
            .expect("lm_head_argmax.cu is listed");
        let mut n = 0;
        for (m, k) in [
            (1, 1024),
            (17, 1024),
            (33, 1024),
            (49, 1024),
            (1, 2048),
            (32, 2048),
        ] {
            let (e, slots) = instance(m, k).expect("an instance");
            assert!(src.entries.contains(&e), "{e} not listed");
            // The source instantiates it with the ring the host sizes shared memory for.
            let line = format!("LA_ENTRY({}, {k}, {slots})", m.div_ceil(16));
            assert!(src.src.contains(&line), "{line} not in the source");
            n += 1;
        }
        assert_eq!(n, src.entries.len());
    }
}
