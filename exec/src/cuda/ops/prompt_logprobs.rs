//! Prompt logprobs on the GPU: after an extend step's forward pass, the hidden rows of its
//! prompt positions (still in the workspace's residual stream) go through the final norm
//! (`rmsnorm_gather`) and the LM head (cuBLAS, f32 out) in batches of [`ROWS`], then
//! `token_logprobs_rows` (kernels/sampling.cu) takes each row's log-softmax at the next prompt
//! token and its top-k. Only those few floats per row are copied back, never a vocabulary row.
//! The backend allocates the buffers with its workspace (about 40 MB for a 152k vocabulary).

use crate::cuda::args::TokenLogprobsRows;
use crate::cuda::blas::{bucket_rows, GemmOut};
use crate::cuda::launch::Mode;
use crate::cuda::model::{GpuModel, Workspace};
use crate::cuda::ops::{cfg, check, int, need};
use crate::cuda::{DPtr, DriverCtx, Gpu, Result};
use cudarc::driver::{CudaSlice, DeviceRepr};
use doppel_core::TokenLogprob;
use half::bf16;

/// Rows per LM-head batch (64 x a 152k vocabulary is 39 MB of f32 logits).
pub const ROWS: usize = 64;

/// Most top alternatives per row (the server's limit).
pub const MAX_TOP: usize = 20;

/// Device buffers for one batch of [`ROWS`] rows.
pub struct PromptLogprobBufs {
    tok: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    sel: CudaSlice<bf16>,
    logits: CudaSlice<f32>,
    lp: CudaSlice<f32>,
    top_lp: CudaSlice<f32>,
    top_id: CudaSlice<u32>,
}

impl PromptLogprobBufs {
    /// Buffers for `model` (room for cuBLAS's row bucket of [`ROWS`]).
    pub fn new(gpu: &Gpu, model: &GpuModel) -> Result<PromptLogprobBufs> {
        let (b, c) = (bucket_rows(ROWS), &model.cfg);
        Ok(PromptLogprobBufs {
            tok: gpu.zeros(ROWS)?,
            targets: gpu.zeros(ROWS)?,
            sel: gpu.zeros(b * c.hidden_size)?,
            logits: gpu.zeros(b * c.vocab_size)?,
            lp: gpu.zeros(ROWS)?,
            top_lp: gpu.zeros(ROWS * MAX_TOP)?,
            top_id: gpu.zeros(ROWS * MAX_TOP)?,
        })
    }
}

/// Where [`Gpu::token_logprobs_rows`] writes: each row's log-softmax at its target and its top
/// `k` (ids and log-softmax).
pub struct RowLogprobsOut {
    /// `[n]`: log-softmax at `targets[r]`.
    pub lp: DPtr<f32>,
    /// `[n, k]`: the top alternatives' log-softmax.
    pub top_lp: DPtr<f32>,
    /// `[n, k]`: the top alternatives' ids (ties to the lower id).
    pub top_id: DPtr<u32>,
}

impl Gpu {
    /// For `n` rows of f32 `logits` (`vocab` wide): the log-softmax at `targets[r]` and the `k`
    /// most likely tokens with their log-softmax, into `out`.
    pub fn token_logprobs_rows(
        &self,
        (logits, targets): (DPtr<f32>, DPtr<u32>),
        out: &RowLogprobsOut,
        (n, vocab, k): (usize, usize, usize),
    ) -> Result<()> {
        const K: &str = "token_logprobs_rows";
        check(K, k <= vocab, || {
            format!("top {k} exceeds the vocabulary {vocab}")
        })?;
        need(K, "logits", &logits, n * vocab)?;
        need(K, "targets", &targets, n)?;
        need(K, "out_lp", &out.lp, n)?;
        need(K, "top_lp", &out.top_lp, n * k)?;
        need(K, "top_id", &out.top_id, n * k)?;
        if n == 0 {
            return Ok(());
        }
        TokenLogprobsRows {
            logits,
            targets,
            out_lp: out.lp,
            top_lp: out.top_lp,
            top_id: out.top_id,
            n: int(K, n)?,
            vocab: int(K, vocab)?,
            k: int(K, k)?,
        }
        .launch(self, K, cfg((n as u32, 1, 1), 256), Mode::Pdl)
    }
}

fn upload<T: DeviceRepr>(gpu: &Gpu, src: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
    let mut v = dst.slice_mut(0..src.len());
    gpu.stream
        .memcpy_htod(src, &mut v)
        .ctx("uploading prompt logprob rows")
}

fn download<T: DeviceRepr + Default + Clone>(
    gpu: &Gpu,
    src: &CudaSlice<T>,
    n: usize,
) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    gpu.stream
        .clone_dtoh(&src.slice(0..n))
        .ctx("downloading prompt logprobs")
}

impl GpuModel {
    /// The logprob of `targets[i]` at the step's token `tok[i]` (its hidden row in `ws`, after a
    /// forward pass and before the next one) with the top `k` (at most [`MAX_TOP`]). Waits for
    /// the results.
    pub fn prompt_logprobs(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        bufs: &mut PromptLogprobBufs,
        (tok, targets): (&[u32], &[u32]),
        k: usize,
    ) -> Result<Vec<TokenLogprob>> {
        const K: &str = "prompt_logprobs";
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let k = k.min(MAX_TOP).min(v);
        check(K, tok.len() == targets.len(), || {
            format!("{} rows but {} targets", tok.len(), targets.len())
        })?;
        let mut out = Vec::with_capacity(tok.len());
        for (tk, tg) in tok.chunks(ROWS).zip(targets.chunks(ROWS)) {
            let n = tk.len();
            upload(gpu, tk, &mut bufs.tok)?;
            upload(gpu, tg, &mut bufs.targets)?;
            let (sel, logits) = (gpu.ptr(&bufs.sel), gpu.ptr(&bufs.logits));
            gpu.rmsnorm_gather(
                sel,
                gpu.ptr(&ws.residual),
                gpu.ptr(&bufs.tok),
                gpu.ptr(&self.final_norm),
                (n, h),
                self.cfg.rms_norm_eps as f32,
            )?;
            let lm = gpu.ptr(self.lm_head());
            gpu.blas
                .project(GemmOut::F32(logits), sel, lm, (n, v, h), v, false)?;
            let dst = RowLogprobsOut {
                lp: gpu.ptr(&bufs.lp),
                top_lp: gpu.ptr(&bufs.top_lp),
                top_id: gpu.ptr(&bufs.top_id),
            };
            gpu.token_logprobs_rows((logits, gpu.ptr(&bufs.targets)), &dst, (n, v, k))?;
            let lp = download(gpu, &bufs.lp, n)?;
            let (tl, ti) = (
                download(gpu, &bufs.top_lp, n * k)?,
                download(gpu, &bufs.top_id, n * k)?,
            );
            out.extend(lp.iter().enumerate().map(|(r, &logprob)| TokenLogprob {
                logprob,
                top: (0..k).map(|j| (ti[r * k + j], tl[r * k + j])).collect(),
            }));
        }
        Ok(out)
    }
}
