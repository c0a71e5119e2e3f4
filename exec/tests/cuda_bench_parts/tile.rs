//! The tiled GEMM (norm / SiLU / residual add folded in) against what it replaces at 17-64
//! tokens: cuBLAS plus the separate RMSNorm and SiLU-and-mul kernels. Each side is captured as
//! a CUDA graph of one call per weight copy (copies rotated over >= 256 MB so L2 holds none),
//! as in a decode graph, and timed by replays.

use super::{rotated_weights, time_ms, Rng};
use doppel_exec::cuda::blas::GemmOut;
use doppel_exec::cuda::gemm_tile::{
    tile_plan, TileEpilogue, TileKind, TilePlan, TILE_DEPTHS, TILE_NO_PREFETCH, TILE_ROTATE,
};
use doppel_exec::cuda::skinny::{GemmIo, SkinnyScratch, SKINNY_COUNTERS};
use doppel_exec::cuda::Gpu;
use half::bf16;

/// Median µs per call of `f(i)` for i in 0..calls, captured into one graph.
fn graph_us(gpu: &Gpu, calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let g = gpu
        .capture("graph_us", || {
            (0..calls).for_each(&mut f);
            Ok(())
        })
        .unwrap();
    time_ms(gpu, 9, 3, || g.launch().unwrap()) * 1e3 / calls as f64
}

pub fn tile_vs_cublas(gpu: &Gpu, rng: &mut Rng) {
    println!("\ntiled GEMM vs cuBLAS + separate kernels (graph of one call per weight copy, >= 256 MB; us per call)");
    println!(
        "{:<28} {:>3} {:>9} {:>14} {:>9} {:>10} {:>8}",
        "shape (N x K)", "M", "tiled", "cublas+kernels", "cublas", "tiled GB/s", "plan"
    );
    let part = gpu.zeros::<f32>(8 * 64 * 6144).unwrap();
    let counters = gpu.zeros::<u32>(SKINNY_COUNTERS).unwrap();
    let scratch = SkinnyScratch {
        part: gpu.ptr(&part),
        counters: gpu.ptr(&counters),
    };
    let eps = 1e-6f32;
    for (name, n, k, kind) in [
        (
            "qkv 4096x1024 (+norm)",
            4096usize,
            1024usize,
            TileKind::Norm,
        ),
        ("o 1024x2048 (+res)", 1024, 2048, TileKind::ResAdd),
        (
            "gate_up 6144x1024 (+norm,silu)",
            6144,
            1024,
            TileKind::NormSilu,
        ),
        ("down 1024x3072 (+res)", 1024, 3072, TileKind::ResAdd),
        // Llama-3.1-8B's: 448 column tiles, four waves on an H100, so the model takes cuBLAS
        // (docs/cuda.md, "Projections"); timed here to keep that choice measured.
        (
            "8B gate_up 28672x4096 (+norm,silu)",
            28_672,
            4096,
            TileKind::NormSilu,
        ),
    ] {
        let bytes = n * k * 2;
        let ws = rotated_weights(gpu, rng, n, k);
        let copies = ws.len();
        let nw = gpu.upload(&vec![bf16::from_f32(1.0); k]).unwrap();
        let x = gpu.upload(&rng.bf16s(64 * k, 1.0)).unwrap();
        let normed = gpu.zeros::<bf16>(64 * k).unwrap();
        let y = gpu.upload(&rng.bf16s(64 * n, 1.0)).unwrap();
        let act = gpu.zeros::<bf16>(64 * n).unwrap();
        let silu = kind == TileKind::NormSilu;
        let nout = if silu { n / 2 } else { n };
        let Some(plan) = tile_plan(n, k, kind, gpu.sms) else {
            println!("{name:<28} no plan");
            continue;
        };
        let epi = match kind {
            TileKind::ResAdd => TileEpilogue::ResAdd,
            TileKind::Norm => TileEpilogue::Norm {
                norm: gpu.ptr(&nw),
                eps,
            },
            TileKind::NormSilu => TileEpilogue::NormSilu {
                norm: gpu.ptr(&nw),
                eps,
            },
        };
        for m in [24usize, 32, 48, 64] {
            let out = if silu { gpu.ptr(&act) } else { gpu.ptr(&y) };
            let tiled_with = |plan: TilePlan| {
                graph_us(gpu, copies, |i| {
                    gpu.gemm_tile(
                        GemmIo {
                            y: out,
                            x: gpu.ptr(&x),
                            w: gpu.ptr(&ws[i]),
                            ldy: nout,
                        },
                        &scratch,
                        (m, n, k),
                        epi,
                        plan,
                    )
                    .unwrap()
                })
            };
            if m == 64 {
                // The kernel's switches and tile widths at 64 tokens.
                let mut line = String::new();
                for nj in [4usize, 6, 8] {
                    if (nj == 6) != silu && nj != plan.nj {
                        continue;
                    }
                    for stages in TILE_DEPTHS {
                        for flags in [0, TILE_ROTATE, TILE_NO_PREFETCH] {
                            let p = TilePlan {
                                nj,
                                stages,
                                flags,
                                ..plan
                            };
                            line += &format!(" n{nj}s{stages}f{flags}={:.2}", tiled_with(p));
                        }
                    }
                }
                println!("{name:<28} {m:>3} sweep:{line}");
            }
            // The plan forward uses (the norm epilogues without the L2 prefetch).
            let used = if kind == TileKind::ResAdd {
                plan
            } else {
                TilePlan {
                    flags: TILE_NO_PREFETCH,
                    ..plan
                }
            };
            let tiled = tiled_with(used);
            let gemm = |i: usize, xin| {
                let o = if kind == TileKind::ResAdd {
                    GemmOut::Bf16Acc(gpu.ptr(&y))
                } else {
                    GemmOut::Bf16(gpu.ptr(&y))
                };
                gpu.blas
                    .project(o, xin, gpu.ptr(&ws[i]), (m, n, k), n, false)
                    .unwrap()
            };
            let cublas = graph_us(gpu, copies, |i| gemm(i, gpu.ptr(&x)));
            let with_kernels = graph_us(gpu, copies, |i| {
                if kind != TileKind::ResAdd {
                    gpu.rmsnorm(gpu.ptr(&normed), gpu.ptr(&x), gpu.ptr(&nw), m, k, eps)
                        .unwrap();
                }
                gemm(
                    i,
                    gpu.ptr(if kind == TileKind::ResAdd {
                        &x
                    } else {
                        &normed
                    }),
                );
                if silu {
                    gpu.silu_and_mul(gpu.ptr(&act), gpu.ptr(&y), m, n / 2)
                        .unwrap();
                }
            });
            println!(
                "{name:<28} {m:>3} {tiled:>9.2} {with_kernels:>14.2} {cublas:>9.2} {:>10.0} {:>8}",
                bytes as f64 / tiled / 1e3,
                format!("n{}s{}", plan.nj, plan.splits)
            );
        }
    }
}
