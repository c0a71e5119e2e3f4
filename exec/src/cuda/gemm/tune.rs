//! Measuring the cuBLAS GEMM shapes of a forward pass before it runs (see `blas_lt.rs`): the
//! shapes `GpuModel::forward` hands to cuBLAS for a given token and logit-row count, timed on the
//! model's own weights and workspace, so the pass (eager or captured) only looks them up.

use crate::cuda::blas::{GemmOut, TuneReport};
use crate::cuda::model::{GpuModel, LayerWeights, Workspace};
use crate::cuda::plan::{gemm_path, Gemm};
use crate::cuda::{DPtr, Gpu, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

impl GpuModel {
    /// [`GpuModel::tune_gemms`] where a failure is not an error: tuning only chooses among
    /// correct GEMMs, so the shapes it could not measure keep cublasGemmEx's default (reported
    /// on stderr).
    pub fn tune_gemms_or_default(&self, gpu: &Gpu, ws: &Workspace, tokens: usize, rows: usize) {
        if let Err(e) = self.tune_gemms(gpu, ws, tokens, rows) {
            eprintln!("GEMM tuning for {tokens} tokens failed, default GEMMs kept: {e}");
        }
    }

    /// Measure (once per shape) the cuBLAS GEMMs of a forward pass over `tokens` tokens with
    /// `rows` logit rows: the four projections where the step plan runs them on tuned cuBLAS,
    /// the LM head likewise (`kernels.gemm_lt_min_tokens`). Does nothing during graph capture.
    /// Overwrites the workspace's activation buffers, which a forward pass rewrites before
    /// reading, so call it between steps (after the step's inputs are uploaded is fine).
    /// Returns the shapes' reports.
    pub fn tune_gemms(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        tokens: usize,
        rows: usize,
    ) -> Result<Vec<TuneReport>> {
        let tuned = Gemm::Cublas { tuned: true };
        let mut out = Vec::new();
        let (c, k) = (&self.cfg, &self.kernels);
        let p = |b: &CudaSlice<bf16>| gpu.ptr(b);
        if gemm_path(k, tokens) == tuned {
            out = self.tune_projections(gpu, ws, tokens)?;
        }
        // Tensor-parallel ranks keep cublasGemmEx's default LM head: each rank picks its own
        // tokens from its own logits, so their GEMM must not depend on a per-rank timing.
        let whole = self.shard().size == 1;
        if whole && rows > k.lm_head_gemv_max.min(8) && rows >= k.gemm_lt_min_tokens {
            let h = c.hidden_size;
            out.extend(gpu.blas.tune(
                GemmOut::F32(gpu.ptr(&ws.logits)),
                p(&ws.sel),
                &[p(self.lm_head())],
                (rows, c.vocab_size, h),
                c.vocab_size,
            )?);
        }
        Ok(out)
    }

    /// The four projections of every layer at `tokens` rows on cuBLAS, as the forward pass
    /// runs them: o and down add into the residual stream (gate/up, where the tiled GEMM takes
    /// it, is measured anyway: cheap, and the same shapes serve larger steps).
    fn tune_projections(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        tokens: usize,
    ) -> Result<Vec<TuneReport>> {
        let c = &self.cfg;
        let (h, q, inter) = (c.hidden_size, c.q_dim(), c.intermediate_size);
        let qkv_w = q + 2 * c.kv_dim();
        let p = |b: &CudaSlice<bf16>| gpu.ptr(b);
        let all = |f: fn(&LayerWeights) -> &CudaSlice<bf16>| -> Vec<DPtr<bf16>> {
            self.layers.iter().map(|l| p(f(l))).collect()
        };
        let (blas, hidden) = (&gpu.blas, p(&ws.hidden));
        // o and down as this rank runs them (tensor parallel: only rank 0 adds; tp/mod.rs).
        let add_out = match self.adds_residual() {
            true => GemmOut::Bf16Acc(p(&ws.residual)),
            false => GemmOut::Bf16(p(&ws.residual)),
        };
        let mut out = Vec::new();
        let qkv = GemmOut::Bf16(p(&ws.qkv));
        out.extend(blas.tune(qkv, hidden, &all(|l| &l.qkv), (tokens, qkv_w, h), qkv_w)?);
        out.extend(blas.tune(add_out, p(&ws.attn), &all(|l| &l.o), (tokens, h, q), h)?);
        let gu = GemmOut::Bf16(p(&ws.gate_up));
        let shape = (tokens, 2 * inter, h);
        out.extend(blas.tune(gu, hidden, &all(|l| &l.gate_up), shape, 2 * inter)?);
        out.extend(blas.tune(
            add_out,
            p(&ws.act),
            &all(|l| &l.down),
            (tokens, h, inter),
            h,
        )?);
        Ok(out)
    }
}
