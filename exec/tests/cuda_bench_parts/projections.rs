//! The projections' building blocks at decode shapes: the device's copy and GEMM ceilings, the
//! custom GEMV against cuBLAS, and the skinny tensor-core GEMM against both (weights rotated
//! over >= 256 MB so L2 holds none of them).

use super::{rotated_weights, time_ms};
use crate::cuda_common::Rng;
use doppel_exec::cuda::gemv::{row_prefetch_bytes, RowPrefetch};
use doppel_exec::cuda::skinny::{
    skinny_plan, GemmIo, SkinnyEpilogue, SkinnyScratch, SKINNY_COUNTERS,
};
use doppel_exec::cuda::Gpu;
use half::bf16;

/// The skinny tensor-core GEMM against cuBLAS (and the GEMV up to 8 tokens) at the decode
/// projections' shapes, weights rotated over >= 256 MB; then every layout at M = 16 and 64.
pub fn skinny_vs_cublas(gpu: &Gpu, rng: &mut Rng) {
    use doppel_exec::cuda::skinny::SkinnyPlan;
    println!("\nskinny GEMM vs cuBLAS (weights rotated over >= 256 MB; median us per call; default plan)");
    println!(
        "{:<26} {:>3} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "shape (N x K)", "M", "skinny", "cublas", "gemv", "skinny GB/s", "plan"
    );
    let part = gpu.zeros::<f32>(8 * 64 * 6144).unwrap();
    let counters = gpu.zeros::<u32>(SKINNY_COUNTERS).unwrap();
    let scratch = SkinnyScratch {
        part: gpu.ptr(&part),
        counters: gpu.ptr(&counters),
    };
    let mut sweep = Vec::new();
    for (name, n, k, epi) in [
        ("qkv 4096x1024", 4096usize, 1024usize, SkinnyEpilogue::Plain),
        ("o 1024x2048 (+res)", 1024, 2048, SkinnyEpilogue::ResAdd),
        (
            "gate_up 6144x1024 (+silu)",
            6144,
            1024,
            SkinnyEpilogue::SiluMul,
        ),
        ("down 1024x3072 (+res)", 1024, 3072, SkinnyEpilogue::ResAdd),
    ] {
        let bytes = n * k * 2;
        let ws = rotated_weights(gpu, rng, n, k);
        let copies = ws.len();
        let x = gpu.upload(&rng.bf16s(64 * k, 1.0)).unwrap();
        let y = gpu.upload(&rng.bf16s(64 * n, 1.0)).unwrap();
        let nout = if epi == SkinnyEpilogue::SiluMul {
            n / 2
        } else {
            n
        };
        let mut i = 0;
        let mut run = |m: usize, plan: SkinnyPlan| {
            time_ms(gpu, 9, copies, || {
                gpu.gemm_skinny(
                    GemmIo {
                        y: gpu.ptr(&y),
                        x: gpu.ptr(&x),
                        w: gpu.ptr(&ws[i % copies]),
                        ldy: nout,
                    },
                    &scratch,
                    (m, n, k),
                    epi,
                    plan,
                )
                .unwrap();
                i += 1;
            })
        };
        let mut j = 0;
        for m in [2usize, 4, 8, 16, 24, 32, 48, 64] {
            let plan = skinny_plan(n, k, epi, gpu.sms);
            let s = run(m, plan);
            let c = time_ms(gpu, 9, copies, || {
                gpu.blas
                    .gemm_bf16(
                        gpu.ptr(&y),
                        gpu.ptr(&x),
                        gpu.ptr(&ws[j % copies]),
                        (m, n, k),
                        n,
                    )
                    .unwrap();
                j += 1;
            });
            let g = if m <= 8 {
                time_ms(gpu, 9, copies, || {
                    gpu.gemv(
                        gpu.ptr(&y),
                        gpu.ptr(&x),
                        gpu.ptr(&ws[j % copies]),
                        (m, n, k),
                        n,
                    )
                    .unwrap();
                    j += 1;
                }) * 1e3
            } else {
                f64::NAN
            };
            println!(
                "{name:<26} {m:>3} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>8}",
                s * 1e3,
                c * 1e3,
                g,
                bytes as f64 / s / 1e6,
                format!("w{}s{}", plan.wn, plan.splits)
            );
        }
        // Every layout (run 6's sweep; docs/cuda.md) only when asked: it takes ~20 s.
        let layouts: &[usize] = if std::env::var_os("DOPPEL_BENCH_SKINNY_SWEEP").is_some() {
            &[16, 64]
        } else {
            &[]
        };
        for &m in layouts {
            for wn in [1usize, 2, 4] {
                for splits in [1usize, 2, 3, 4, 6, 8] {
                    if splits > k / 32 / 2 {
                        continue;
                    }
                    let t = run(m, SkinnyPlan { wn, splits });
                    sweep.push((name, m, wn, splits, t * 1e3));
                }
            }
        }
    }
    println!("\nskinny GEMM layouts (us per call; wn warps along N, splits CTAs along K)");
    for (name, m, wn, splits, us) in sweep {
        println!("{name:<26} M={m:<3} wn={wn} splits={splits} {us:>8.2}");
    }
}

