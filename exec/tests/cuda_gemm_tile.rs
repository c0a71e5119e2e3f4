//! The tiled tensor-core GEMM (`kernels/gemm_tile.cu`) against f64 references from the same
//! bf16 inputs: every epilogue (RMSNorm folded in, norm + SiLU-and-mul, residual add with K
//! split over CTAs), every compiled tile width, row counts that leave warps idle and columns
//! that leave a partial tile. Skips without a GPU.

mod cuda_common;

use cuda_common::{f64s, open_gpu, Report, Rng};
use doppel_exec::cuda::gemm_tile::{tile_plan, TileEpilogue, TileKind, TilePlan};
use doppel_exec::cuda::skinny::{GemmIo, SkinnyScratch};
use half::bf16;

/// Kernel switches by case, so each is exercised (the result must not depend on them).
fn round_flags(m: usize) -> i32 {
    use doppel_exec::cuda::gemm_tile::{TILE_NO_PREFETCH, TILE_ROTATE};
    match m % 3 {
        0 => 0,
        1 => TILE_ROTATE,
        _ => TILE_ROTATE | TILE_NO_PREFETCH,
    }
}

#[test]
fn tiled_gemm_matches_cpu_reference() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0007);
    let part = gpu.zeros::<f32>(8 * 64 * 6144).unwrap();
    let counters = gpu.zeros::<u32>(4096).unwrap();
    let scratch = SkinnyScratch {
        part: gpu.ptr(&part),
        counters: gpu.ptr(&counters),
    };
    let eps = 1e-6f32;
    use TileKind::{Norm, NormSilu, ResAdd};
    // (m, n = weight rows, k, kind, n8 tiles per CTA, splits)
    let cases: &[(usize, usize, usize, TileKind, usize, usize)] = &[
        (64, 4096, 1024, Norm, 4, 1),
        (17, 4096, 1024, Norm, 8, 1),
        (33, 520, 256, Norm, 4, 1),
        (1, 96, 128, Norm, 8, 1),
        (64, 6144, 1024, NormSilu, 6, 1),
        (40, 6144, 1024, NormSilu, 4, 1),
        (24, 1000, 512, NormSilu, 8, 1),
        (64, 1024, 2048, ResAdd, 4, 4),
        (64, 1024, 3072, ResAdd, 4, 4),
        (48, 1024, 3072, ResAdd, 8, 6),
        (20, 257, 1024, ResAdd, 4, 1),
        (64, 300, 512, ResAdd, 8, 4),
        (64, 300, 1024, ResAdd, 8, 8),
    ];
    for &(m, n, k, kind, nj, splits) in cases {
        let plan = TilePlan {
            nj,
            splits,
            stages: if k % 256 == 0 { 6 } else { 4 },
            flags: round_flags(m),
        };
        // Residual-stream magnitudes for the norm cases (the norm must undo them).
        let x = rng.bf16s(m * k, if kind == ResAdd { 1.0 } else { 6.0 });
        let w = rng.bf16s(n * k, 0.08);
        let nw: Vec<bf16> = (0..k).map(|_| bf16::from_f32(0.5 + rng.unit())).collect();
        let (xf, wf, nwf) = (f64s(&x), f64s(&w), f64s(&nw));
        let (dx, dw, dnw) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&nw).unwrap(),
        );
        let inv: Vec<f64> = (0..m)
            .map(|i| {
                let ss: f64 = (0..k).map(|j| xf[i * k + j].powi(2)).sum();
                1.0 / (ss / k as f64 + eps as f64).sqrt()
            })
            .collect();
        let dot = |mi: usize, row: usize| -> f64 {
            let d: f64 = (0..k)
                .map(|j| xf[mi * k + j] * wf[row * k + j] * nwf[j])
                .sum();
            d * inv[mi]
        };
        let plain = |mi: usize, row: usize| -> f64 {
            (0..k).map(|j| xf[mi * k + j] * wf[row * k + j]).sum()
        };
        let nout = if kind == NormSilu { n / 2 } else { n };
        let ldy = if kind == ResAdd { nout + 5 } else { nout };
        let init: Vec<bf16> = if kind == ResAdd {
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
                match kind {
                    Norm => dot(mi, c),
                    ResAdd => bf16::from_f64(plain(mi, c)).to_f64() + initf[i],
                    NormSilu => {
                        let (g, u) = (dot(mi, c), dot(mi, nout + c));
                        g / (1.0 + (-g).exp()) * u
                    }
                }
            })
            .collect();
        let epi = match kind {
            ResAdd => TileEpilogue::ResAdd,
            Norm => TileEpilogue::Norm {
                norm: gpu.ptr(&dnw),
                eps,
            },
            NormSilu => TileEpilogue::NormSilu {
                norm: gpu.ptr(&dnw),
                eps,
            },
        };
        // Twice: the second launch checks that the first re-armed the split counters.
        for round in 0..2 {
            let dy = gpu.upload(&init).unwrap();
            gpu.gemm_tile(
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
                &format!(
                    "gemm_tile {kind:?} M={m} N={n} K={k} nj={nj} S={splits} flags={} #{round}",
                    plan.flags
                ),
                &out,
                &reference,
                1e-2,
            );
            if kind == ResAdd && round == 0 {
                let kept = (0..m * ldy).all(|i| i % ldy < nout || out[i] == initf[i]);
                rep.check("gemm_tile ResAdd: columns past n untouched", 0.0, kept);
            }
        }
    }
    // The norm epilogues with the norm weight folded into the weights' columns (TILE_PRESCALED:
    // W' = bf16(W * nw), only 1 / rms applied), against the same reference as the unfolded
    // epilogue.
    for &(m, n, k, kind, nj) in &[
        (64usize, 6144usize, 1024usize, NormSilu, 6usize),
        (40, 6144, 1024, NormSilu, 4),
        (24, 1000, 512, NormSilu, 8),
        (33, 520, 256, Norm, 4),
    ] {
        use doppel_exec::cuda::gemm_tile::TILE_PRESCALED;
        let x = rng.bf16s(m * k, 6.0);
        let w = rng.bf16s(n * k, 0.08);
        let nw: Vec<bf16> = (0..k).map(|_| bf16::from_f32(0.5 + rng.unit())).collect();
        let folded: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32(w[i].to_f32() * nw[i % k].to_f32()))
            .collect();
        let (xf, wf, nwf) = (f64s(&x), f64s(&w), f64s(&nw));
        let dot = |mi: usize, row: usize| -> f64 {
            let ss: f64 = (0..k).map(|j| xf[mi * k + j].powi(2)).sum();
            let d: f64 = (0..k)
                .map(|j| xf[mi * k + j] * wf[row * k + j] * nwf[j])
                .sum();
            d / (ss / k as f64 + eps as f64).sqrt()
        };
        let nout = if kind == NormSilu { n / 2 } else { n };
        let reference: Vec<f64> = (0..m * nout)
            .map(|i| {
                let (mi, c) = (i / nout, i % nout);
                if kind == NormSilu {
                    let (g, u) = (dot(mi, c), dot(mi, nout + c));
                    g / (1.0 + (-g).exp()) * u
                } else {
                    dot(mi, c)
                }
            })
            .collect();
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&folded).unwrap());
        let dy = gpu
            .upload(&vec![bf16::from_f32(f32::NAN); m * nout])
            .unwrap();
        // The norm pointer is not read: a buffer of the wrong length proves it.
        let unused = gpu.zeros::<bf16>(1).unwrap();
        let epi = if kind == NormSilu {
            TileEpilogue::NormSilu {
                norm: gpu.ptr(&unused),
                eps,
            }
        } else {
            TileEpilogue::Norm {
                norm: gpu.ptr(&unused),
                eps,
            }
        };
        let plan = TilePlan {
            nj,
            splits: 1,
            stages: 4,
            flags: TILE_PRESCALED | round_flags(m),
        };
        gpu.gemm_tile(
            GemmIo {
                y: gpu.ptr(&dy),
                x: gpu.ptr(&dx),
                w: gpu.ptr(&dw),
                ldy: nout,
            },
            &scratch,
            (m, n, k),
            epi,
            plan,
        )
        .unwrap();
        rep.rel(
            &format!("gemm_tile {kind:?} prescaled weights M={m} N={n} K={k} nj={nj}"),
            &f64s(&gpu.download(&dy).unwrap()),
            &reference,
            1e-2,
        );
    }
    let left = gpu.download(&counters).unwrap();
    rep.check(
        "gemm_tile: every split counter re-armed to 0",
        left.iter().filter(|&&c| c != 0).count() as f64,
        left.iter().all(|&c| c == 0),
    );
    // Shapes the kernel cannot take are refused, not run.
    let dy = gpu.zeros::<bf16>(64 * 1024).unwrap();
    let dx = gpu.zeros::<bf16>(64 * 1000).unwrap();
    let dw = gpu.zeros::<bf16>(1024 * 1000).unwrap();
    let bad = gpu.gemm_tile(
        GemmIo {
            y: gpu.ptr(&dy),
            x: gpu.ptr(&dx),
            w: gpu.ptr(&dw),
            ldy: 1024,
        },
        &scratch,
        (64, 1024, 1000),
        TileEpilogue::ResAdd,
        TilePlan {
            nj: 4,
            splits: 1,
            stages: 6,
            flags: 0,
        },
    );
    rep.check("gemm_tile: k = 1000 refused", 0.0, bad.is_err());
    rep.check(
        "gemm_tile: no plan for k = 1000",
        0.0,
        tile_plan(1024, 1000, TileKind::ResAdd, gpu.sms).is_none(),
    );
    rep.finish();
}
