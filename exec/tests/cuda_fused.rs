//! The fused kernels against CPU references (f64 from the same bf16 inputs): q/k norm + RoPE +
//! KV store in one pass, the gate/up GEMV with SiLU-and-mul, and the GEMVs with a norm or a
//! residual add folded in. Skips without a GPU.

mod cuda_common;

use cuda_common::{f64s, open_gpu, Report, Rng};
use doppel_exec::cuda::ops::{NormIn, QkvLayout, QkvPost};
use doppel_exec::cuda::rope::{cos_sin_table, llama3_inv_freq, plain_inv_freq};
use half::bf16;

fn rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

fn rope(x: &[f64], pos: i32, inv: &[f64]) -> Vec<f64> {
    let half = x.len() / 2;
    let mut o = vec![0.0; x.len()];
    for i in 0..half {
        let a = pos as f64 * inv[i];
        o[i] = x[i] * a.cos() - x[half + i] * a.sin();
        o[half + i] = x[half + i] * a.cos() + x[i] * a.sin();
    }
    o
}

#[test]
fn fused_kernels_match_cpu_references() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0002);
    let eps = 1e-6f32;
    for (nq, nk, d, norm, inv) in [
        (16usize, 8usize, 128usize, true, plain_inv_freq(1e6, 128)),
        (
            32,
            8,
            128,
            false,
            llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192.0),
        ),
        (8, 2, 64, true, plain_inv_freq(10000.0, 64)),
        // 7 heads: the kernel's last 4-head group holds q, k and v heads and a missing one.
        (5, 1, 128, true, plain_inv_freq(1e6, 128)),
    ] {
        let (t, max_pos, slots_n) = (45usize, 4096usize, 300usize);
        let stride = (nq + 2 * nk) * d;
        let qkv = rng.bf16s(t * stride, 2.0);
        let pos: Vec<i32> = (0..t).map(|_| rng.below(max_pos) as i32).collect();
        let slots = rng.distinct(t, slots_n);
        let (wq, wk) = (rng.bf16s(d, 1.5), rng.bf16s(d, 1.5));
        let poison = vec![bf16::from_f32(-3.0); slots_n * nk * d];
        let dq = gpu.upload(&qkv).unwrap();
        let (dwq, dwk) = (gpu.upload(&wq).unwrap(), gpu.upload(&wk).unwrap());
        let (dp, ds) = (gpu.upload(&pos).unwrap(), gpu.upload(&slots).unwrap());
        let dcs = gpu.upload(&cos_sin_table(&inv, max_pos)).unwrap();
        let (dk, dv) = (gpu.upload(&poison).unwrap(), gpu.upload(&poison).unwrap());
        let post = QkvPost {
            qk_norm: norm.then(|| (gpu.ptr(&dwq), gpu.ptr(&dwk))),
            positions: gpu.ptr(&dp),
            cos_sin: gpu.ptr(&dcs),
            k_cache: gpu.ptr(&dk),
            v_cache: gpu.ptr(&dv),
            slots: gpu.ptr(&ds),
            row_scale: None,
        };
        gpu.qk_norm_rope_store(
            gpu.ptr(&dq),
            QkvLayout {
                tokens: t,
                nq,
                nk,
                head_dim: d,
                row_stride: stride,
            },
            &post,
            eps,
        )
        .unwrap();
        let (out, k, v) = (
            gpu.download(&dq).unwrap(),
            gpu.download(&dk).unwrap(),
            gpu.download(&dv).unwrap(),
        );
        let (wqf, wkf) = (f64s(&wq), f64s(&wk));
        let (mut qo, mut qr, mut ko, mut kr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut v_ok = true;
        for tok in 0..t {
            let sl = slots[tok] as usize;
            for h in 0..nq + nk {
                let s = tok * stride + h * d;
                let mut x = f64s(&qkv[s..s + d]);
                if norm {
                    // The kernel rounds the normalised head to bf16 before RoPE.
                    x = rms(&x, if h < nq { &wqf } else { &wkf }, eps as f64)
                        .into_iter()
                        .map(|y| bf16::from_f64(y).to_f64())
                        .collect();
                }
                let r = rope(&x, pos[tok], &inv);
                if h < nq {
                    qr.extend(r);
                    qo.extend(f64s(&out[s..s + d]));
                } else {
                    kr.extend(r);
                    let c = sl * nk * d + (h - nq) * d;
                    ko.extend(f64s(&k[c..c + d]));
                }
            }
            for h in 0..nk {
                let s = tok * stride + (nq + nk + h) * d;
                let c = sl * nk * d + h * d;
                v_ok &= qkv[s..s + d]
                    .iter()
                    .zip(&v[c..c + d])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            }
        }
        let name = format!("qk_norm_rope_store nq={nq} nk={nk} D={d} norm={norm}");
        rep.rel(&format!("{name}: q in place"), &qo, &qr, 1e-2);
        rep.rel(&format!("{name}: k into the cache"), &ko, &kr, 1e-2);
        rep.check(&format!("{name}: v copied exactly"), 0.0, v_ok);
        let used: std::collections::BTreeSet<usize> = slots.iter().map(|s| *s as usize).collect();
        let untouched = (0..slots_n).filter(|s| !used.contains(s)).all(|s| {
            k[s * nk * d..(s + 1) * nk * d]
                .iter()
                .chain(&v[s * nk * d..(s + 1) * nk * d])
                .all(|x| x.to_f32() == -3.0)
        });
        rep.check(&format!("{name}: other slots untouched"), 0.0, untouched);
    }

    for (b, inter, k) in [
        (1usize, 3072usize, 1024usize),
        (4, 1000, 2048),
        (8, 512, 1000),
    ] {
        let x = rng.bf16s(b * k, 1.0);
        let w = rng.bf16s(2 * inter * k, 0.08);
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let dy = gpu
            .upload(&vec![bf16::from_f32(f32::NAN); b * inter])
            .unwrap();
        gpu.gemv_gate_up_silu(gpu.ptr(&dy), gpu.ptr(&dx), gpu.ptr(&dw), b, inter, k)
            .unwrap();
        let (xf, wf) = (f64s(&x), f64s(&w));
        let dot =
            |bi: usize, n: usize| -> f64 { (0..k).map(|j| xf[bi * k + j] * wf[n * k + j]).sum() };
        let reference: Vec<f64> = (0..b * inter)
            .map(|i| {
                let (bi, n) = (i / inter, i % inter);
                let (g, u) = (dot(bi, n), dot(bi, inter + n));
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        rep.rel(
            &format!("gemv_gate_up_silu B={b} I={inter} K={k}"),
            &f64s(&gpu.download(&dy).unwrap()),
            &reference,
            1e-2,
        );
    }
    folded_gemvs(&gpu, &mut rng, &mut rep);
    qkv_gemv_with_post(&gpu, &mut rng, &mut rep);
    rep.finish();
}

/// gemv_norm_qkv (q/k norm + RoPE + KV store in the qkv GEMV's last block per head) against
/// gemv_norm followed by qk_norm_rope_store (both checked against f64 references above): the
/// same arithmetic, so the outputs must be bit-identical (they were in every run-6 launch).
/// Launched twice (counters re-armed).
fn qkv_gemv_with_post(gpu: &doppel_exec::cuda::Gpu, rng: &mut Rng, rep: &mut Report) {
    let eps = 1e-6f32;
    let counters = gpu.zeros::<u32>(64).unwrap();
    for (b, nq, nk, d, norm) in [
        (1usize, 16usize, 8usize, 128usize, true),
        (4, 16, 8, 128, true),
        (3, 8, 2, 64, true),
        (2, 4, 4, 128, false),
    ] {
        let (h, max_pos, slots_n) = (1024usize, 4096usize, 50usize);
        let n = (nq + 2 * nk) * d;
        let r = rng.bf16s(b * h, 2.0);
        let nw = rng.bf16s(h, 1.0);
        let w = rng.bf16s(n * h, 0.08);
        let (wq, wk) = (rng.bf16s(d, 1.5), rng.bf16s(d, 1.5));
        let pos: Vec<i32> = (0..b).map(|_| rng.below(max_pos) as i32).collect();
        let slots = rng.distinct(b, slots_n);
        let inv = plain_inv_freq(1e6, d);
        let up = |v: &[bf16]| gpu.upload(v).unwrap();
        let (dr, dn, dw, dwq, dwk) = (up(&r), up(&nw), up(&w), up(&wq), up(&wk));
        let (dp, ds) = (gpu.upload(&pos).unwrap(), gpu.upload(&slots).unwrap());
        let dcs = gpu.upload(&cos_sin_table(&inv, max_pos)).unwrap();
        let poison = vec![bf16::from_f32(-3.0); slots_n * nk * d];
        let mut outs = Vec::new();
        for fused in [false, true, true] {
            let (dk, dv) = (up(&poison), up(&poison));
            let dq = gpu.upload(&vec![bf16::from_f32(f32::NAN); b * n]).unwrap();
            let post = QkvPost {
                qk_norm: norm.then(|| (gpu.ptr(&dwq), gpu.ptr(&dwk))),
                positions: gpu.ptr(&dp),
                cos_sin: gpu.ptr(&dcs),
                k_cache: gpu.ptr(&dk),
                v_cache: gpu.ptr(&dv),
                slots: gpu.ptr(&ds),
                row_scale: None,
            };
            if fused {
                gpu.gemv_norm_qkv(
                    gpu.ptr(&dq),
                    QkvLayout {
                        tokens: b,
                        nq,
                        nk,
                        head_dim: d,
                        row_stride: n,
                    },
                    NormIn {
                        x: gpu.ptr(&dr),
                        w: gpu.ptr(&dn),
                        hidden: h,
                        eps,
                    },
                    gpu.ptr(&dw),
                    &post,
                    gpu.ptr(&counters),
                )
                .unwrap();
            } else {
                gpu.gemv_norm(
                    gpu.ptr(&dq),
                    NormIn {
                        x: gpu.ptr(&dr),
                        w: gpu.ptr(&dn),
                        hidden: h,
                        eps,
                    },
                    gpu.ptr(&dw),
                    (b, n),
                )
                .unwrap();
                gpu.qk_norm_rope_store(
                    gpu.ptr(&dq),
                    QkvLayout {
                        tokens: b,
                        nq,
                        nk,
                        head_dim: d,
                        row_stride: n,
                    },
                    &post,
                    eps,
                )
                .unwrap();
            }
            // q heads (in place) and the caches; qkv's k/v columns hold the projection in both.
            let q: Vec<u16> = gpu
                .download(&dq)
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(i, _)| i % n < nq * d)
                .map(|(_, v)| v.to_bits())
                .collect();
            let k: Vec<u16> = gpu
                .download(&dk)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let v: Vec<u16> = gpu
                .download(&dv)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            outs.push((q, k, v));
        }
        for (i, o) in outs.iter().enumerate().skip(1) {
            let name = format!("gemv_norm_qkv B={b} nq={nq} nk={nk} D={d} norm={norm} #{i}");
            rep.exact(
                &format!("{name}: q vs gemv_norm + qk_norm_rope_store"),
                &o.0,
                &outs[0].0,
            );
            rep.exact(&format!("{name}: K cache"), &o.1, &outs[0].1);
            rep.exact(&format!("{name}: V cache"), &o.2, &outs[0].2);
        }
    }
    let left = gpu.download(&counters).unwrap();
    rep.check(
        "gemv_norm_qkv: head counters re-armed to 0",
        0.0,
        left.iter().all(|&c| c == 0),
    );
}

/// The GEMVs with the RMSNorm before them (qkv, gate/up + SiLU) or the residual add after them
/// (o, down) folded in, against f64 references: norm of the residual rows then the product; the
/// product rounded to bf16 then added to the residual.
fn folded_gemvs(gpu: &doppel_exec::cuda::Gpu, rng: &mut Rng, rep: &mut Report) {
    let eps = 1e-6;
    for (b, n, k) in [
        (1usize, 4096usize, 1024usize),
        (4, 1000, 2048),
        (3, 257, 1000),
    ] {
        let r = rng.bf16s(b * k, 2.0);
        let nw = rng.bf16s(k, 1.0);
        let w = rng.bf16s(2 * n * k, 0.08);
        let (dr, dn, dw) = (
            gpu.upload(&r).unwrap(),
            gpu.upload(&nw).unwrap(),
            gpu.upload(&w).unwrap(),
        );
        let (rf, nf, wf) = (f64s(&r), f64s(&nw), f64s(&w));
        // The normalised rows, rounded to bf16 as the kernel stores them.
        let xn: Vec<f64> = (0..b)
            .flat_map(|bi| rms(&rf[bi * k..(bi + 1) * k], &nf, eps))
            .map(|v| bf16::from_f64(v).to_f64())
            .collect();
        let dot = |x: &[f64], bi: usize, row: usize| -> f64 {
            (0..k).map(|j| x[bi * k + j] * wf[row * k + j]).sum()
        };
        let dy = gpu.upload(&vec![bf16::from_f32(f32::NAN); b * n]).unwrap();
        gpu.gemv_norm(
            gpu.ptr(&dy),
            NormIn {
                x: gpu.ptr(&dr),
                w: gpu.ptr(&dn),
                hidden: k,
                eps: eps as f32,
            },
            gpu.ptr(&dw),
            (b, n),
        )
        .unwrap();
        let reference: Vec<f64> = (0..b * n).map(|i| dot(&xn, i / n, i % n)).collect();
        rep.rel(
            &format!("gemv_norm (rmsnorm folded in) B={b} N={n} K={k}"),
            &f64s(&gpu.download(&dy).unwrap()),
            &reference,
            1e-2,
        );
        gpu.gemv_gate_up_silu_norm(
            gpu.ptr(&dy),
            NormIn {
                x: gpu.ptr(&dr),
                w: gpu.ptr(&dn),
                hidden: k,
                eps: eps as f32,
            },
            gpu.ptr(&dw),
            (b, n),
        )
        .unwrap();
        let reference: Vec<f64> = (0..b * n)
            .map(|i| {
                let (bi, j) = (i / n, i % n);
                let (g, u) = (dot(&xn, bi, j), dot(&xn, bi, n + j));
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        rep.rel(
            &format!("gemv_gate_up_silu_norm B={b} I={n} K={k}"),
            &f64s(&gpu.download(&dy).unwrap()),
            &reference,
            1e-2,
        );
        // Residual add: r_out = bf16(bf16(x . w) + r_in); r has row stride ldr > n.
        let ldr = n + 3;
        let res = rng.bf16s(b * ldr, 3.0);
        let dres = gpu.upload(&res).unwrap();
        let x = rng.bf16s(b * k, 1.0);
        let dx = gpu.upload(&x).unwrap();
        let xf = f64s(&x);
        gpu.gemv_resadd(gpu.ptr(&dres), gpu.ptr(&dx), gpu.ptr(&dw), (b, n, k), ldr)
            .unwrap();
        let out = f64s(&gpu.download(&dres).unwrap());
        let resf = f64s(&res);
        let reference: Vec<f64> = (0..b * ldr)
            .map(|i| {
                let (bi, j) = (i / ldr, i % ldr);
                if j < n {
                    bf16::from_f64(dot(&xf, bi, j)).to_f64() + resf[i]
                } else {
                    resf[i]
                }
            })
            .collect();
        rep.rel(
            &format!("gemv_resadd (residual add folded in) B={b} N={n} K={k} ldr={ldr}"),
            &out,
            &reference,
            1e-2,
        );
        let pad_kept = (0..b * ldr).all(|i| i % ldr < n || out[i] == resf[i]);
        rep.check("gemv_resadd: columns past n untouched", 0.0, pad_kept);
    }
}

/// The skinny tensor-core GEMM (every epilogue, 16-row tile count and layout; split K with its
/// counters re-armed between launches), the f32-output GEMV of the LM head and cuBLAS with
/// beta = 1, against f64 references from the same bf16 inputs.
#[test]
fn skinny_gemm_matches_cpu_reference() {
    use doppel_exec::cuda::skinny::{GemmIo, SkinnyEpilogue, SkinnyPlan, SkinnyScratch};
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0003);
    let part = gpu.zeros::<f32>(8 * 64 * 4096).unwrap();
    let counters = gpu.zeros::<u32>(4096).unwrap();
    let scratch = SkinnyScratch {
        part: gpu.ptr(&part),
        counters: gpu.ptr(&counters),
    };
    use SkinnyEpilogue::{Plain, ResAdd, SiluMul};
    // (m, n = weight rows, k, epilogue, wn, splits)
    let cases: &[(usize, usize, usize, SkinnyEpilogue, usize, usize)] = &[
        (1, 257, 1000, Plain, 1, 1),
        (5, 257, 1000, Plain, 2, 3),
        (16, 1024, 2048, Plain, 1, 4),
        (17, 96, 264, Plain, 4, 1),
        (33, 4096, 1024, Plain, 1, 1),
        (48, 1000, 520, Plain, 2, 2),
        (64, 1024, 2048, Plain, 1, 8),
        (64, 4096, 1024, Plain, 2, 2),
        (64, 520, 3072, Plain, 4, 6),
        (9, 1024, 3072, ResAdd, 1, 4),
        (64, 1024, 3072, ResAdd, 1, 6),
        (31, 257, 1000, ResAdd, 2, 1),
        (64, 1024, 2048, ResAdd, 4, 4),
        (8, 6144, 1024, SiluMul, 1, 1),
        (64, 6144, 1024, SiluMul, 2, 1),
        (40, 2000, 1000, SiluMul, 1, 4),
        (64, 514, 256, SiluMul, 4, 2),
    ];
    for &(m, n, k, epi, wn, splits) in cases {
        let plan = SkinnyPlan { wn, splits };
        let x = rng.bf16s(m * k, 1.0);
        let w = rng.bf16s(n * k, 0.08);
        let (xf, wf) = (f64s(&x), f64s(&w));
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let dot = |mi: usize, row: usize| -> f64 {
            (0..k).map(|j| xf[mi * k + j] * wf[row * k + j]).sum()
        };
        let nout = if epi == SiluMul { n / 2 } else { n };
        // The residual case writes into a stream with a wider row stride (columns past n kept).
        let ldy = if epi == ResAdd { nout + 5 } else { nout };
        let init: Vec<bf16> = if epi == ResAdd {
            rng.bf16s(m * ldy, 3.0)
        } else {
            vec![bf16::from_f32(f32::NAN); m * ldy]
        };
        let initf = f64s(&init);
        let reference: Vec<f64> = (0..m * ldy)
            .map(|i| {
                let (mi, c) = (i / ldy, i % ldy);
                if c >= nout {
                    return initf[i];
                }
                match epi {
                    Plain => dot(mi, c),
                    ResAdd => bf16::from_f64(dot(mi, c)).to_f64() + initf[i],
                    SiluMul => {
                        let (g, u) = (dot(mi, c), dot(mi, nout + c));
                        g / (1.0 + (-g).exp()) * u
                    }
                }
            })
            .collect();
        // Twice: the second launch checks that the first re-armed the split counters.
        for round in 0..2 {
            let dy = gpu.upload(&init).unwrap();
            gpu.gemm_skinny(
                GemmIo {
                    y: gpu.ptr(&dy),
                    x: gpu.ptr(&dx),
                    w: gpu.ptr(&dw),
                    ldy,
                },
                &scratch,
                (m, n, k),
                epi,
                plan,
            )
            .unwrap();
            let out = f64s(&gpu.download(&dy).unwrap());
            rep.rel(
                &format!("gemm_skinny {epi:?} M={m} N={n} K={k} wn={wn} S={splits} #{round}"),
                &out,
                &reference,
                1e-2,
            );
            if epi == ResAdd && round == 0 {
                let kept = (0..m * ldy).all(|i| i % ldy < nout || out[i] == initf[i]);
                rep.check("gemm_skinny ResAdd: columns past n untouched", 0.0, kept);
            }
        }
    }
    let left = gpu.download(&counters).unwrap();
    rep.check(
        "gemm_skinny: every split counter re-armed to 0",
        left.iter().filter(|&&c| c != 0).count() as f64,
        left.iter().all(|&c| c == 0),
    );

    // The LM head's f32-output GEMV and cuBLAS with beta = 1 (residual add in the GEMM).
    for (b, n, k) in [
        (1usize, 151936usize, 1024usize),
        (2, 1001, 1000),
        (8, 257, 2048),
    ] {
        let x = rng.bf16s(b * k, 1.0);
        let w = rng.bf16s(n * k, 0.05);
        let (xf, wf) = (f64s(&x), f64s(&w));
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let dy = gpu.upload(&vec![f32::NAN; b * n]).unwrap();
        gpu.gemv_f32out(gpu.ptr(&dy), gpu.ptr(&dx), gpu.ptr(&dw), (b, n, k), n)
            .unwrap();
        let reference: Vec<f64> = (0..b * n)
            .map(|i| {
                let (bi, c) = (i / n, i % n);
                (0..k).map(|j| xf[bi * k + j] * wf[c * k + j]).sum()
            })
            .collect();
        let out: Vec<f64> = gpu
            .download(&dy)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        rep.rel(
            &format!("gemv_f32out B={b} N={n} K={k}"),
            &out,
            &reference,
            1e-4,
        );
    }
    for (m, n, k) in [
        (77usize, 1024usize, 2048usize),
        (3, 257, 1000),
        (130, 1000, 1000),
    ] {
        let x = rng.bf16s(m * k, 1.0);
        let w = rng.bf16s(n * k, 0.05);
        let r = rng.bf16s(m * n, 3.0);
        let (xf, wf, rf) = (f64s(&x), f64s(&w), f64s(&r));
        let (dx, dw, dr) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&r).unwrap(),
        );
        gpu.blas
            .gemm_bf16_acc(gpu.ptr(&dr), gpu.ptr(&dx), gpu.ptr(&dw), (m, n, k), n)
            .unwrap();
        let reference: Vec<f64> = (0..m * n)
            .map(|i| {
                let (mi, c) = (i / n, i % n);
                (0..k).map(|j| xf[mi * k + j] * wf[c * k + j]).sum::<f64>() + rf[i]
            })
            .collect();
        rep.rel(
            &format!("cuBLAS gemm_bf16_acc (beta = 1, residual add) M={m} N={n} K={k}"),
            &f64s(&gpu.download(&dr).unwrap()),
            &reference,
            1e-2,
        );
    }
    rep.finish();
}