pub fn ceilings(gpu: &Gpu) {
    let n = 1usize << 29; // 1 GiB of bytes
    let a = gpu.zeros::<u8>(n).unwrap();
    let mut b = gpu.zeros::<u8>(n).unwrap();
    let ms = time_ms(gpu, 5, 2, || gpu.stream.memcpy_dtod(&a, &mut b).unwrap());
    println!(
        "ceiling: device-to-device copy {:.0} GB/s (read + write)",
        2.0 * n as f64 / ms / 1e6
    );
    let m = 8192;
    let x = gpu.upload(&vec![bf16::from_f32(0.01); m * m]).unwrap();
    let y = gpu.zeros::<bf16>(m * m).unwrap();
    let ms = time_ms(gpu, 5, 2, || {
        gpu.blas
            .gemm_bf16(gpu.ptr(&y), gpu.ptr(&x), gpu.ptr(&x), (m, m, m), m)
            .unwrap()
    });
    println!(
        "ceiling: cuBLAS bf16 GEMM 8192^3 {:.0} TFLOP/s",
        2.0 * (m as f64).powi(3) / ms / 1e9
    );
}

pub fn gemv_vs_cublas(gpu: &Gpu, rng: &mut Rng) {
    println!(
        "\nGEMV vs cuBLAS (weights rotated over >= 256 MB so L2 holds none; median us per call)"
    );
    println!(
        "{:<22} {:>3} {:>10} {:>10} {:>9} {:>9}",
        "shape (N x K)", "B", "gemv us", "cublas us", "gemv GB/s", "speedup"
    );
    for (name, n, k) in [
        ("qkv 4096x1024", 4096usize, 1024usize),
        ("o 1024x2048", 1024, 2048),
        ("gate_up 6144x1024", 6144, 1024),
        ("down 1024x3072", 1024, 3072),
        ("lm_head 151936x1024", 151936, 1024),
    ] {
        let bytes = n * k * 2;
        let ws = rotated_weights(gpu, rng, n, k);
        let copies = ws.len();
        for b in [1usize, 2, 4, 8] {
            let x = gpu.upload(&rng.bf16s(b * k, 1.0)).unwrap();
            let y = gpu.zeros::<bf16>(b * n).unwrap();
            let mut i = 0;
            let g = time_ms(gpu, 9, copies, || {
                gpu.gemv(
                    gpu.ptr(&y),
                    gpu.ptr(&x),
                    gpu.ptr(&ws[i % copies]),
                    (b, n, k),
                    n,
                )
                .unwrap();
                i += 1;
            });
            let c = time_ms(gpu, 9, copies, || {
                gpu.blas
                    .gemm_bf16(
                        gpu.ptr(&y),
                        gpu.ptr(&x),
                        gpu.ptr(&ws[i % copies]),
                        (b, n, k),
                        n,
                    )
                    .unwrap();
                i += 1;
            });
            println!(
                "{name:<22} {b:>3} {:>10.2} {:>10.2} {:>9.0} {:>8.2}x",
                g * 1e3,
                c * 1e3,
                bytes as f64 / g / 1e6,
                c / g
            );
        }
    }
}

