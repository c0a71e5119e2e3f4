//! Measuring the cuBLAS GEMM shapes of a forward pass before it runs (see `blas_lt.rs`): the
//! shapes `GpuModel::forward` hands to cuBLAS for a given token and logit-row count, timed on the
//! model's own weights and workspace, so the pass (eager or captured) only looks them up.

use super::blas::{GemmOut, TuneReport};
use super::model::{GpuModel, LayerWeights, Workspace};
use super::{DPtr, Gpu, Result};
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
    /// `rows` logit rows: the four projections when `tokens` is above the GEMV and skinny-GEMM
    /// sizes, the LM head when `rows` is above its GEMV size (either only from
    /// `kernels.gemm_lt_min_tokens` rows). Does nothing with `kernels.gemm_lt` off or during
    /// graph capture. Overwrites the workspace's activation
    /// buffers, which a forward pass rewrites before reading, so call it between steps (after
    /// the step's inputs are uploaded is fine). Returns the shapes' reports.
    pub fn tune_gemms(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        tokens: usize,
        rows: usize,
    ) -> Result<Vec<TuneReport>> {
        let mut out = Vec::new();
        if !self.kernels.gemm_lt {
            return Ok(out);
        }
        let c = &self.cfg;
        let (h, nq, nk, d, inter) = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        );
        let qkv_w = (nq + 2 * nk) * d;
        let p = |b: &CudaSlice<bf16>| gpu.ptr(b);
        let all = |f: fn(&LayerWeights) -> &CudaSlice<bf16>| -> Vec<DPtr<bf16>> {
            self.layers.iter().map(|l| p(f(l))).collect()
        };
        let mut push = |r: Option<TuneReport>| out.extend(r);
        // As `forward`: above the GEMV's rows nothing is folded, so the o and down projections
        // add into the residual stream when `proj_resadd` is on; the skinny GEMM's sizes never
        // reach cuBLAS (gate/up included: `gate_up_act` takes the skinny path there too).
        if self.proj_on_cublas(tokens) && self.gemm_tuned(tokens) {
            let blas = &gpu.blas;
            let res = self.kernels.proj_resadd;
            let (resid, hidden) = (p(&ws.residual), p(&ws.hidden));
            let add_out = if res {
                GemmOut::Bf16Acc(resid)
            } else {
                GemmOut::Bf16(hidden)
            };
            push(blas.tune(
                GemmOut::Bf16(p(&ws.qkv)),
                hidden,
                &all(|l| &l.qkv),
                (tokens, qkv_w, h),
                qkv_w,
            )?);
            push(blas.tune(add_out, p(&ws.attn), &all(|l| &l.o), (tokens, h, nq * d), h)?);
            push(blas.tune(
                GemmOut::Bf16(p(&ws.gate_up)),
                hidden,
                &all(|l| &l.gate_up),
                (tokens, 2 * inter, h),
                2 * inter,
            )?);
            push(blas.tune(
                add_out,
                p(&ws.act),
                &all(|l| &l.down),
                (tokens, h, inter),
                h,
            )?);
        }
        if !self.lm_head_on_gemv(rows) && self.gemm_tuned(rows) {
            push(gpu.blas.tune(
                GemmOut::F32(gpu.ptr(&ws.logits)),
                p(&ws.sel),
                &[p(self.lm_head())],
                (rows, c.vocab_size, h),
                c.vocab_size,
            )?);
        }
        Ok(out)
    }
}
