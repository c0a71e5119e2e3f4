//! The stages of a forward pass, each a short function following its part of the [`StepPlan`]:
//! embed, then per layer qkv, q/k pass, attention and MLP, then the head (docs/cuda.md,
//! "The step plan").

use crate::cuda::attention::{
    AttnShape, DecodeMeta, DecodeOut, DecodeVariant, ExtendMeta, KvView, QRope,
};
use crate::cuda::blas::GemmOut;
use crate::cuda::buffers::{KvPool, Workspace};
use crate::cuda::gemm_tile::TileEpilogue;
use crate::cuda::model::{GpuModel, LayerWeights};
use crate::cuda::ops::{NormIn, QkvLayout, QkvPost, RowScale};
use crate::cuda::plan::{DecodeAttn, GateUp, Gemm, MlpStage, QkPass, QkvStage, StepPlan};
use crate::cuda::skinny::{skinny_plan, GemmIo, SkinnyEpilogue};
use crate::cuda::{CudaError, DPtr, Gpu, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

/// One forward pass being queued: the model, its buffers, the step's metadata and its plan.
pub(in crate::cuda) struct Step<'a> {
    pub gpu: &'a Gpu,
    pub model: &'a GpuModel,
    pub kv: &'a KvPool,
    pub ws: &'a Workspace,
    pub plan: StepPlan,
    pub tokens: usize,
    pub extend: Option<&'a ExtendMeta>,
    pub decode: Option<(&'a DecodeMeta, usize)>,
    pub rows: usize,
}

/// Shapes read by every stage.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    inter: usize,
    qkv_w: usize,
    eps: f32,
}

