//! The CUDA kernels against CPU references (f64 from the same bf16 inputs) on random inputs:
//! embedding and gathers, norms, RoPE, KV store, SiLU, GEMV and cuBLAS, argmax and sampling
//! (attention is in cuda_attention.rs, the fused kernels in cuda_fused.rs).
//! Skips (printing why) when no GPU is present. On the GPU machine:
//! `scripts/gpu/run-tests.sh` (see docs/cuda.md).

mod cuda_common;
#[path = "cuda_kernels_parts/sampling.rs"]
mod sampling;

use cuda_common::{f64s, open_gpu, Report, Rng};
use doppel_exec::cuda::ops::QkvLayout;
use doppel_exec::cuda::rope::{cos_sin_table, llama3_inv_freq, plain_inv_freq};
use doppel_exec::cuda::{CudaError, Gpu};
use half::bf16;

const FUTURE: u32 = u32::MAX;

#[test]
fn gpu_init_fails_cleanly_or_works() {
    match Gpu::new(0) {
        Ok(g) => eprintln!("GPU present: {}", g.name),
        Err(e @ (CudaError::NoDriver(_) | CudaError::NoDevice(_))) => {
            eprintln!("no GPU, as expected here: {e}")
        }
        Err(e) => panic!("unexpected start-up error: {e}"),
    }
}

#[test]
fn kernels_match_cpu_references() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0001);
    embedding_and_gathers(&gpu, &mut rng, &mut rep);
    norms(&gpu, &mut rng, &mut rep);
    rope_and_kv(&gpu, &mut rng, &mut rep);
    mlp_and_gemv(&gpu, &mut rng, &mut rep);
    sampling::sampling(&gpu, &mut rng, &mut rep);
    rep.finish();
}

