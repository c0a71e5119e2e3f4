//! Launch wrappers for greedy argmax (one block per row, and many blocks per row with the
//! reduction finished by the row's last block) and for temperature/top-k/top-p/min-p sampling.

use crate::cuda::args::{ApplyTokenBitmask, ArgmaxRowsSplit, SampleRows};
use crate::cuda::launch::Mode;
use crate::cuda::ops::{cfg, check, int, need};
use crate::cuda::{DPtr, Gpu, Result};
use cudarc::driver::LaunchConfig;

/// Most blocks per row in [`Gpu::argmax_rows`].
pub const ARGMAX_CHUNKS: usize = 64;

/// `u32`s of scratch [`Gpu::argmax_rows`] needs for `n` rows: a counter per row (zero before the
/// first launch; the kernel leaves it zero) and a (value, index) pair per block.
pub fn argmax_scratch_len(n: usize) -> usize {
    n * (1 + 2 * ARGMAX_CHUNKS)
}

/// Per-row sampling parameters on the device.
#[derive(Clone, Copy, Debug)]
pub struct SamplingBufs {
    /// Temperature per row (<= 0: greedy).
    pub temperature: DPtr<f32>,
    /// Top-k per row (<= 0: off).
    pub top_k: DPtr<i32>,
    /// Top-p per row (>= 1: off).
    pub top_p: DPtr<f32>,
    /// Min-p per row (<= 0: off).
    pub min_p: DPtr<f32>,
    /// Uniform draw in [0, 1) per row.
    pub uniform: DPtr<f32>,
}

/// Where [`Gpu::argmax_rows`] also records each row's token for the next step (what
/// [`Gpu::store_last_token`] does): `last_token[rows[r]] = out[r]`.
#[derive(Clone, Copy, Debug)]
pub struct LastTokenStore {
    /// Last sampled token per request row.
    pub last_token: DPtr<u32>,
    /// The request row of each logits row.
    pub rows: DPtr<u32>,
}

impl Gpu {
    /// `out[r] = argmax(logits[r, :])` (lowest index on ties; NaN never wins; a row of only
    /// -inf/NaN gives 0) for `n` rows; `scratch` is [`argmax_scratch_len`]`(m)` zeroed `u32`s
    /// (m >= n, the same buffer for every launch) reserved for this use. With `store`, each
    /// token is also written to `last_token[rows[r]]` (no separate store launch).
    pub fn argmax_rows(
        &self,
        out: DPtr<u32>,
        logits: DPtr<f32>,
        scratch: DPtr<u32>,
        n: usize,
        vocab: usize,
        store: Option<LastTokenStore>,
    ) -> Result<()> {
        const K: &str = "argmax_rows_split";
        need(K, "out", &out, n)?;
        if let Some(st) = &store {
            need(K, "rows", &st.rows, n)?;
        }
        need(K, "logits", &logits, n * vocab)?;
        // The kernel places its counters and partials by the scratch's row capacity, not by this
        // launch's row count: a layout that moved with n let one launch's partials land on the
        // next (larger) launch's counters (caught by the whole-model tests on the H100).
        let capacity = scratch.len() / (1 + 2 * ARGMAX_CHUNKS);
        check(K, n <= capacity, || {
            format!("{n} rows exceed the scratch's {capacity}")
        })?;
        if n == 0 {
            return Ok(());
        }
        // Blocks of about 2k columns: a 152k vocabulary takes 64 blocks per row instead of one.
        let chunks = vocab.div_ceil(2048).clamp(1, ARGMAX_CHUNKS);
        let args = ArgmaxRowsSplit {
            out,
            logits,
            scratch,
            n: int(K, capacity)?,
            vocab: int(K, vocab)?,
            last_token: store.map(|st| st.last_token),
            rows: store.map(|st| st.rows),
        };
        let cfg = LaunchConfig {
            grid_dim: (chunks as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        args.launch(self, K, cfg, Mode::Pdl)
    }

    /// Sample one token per row with per-row temperature (<= 0: greedy), top-k (<= 0: off),
    /// top-p (>= 1: off), min-p (<= 0: off) and a uniform draw in [0, 1).
    pub fn sample_rows(
        &self,
        out: DPtr<u32>,
        logits: DPtr<f32>,
        params: &SamplingBufs,
        n: usize,
        vocab: usize,
    ) -> Result<()> {
        const K: &str = "sample_rows";
        need(K, "out", &out, n)?;
        need(K, "logits", &logits, n * vocab)?;
        need(K, "temperature", &params.temperature, n)?;
        need(K, "top_k", &params.top_k, n)?;
        need(K, "top_p", &params.top_p, n)?;
        need(K, "min_p", &params.min_p, n)?;
        need(K, "uniform", &params.uniform, n)?;
        if n == 0 {
            return Ok(());
        }
        SampleRows {
            out,
            logits,
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            uniform: params.uniform,
            n: int(K, n)?,
            vocab: int(K, vocab)?,
        }
        .launch(self, K, cfg((n as u32, 1, 1), 1024), Mode::Pdl)
    }
    /// Set `logits[r, v]` to -inf where mask row `mask_row[r]` (`vocab.div_ceil(32)` `u32`s per
    /// row of `mask`) does not allow token v; rows with `mask_row[r] < 0` are left alone.
    pub fn apply_token_bitmask(
        &self,
        logits: DPtr<f32>,
        mask: DPtr<u32>,
        mask_row: DPtr<i32>,
        n: usize,
        vocab: usize,
    ) -> Result<()> {
        const K: &str = "apply_token_bitmask";
        let words = vocab.div_ceil(32);
        need(K, "logits", &logits, n * vocab)?;
        need(K, "mask_row", &mask_row, n)?;
        need(K, "mask", &mask, words)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (vocab.div_ceil(256) as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        ApplyTokenBitmask {
            logits,
            mask,
            mask_row,
            n: int(K, n)?,
            vocab: int(K, vocab)?,
            words: int(K, words)?,
        }
        .launch(self, K, cfg, Mode::Pdl)
    }
}