impl Step<'_> {
    fn p<T>(&self, b: &CudaSlice<T>) -> DPtr<T> {
        self.gpu.ptr(b)
    }

    fn dims(&self) -> Dims {
        let c = &self.model.cfg;
        Dims {
            h: c.hidden_size,
            nq: c.num_heads,
            nk: c.num_kv_heads,
            d: c.head_dim,
            inter: c.intermediate_size,
            qkv_w: c.q_dim() + 2 * c.kv_dim(),
            eps: c.rms_norm_eps as f32,
        }
    }

    /// Gather each token's embedding into the residual stream.
    pub fn embed(&self) -> Result<()> {
        if self.tokens == 0 {
            return Ok(());
        }
        let (c, ws) = (&self.model.cfg, self.ws);
        self.gpu.embedding_gather(
            self.p(&ws.residual),
            self.p(&self.model.embed),
            self.p(&ws.ids),
            (self.p(&ws.tok_row), self.p(&self.kv.last_token)),
            (self.tokens, c.hidden_size, c.vocab_size),
        )
    }

    /// Layer `l`: qkv, the q/k pass, attention, MLP.
    pub fn layer(&self, l: usize) -> Result<()> {
        let lw = &self.model.layers[l];
        let post = self.qkv_post(l, lw);
        self.qkv(lw, &post)?;
        self.qk_pass(&post)?;
        self.attention(l, lw, &post)?;
        self.mlp(lw)
    }

    fn qkv_post(&self, l: usize, lw: &LayerWeights) -> QkvPost {
        let (ws, dm) = (self.ws, self.dims());
        let raw = matches!(self.plan.qkv, QkvStage::RawResidual(_));
        QkvPost {
            qk_norm: lw
                .q_norm
                .as_ref()
                .zip(lw.k_norm.as_ref())
                .map(|(q, k)| (self.p(q), self.p(k))),
            positions: self.p(&ws.positions),
            cos_sin: self.p(&self.model.cos_sin),
            k_cache: self.p(&self.kv.k[l]),
            v_cache: self.p(&self.kv.v[l]),
            slots: self.p(&ws.out_slots),
            row_scale: raw.then(|| RowScale {
                x: self.p(&ws.residual),
                hidden: dm.h,
                eps: dm.eps,
            }),
        }
    }

    fn qkv(&self, lw: &LayerWeights, post: &QkvPost) -> Result<()> {
        let (gpu, ws, dm) = (self.gpu, self.ws, self.dims());
        let (qkv, residual, hidden) = (self.p(&ws.qkv), self.p(&ws.residual), self.p(&ws.hidden));
        let unit = self.p(&self.model.unit_norm);
        let (w, m) = (self.p(&lw.qkv), self.tokens);
        match self.plan.qkv {
            // The plan keeps biased layers off the stages that end after the projection.
            QkvStage::GemvFused | QkvStage::RawResidual(_) if lw.qkv_bias.is_some() => {
                Err(CudaError::Invalid {
                    kernel: "add_bias_rows",
                    msg: format!("{:?} leaves no place for the q/k/v biases", self.plan.qkv),
                })
            }
            QkvStage::GemvFused => {
                let counters = self.p(&ws.skinny_counters);
                gpu.gemv_norm_qkv(
                    qkv,
                    QkvLayout {
                        tokens: m,
                        nq: dm.nq,
                        nk: dm.nk,
                        head_dim: dm.d,
                        row_stride: dm.qkv_w,
                    },
                    NormIn {
                        x: residual,
                        w: unit,
                        hidden: dm.h,
                        eps: dm.eps,
                    },
                    w,
                    post,
                    counters,
                )
            }
            QkvStage::GemvNorm => gpu.gemv_norm(
                qkv,
                NormIn {
                    x: residual,
                    w: unit,
                    hidden: dm.h,
                    eps: dm.eps,
                },
                w,
                (m, dm.qkv_w),
            ),
            QkvStage::RawResidual(path) => {
                self.linear(path, qkv, residual, w, (m, dm.qkv_w, dm.h), false)
            }
            QkvStage::Normed(path) => {
                gpu.rmsnorm(hidden, residual, unit, m, dm.h, dm.eps)?;
                self.linear(path, qkv, hidden, w, (m, dm.qkv_w, dm.h), false)
            }
        }?;
        // After the whole norm: the bias is per output row, not scaled by 1 / rms.
        match &lw.qkv_bias {
            Some(b) => gpu.add_bias_rows(qkv, self.p(b), m, dm.qkv_w, dm.qkv_w),
            None => Ok(()),
        }
    }

    fn qk_pass(&self, post: &QkvPost) -> Result<()> {
        let (gpu, dm, m) = (self.gpu, self.dims(), self.tokens);
        let qkv = self.p(&self.ws.qkv);
        let te = match self.plan.qk {
            QkPass::InQkv | QkPass::InDecodeAttention => return Ok(()),
            QkPass::Separate => {
                return gpu.qk_norm_rope_store(
                    qkv,
                    QkvLayout {
                        tokens: m,
                        nq: dm.nq,
                        nk: dm.nk,
                        head_dim: dm.d,
                        row_stride: dm.qkv_w,
                    },
                    post,
                    dm.eps,
                )
            }
            QkPass::AfterExtendQ(te) => te,
        };
        let bad = |what: &str| CudaError::Invalid {
            kernel: "qk_norm_rope_store",
            msg: format!("{what} outside the workspace"),
        };
        // k and v of every token: the pass sees the k columns as its first head.
        let q_cols = dm.nq * dm.d;
        let kv_cols = qkv
            .sub(q_cols, qkv.len() - q_cols)
            .ok_or_else(|| bad("k/v columns"))?;
        gpu.qk_norm_rope_store(
            kv_cols,
            QkvLayout {
                tokens: m,
                nq: 0,
                nk: dm.nk,
                head_dim: dm.d,
                row_stride: dm.qkv_w,
            },
            post,
            dm.eps,
        )?;
        if m <= te {
            return Ok(());
        }
        // q of the decode tokens after the extend ones.
        let n = m - te;
        let sub_post = QkvPost {
            positions: post.positions.sub(te, n).ok_or_else(|| bad("positions"))?,
            slots: post.slots.sub(te, n).ok_or_else(|| bad("slots"))?,
            ..*post
        };
        let start = te * dm.qkv_w;
        let rows = qkv
            .sub(start, qkv.len() - start)
            .ok_or_else(|| bad("decode rows"))?;
        gpu.qk_norm_rope_store(
            rows,
            QkvLayout {
                tokens: n,
                nq: dm.nq,
                nk: 0,
                head_dim: dm.d,
                row_stride: dm.qkv_w,
            },
            &sub_post,
            dm.eps,
        )
    }

    fn attention(&self, l: usize, lw: &LayerWeights, post: &QkvPost) -> Result<()> {
        let (gpu, ws, dm) = (self.gpu, self.ws, self.dims());
        let view = KvView {
            k_cache: self.p(&self.kv.k[l]),
            v_cache: self.p(&self.kv.v[l]),
            table: self.p(&self.kv.table),
        };
        let (attn, qkv) = (self.p(&ws.attn), self.p(&ws.qkv));
        let shape = self.model.attn_shape(self.kv);
        if let Some(meta) = self.extend {
            let rope = self.plan.extend_q_rope.then(|| QRope {
                q_norm: post.qk_norm.map(|(q, _)| q),
                positions: post.positions,
                cos_sin: post.cos_sin,
                eps: dm.eps,
            });
            gpu.attention_extend(attn, qkv, view, meta, &shape, rope.as_ref())?;
        }
        let (Some((meta, splits)), Some(plan)) = (self.decode, self.plan.decode) else {
            return Ok(());
        };
        let shape = self.decode_shape(shape, plan, lw);
        let variant = if plan.combine_fused {
            DecodeVariant::Fused(self.p(&ws.decode_counters))
        } else {
            DecodeVariant::Combine
        };
        let (po, pm) = (self.p(&ws.part_o), self.p(&ws.part_ml));
        let qk_pass = (self.plan.qk == QkPass::InDecodeAttention).then_some((post, dm.eps));
        gpu.attention_decode(
            qkv,
            view,
            meta,
            &shape,
            DecodeOut {
                out: attn,
                part_o: po,
                part_ml: pm,
                splits,
                variant,
            },
            qk_pass,
        )
    }

    fn decode_shape(&self, shape: AttnShape, plan: DecodeAttn, lw: &LayerWeights) -> AttnShape {
        AttnShape {
            decode_early_kv: plan.early_kv,
            decode_prefetch_kv_keys: plan.prefetch_kv_keys,
            decode_prefetch_next: plan.prefetch_o.then(|| self.p(&lw.o)),
            decode_kernel: plan.kernel,
            ..shape
        }
    }

    fn mlp(&self, lw: &LayerWeights) -> Result<()> {
        let (gpu, ws, dm, m) = (self.gpu, self.ws, self.dims(), self.tokens);
        let (residual, attn, act) = (self.p(&ws.residual), self.p(&ws.attn), self.p(&ws.act));
        let (o, gu, down) = (self.p(&lw.o), self.p(&lw.gate_up), self.p(&lw.down));
        let unit = self.p(&self.model.unit_norm);
        // o and down add onto the residual stream (tensor parallel: rank 0 adds, the others
        // write their partial sums, then the all-reduce; tp/mod.rs).
        let add = self.model.adds_residual();
        let (o_path, gate_up, down_path) = match self.plan.mlp {
            MlpStage::Separate { o, gate_up, down } => (o, Some(gate_up), down),
            MlpStage::GemvFolded => (Gemm::Gemv, None, Gemm::Gemv),
        };
        self.linear(o_path, residual, attn, o, (m, dm.h, dm.nq * dm.d), add)?;
        self.all_reduce_residual()?;
        match gate_up {
            Some(path) => self.gate_up(path, gu)?,
            None => {
                let norm = NormIn {
                    x: residual,
                    w: unit,
                    hidden: dm.h,
                    eps: dm.eps,
                };
                gpu.gemv_gate_up_silu_norm(act, norm, gu, (m, dm.inter))?
            }
        }
        self.linear(down_path, residual, act, down, (m, dm.h, dm.inter), add)?;
        self.all_reduce_residual()
    }

    /// The residual stream's rows of this step summed over the tensor-parallel ranks.
    fn all_reduce_residual(&self) -> Result<()> {
        if self.model.tp.is_none() {
            return Ok(());
        }
        let n = self.tokens * self.model.cfg.hidden_size;
        let rows = self
            .p(&self.ws.residual)
            .sub(0, n)
            .ok_or(CudaError::Invalid {
                kernel: "all_reduce",
                msg: format!("{} tokens outside the residual buffer", self.tokens),
            })?;
        self.model.all_reduce_residual(rows)
    }

    /// act = silu(x gate^T) * (x up^T) of the normed residual stream, `w` = [gate; up].
    fn gate_up(&self, path: GateUp, w: DPtr<bf16>) -> Result<()> {
        let (gpu, ws, dm, m) = (self.gpu, self.ws, self.dims(), self.tokens);
        let (residual, hidden, act) = (self.p(&ws.residual), self.p(&ws.hidden), self.p(&ws.act));
        let unit = self.p(&self.model.unit_norm);
        let shape = (m, 2 * dm.inter, dm.h);
        let norm = || gpu.rmsnorm(hidden, residual, unit, m, dm.h, dm.eps);
        match path {
            GateUp::Tiled(plan) => {
                let silu = TileEpilogue::NormSilu {
                    norm: unit,
                    eps: dm.eps,
                };
                let scratch = ws.gemm_scratch(gpu);
                gpu.gemm_tile(
                    GemmIo {
                        y: act,
                        x: residual,
                        w,
                        ldy: dm.inter,
                    },
                    &scratch,
                    shape,
                    silu,
                    plan,
                )
            }
            GateUp::GemvSilu => {
                norm()?;
                gpu.gemv_gate_up_silu(act, hidden, w, m, dm.inter, dm.h)
            }
            GateUp::SkinnySilu => {
                norm()?;
                self.skinny(act, hidden, w, shape, dm.inter, SkinnyEpilogue::SiluMul)
            }
            GateUp::CublasThenSilu { tuned } => {
                norm()?;
                let gu = self.p(&ws.gate_up);
                gpu.blas
                    .project(GemmOut::Bf16(gu), hidden, w, shape, 2 * dm.inter, tuned)?;
                gpu.silu_and_mul(act, gu, m, dm.inter)
            }
        }
    }

    fn skinny(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        shape: (usize, usize, usize),
        ldy: usize,
        epi: SkinnyEpilogue,
    ) -> Result<()> {
        let scratch = self.ws.gemm_scratch(self.gpu);
        let plan = skinny_plan(shape.1, shape.2, epi, self.gpu.sms);
        self.gpu
            .gemm_skinny(GemmIo { y, x, w, ldy }, &scratch, shape, epi, plan)
    }

    /// y[m, n] = x[m, k] w^T (`add`: y += x w^T, a projection added into the residual stream)
    /// on `path`.
    fn linear(
        &self,
        path: Gemm,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (m, n, k): (usize, usize, usize),
        add: bool,
    ) -> Result<()> {
        match (path, add) {
            (Gemm::Gemv, false) => self.gpu.gemv(y, x, w, (m, n, k), n),
            (Gemm::Gemv, true) => self.gpu.gemv_resadd(y, x, w, (m, n, k), n),
            (Gemm::Skinny, false) => self.skinny(y, x, w, (m, n, k), n, SkinnyEpilogue::Plain),
            (Gemm::Skinny, true) => self.skinny(y, x, w, (m, n, k), n, SkinnyEpilogue::ResAdd),
            (Gemm::Cublas { tuned }, add) => {
                let out = if add {
                    GemmOut::Bf16Acc(y)
                } else {
                    GemmOut::Bf16(y)
                };
                self.gpu.blas.project(out, x, w, (m, n, k), n, tuned)
            }
        }
    }

    /// The final norm of the rows that need logits (gathered), the LM head and the pick, which
    /// also records each row's token for the next step.
    pub fn head(&self) -> Result<()> {
        let Some(head) = self.plan.head else {
            return Ok(());
        };
        let (gpu, ws, c, dm, rows) = (self.gpu, self.ws, &self.model.cfg, self.dims(), self.rows);
        let (sel, logits, v) = (self.p(&ws.sel), self.p(&ws.logits), c.vocab_size);
        let logit_tok = self.p(&ws.logit_tok);
        let final_norm = self.p(&self.model.final_norm);
        gpu.rmsnorm_gather(
            sel,
            self.p(&ws.residual),
            logit_tok,
            final_norm,
            (rows, dm.h),
            dm.eps,
        )?;
        let lm = self.p(self.model.lm_head());
        match head.lm {
            Gemm::Cublas { tuned } => {
                gpu.blas
                    .project(GemmOut::F32(logits), sel, lm, (rows, v, dm.h), v, tuned)?
            }
            _ => gpu.gemv_f32out(logits, sel, lm, (rows, v, dm.h), v)?,
        }
        self.model.pick(gpu, self.kv, ws, rows, head.pick)
    }
}
