//! GPU timings (ignored by default; run on the GPU machine with `--ignored`, see docs/cuda.md):
//! the device's copy bandwidth and GEMM rate, the custom GEMV against cuBLAS at decode shapes,
//! per-kernel times at Qwen3-0.6B shapes, and whole forward passes of a random-weight
//! Qwen3-0.6B (decode eager and as a CUDA graph, prefill) at bench_one_batch's batch sizes.
//! Times are CUDA-event medians after warm-up. Prints tables; asserts nothing about speed.

#[path = "cuda_bench_parts/breakdown.rs"]
mod breakdown;
mod cuda_common;
#[path = "cuda_bench_parts/gemm_tuning.rs"]
mod gemm_tuning;
#[path = "cuda_bench_parts/launch.rs"]
mod launch;
#[path = "cuda_bench_parts/projections.rs"]
mod projections;
#[path = "cuda_bench_parts/tile.rs"]
mod tile;

use cuda_common::{open_gpu, Rng};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaGraph, CudaSlice};
use doppel_exec::cuda::attention::{
    decode_splits, AttnEntry, DecodeMeta, DecodeOut, DecodeVariant, ExtendMeta,
};
use doppel_exec::cuda::model::{
    GpuModel, KvPool, RowSampling, StepBatch, StepInput, TokenPick, Workspace,
};
use doppel_exec::cuda::skinny::{
    skinny_plan, GemmIo, SkinnyEpilogue, SkinnyScratch, SKINNY_COUNTERS,
};
use doppel_exec::cuda::Gpu;
use doppel_exec::model::{Arch, ModelConfig, RopeScaling};
use half::bf16;

/// Copies of one random `[n, k]` weight spanning >= 256 MB (at most 64), so that calls rotating
/// over them find none of it in L2.
pub(crate) fn rotated_weights(
    gpu: &Gpu,
    rng: &mut Rng,
    n: usize,
    k: usize,
) -> Vec<CudaSlice<bf16>> {
    let copies = (256usize << 20).div_ceil(n * k * 2).clamp(1, 64);
    let base = gpu.upload(&rng.bf16s(n * k, 0.05)).unwrap();
    (0..copies)
        .map(|_| gpu.stream.clone_dtod(&base).unwrap())
        .collect()
}

/// Median milliseconds of one call of `f`, timing `inner` calls between two events, `samples` times.
fn time_ms(gpu: &Gpu, samples: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    gpu.sync().unwrap();
    let mut v = Vec::new();
    for _ in 0..samples {
        let a = gpu
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        for _ in 0..inner {
            f();
        }
        let b = gpu
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        b.synchronize().unwrap();
        v.push(a.elapsed_ms(&b).unwrap() as f64 / inner as f64);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn qwen3_06b() -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen3,
        hidden_size: 1024,
        intermediate_size: 3072,
        num_layers: 28,
        num_heads: 16,
        num_kv_heads: 8,
        head_dim: 128,
        vocab_size: 151936,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 40960,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        qk_norm: true,
        bos_token_id: None,
        eos_token_ids: vec![151645],
        torch_dtype: Some("bfloat16".into()),
    }
}

#[test]
#[ignore = "GPU timing; run explicitly on the GPU machine"]
fn bench_kernels_and_forward() {
    let Some(gpu) = open_gpu() else { return };
    let mut rng = Rng::new(42);
    projections::ceilings(&gpu);
    projections::gemv_vs_cublas(&gpu, &mut rng);
    tile::tile_vs_cublas(&gpu, &mut rng);
    projections::skinny_vs_cublas(&gpu, &mut rng);
    forward_passes(&gpu, &mut rng);
}

#[test]
#[ignore = "GPU timing; run explicitly on the GPU machine"]
fn bench_gemv_row_prefetch() {
    let Some(mut gpu) = open_gpu() else { return };
    projections::gemv_row_prefetch(&mut gpu, &mut Rng::new(42));
}