fn embedding_and_gathers(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    let (vocab, hidden, t, rows) = (1000, 1024, 37, 8);
    let table = rng.bf16s(vocab * hidden, 1.0);
    let last: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
    let tok_row: Vec<u32> = (0..t).map(|_| rng.below(rows) as u32).collect();
    let ids: Vec<u32> = (0..t)
        .map(|i| {
            if i % 5 == 2 {
                FUTURE
            } else {
                rng.below(vocab) as u32
            }
        })
        .collect();
    let resolved: Vec<u32> = ids
        .iter()
        .zip(&tok_row)
        .map(|(&id, &r)| if id == FUTURE { last[r as usize] } else { id })
        .collect();
    let d_table = gpu.upload(&table).unwrap();
    let d_ids = gpu.upload(&ids).unwrap();
    let d_row = gpu.upload(&tok_row).unwrap();
    let d_last = gpu.upload(&last).unwrap();
    let d_out = gpu
        .upload(&vec![bf16::from_f32(f32::NAN); t * hidden])
        .unwrap();
    gpu.embedding_gather(
        gpu.ptr(&d_out),
        gpu.ptr(&d_table),
        gpu.ptr(&d_ids),
        (gpu.ptr(&d_row), gpu.ptr(&d_last)),
        (t, hidden, vocab),
    )
    .unwrap();
    let out = gpu.download(&d_out).unwrap();
    let reference: Vec<bf16> = resolved
        .iter()
        .flat_map(|&id| table[id as usize * hidden..(id as usize + 1) * hidden].to_vec())
        .collect();
    rep.exact(
        "embedding_gather (FUTURE_TOKEN from last_token)",
        &bits(&out),
        &bits(&reference),
    );
    rep.exact(
        "embedding_gather resolved ids written back",
        &gpu.download(&d_ids).unwrap(),
        &resolved,
    );

    let pick: Vec<u32> = vec![36, 0, 17, 17, 5];
    let d_pick = gpu.upload(&pick).unwrap();
    let d_g = gpu.zeros::<bf16>(pick.len() * hidden).unwrap();
    gpu.gather_rows(
        gpu.ptr(&d_g),
        gpu.ptr(&d_out),
        gpu.ptr(&d_pick),
        pick.len(),
        hidden,
    )
    .unwrap();
    let g = gpu.download(&d_g).unwrap();
    let gref: Vec<bf16> = pick
        .iter()
        .flat_map(|&r| reference[r as usize * hidden..(r as usize + 1) * hidden].to_vec())
        .collect();
    rep.exact("gather_rows", &bits(&g), &bits(&gref));

    let toks: Vec<u32> = vec![11, 22, 33];
    let rws: Vec<u32> = vec![6, 1, 3];
    let (d_t, d_r) = (gpu.upload(&toks).unwrap(), gpu.upload(&rws).unwrap());
    gpu.store_last_token(gpu.ptr(&d_last), gpu.ptr(&d_r), gpu.ptr(&d_t), 3)
        .unwrap();
    let mut lref = last.clone();
    for (r, t) in rws.iter().zip(&toks) {
        lref[*r as usize] = *t;
    }
    rep.exact("store_last_token", &gpu.download(&d_last).unwrap(), &lref);
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn rms_ref(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

fn norms(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    let eps = 1e-6f32;
    for (t, h) in [(1usize, 1024usize), (37, 1024), (5, 4096), (3, 2048 + 8)] {
        let x = rng.bf16s(t * h, 2.0);
        let w = rng.bf16s(h, 1.5);
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let dout = gpu.zeros::<bf16>(t * h).unwrap();
        gpu.rmsnorm(gpu.ptr(&dout), gpu.ptr(&dx), gpu.ptr(&dw), t, h, eps)
            .unwrap();
        let out = f64s(&gpu.download(&dout).unwrap());
        let (xf, wf) = (f64s(&x), f64s(&w));
        let reference: Vec<f64> = xf
            .chunks(h)
            .flat_map(|r| rms_ref(r, &wf, eps as f64))
            .collect();
        rep.rel(&format!("rmsnorm T={t} H={h}"), &out, &reference, 1e-2);
        // The gathered form (the final norm of the rows that need logits): rows picked out of
        // order and repeated give exactly the plain kernel's rows.
        let pick: Vec<u32> = (0..t as u32).rev().chain([0, (t / 2) as u32]).collect();
        let d_pick = gpu.upload(&pick).unwrap();
        let dg = gpu.zeros::<bf16>(pick.len() * h).unwrap();
        gpu.rmsnorm_gather(
            gpu.ptr(&dg),
            gpu.ptr(&dx),
            gpu.ptr(&d_pick),
            gpu.ptr(&dw),
            (pick.len(), h),
            eps,
        )
        .unwrap();
        let plain = gpu.download(&dout).unwrap();
        let want: Vec<bf16> = pick
            .iter()
            .flat_map(|&r| plain[r as usize * h..(r as usize + 1) * h].to_vec())
            .collect();
        rep.exact(
            &format!("rmsnorm_gather T={t} H={h} (rows reversed, repeated)"),
            &bits(&gpu.download(&dg).unwrap()),
            &bits(&want),
        );
    }
    let (t, h) = (37, 1024);
    let x = rng.bf16s(t * h, 2.0);
    let r = rng.bf16s(t * h, 2.0);
    let w = rng.bf16s(h, 1.5);
    let (dx, dr, dw) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&r).unwrap(),
        gpu.upload(&w).unwrap(),
    );
    gpu.fused_add_rmsnorm(gpu.ptr(&dx), gpu.ptr(&dr), gpu.ptr(&dw), t, h, eps)
        .unwrap();
    let sum: Vec<bf16> = x
        .iter()
        .zip(&r)
        .map(|(a, b)| bf16::from_f32(a.to_f32() + b.to_f32()))
        .collect();
    rep.exact(
        "fused_add_rmsnorm residual = bf16(x + r)",
        &bits(&gpu.download(&dr).unwrap()),
        &bits(&sum),
    );
    let wf = f64s(&w);
    let reference: Vec<f64> = f64s(&sum)
        .chunks(h)
        .flat_map(|row| rms_ref(row, &wf, eps as f64))
        .collect();
    rep.rel(
        "fused_add_rmsnorm T=37 H=1024",
        &f64s(&gpu.download(&dx).unwrap()),
        &reference,
        1e-2,
    );

    for (nq, nk, d) in [(16usize, 8usize, 128usize), (8, 2, 64)] {
        let t = 37;
        let stride = (nq + 2 * nk) * d;
        let qkv = rng.bf16s(t * stride, 3.0);
        let (wq, wk) = (rng.bf16s(d, 1.5), rng.bf16s(d, 1.5));
        let (dq, dwq, dwk) = (
            gpu.upload(&qkv).unwrap(),
            gpu.upload(&wq).unwrap(),
            gpu.upload(&wk).unwrap(),
        );
        gpu.qk_rmsnorm(
            gpu.ptr(&dq),
            QkvLayout {
                tokens: t,
                nq,
                nk,
                head_dim: d,
                row_stride: stride,
            },
            (gpu.ptr(&dwq), gpu.ptr(&dwk)),
            eps,
        )
        .unwrap();
        let out = gpu.download(&dq).unwrap();
        let (mut o, mut rf) = (Vec::new(), Vec::new());
        let (wqf, wkf) = (f64s(&wq), f64s(&wk));
        for tok in 0..t {
            for h in 0..nq + nk {
                let s = tok * stride + h * d;
                rf.extend(rms_ref(
                    &f64s(&qkv[s..s + d]),
                    if h < nq { &wqf } else { &wkf },
                    eps as f64,
                ));
                o.extend(f64s(&out[s..s + d]));
            }
        }
        rep.rel(&format!("qk_rmsnorm nq={nq} nk={nk} D={d}"), &o, &rf, 1e-2);
        let v_untouched = (0..t).all(|tok| {
            let s = tok * stride + (nq + nk) * d;
            bits(&out[s..s + nk * d]) == bits(&qkv[s..s + nk * d])
        });
        rep.check("qk_rmsnorm leaves v heads untouched", 0.0, v_untouched);
    }
}

