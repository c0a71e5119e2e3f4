//! The forward pass of [`GpuModel`]: a step's inputs uploaded, its plan built (plan.rs), then
//! its stages queued (layer.rs): embed, per layer qkv / q/k pass / attention / MLP, the head.

use crate::cuda::attention::{AttnShape, DecodeKernel, DecodeMeta, ExtendMeta};
use crate::cuda::layer::Step;
use crate::cuda::model::GpuModel;
use crate::cuda::ops::{LastTokenStore, SamplingBufs};
use crate::cuda::plan::{DeviceCaps, StepPlan, StepShape};
use crate::cuda::{DriverCtx, Gpu, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

pub use crate::cuda::buffers::{KvPool, RowSampling, StepInput, TokenPick, Workspace};

/// One step's batch as the forward pass sees it.
#[derive(Clone, Copy)]
pub struct StepBatch<'a> {
    /// Tokens (extend tokens first, then decode tokens).
    pub tokens: usize,
    /// The extend entries' attention metadata.
    pub extend: Option<&'a ExtendMeta>,
    /// The decode rows' attention metadata and key splits.
    pub decode: Option<(&'a DecodeMeta, usize)>,
    /// Rows that need logits.
    pub rows: usize,
    /// How those rows become tokens.
    pub pick: TokenPick,
}

impl GpuModel {
    /// Upload a step's host vectors into the workspace (outside any graph capture).
    pub fn upload_step(&self, gpu: &Gpu, ws: &mut Workspace, s: &StepInput) -> Result<()> {
        fn put<T: cudarc::driver::DeviceRepr>(
            gpu: &Gpu,
            src: &[T],
            dst: &mut CudaSlice<T>,
        ) -> Result<()> {
            if src.is_empty() {
                return Ok(());
            }
            let mut v = dst.slice_mut(0..src.len());
            gpu.stream
                .memcpy_htod(src, &mut v)
                .ctx("uploading step inputs")
        }
        put(gpu, &s.ids, &mut ws.ids)?;
        put(gpu, &s.tok_row, &mut ws.tok_row)?;
        put(gpu, &s.positions, &mut ws.positions)?;
        put(gpu, &s.out_slots, &mut ws.out_slots)?;
        put(gpu, &s.logit_tok, &mut ws.logit_tok)?;
        put(gpu, &s.logit_row, &mut ws.logit_row)?;
        let f = |g: fn(&RowSampling) -> f32| s.sampling.iter().map(g).collect::<Vec<f32>>();
        let [a, b, c, d] = &mut ws.samp_f;
        put(gpu, &f(|r| r.temperature), a)?;
        put(gpu, &f(|r| r.top_p), b)?;
        put(gpu, &f(|r| r.min_p), c)?;
        put(gpu, &f(|r| r.uniform), d)?;
        put(
            gpu,
            &s.sampling.iter().map(|r| r.top_k).collect::<Vec<i32>>(),
            &mut ws.samp_k,
        )
    }

    /// The plan of a step of `tokens` tokens with the given attention metadata and `rows` logits
    /// rows on `gpu`.
    pub fn plan(
        &self,
        gpu: &Gpu,
        tokens: usize,
        extend: Option<&ExtendMeta>,
        decode: Option<(&DecodeMeta, usize)>,
        (rows, pick): (usize, TokenPick),
    ) -> StepPlan {
        let shape = StepShape {
            tokens,
            extend: extend.map(|m| m.leading_tokens()),
            decode: decode.map(|(m, splits)| (m.entries(), splits)),
            logit_rows: rows,
            pick,
        };
        StepPlan::new(&self.cfg, &self.kernels, DeviceCaps::of(gpu), shape)
    }

    /// Queue the forward pass of `batch` (inputs already in `ws`): attention per its metadata,
    /// logits for its rows, then its pick turns them into tokens in `ws.sampled` and each
    /// row's last token. Launches only (capturable).
    pub fn forward(
        &self,
        gpu: &Gpu,
        kv: &KvPool,
        ws: &Workspace,
        batch: StepBatch<'_>,
    ) -> Result<()> {
        let StepBatch {
            tokens,
            extend,
            decode,
            rows,
            pick,
        } = batch;
        let plan = self.plan(gpu, tokens, extend, decode, (rows, pick));
        let step = Step {
            gpu,
            model: self,
            kv,
            ws,
            plan,
            tokens,
            extend,
            decode,
            rows,
        };
        step.embed()?;
        for l in 0..self.layers.len() {
            step.layer(l)?;
        }
        step.head()
    }

    /// Turn the workspace's `rows` logits rows into tokens in `ws.sampled`, recording each in
    /// its request row's last token: the argmax or the GPU sampler with the sampling parameters
    /// uploaded for the step; `Logits` picks nothing (the pick comes after the token masks:
    /// backend/constrain.rs). Launches only (capturable).
    pub fn pick(
        &self,
        gpu: &Gpu,
        kv: &KvPool,
        ws: &Workspace,
        rows: usize,
        pick: TokenPick,
    ) -> Result<()> {
        let (sampled, logits) = (gpu.ptr(&ws.sampled), gpu.ptr(&ws.logits));
        let v = self.cfg.vocab_size;
        let store = LastTokenStore {
            last_token: gpu.ptr(&kv.last_token),
            rows: gpu.ptr(&ws.logit_row),
        };
        match pick {
            TokenPick::Logits => Ok(()),
            TokenPick::Argmax => {
                let scratch = gpu.ptr(&ws.argmax_scratch);
                gpu.argmax_rows(sampled, logits, scratch, rows, v, Some(store))
            }
            TokenPick::Sample => {
                let [t, tp, mp, u] = &ws.samp_f;
                let bufs = SamplingBufs {
                    temperature: gpu.ptr(t),
                    top_k: gpu.ptr(&ws.samp_k),
                    top_p: gpu.ptr(tp),
                    min_p: gpu.ptr(mp),
                    uniform: gpu.ptr(u),
                };
                gpu.sample_rows(sampled, logits, &bufs, rows, v)?;
                gpu.store_last_token(store.last_token, store.rows, sampled, rows)
            }
        }
    }

    pub(in crate::cuda) fn lm_head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The attention kernels' view of this model over `kv` (q rows in the fused qkv buffer); the
    /// decode kernel and its per-step options are set from the step's plan (layer.rs).
    pub fn attn_shape(&self, kv: &KvPool) -> AttnShape {
        let c = &self.cfg;
        AttnShape {
            nq: c.num_heads,
            nk: c.num_kv_heads,
            head_dim: c.head_dim,
            q_stride: c.q_dim() + 2 * c.kv_dim(),
            table_stride: kv.max_ctx,
            table_rows: kv.rows,
            num_slots: kv.num_slots,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            split_min_keys: self.kernels.decode_split_min_keys,
            decode_early_kv: true,
            decode_prefetch_kv_keys: usize::MAX,
            decode_prefetch_next: None,
            decode_kernel: DecodeKernel::CudaCore,
        }
    }
}