/// One decode step of `b` tokens with `splits` key splits, captured as a CUDA graph from the
/// model as it is configured now (its kernel switches are read at capture).
pub(crate) fn decode_graph(
    gpu: &Gpu,
    model: &GpuModel,
    kv: &KvPool,
    ws: &Workspace,
    meta: &DecodeMeta,
    b: usize,
    splits: usize,
) -> CudaGraph {
    model
        .capture_decode(gpu, kv, ws, (meta, splits), b, TokenPick::Argmax)
        .unwrap()
}

/// One eager extend (prefill) step of `tokens` tokens with `rows` greedy logits rows, from the
/// model as it is configured now.
pub(crate) fn extend_step(
    gpu: &Gpu,
    model: &GpuModel,
    kv: &KvPool,
    ws: &Workspace,
    tokens: usize,
    meta: &ExtendMeta,
    rows: usize,
) {
    model
        .forward(
            gpu,
            kv,
            ws,
            StepBatch {
                tokens,
                extend: Some(meta),
                decode: None,
                rows,
                pick: TokenPick::Argmax,
            },
        )
        .unwrap()
}

/// A batch of `b` sequences, each with `prefix` cached and `new` new tokens, rows 1..=b of a
/// table whose row r maps position p to slot 1 + (r - 1) * max_ctx + p.
fn step(
    b: usize,
    prefix: usize,
    new: usize,
    max_ctx: usize,
    vocab: usize,
    rng: &mut Rng,
) -> StepInput {
    let mut s = StepInput::default();
    for i in 0..b {
        let row = i + 1;
        let q_start = s.ids.len();
        for p in prefix..prefix + new {
            s.ids.push(rng.below(vocab) as u32);
            s.tok_row.push(row as u32);
            s.positions.push(p as i32);
            s.out_slots.push((1 + i * max_ctx + p) as u32);
        }
        let e = AttnEntry {
            q_start,
            q_len: new,
            kv_len: prefix + new,
            row,
        };
        if new == 1 && prefix > 0 {
            s.decode.push(e);
        } else {
            s.extend.push(e);
        }
        s.logit_tok.push((q_start + new - 1) as u32);
        s.logit_row.push(row as u32);
        s.sampling.push(RowSampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.5,
        });
    }
    s
}