fn rope_and_kv(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    let max_pos = 4096;
    for (name, nq, nk, d, inv) in [
        (
            "rope_neox Qwen3 theta=1e6 D=128",
            16usize,
            8usize,
            128usize,
            plain_inv_freq(1e6, 128),
        ),
        (
            "rope_neox Llama3-scaled D=128",
            32,
            8,
            128,
            llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192.0),
        ),
        ("rope_neox D=64", 8, 2, 64, plain_inv_freq(10000.0, 64)),
    ] {
        let t = 41;
        let stride = (nq + 2 * nk) * d;
        let qkv = rng.bf16s(t * stride, 2.0);
        let pos: Vec<i32> = (0..t)
            .map(|i| {
                if i == 0 {
                    max_pos as i32 - 1
                } else {
                    rng.below(max_pos) as i32
                }
            })
            .collect();
        let table = cos_sin_table(&inv, max_pos);
        let (dq, dp, dt) = (
            gpu.upload(&qkv).unwrap(),
            gpu.upload(&pos).unwrap(),
            gpu.upload(&table).unwrap(),
        );
        gpu.rope_neox(
            gpu.ptr(&dq),
            QkvLayout {
                tokens: t,
                nq,
                nk,
                head_dim: d,
                row_stride: stride,
            },
            gpu.ptr(&dp),
            gpu.ptr(&dt),
        )
        .unwrap();
        let out = gpu.download(&dq).unwrap();
        let (mut o, mut rf) = (Vec::new(), Vec::new());
        let half = d / 2;
        for (tok, &ps) in pos.iter().enumerate() {
            for h in 0..nq + nk {
                let s = tok * stride + h * d;
                let x = f64s(&qkv[s..s + d]);
                for i in 0..half {
                    let a = ps as f64 * inv[i];
                    let (c, sn) = (a.cos(), a.sin());
                    rf.push(x[i] * c - x[half + i] * sn);
                    o.push(out[s + i].to_f64());
                    rf.push(x[half + i] * c + x[i] * sn);
                    o.push(out[s + half + i].to_f64());
                }
            }
        }
        rep.rel(name, &o, &rf, 1e-2);
        let v_untouched = (0..t).all(|tok| {
            let s = tok * stride + (nq + nk) * d;
            bits(&out[s..s + nk * d]) == bits(&qkv[s..s + nk * d])
        });
        rep.check(&format!("{name}: v heads untouched"), 0.0, v_untouched);
    }

    let (nq, nk, d, slots_n, t) = (16, 8, 128, 512, 37);
    let stride = (nq + 2 * nk) * d;
    let qkv = rng.bf16s(t * stride, 2.0);
    let slots = rng.distinct(t, slots_n);
    let poison = vec![bf16::from_f32(-7.0); slots_n * nk * d];
    let (dk, dv) = (gpu.upload(&poison).unwrap(), gpu.upload(&poison).unwrap());
    let (dq, ds) = (gpu.upload(&qkv).unwrap(), gpu.upload(&slots).unwrap());
    gpu.kv_store(
        (gpu.ptr(&dk), gpu.ptr(&dv)),
        gpu.ptr(&dq),
        QkvLayout {
            tokens: t,
            nq,
            nk,
            head_dim: d,
            row_stride: stride,
        },
        gpu.ptr(&ds),
    )
    .unwrap();
    let (k, v) = (gpu.download(&dk).unwrap(), gpu.download(&dv).unwrap());
    let (mut kr, mut vr) = (poison.clone(), poison.clone());
    let w = nk * d;
    for (tok, &s) in slots.iter().enumerate() {
        let s = s as usize;
        kr[s * w..(s + 1) * w]
            .copy_from_slice(&qkv[tok * stride + nq * d..tok * stride + (nq + nk) * d]);
        vr[s * w..(s + 1) * w]
            .copy_from_slice(&qkv[tok * stride + (nq + nk) * d..tok * stride + (nq + 2 * nk) * d]);
    }
    rep.exact("kv_store K (other slots untouched)", &bits(&k), &bits(&kr));
    rep.exact("kv_store V (other slots untouched)", &bits(&v), &bits(&vr));

    let (rows, tstride) = (4usize, 64usize);
    let init: Vec<u32> = (0..rows * tstride).map(|i| i as u32).collect();
    let wr: Vec<(u32, u32, u32)> = (0..50)
        .map(|i| {
            (
                rng.below(rows) as u32,
                ((i * 7) % tstride) as u32,
                1000 + i as u32,
            )
        })
        .collect();
    let mut tref = init.clone();
    let mut seen = std::collections::BTreeSet::new();
    let wr: Vec<_> = wr
        .into_iter()
        .filter(|(r, c, _)| seen.insert((*r, *c)))
        .collect();
    for (r, c, v) in &wr {
        tref[*r as usize * tstride + *c as usize] = *v;
    }
    let dt = gpu.upload(&init).unwrap();
    let (dr, dc, dv) = (
        gpu.upload(&wr.iter().map(|w| w.0).collect::<Vec<_>>())
            .unwrap(),
        gpu.upload(&wr.iter().map(|w| w.1).collect::<Vec<_>>())
            .unwrap(),
        gpu.upload(&wr.iter().map(|w| w.2).collect::<Vec<_>>())
            .unwrap(),
    );
    gpu.table_scatter(
        gpu.ptr(&dt),
        gpu.ptr(&dr),
        gpu.ptr(&dc),
        gpu.ptr(&dv),
        wr.len(),
        tstride,
    )
    .unwrap();
    rep.exact("table_scatter", &gpu.download(&dt).unwrap(), &tref);
}

