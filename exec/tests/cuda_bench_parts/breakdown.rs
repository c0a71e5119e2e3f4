//! Each kernel of a decode step (b = 1 and 64) and of a 64 x 128 prefill timed alone: where a
//! step's time goes (the "per-kernel breakdown" tables of docs/cuda.md).

use super::cuda_common::Rng;
use super::*;
use doppel_exec::cuda::ops::QkvLayout;
use doppel_exec::cuda::plan::{decode_kernel, DeviceCaps};

/// Each kernel of one decode step (b = 1 and 64) and of a 64 x 128 prefill, timed alone at the
/// step's shapes, times the number of launches per step.
pub(crate) fn kernel_breakdown(
    gpu: &Gpu,
    model: &GpuModel,
    kv: &KvPool,
    ws: &mut Workspace,
    rng: &mut Rng,
    sms: usize,
) {
    let c = &model.cfg;
    let (h, nq, nk, d, inter, layers) = (
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.num_layers,
    );
    let qkv_w = (nq + 2 * nk) * d;
    for (label, b, prefix, new) in [
        ("decode b=1", 1usize, 159usize, 1usize),
        ("decode b=64", 64, 159, 1),
        ("prefill 64x128", 64, 0, 128),
    ] {
        let s = step(b, prefix, new, kv.max_ctx, c.vocab_size, rng);
        model.upload_step(gpu, ws, &s).unwrap();
        let t = s.ids.len();
        let x = gpu
            .upload(&rng.bf16s(t * qkv_w.max(2 * inter), 1.0))
            .unwrap();
        let y = gpu.zeros::<bf16>(t * qkv_w.max(2 * inter)).unwrap();
        let r = gpu.upload(&rng.bf16s(t * h, 1.0)).unwrap();
        let wts: Vec<_> = [qkv_w * h, h * nq * d, 2 * inter * h, h * inter]
            .iter()
            .map(|&n| gpu.upload(&rng.bf16s(n, 0.05)).unwrap())
            .collect();
        let norm_w = gpu.upload(&rng.bf16s(h.max(d), 1.0)).unwrap();
        let cos = gpu
            .upload(&doppel_exec::cuda::rope::cos_sin_table(
                &c.rope_inv_freq(),
                4096,
            ))
            .unwrap();
        let kc = gpu.upload(&rng.bf16s(kv.num_slots * nk * d, 1.0)).unwrap();
        let vc = gpu.upload(&rng.bf16s(kv.num_slots * nk * d, 1.0)).unwrap();
        let p = |b: &cudarc::driver::CudaSlice<bf16>| gpu.ptr(b);
        let part = gpu.zeros::<f32>(8 * 64 * 6144).unwrap();
        let counters = gpu.zeros::<u32>(SKINNY_COUNTERS).unwrap();
        let scratch = SkinnyScratch {
            part: gpu.ptr(&part),
            counters: gpu.ptr(&counters),
        };
        let lin = |y: &cudarc::driver::CudaSlice<bf16>,
                   x: &cudarc::driver::CudaSlice<bf16>,
                   w: &cudarc::driver::CudaSlice<bf16>,
                   n: usize,
                   k: usize| {
            if t <= 1 {
                gpu.gemv(p(y), p(x), p(w), (t, n, k), n).unwrap()
            } else if t <= 16 {
                let plan = skinny_plan(n, k, SkinnyEpilogue::Plain, gpu.sms);
                gpu.gemm_skinny(
                    GemmIo {
                        y: p(y),
                        x: p(x),
                        w: p(w),
                        ldy: n,
                    },
                    &scratch,
                    (t, n, k),
                    SkinnyEpilogue::Plain,
                    plan,
                )
                .unwrap()
            } else {
                gpu.blas.gemm_bf16(p(y), p(x), p(w), (t, n, k), n).unwrap()
            }
        };
        let mut rows: Vec<(&str, f64, usize)> = vec![
            (
                "qkv proj",
                time_ms(gpu, 9, 5, || lin(&y, &x, &wts[0], qkv_w, h)),
                layers,
            ),
            (
                "o proj",
                time_ms(gpu, 9, 5, || lin(&y, &x, &wts[1], h, nq * d)),
                layers,
            ),
            (
                "gate_up proj",
                time_ms(gpu, 9, 5, || lin(&y, &x, &wts[2], 2 * inter, h)),
                layers,
            ),
            (
                "down proj",
                time_ms(gpu, 9, 5, || lin(&y, &x, &wts[3], h, inter)),
                layers,
            ),
            (
                "fused_add_rmsnorm",
                time_ms(gpu, 9, 5, || {
                    gpu.fused_add_rmsnorm(p(&y), p(&r), p(&norm_w), t, h, 1e-6)
                        .unwrap()
                }),
                2 * layers,
            ),
            (
                "qk_rmsnorm",
                time_ms(gpu, 9, 5, || {
                    gpu.qk_rmsnorm(
                        p(&y),
                        QkvLayout {
                            tokens: t,
                            nq,
                            nk,
                            head_dim: d,
                            row_stride: qkv_w,
                        },
                        (p(&norm_w), p(&norm_w)),
                        1e-6,
                    )
                    .unwrap()
                }),
                layers,
            ),
            (
                "rope_neox",
                time_ms(gpu, 9, 5, || {
                    gpu.rope_neox(
                        p(&y),
                        QkvLayout {
                            tokens: t,
                            nq,
                            nk,
                            head_dim: d,
                            row_stride: qkv_w,
                        },
                        gpu.ptr(&ws.positions),
                        gpu.ptr(&cos),
                    )
                    .unwrap()
                }),
                layers,
            ),
            (
                "kv_store",
                time_ms(gpu, 9, 5, || {
                    gpu.kv_store(
                        (p(&kc), p(&vc)),
                        p(&y),
                        QkvLayout {
                            tokens: t,
                            nq,
                            nk,
                            head_dim: d,
                            row_stride: qkv_w,
                        },
                        gpu.ptr(&ws.out_slots),
                    )
                    .unwrap()
                }),
                layers,
            ),
            (
                "silu_and_mul",
                time_ms(gpu, 9, 5, || {
                    gpu.silu_and_mul(p(&y), p(&x), t, inter).unwrap()
                }),
                layers,
            ),
        ];
        rows.push((
            "rmsnorm",
            time_ms(gpu, 9, 5, || {
                gpu.rmsnorm(p(&y), p(&r), p(&norm_w), t, h, 1e-6).unwrap()
            }),
            if t <= 1 { 0 } else { 2 * layers },
        ));
        // The model runs the fused kernels: the separate ones stay listed (0 calls) for comparison.
        for row in rows.iter_mut() {
            if ["qk_rmsnorm", "rope_neox", "kv_store"].contains(&row.0)
                || (t <= 16 && ["gate_up proj", "silu_and_mul"].contains(&row.0))
                // At 1 token the norms are folded into the GEMVs; above, the residual adds
                // are in the o/down projections and the norms are plain RMSNorms.
                || row.0 == "fused_add_rmsnorm"
            {
                row.2 = 0;
            }
        }
        if t > 1 && t <= 64 {
            let plan = skinny_plan(2 * inter, h, SkinnyEpilogue::SiluMul, gpu.sms);
            rows.push((
                "gate_up + silu (skinny, fused)",
                time_ms(gpu, 9, 5, || {
                    gpu.gemm_skinny(
                        GemmIo {
                            y: p(&y),
                            x: p(&x),
                            w: p(&wts[2]),
                            ldy: inter,
                        },
                        &scratch,
                        (t, 2 * inter, h),
                        SkinnyEpilogue::SiluMul,
                        plan,
                    )
                    .unwrap()
                }),
                if t <= 16 { layers } else { 0 },
            ));
        }
        let post = doppel_exec::cuda::ops::QkvPost {
            qk_norm: Some((p(&norm_w), p(&norm_w))),
            positions: gpu.ptr(&ws.positions),
            cos_sin: gpu.ptr(&cos),
            k_cache: p(&kc),
            v_cache: p(&vc),
            slots: gpu.ptr(&ws.out_slots),
            row_scale: None,
        };
        // A prefill (extend-only step) leaves q norm + RoPE to the extend kernel: the q/k pass
        // then only sees k and v.
        let prefill = prefix == 0;
        rows.push((
            "qk_norm_rope_store (fused)",
            time_ms(gpu, 9, 5, || {
                gpu.qk_norm_rope_store(
                    p(&y),
                    QkvLayout {
                        tokens: t,
                        nq,
                        nk,
                        head_dim: d,
                        row_stride: qkv_w,
                    },
                    &post,
                    1e-6,
                )
                .unwrap()
            }),
            if prefill { 0 } else { layers },
        ));
        if prefill {
            let kv_cols = p(&y).sub(nq * d, y.len() - nq * d).unwrap();
            rows.push((
                "qk_norm_rope_store, k and v only",
                time_ms(gpu, 9, 5, || {
                    gpu.qk_norm_rope_store(
                        kv_cols,
                        QkvLayout {
                            tokens: t,
                            nq: 0,
                            nk,
                            head_dim: d,
                            row_stride: qkv_w,
                        },
                        &post,
                        1e-6,
                    )
                    .unwrap()
                }),
                layers,
            ));
        }
        if t <= 8 {
            rows.push((
                "gemv_gate_up_silu (fused)",
                time_ms(gpu, 9, 5, || {
                    gpu.gemv_gate_up_silu(p(&y), p(&x), p(&wts[2]), t, inter, h)
                        .unwrap()
                }),
                if t <= 1 { layers } else { 0 },
            ));
        }
        let view = doppel_exec::cuda::attention::KvView {
            k_cache: p(&kc),
            v_cache: p(&vc),
            table: gpu.ptr(&kv.table),
        };
        let shape = doppel_exec::cuda::attention::AttnShape {
            split_min_keys: 1,
            decode_kernel: decode_kernel(&model.cfg, &model.kernels, DeviceCaps::of(gpu), b),
            ..model.attn_shape(kv)
        };
        if new == 1 {
            let meta = DecodeMeta::new(gpu, &s.decode, t, kv.rows, kv.max_ctx).unwrap();
            let splits = decode_splits(b, nk, prefix + 1, sms).min(64);
            let counters = gpu.zeros::<u32>(b * nk).unwrap();
            let po = gpu.zeros::<f32>(b * nq * 4 * splits.max(4) * d).unwrap();
            let pm = gpu.zeros::<f32>(b * nq * 4 * splits.max(4) * 2).unwrap();
            // (label, splits, variant, launches per step): the model fuses the combine only for
            // one split; the rest are cross-checks, not summed.
            let (fused, plain) = if splits == 1 {
                (layers, 0)
            } else {
                (0, layers)
            };
            for (label, sp, variant, n) in [
                (
                    "attention_decode (one launch, combine fused)",
                    splits,
                    DecodeVariant::Fused(gpu.ptr(&counters)),
                    fused,
                ),
                (
                    "attention_decode split + combine kernel",
                    splits,
                    DecodeVariant::Combine,
                    plain,
                ),
                ("attention_decode, 1 split", 1, DecodeVariant::Combine, 0),
                (
                    "attention_decode, 2x splits",
                    2 * splits,
                    DecodeVariant::Combine,
                    0,
                ),
                (
                    "attention_decode, 4x splits",
                    4 * splits,
                    DecodeVariant::Combine,
                    0,
                ),
            ] {
                rows.push((
                    label,
                    time_ms(gpu, 9, 5, || {
                        gpu.attention_decode(
                            p(&x),
                            view,
                            &meta,
                            &shape,
                            DecodeOut {
                                out: p(&y),
                                part_o: gpu.ptr(&po),
                                part_ml: gpu.ptr(&pm),
                                splits: sp,
                                variant,
                            },
                            None,
                        )
                        .unwrap()
                    }),
                    n,
                ));
            }
        } else {
            let meta = ExtendMeta::new(gpu, &s.extend, t, kv.rows, kv.max_ctx, nq / nk).unwrap();
            // The model's kernel is summed; the others are candidates and cross-checks.
            let rope = doppel_exec::cuda::attention::QRope {
                q_norm: Some(p(&norm_w)),
                positions: gpu.ptr(&ws.positions),
                cos_sin: gpu.ptr(&cos),
                eps: 1e-6,
            };
            rows.push((
                "attention_extend GQA + q norm/RoPE on load",
                time_ms(gpu, 9, 5, || {
                    gpu.attention_extend(p(&y), p(&x), view, &meta, &shape, Some(&rope))
                        .unwrap()
                }),
                layers,
            ));
            rows.push((
                "attention_extend GQA, q norm/RoPE in the q/k pass",
                time_ms(gpu, 9, 5, || {
                    gpu.attention_extend(p(&y), p(&x), view, &meta, &shape, None)
                        .unwrap()
                }),
                0,
            ));
        }
        let logits = gpu.zeros::<f32>(b * c.vocab_size).unwrap();
        let emb = gpu.upload(&rng.bf16s(c.vocab_size * h, 0.05)).unwrap();
        let out = gpu.zeros::<u32>(b).unwrap();
        rows.push((
            "lm_head (cuBLAS, f32 out)",
            time_ms(gpu, 9, 3, || {
                gpu.blas
                    .gemm_bf16_f32out(
                        gpu.ptr(&logits),
                        p(&x),
                        p(&emb),
                        (b, c.vocab_size, h),
                        c.vocab_size,
                    )
                    .unwrap()
            }),
            if b <= 2 { 0 } else { 1 },
        ));
        if b <= 8 {
            rows.push((
                "lm_head (GEMV, f32 out)",
                time_ms(gpu, 9, 3, || {
                    gpu.gemv_f32out(
                        gpu.ptr(&logits),
                        p(&x),
                        p(&emb),
                        (b, c.vocab_size, h),
                        c.vocab_size,
                    )
                    .unwrap()
                }),
                if b <= 2 { 1 } else { 0 },
            ));
        }
        let scratch = gpu
            .zeros::<u32>(doppel_exec::cuda::ops::argmax_scratch_len(b))
            .unwrap();
        rows.push((
            "argmax_rows (multi-block)",
            time_ms(gpu, 9, 5, || {
                gpu.argmax_rows(
                    gpu.ptr(&out),
                    gpu.ptr(&logits),
                    gpu.ptr(&scratch),
                    b,
                    c.vocab_size,
                    None,
                )
                .unwrap()
            }),
            1,
        ));
        let f = gpu.upload(&vec![0.8f32; b]).unwrap();
        let one = gpu.upload(&vec![0.9f32; b]).unwrap();
        let z = gpu.upload(&vec![0.0f32; b]).unwrap();
        let k = gpu.upload(&vec![50i32; b]).unwrap();
        let u = gpu.upload(&vec![0.37f32; b]).unwrap();
        let sb = doppel_exec::cuda::ops::SamplingBufs {
            temperature: gpu.ptr(&f),
            top_k: gpu.ptr(&k),
            top_p: gpu.ptr(&one),
            min_p: gpu.ptr(&z),
            uniform: gpu.ptr(&u),
        };
        rows.push((
            "sample_rows (T=0.8, top_k=50, top_p=0.9)",
            time_ms(gpu, 5, 2, || {
                gpu.sample_rows(gpu.ptr(&out), gpu.ptr(&logits), &sb, b, c.vocab_size)
                    .unwrap()
            }),
            0,
        ));
        // The filters one at a time (k = 0: top-k off; top_p = 1: off).
        let k0 = gpu.upload(&vec![0i32; b]).unwrap();
        let p1 = gpu.upload(&vec![1.0f32; b]).unwrap();
        for (name, top_k, top_p) in [
            ("sample_rows (T=0.8 only)", &k0, &p1),
            ("sample_rows (T=0.8, top_k=50)", &k, &p1),
            ("sample_rows (T=0.8, top_p=0.9)", &k0, &one),
        ] {
            let sb = doppel_exec::cuda::ops::SamplingBufs {
                top_k: gpu.ptr(top_k),
                top_p: gpu.ptr(top_p),
                ..sb
            };
            rows.push((
                name,
                time_ms(gpu, 5, 2, || {
                    gpu.sample_rows(gpu.ptr(&out), gpu.ptr(&logits), &sb, b, c.vocab_size)
                        .unwrap()
                }),
                0,
            ));
        }
        println!("\nper-kernel breakdown, {label} (each kernel timed alone at the step's shape)");
        println!(
            "{:<42} {:>10} {:>7} {:>10}",
            "kernel", "us/call", "calls", "ms/step"
        );
        let mut total = 0.0;
        for (n, ms, calls) in &rows {
            total += ms * *calls as f64;
            println!(
                "{n:<42} {:>10.2} {calls:>7} {:>10.3}",
                ms * 1e3,
                ms * *calls as f64
            );
        }
        println!(
            "{:<42} {:>10} {:>7} {:>10.3}",
            "sum (greedy step)", "", "", total
        );
    }
}
