//! The forward pass of [`GpuModel`]: the KV pool, the fixed workspace buffers, a step's inputs,
//! and the kernel sequence (see model.rs for the per-layer order; plan.rs for which kernel runs
//! each part).

use super::attention::{AttnShape, DecodeMeta, DecodeVariant, ExtendMeta, KvView, QRope};
use super::blas::GemmOut;
use super::gemm_tile::{TileEpilogue, TILE_PRESCALED};
use super::model::{DecodeKernel, GpuModel};
use super::ops::{LastTokenStore, QkvPost, RowScale, SamplingBufs};
use super::skinny::{skinny_plan, SkinnyEpilogue};
use super::{CudaError, DPtr, DriverCtx, Gpu, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

pub use super::buffers::{KvPool, RowSampling, StepInput, TokenPick, Workspace};

impl GpuModel {
    #[allow(clippy::too_many_arguments)]
    fn skinny(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: &CudaSlice<bf16>,
        (m, n, k): (usize, usize, usize),
        ldy: usize,
        epi: SkinnyEpilogue,
    ) -> Result<()> {
        let scratch = ws.gemm_scratch(gpu);
        let plan = skinny_plan(n, k, epi, gpu.sms);
        gpu.gemm_skinny(y, x, gpu.ptr(w), &scratch, (m, n, k), ldy, epi, plan)
    }

    /// y[m, n] = x[m, k] w^T (`add`: y += x w^T, a projection added into the residual stream)
    /// through the GEMV for small m, the skinny GEMM up to its cut-off, cuBLAS otherwise.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: &CudaSlice<bf16>,
        (m, n, k): (usize, usize, usize),
        add: bool,
    ) -> Result<()> {
        let wp = gpu.ptr(w);
        match (m <= self.gemv_rows(), self.use_skinny(m), add) {
            (true, _, false) => gpu.gemv(y, x, wp, m, n, k, n),
            (true, _, true) => gpu.gemv_resadd(y, x, wp, m, n, k, n),
            (false, true, add) => {
                let epi = if add {
                    SkinnyEpilogue::ResAdd
                } else {
                    SkinnyEpilogue::Plain
                };
                self.skinny(gpu, ws, y, x, w, (m, n, k), n, epi)
            }
            (false, false, add) => {
                let out = if add {
                    GemmOut::Bf16Acc(y)
                } else {
                    GemmOut::Bf16(y)
                };
                gpu.blas
                    .project(out, x, wp, (m, n, k), n, self.gemm_tuned(m))
            }
        }
    }

    /// act = silu(x gate^T) * (x up^T), w = [gate; up].
    #[allow(clippy::too_many_arguments)]
    fn gate_up_act(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        act: DPtr<bf16>,
        x: DPtr<bf16>,
        w: &CudaSlice<bf16>,
        m: usize,
        inter: usize,
        k: usize,
    ) -> Result<()> {
        if self.fused && m <= self.gemv_rows() {
            gpu.gemv_gate_up_silu(act, x, gpu.ptr(w), m, inter, k)
        } else if self.fused && self.use_skinny(m) {
            self.skinny(
                gpu,
                ws,
                act,
                x,
                w,
                (m, 2 * inter, k),
                inter,
                SkinnyEpilogue::SiluMul,
            )
        } else {
            let gu = gpu.ptr(&ws.gate_up);
            self.linear(gpu, ws, gu, x, w, (m, 2 * inter, k), false)?;
            gpu.silu_and_mul(act, gu, m, inter)
        }
    }

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

    /// Queue the forward pass for `tokens` tokens (inputs already in `ws`), attention per the
    /// given metadata, logits for `rows` rows, sampling into `ws.sampled` and each sampled row's
    /// last token. `pick` says how (argmax for every row, keeping the logits or not, or the
    /// sampler). Launches only (capturable).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        kv: &KvPool,
        ws: &Workspace,
        tokens: usize,
        extend: Option<&ExtendMeta>,
        decode: Option<(&DecodeMeta, usize)>,
        rows: usize,
        pick: TokenPick,
    ) -> Result<()> {
        let c = &self.cfg;
        let (h, nq, nk, d, inter) = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        );
        let qkv_w = (nq + 2 * nk) * d;
        let eps = c.rms_norm_eps as f32;
        let p = |b: &CudaSlice<bf16>| gpu.ptr(b);
        let (hidden, residual, qkv, attn, act) = (
            p(&ws.hidden),
            p(&ws.residual),
            p(&ws.qkv),
            p(&ws.attn),
            p(&ws.act),
        );
        if tokens > 0 {
            gpu.embedding_gather(
                residual,
                p(&self.embed),
                gpu.ptr(&ws.ids),
                gpu.ptr(&ws.tok_row),
                gpu.ptr(&kv.last_token),
                tokens,
                h,
                c.vocab_size,
            )?;
        }
        let shape = self.attn_shape(kv);
        // Small batches fold each RMSNorm into the GEMV after it and each residual add into the
        // GEMV before it (same roundings): 7 launches per layer instead of 9.
        let fold = self.fused
            && self.kernels.fold_norms
            && tokens > 0
            && tokens <= self.gemv_rows()
            && tokens * h <= Gpu::GEMV_NORM_MAX_ELEMS;
        // Otherwise the o and down projections can add into the residual stream themselves, so
        // the norms after them only normalise (one read and one write of the stream fewer).
        let res_proj = !fold && self.kernels.proj_resadd;
        // 17-64 tokens: the tiled GEMM with the norms, SiLU and residual adds folded in.
        let tile = if fold {
            [None; 4]
        } else {
            self.tile_plans(tokens, gpu.sms)
        };
        let tile_any = tile.iter().any(Option::is_some);
        // Pure decode steps not on the folded GEMV path: the decode attention does the q/k pass.
        let decode_post = self.fused
            && self.kernels.decode_qk_post
            && extend.is_none()
            && decode.is_some()
            && !fold
            && self.kernels.decode != DecodeKernel::V2;
        // The first keys before the PDL wait only after a kernel of ours (the GEMVs; with the
        // q/k pass folded in, cuBLAS's qkv comes before): b=1 took 0.958-0.965 ms with it, 0.978
        // without; at b=64 after cuBLAS 1.645 with it, 1.613 without (H100, run 14 r5).
        let shape = AttnShape {
            decode_early_kv: shape.decode_early_kv && !decode_post,
            decode_kv_before_qk: shape.decode_kv_before_qk && decode_post,
            decode_mma: decode.is_some_and(|(m, _)| self.decode_mma(gpu, m.entries())),
            decode_reg_mma: decode
                .is_some_and(|(m, _)| m.entries() <= self.kernels.decode_reg_mma_max_tokens),
            ..shape
        };
        // With the q/k pass in the decode attention, the qkv projection can run on the raw
        // residual stream (the input norm's weight folded into it) and the pass applies 1 / rms:
        // the RMSNorm launch before it goes (KernelChoice::qkv_prenorm).
        // Biases go after the whole norm (the row scale comes after the GEMM there).
        let prenorm =
            decode_post && res_proj && self.kernels.qkv_prenorm && tile[0].is_none() && !c.qkv_bias;
        // The decode attention asks the o projection's weights into L2 while it runs (its loads
        // leave DRAM bandwidth unused).
        let prefetch_o = decode_post
            && decode.is_some_and(|(m, _)| m.entries() >= self.kernels.decode_prefetch_o_min_rows);
        let scratch = ws.gemm_scratch(gpu);
        for (l, (lw, fw)) in self.layers.iter().zip(&self.folded).enumerate() {
            let qkv_prenorm = prenorm.then_some(&fw.qkv);
            let view = KvView {
                k_cache: p(&kv.k[l]),
                v_cache: p(&kv.v[l]),
                table: gpu.ptr(&kv.table),
            };
            let post = QkvPost {
                qk_norm: lw
                    .q_norm
                    .as_ref()
                    .zip(lw.k_norm.as_ref())
                    .map(|(q, k)| (p(q), p(k))),
                positions: gpu.ptr(&ws.positions),
                cos_sin: gpu.ptr(&self.cos_sin),
                k_cache: view.k_cache,
                v_cache: view.v_cache,
                slots: gpu.ptr(&ws.out_slots),
                row_scale: qkv_prenorm.map(|_| RowScale {
                    x: residual,
                    hidden: h,
                    eps,
                }),
            };
            // Tokens 0..q_rope_tokens get q norm + RoPE inside the extend kernel.
            let q_rope_tokens = extend
                .filter(|_| {
                    self.fused && self.kernels.extend_q_rope && self.kernels.extend.is_gqa()
                })
                .and_then(|m| m.leading_tokens())
                .filter(|&n| n > 0);
            // The fused GEMV runs the q/k pass in its last blocks: no room for a bias add.
            let post_fused = self.kernels.qkv_post_fused && lw.qkv_bias.is_none();
            if fold && self.fused && post_fused && q_rope_tokens.is_none() {
                gpu.gemv_norm_qkv(
                    qkv,
                    residual,
                    p(&lw.input_norm),
                    p(&lw.qkv),
                    &post,
                    gpu.ptr(&ws.skinny_counters),
                    tokens,
                    (nq, nk),
                    d,
                    h,
                    eps,
                )?;
            } else {
                if fold {
                    gpu.gemv_norm(
                        qkv,
                        residual,
                        p(&lw.input_norm),
                        p(&lw.qkv),
                        tokens,
                        qkv_w,
                        h,
                        eps,
                    )?;
                } else if let Some(plan) = tile[0] {
                    let epi = TileEpilogue::Norm {
                        norm: p(&lw.input_norm),
                        eps,
                    };
                    let shape = (tokens, qkv_w, h);
                    let w = p(&lw.qkv);
                    gpu.gemm_tile(qkv, residual, w, &scratch, shape, qkv_w, epi, plan)?;
                } else if let Some(w) = qkv_prenorm {
                    self.linear(gpu, ws, qkv, residual, w, (tokens, qkv_w, h), false)?;
                } else {
                    if l == 0 || res_proj {
                        gpu.rmsnorm(hidden, residual, p(&lw.input_norm), tokens, h, eps)?;
                    } else {
                        gpu.fused_add_rmsnorm(hidden, residual, p(&lw.input_norm), tokens, h, eps)?;
                    }
                    self.linear(gpu, ws, qkv, hidden, &lw.qkv, (tokens, qkv_w, h), false)?;
                }
                if let Some(b) = &lw.qkv_bias {
                    gpu.add_bias_rows(qkv, p(b), tokens, qkv_w, qkv_w)?;
                }
                if let (true, Some(te)) = (self.fused, q_rope_tokens) {
                    let bad = |what: &str| CudaError::Invalid {
                        kernel: "qk_norm_rope_store",
                        msg: format!("{what} outside the workspace"),
                    };
                    // k and v of every token: the pass sees the k columns as its first head.
                    let kv_cols = qkv
                        .sub(nq * d, qkv.len() - nq * d)
                        .ok_or_else(|| bad("k/v columns"))?;
                    gpu.qk_norm_rope_store(kv_cols, &post, tokens, (0, nk), d, qkv_w, eps)?;
                    if tokens > te {
                        // q of the decode tokens after the extend ones.
                        let n = tokens - te;
                        let sub_post = QkvPost {
                            positions: post.positions.sub(te, n).ok_or_else(|| bad("positions"))?,
                            slots: post.slots.sub(te, n).ok_or_else(|| bad("slots"))?,
                            ..post
                        };
                        let rows = qkv
                            .sub(te * qkv_w, qkv.len() - te * qkv_w)
                            .ok_or_else(|| bad("decode rows"))?;
                        gpu.qk_norm_rope_store(rows, &sub_post, n, (nq, 0), d, qkv_w, eps)?;
                    }
                } else if decode_post {
                    // Done by the decode attention below.
                } else if self.fused {
                    gpu.qk_norm_rope_store(qkv, &post, tokens, (nq, nk), d, qkv_w, eps)?;
                } else {
                    if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                        gpu.qk_rmsnorm(qkv, p(qn), p(kn), tokens, (nq, nk), d, qkv_w, eps)?;
                    }
                    gpu.rope_neox(
                        qkv,
                        gpu.ptr(&ws.positions),
                        gpu.ptr(&self.cos_sin),
                        tokens,
                        (nq, nk),
                        d,
                        qkv_w,
                    )?;
                    gpu.kv_store(
                        view.k_cache,
                        view.v_cache,
                        qkv,
                        gpu.ptr(&ws.out_slots),
                        tokens,
                        (nq, nk),
                        d,
                        qkv_w,
                    )?;
                }
            }
            if let Some(meta) = extend {
                let rope = q_rope_tokens.map(|_| QRope {
                    // As the q/k pass: q/k norm only when the model has both.
                    q_norm: lw
                        .q_norm
                        .as_ref()
                        .zip(lw.k_norm.as_ref())
                        .map(|(q, _)| p(q)),
                    positions: gpu.ptr(&ws.positions),
                    cos_sin: gpu.ptr(&self.cos_sin),
                    eps,
                });
                gpu.attention_extend_rope(
                    attn,
                    qkv,
                    view,
                    meta,
                    &shape,
                    self.kernels.extend,
                    rope.as_ref(),
                )?;
            }
            if let Some((meta, splits)) = decode {
                let variant = match self.kernels.decode {
                    DecodeKernel::V2 => DecodeVariant::V2,
                    DecodeKernel::V3 => DecodeVariant::V3,
                    DecodeKernel::V3Fused => DecodeVariant::V3Fused(gpu.ptr(&ws.decode_counters)),
                    DecodeKernel::Auto if splits == 1 => {
                        DecodeVariant::V3Fused(gpu.ptr(&ws.decode_counters))
                    }
                    DecodeKernel::Auto => DecodeVariant::V3,
                };
                let (po, pm) = (gpu.ptr(&ws.part_o), gpu.ptr(&ws.part_ml));
                let qk_pass = decode_post.then_some((&post, eps));
                let shape = AttnShape {
                    decode_prefetch_next: prefetch_o.then(|| p(&lw.o)),
                    ..shape
                };
                gpu.attention_decode_variant(
                    attn, qkv, view, meta, &shape, po, pm, splits, variant, qk_pass,
                )?;
            }
            if fold {
                gpu.gemv_resadd(residual, attn, p(&lw.o), tokens, h, nq * d, h)?;
                gpu.gemv_gate_up_silu_norm(
                    act,
                    residual,
                    p(&lw.post_norm),
                    p(&lw.gate_up),
                    tokens,
                    inter,
                    h,
                    eps,
                )?;
                gpu.gemv_resadd(residual, act, p(&lw.down), tokens, h, inter, h)?;
                continue;
            }
            if tile_any {
                // res_proj holds here (the tiled path needs the residual-add projections).
                let res = TileEpilogue::ResAdd;
                let o_shape = (tokens, h, nq * d);
                match tile[1] {
                    Some(pl) => {
                        gpu.gemm_tile(residual, attn, p(&lw.o), &scratch, o_shape, h, res, pl)?
                    }
                    None => self.linear(gpu, ws, residual, attn, &lw.o, o_shape, true)?,
                }
                match tile[2] {
                    Some(pl) => {
                        let silu = TileEpilogue::NormSilu {
                            norm: p(&lw.post_norm),
                            eps,
                        };
                        let shape = (tokens, 2 * inter, h);
                        // The plan says whether the norm's weight is folded into the weights.
                        let gu = if pl.flags & TILE_PRESCALED != 0 {
                            p(&fw.gate_up)
                        } else {
                            p(&lw.gate_up)
                        };
                        gpu.gemm_tile(act, residual, gu, &scratch, shape, inter, silu, pl)?;
                    }
                    None => {
                        gpu.rmsnorm(hidden, residual, p(&lw.post_norm), tokens, h, eps)?;
                        self.gate_up_act(gpu, ws, act, hidden, &lw.gate_up, tokens, inter, h)?;
                    }
                }
                let d_shape = (tokens, h, inter);
                match tile[3] {
                    Some(pl) => {
                        let down = p(&lw.down);
                        gpu.gemm_tile(residual, act, down, &scratch, d_shape, h, res, pl)?;
                    }
                    None => self.linear(gpu, ws, residual, act, &lw.down, d_shape, true)?,
                }
                continue;
            }
            if res_proj {
                self.linear(gpu, ws, residual, attn, &lw.o, (tokens, h, nq * d), true)?;
                gpu.rmsnorm(hidden, residual, p(&lw.post_norm), tokens, h, eps)?;
            } else {
                self.linear(gpu, ws, hidden, attn, &lw.o, (tokens, h, nq * d), false)?;
                gpu.fused_add_rmsnorm(hidden, residual, p(&lw.post_norm), tokens, h, eps)?;
            }
            self.gate_up_act(gpu, ws, act, hidden, &lw.gate_up, tokens, inter, h)?;
            if res_proj {
                self.linear(gpu, ws, residual, act, &lw.down, (tokens, h, inter), true)?;
            } else {
                self.linear(gpu, ws, hidden, act, &lw.down, (tokens, h, inter), false)?;
            }
        }
        if rows == 0 {
            return Ok(());
        }
        // Only the rows that need logits: gather them (hidden and residual), then the final norm.
        let sel = p(&ws.sel);
        if fold || res_proj {
            // The last down projection already went into the residual stream.
            let logit_tok = gpu.ptr(&ws.logit_tok);
            gpu.rmsnorm_gather(sel, residual, logit_tok, p(&self.final_norm), rows, h, eps)?;
        } else {
            let sel_res = attn; // free now: reuse as the gathered residual
            gpu.gather_rows(sel, hidden, gpu.ptr(&ws.logit_tok), rows, h)?;
            gpu.gather_rows(sel_res, residual, gpu.ptr(&ws.logit_tok), rows, h)?;
            gpu.fused_add_rmsnorm(sel, sel_res, p(&self.final_norm), rows, h, eps)?;
        }
        // The argmax also records each row's token for the next step.
        let store = LastTokenStore {
            last_token: gpu.ptr(&kv.last_token),
            rows: gpu.ptr(&ws.logit_row),
        };
        if self.step_pick(gpu, pick, rows) == TokenPick::Argmax {
            return gpu.lm_head_argmax(
                gpu.ptr(&ws.sampled),
                sel,
                p(self.lm_head()),
                gpu.ptr(&ws.lm_argmax_scratch),
                (rows, c.vocab_size, h),
                Some(store),
            );
        }
        if self.lm_head_on_gemv(rows) {
            gpu.gemv_f32out(
                gpu.ptr(&ws.logits),
                sel,
                p(self.lm_head()),
                rows,
                c.vocab_size,
                h,
                c.vocab_size,
            )?;
        } else {
            gpu.blas.project(
                GemmOut::F32(gpu.ptr(&ws.logits)),
                sel,
                p(self.lm_head()),
                (rows, c.vocab_size, h),
                c.vocab_size,
                self.gemm_tuned(rows),
            )?;
        }
        if pick == TokenPick::Logits {
            return Ok(());
        }
        self.pick(gpu, kv, ws, rows, pick)
    }

    /// Turn the workspace's `rows` logits rows into tokens in `ws.sampled`, recording each in
    /// its request row's last token: argmax (`pick` not `Sample`) or the GPU sampler with the
    /// sampling parameters uploaded for the step. Launches only (capturable).
    pub fn pick(
        &self,
        gpu: &Gpu,
        kv: &KvPool,
        ws: &Workspace,
        rows: usize,
        pick: TokenPick,
    ) -> Result<()> {
        let c = &self.cfg;
        let store = LastTokenStore {
            last_token: gpu.ptr(&kv.last_token),
            rows: gpu.ptr(&ws.logit_row),
        };
        let greedy = pick != TokenPick::Sample;
        if greedy && self.kernels.argmax_single_block {
            gpu.argmax_rows_single(
                gpu.ptr(&ws.sampled),
                gpu.ptr(&ws.logits),
                rows,
                c.vocab_size,
            )?;
        } else if greedy {
            return gpu.argmax_rows(
                gpu.ptr(&ws.sampled),
                gpu.ptr(&ws.logits),
                gpu.ptr(&ws.argmax_scratch),
                rows,
                c.vocab_size,
                Some(store),
            );
        } else {
            let [t, tp, mp, u] = &ws.samp_f;
            let bufs = SamplingBufs {
                temperature: gpu.ptr(t),
                top_k: gpu.ptr(&ws.samp_k),
                top_p: gpu.ptr(tp),
                min_p: gpu.ptr(mp),
                uniform: gpu.ptr(u),
            };
            gpu.sample_rows(
                gpu.ptr(&ws.sampled),
                gpu.ptr(&ws.logits),
                &bufs,
                rows,
                c.vocab_size,
            )?;
        }
        gpu.store_last_token(
            gpu.ptr(&kv.last_token),
            gpu.ptr(&ws.logit_row),
            gpu.ptr(&ws.sampled),
            rows,
        )
    }
}