fn matmul_ref(x: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = x[i * k..(i + 1) * k]
                .iter()
                .zip(&w[j * k..(j + 1) * k])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    y
}

fn mlp_and_gemv(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    let (t, inter) = (37, 3072);
    let gu = rng.bf16s(t * 2 * inter, 4.0);
    let dgu = gpu.upload(&gu).unwrap();
    let dout = gpu.zeros::<bf16>(t * inter).unwrap();
    gpu.silu_and_mul(gpu.ptr(&dout), gpu.ptr(&dgu), t, inter)
        .unwrap();
    let g = f64s(&gu);
    let reference: Vec<f64> = (0..t * inter)
        .map(|i| {
            let (r, c) = (i / inter, i % inter);
            let a = g[r * 2 * inter + c];
            a / (1.0 + (-a).exp()) * g[r * 2 * inter + inter + c]
        })
        .collect();
    rep.rel(
        "silu_and_mul T=37 I=3072",
        &f64s(&gpu.download(&dout).unwrap()),
        &reference,
        1e-2,
    );

    for (b, n, k) in [
        (1usize, 4096usize, 1024usize),
        (3, 1024, 3072),
        (8, 1000, 1000),
        (1, 2048, 2048 + 8),
    ] {
        let x = rng.bf16s(b * k, 1.0);
        let w = rng.bf16s(n * k, 0.05);
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let reference = matmul_ref(&f64s(&x), &f64s(&w), b, n, k);
        let dy = gpu.upload(&vec![bf16::from_f32(f32::NAN); b * n]).unwrap();
        gpu.gemv(gpu.ptr(&dy), gpu.ptr(&dx), gpu.ptr(&dw), (b, n, k), n)
            .unwrap();
        rep.rel(
            &format!("gemv_bf16 B={b} N={n} K={k}"),
            &f64s(&gpu.download(&dy).unwrap()),
            &reference,
            1e-2,
        );
        let dy2 = gpu.upload(&vec![bf16::from_f32(f32::NAN); b * n]).unwrap();
        gpu.blas
            .gemm_bf16(gpu.ptr(&dy2), gpu.ptr(&dx), gpu.ptr(&dw), (b, n, k), n)
            .unwrap();
        rep.rel(
            &format!("cuBLAS gemm_bf16 M={b} N={n} K={k}"),
            &f64s(&gpu.download(&dy2).unwrap()),
            &reference,
            1e-2,
        );
        let dy3 = gpu.upload(&vec![f32::NAN; b * n]).unwrap();
        gpu.blas
            .gemm_bf16_f32out(gpu.ptr(&dy3), gpu.ptr(&dx), gpu.ptr(&dw), (b, n, k), n)
            .unwrap();
        let y3: Vec<f64> = gpu
            .download(&dy3)
            .unwrap()
            .iter()
            .map(|v| *v as f64)
            .collect();
        rep.rel(
            &format!("cuBLAS gemm_bf16_f32out M={b} N={n} K={k}"),
            &y3,
            &reference,
            1e-4,
        );
    }
    let (m, n, k) = (77, 640, 1024);
    let x = rng.bf16s(m * k, 1.0);
    let w = rng.bf16s(n * k, 0.05);
    let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
    let dy = gpu.zeros::<bf16>(m * n).unwrap();
    gpu.blas
        .gemm_bf16(gpu.ptr(&dy), gpu.ptr(&dx), gpu.ptr(&dw), (m, n, k), n)
        .unwrap();
    let reference = matmul_ref(&f64s(&x), &f64s(&w), m, n, k);
    rep.rel(
        "cuBLAS gemm_bf16 M=77 N=640 K=1024",
        &f64s(&gpu.download(&dy).unwrap()),
        &reference,
        1e-2,
    );
}