/// Which GEMV entry point a shape runs through.
#[derive(Clone, Copy)]
enum GemvKind {
    Plain,
    ResAdd,
    GateUpSilu,
    F32Out,
}

/// The GEMVs' weight-row prefetch at Qwen3-0.6B's and Llama-3.1-8B's decode shapes, batch 1:
/// whole rows against none, and what `row_prefetch_bytes` picks; weights rotated over >= 256 MB,
/// at least 16 calls per sample, each launched after the previous one with PDL as in a decode
/// step (docs/cuda.md, "Projections").
pub fn gemv_row_prefetch(gpu: &mut Gpu, rng: &mut Rng) {
    let l2 = gpu.l2_bytes;
    println!(
        "\nGEMV weight-row prefetch, batch 1 (L2 {} MiB, PDL {}; median us per call)",
        l2 >> 20,
        gpu.pdl()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "shape (N x K)", "whole", "none", "GB/s", "rule"
    );
    for (name, n, k, kind) in [
        ("0.6B qkv 4096x1024", 4096usize, 1024usize, GemvKind::Plain),
        ("0.6B o 1024x2048 (+res)", 1024, 2048, GemvKind::ResAdd),
        (
            "0.6B gate_up 6144x1024 (+silu)",
            6144,
            1024,
            GemvKind::GateUpSilu,
        ),
        ("0.6B down 1024x3072 (+res)", 1024, 3072, GemvKind::ResAdd),
        ("0.6B lm_head 151936x1024", 151_936, 1024, GemvKind::F32Out),
        ("8B qkv 6144x4096", 6144, 4096, GemvKind::Plain),
        ("8B o 4096x4096 (+res)", 4096, 4096, GemvKind::ResAdd),
        (
            "8B gate_up 28672x4096 (+silu)",
            28_672,
            4096,
            GemvKind::GateUpSilu,
        ),
        ("8B down 4096x14336 (+res)", 4096, 14_336, GemvKind::ResAdd),
        ("8B lm_head 128256x4096", 128_256, 4096, GemvKind::F32Out),
    ] {
        let ws = rotated_weights(gpu, rng, n, k);
        let x = gpu.upload(&rng.bf16s(k, 1.0)).unwrap();
        let y = gpu.zeros::<bf16>(n).unwrap();
        let yf = gpu.zeros::<f32>(n).unwrap();
        let mut i = 0;
        let mut run = |gpu: &Gpu| {
            // Many calls per sample: each must follow another GEMV, whose tail its prefetch
            // overlaps (the LM head has one weight copy).
            time_ms(gpu, 9, ws.len().max(16), || {
                let w = gpu.ptr(&ws[i % ws.len()]);
                i += 1;
                let (y, x) = (gpu.ptr(&y), gpu.ptr(&x));
                match kind {
                    GemvKind::Plain => gpu.gemv(y, x, w, (1, n, k), n),
                    GemvKind::ResAdd => gpu.gemv_resadd(y, x, w, (1, n, k), n),
                    GemvKind::GateUpSilu => gpu.gemv_gate_up_silu(y, x, w, 1, n / 2, k),
                    GemvKind::F32Out => gpu.gemv_f32out(gpu.ptr(&yf), x, w, (1, n, k), n),
                }
                .unwrap();
            })
        };
        // The rule sees the device's L2: usize::MAX makes every weight fit (whole rows), 0 none.
        gpu.l2_bytes = usize::MAX;
        let whole = run(gpu);
        gpu.l2_bytes = 0;
        let none = run(gpu);
        gpu.l2_bytes = l2;
        let (warps, rows) = match kind {
            GemvKind::GateUpSilu => (n / 2, 2),
            _ => (n, 1),
        };
        let g = RowPrefetch {
            warps,
            rows_per_warp: rows,
            row_bytes: 2 * k,
        };
        let rule = if row_prefetch_bytes(l2, g) > 0 {
            "whole"
        } else {
            "none"
        };
        println!(
            "{name:<34} {:>9.2} {:>9.2} {:>9.0} {:>9}",
            whole * 1e3,
            none * 1e3,
            (n * k * 2) as f64 / whole.min(none) / 1e6,
            rule
        );
    }
}