fn forward_passes(gpu: &Gpu, rng: &mut Rng) {
    let cfg = qwen3_06b();
    let max_ctx = 256;
    let max_b = 64;
    let mut model = GpuModel::random(gpu, &cfg, 7, 4096).unwrap();
    let mut kv = KvPool::new(gpu, &model, 1 + max_b * max_ctx, max_b + 1, max_ctx).unwrap();
    let table: Vec<u32> = (0..(max_b + 1) * max_ctx)
        .map(|i| {
            if i < max_ctx {
                0
            } else {
                (1 + i - max_ctx) as u32
            }
        })
        .collect();
    gpu.stream.memcpy_htod(&table, &mut kv.table).unwrap();
    let sms = gpu
        .ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .unwrap() as usize;
    let mut ws = Workspace::new(gpu, &model, max_b * 128, max_b, 64).unwrap();
    println!(
        "\nrandom-weight Qwen3-0.6B: {:.2} GB of weights, {} SMs; decode at kv_len 160 (128 prompt + 32 generated)",
        model.weight_bytes as f64 / 1e9,
        sms
    );
    gemm_tuning::gemm_tuning_table(gpu, &mut model, &ws);
    gemm_tuning::startup_tuning_cost(gpu, &model, &ws);
    println!("{:<34} {:>10} {:>12}", "pass", "median ms", "floor ms");
    let bw = 3.35e12; // H100 SXM HBM3 peak; the measured copy ceiling is printed above
    for b in [1usize, 4, 8, 16, 64] {
        // Prefill b x 128 (positions 0..128), eager.
        let s = step(b, 0, 128, max_ctx, cfg.vocab_size, rng);
        s.validate(&model, &kv, &ws).unwrap();
        model.upload_step(gpu, &mut ws, &s).unwrap();
        let group = cfg.num_heads / cfg.num_kv_heads;
        let meta =
            ExtendMeta::new(gpu, &s.extend, s.ids.len(), kv.rows, kv.max_ctx, group).unwrap();
        model.tune_gemms(gpu, &ws, s.ids.len(), b).unwrap();
        let ms = time_ms(gpu, 5, 1, || {
            extend_step(gpu, &model, &kv, &ws, s.ids.len(), &meta, b)
        });
        // And with programmatic dependent launch off (plain launches), same process.
        let pdl = gpu.pdl();
        gpu.set_pdl(false);
        let ms_nopdl = time_ms(gpu, 5, 1, || {
            extend_step(gpu, &model, &kv, &ws, s.ids.len(), &meta, b)
        });
        gpu.set_pdl(pdl);
        if b == 64 {
            let (on, off) = gemm_tuning::prefill_ab(gpu, &mut model, &kv, &ws, &s, &meta, b);
            println!(
                "{:<34} {:>10.3} {:>12}",
                format!("prefill {b} x 128, GEMM tuning on"),
                on,
                ""
            );
            println!(
                "{:<34} {:>10.3} {:>12}",
                format!("prefill {b} x 128, GEMM tuning off"),
                off,
                ""
            );
        }
        let flops = 2.0
            * (model.weight_bytes as f64 / 2.0 - (cfg.vocab_size * cfg.hidden_size) as f64)
            * (b * 128) as f64;
        let floor = (flops / 700e12).max(model.weight_bytes as f64 / bw) * 1e3;
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("prefill {b} x 128 (eager)"),
            ms,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("prefill {b} x 128 (PDL off)"),
            ms_nopdl,
            floor
        );

        // Extend positions 128..159 (untimed) so decode attends over real K/V, not zeros.
        let s = step(b, 128, 31, max_ctx, cfg.vocab_size, rng);
        model.upload_step(gpu, &mut ws, &s).unwrap();
        let meta =
            ExtendMeta::new(gpu, &s.extend, s.ids.len(), kv.rows, kv.max_ctx, group).unwrap();
        extend_step(gpu, &model, &kv, &ws, s.ids.len(), &meta, b);

        // Decode b tokens at kv_len 160.
        let s = step(b, 159, 1, max_ctx, cfg.vocab_size, rng);
        s.validate(&model, &kv, &ws).unwrap();
        model.upload_step(gpu, &mut ws, &s).unwrap();
        let meta = DecodeMeta::new(gpu, &s.decode, s.ids.len(), kv.rows, kv.max_ctx).unwrap();
        let splits = decode_splits(b, cfg.num_kv_heads, 160, sms).min(ws.max_splits);
        model.tune_gemms(gpu, &ws, b, b).unwrap();
        launch::launch_overhead(gpu, &mut model, &kv, &ws, &meta, b, splits);
        if b == 64 {
            let [on, all, off] =
                gemm_tuning::decode_graph_ab(gpu, &mut model, &kv, &ws, &meta, b, splits);
            for (label, t) in [
                ("GEMM tuning on (default)", on),
                ("GEMM tuning at every size", all),
                ("GEMM tuning off", off),
            ] {
                println!(
                    "{:<34} {:>10.3} {:>12}",
                    format!("decode b={b} graph, {label}"),
                    t,
                    ""
                );
            }
        }
        let eager = time_ms(gpu, 9, 3, || {
            model
                .forward(
                    gpu,
                    &kv,
                    &ws,
                    StepBatch {
                        tokens: b,
                        extend: None,
                        decode: Some((&meta, splits)),
                        rows: b,
                        pick: TokenPick::Argmax,
                    },
                )
                .unwrap()
        });
        let graph = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        let replay = time_ms(gpu, 15, 10, || graph.launch().unwrap());
        // The same graph captured with plain launches (no programmatic dependent launch).
        gpu.set_pdl(false);
        let graph_nopdl = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        gpu.set_pdl(pdl);
        let replay_nopdl = time_ms(gpu, 15, 10, || graph_nopdl.launch().unwrap());
        // PDL on again, replayed after the plain graph: a second sample of the default.
        let replay2 = time_ms(gpu, 15, 10, || graph.launch().unwrap());
        // The other sides of the plan's thresholds (KernelChoice), each its own graph.
        let saved = model.kernels;
        type Set = fn(&mut doppel_exec::cuda::model::KernelChoice, usize);
        let alternatives: [(&str, Set); 7] = [
            ("attention on CUDA cores (V3)", |k, _| {
                k.decode_mma_max_tokens = 0;
                k.decode_reg_mma_max_tokens = 0;
            }),
            ("attention on tensor cores (shared memory)", |k, _| {
                k.decode_mma_max_tokens = usize::MAX
            }),
            ("attention on tensor cores (registers)", |k, _| {
                k.decode_mma_max_tokens = 0;
                k.decode_reg_mma_max_tokens = usize::MAX;
            }),
            ("o weights prefetched by the attention", |k, _| {
                k.decode_prefetch_o_min_rows = 0
            }),
            ("no o weights prefetch", |k, _| {
                k.decode_prefetch_o_min_rows = usize::MAX
            }),
            ("cuBLAS above the GEMV, cuBLAS LM head", |k, _| {
                k.skinny_max_tokens = 0;
                k.lm_head_gemv_max = 0;
            }),
            // Up to 8 tokens the norm-folded GEMVs, above the skinny GEMM up to 64 tokens.
            ("GEMVs / skinny GEMM up to b", |k, b| {
                if b <= 8 {
                    k.gemv_max_tokens = b
                } else {
                    k.skinny_max_tokens = 64
                }
            }),
        ];
        let mut rows = Vec::new();
        for (what, set) in alternatives {
            set(&mut model.kernels, b);
            let g = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
            model.kernels = saved;
            rows.push((
                what.to_string(),
                time_ms(gpu, 15, 10, || g.launch().unwrap()),
            ));
        }
        rows.push((
            "default, third sample".into(),
            time_ms(gpu, 15, 10, || graph.launch().unwrap()),
        ));
        // Other fewest-keys-per-split settings (1: every launched split used) and more launched
        // splits (10 at ~160 keys: what a graph captured for a longer context runs).
        let min_keys = model.kernels.decode_split_min_keys;
        for (sp, mk) in [(splits, 1usize), (10, min_keys), (10, 1)] {
            if (sp, mk) == (splits, min_keys) {
                continue;
            }
            model.kernels.decode_split_min_keys = mk;
            let g = decode_graph(gpu, &model, &kv, &ws, &meta, b, sp);
            model.kernels.decode_split_min_keys = min_keys;
            let what = format!("{sp} of {splits} splits, min keys {mk}");
            rows.push((what, time_ms(gpu, 15, 10, || g.launch().unwrap())));
        }
        let kv_bytes = (b * 160 * model.kv_bytes_per_slot()) as f64;
        let floor = (model.weight_bytes as f64 + kv_bytes) / bw * 1e3;
        for (what, ms) in [
            ("eager", eager),
            ("CUDA graph replay", replay),
            ("graph, PDL off", replay_nopdl),
            ("graph, PDL on, again", replay2),
        ] {
            println!(
                "{:<34} {:>10.3} {:>12.3}",
                format!("decode b={b} ({what})"),
                ms,
                floor
            );
        }
        for (what, ms) in rows {
            println!(
                "{:<34} {:>10.3} {:>12.3}",
                format!("decode b={b} (graph, {what})"),
                ms,
                floor
            );
        }
    }
    breakdown::kernel_breakdown(gpu, &model, &kv, &mut ws, rng, sms);
}
