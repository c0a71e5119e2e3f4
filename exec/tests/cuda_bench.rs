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
    decode_splits, AttnEntry, DecodeMeta, DecodeVariant, ExtendMeta, ExtendVariant,
};
use doppel_exec::cuda::model::{
    DecodeKernel, GpuModel, KvPool, RowSampling, StepInput, TileUse, TokenPick, Workspace,
};
use doppel_exec::cuda::skinny::{skinny_plan, SkinnyEpilogue, SkinnyScratch, SKINNY_COUNTERS};
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
        .capture_decode(gpu, kv, ws, meta, b, splits, TokenPick::Argmax)
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
            tokens,
            Some(meta),
            None,
            rows,
            TokenPick::Argmax,
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
        // The same prefill with run 5's extend attention (one q head per block), same process.
        let default_extend = model.kernels.extend;
        model.kernels.extend = ExtendVariant::Fast;
        let ms_old = time_ms(gpu, 5, 1, || {
            extend_step(gpu, &model, &kv, &ws, s.ids.len(), &meta, b)
        });
        model.kernels.extend = default_extend;
        // And with q norm + RoPE done in the q/k pass instead of the extend kernel.
        model.kernels.extend_q_rope = false;
        let ms_qpass = time_ms(gpu, 5, 1, || {
            extend_step(gpu, &model, &kv, &ws, s.ids.len(), &meta, b)
        });
        model.kernels.extend_q_rope = true;
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
        model.kernels.proj_resadd = false;
        let ms_sep = time_ms(gpu, 5, 1, || {
            extend_step(gpu, &model, &kv, &ws, s.ids.len(), &meta, b)
        });
        model.kernels.proj_resadd = true;
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("prefill {b} x 128 (PDL off)"),
            ms_nopdl,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("prefill {b} x 128 (separate res add)"),
            ms_sep,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("prefill {b} x 128, run-5 extend"),
            ms_old,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("prefill {b} x 128, q rope in q/k pass"),
            ms_qpass,
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
        if model.tile_plans(b, sms).iter().any(Option::is_some) {
            let t = |model: &GpuModel| {
                let g = decode_graph(gpu, model, &kv, &ws, &meta, b, splits);
                time_ms(gpu, 15, 10, || g.launch().unwrap())
            };
            let mut rows = Vec::new();
            for (label, use_) in [
                ("tiled gate/up (default)", TileUse::GateUp),
                ("cuBLAS + separate kernels", TileUse::Off),
                ("all four projections tiled", TileUse::All),
                ("tiled gate/up, again", TileUse::GateUp),
            ] {
                model.kernels.tile_gemm = use_;
                rows.push((label, t(&model)));
            }
            model.kernels.tile_gemm = TileUse::GateUp;
            for (label, v) in rows {
                println!(
                    "{:<34} {:>10.3} {:>12}",
                    format!("decode b={b} graph, {label}"),
                    v,
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
                    b,
                    None,
                    Some((&meta, splits)),
                    b,
                    TokenPick::Argmax,
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
        // The decode combine always folded into the last split block (one launch per layer).
        let decode_kernel = model.kernels.decode;
        model.kernels.decode = DecodeKernel::V3Fused;
        let graph_fused = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.kernels.decode = decode_kernel;
        let replay_fused = time_ms(gpu, 15, 10, || graph_fused.launch().unwrap());
        // The q/k pass as its own kernel before the decode attention (above the GEMV sizes).
        model.kernels.decode_qk_post = false;
        let graph_qk = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.kernels.decode_qk_post = true;
        let replay_qk = time_ms(gpu, 15, 10, || graph_qk.launch().unwrap());
        model.kernels.decode_prefetch_rows = false;
        let graph_rows = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.kernels.decode_prefetch_rows = true;
        let replay_rows = time_ms(gpu, 15, 10, || graph_rows.launch().unwrap());
        model.kernels.decode_early_kv = false;
        let graph_late = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.kernels.decode_early_kv = true;
        let replay_late = time_ms(gpu, 15, 10, || graph_late.launch().unwrap());
        // The decode attention on CUDA cores (the V3 kernels), on tensor cores through shared
        // memory and on tensor cores fed from registers, whichever the default picks here.
        let (mma, rmma) = (
            model.kernels.decode_mma_max_tokens,
            model.kernels.decode_reg_mma_max_tokens,
        );
        let mut mma_rows = Vec::new();
        for (what, max, reg) in [
            ("attention on CUDA cores (V3)", 0usize, 0usize),
            ("attention on tensor cores (shared memory)", usize::MAX, 0),
            ("attention on tensor cores (registers)", 0, usize::MAX),
        ] {
            model.kernels.decode_mma_max_tokens = max;
            model.kernels.decode_reg_mma_max_tokens = reg;
            let g = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
            model.kernels.decode_mma_max_tokens = mma;
            model.kernels.decode_reg_mma_max_tokens = rmma;
            mma_rows.push((
                what.to_string(),
                time_ms(gpu, 15, 10, || g.launch().unwrap()),
            ));
        }
        // Switches timed against each other, twice each: the LM head as separate kernels (f32
        // logits, then the argmax) or with the argmax folded in (at every batch size here); the
        // RMSNorm before qkv folded (the projection of the raw rows, 1 / rms in the attention's
        // q/k pass) or its own kernel; the tiled gate/up GEMM (b > 16) on weights with the norm
        // weight folded in or multiplying by it itself.
        let lm = model.kernels;
        type Switch = fn(&mut doppel_exec::cuda::model::KernelChoice, bool);
        let switches: [(&str, &str, Switch); 3] = [
            (
                "argmax in the LM head",
                "LM head + argmax kernel",
                |k, on| {
                    k.lm_head_argmax = on;
                    k.lm_argmax_min_rows = 1;
                },
            ),
            (
                "qkv on the raw rows",
                "RMSNorm kernel before qkv",
                |k, on| k.qkv_prenorm = on,
            ),
            (
                "gate/up weights with the norm folded in",
                "gate/up norm weight in the GEMM",
                |k, on| k.gate_up_prenorm = on,
            ),
        ];
        for (on_label, off_label, set) in switches {
            for (on, again) in [
                (false, ""),
                (true, ""),
                (false, ", again"),
                (true, ", again"),
            ] {
                set(&mut model.kernels, on);
                let g = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
                model.kernels = lm;
                let label = format!("{}{again}", if on { on_label } else { off_label });
                mma_rows.push((label, time_ms(gpu, 15, 10, || g.launch().unwrap())));
            }
        }
        let replay3 = time_ms(gpu, 15, 10, || graph.launch().unwrap());
        // Other fewest-keys-per-split settings (1: every launched split used, as before) and
        // more launched splits.
        let mut fewer_splits = Vec::new();
        let min_keys = model.kernels.decode_split_min_keys;
        // (10 launched splits at ~160 keys: what a graph captured for a longer context runs.)
        // min keys 0 stands for the default split plan with the non-pipelined decode kernel.
        for (sp, mk) in [(splits, 0usize), (splits, 1), (10, min_keys), (10, 1)] {
            if (sp, mk) == (splits, min_keys) {
                continue;
            }
            let pipelined = model.kernels.decode_pipelined;
            if mk == 0 {
                model.kernels.decode_pipelined = false;
            }
            model.kernels.decode_split_min_keys = if mk == 0 { min_keys } else { mk };
            let g = decode_graph(gpu, &model, &kv, &ws, &meta, b, sp);
            model.kernels.decode_split_min_keys = min_keys;
            model.kernels.decode_pipelined = pipelined;
            fewer_splits.push((sp, mk, time_ms(gpu, 15, 10, || g.launch().unwrap())));
        }
        // The same step with the separate (unfused) kernels, for comparison.
        model.fused = false;
        let graph2 = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.fused = true;
        let unfused = time_ms(gpu, 15, 10, || graph2.launch().unwrap());
        // The same step with run 5's projections (cuBLAS above the GEMV, separate residual adds).
        let saved = model.kernels;
        model.kernels.skinny_max_tokens = 0;
        model.kernels.proj_resadd = false;
        model.kernels.lm_head_gemv_max = 0;
        model.kernels.qkv_post_fused = false;
        let gemv_max = model.gemv_max_tokens;
        model.gemv_max_tokens = 4;
        let graph3 = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.kernels = saved;
        model.gemv_max_tokens = gemv_max;
        let old_proj = time_ms(gpu, 15, 10, || graph3.launch().unwrap());
        // The other side of each default: up to 8 tokens the norm-folded GEMVs (run 5's choice
        // up to 4), above the skinny GEMM up to 64 tokens instead of cuBLAS.
        let variant = if b <= 8 {
            model.gemv_max_tokens = b;
            "norm-folded GEMVs"
        } else {
            model.kernels.skinny_max_tokens = 64;
            "skinny GEMM up to 64"
        };
        let graph4 = decode_graph(gpu, &model, &kv, &ws, &meta, b, splits);
        model.gemv_max_tokens = gemv_max;
        model.kernels = saved;
        let other = time_ms(gpu, 15, 10, || graph4.launch().unwrap());
        let kv_bytes = (b * 160 * model.kv_bytes_per_slot()) as f64;
        let floor = (model.weight_bytes as f64 + kv_bytes) / bw * 1e3;
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (eager)"),
            eager,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (CUDA graph replay)"),
            replay,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (graph, PDL off)"),
            replay_nopdl,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (graph, PDL on, again)"),
            replay2,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (graph, combine fused)"),
            replay_fused,
            floor
        );
        // (The q/k pass folds into the attention only above the GEMV sizes.)
        let mut rows: Vec<(String, f64)> = [
            ("q/k pass own kernel", replay_qk),
            ("KV prefetch of its own head", replay_rows),
            ("first keys requested after the wait", replay_late),
        ]
        .map(|(w, t)| (w.to_string(), t))
        .into();
        rows.extend(mma_rows);
        rows.push(("default, third sample".into(), replay3));
        for (what, ms) in rows {
            if b > 8 || what != "q/k pass own kernel" {
                println!(
                    "{:<34} {:>10.3} {:>12.3}",
                    format!("decode b={b} (graph, {what})"),
                    ms,
                    floor
                );
            }
        }
        for (sp, mk, ms) in &fewer_splits {
            let what = if *mk == 0 {
                "decode attention not pipelined".to_string()
            } else {
                format!("{sp} of {splits} splits, min keys {mk}")
            };
            println!(
                "{:<34} {:>10.3} {:>12.3}",
                format!("decode b={b} (graph, {what})"),
                ms,
                floor
            );
        }
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (graph, unfused kernels)"),
            unfused,
            floor
        );
        println!(
            "{:<34} {:>10.3} {:>12.3}",
            format!("decode b={b} (graph, run-5 kernels)"),
            old_proj,
            floor
        );
        if b > 1 {
            println!(
                "{:<34} {:>10.3} {:>12.3}",
                format!("decode b={b} (graph, {variant})"),
                other,
                floor
            );
        }
    }
    breakdown::kernel_breakdown(gpu, &model, &kv, &mut ws, rng, sms);
}
