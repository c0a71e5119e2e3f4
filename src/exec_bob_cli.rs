//! `doppel exec bench-one-batch`: SGLang's bench_one_batch on the GPU (see docs/cuda.md).

use super::flags::KernelFlags;
use anyhow::{bail, Context};
use clap::Args;
use doppel_exec::model::ModelConfig;
use doppel_measure::bench_one_batch::{format_table, run, to_json, BenchOptions, BenchRow};
use std::path::PathBuf;
use std::process::ExitCode;

/// `doppel exec bench-one-batch` (GPU; see docs/cuda.md).
#[derive(Args)]
pub struct BenchOneBatchArgs {
    /// Checkpoint directory (config.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Random weights of the checkpoint's shapes (reads config.json only).
    #[arg(long)]
    random_weights: bool,
    /// Batch sizes.
    #[arg(long, num_args = 1.., default_values_t = [1usize, 4, 16, 64])]
    batch_size: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 64)]
    output_len: usize,
    /// Timed repeats per batch size (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Print the raw figures as JSON.
    #[arg(long)]
    json: bool,
    /// CUDA device ordinal (the first rank's with --tp-size).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Tensor-parallel ranks: GPUs from --device on, joined by NCCL (1: one GPU, no NCCL).
    #[arg(long = "tp-size", visible_alias = "tp", default_value_t = 1)]
    tp_size: usize,
    #[command(flatten)]
    kernels: KernelFlags,
}

pub fn bench_one_batch(a: BenchOneBatchArgs) -> anyhow::Result<ExitCode> {
    use doppel_exec::cuda::{model::GpuModel, Gpu};
    if a.input_len == 0 || a.output_len == 0 || a.batch_size.contains(&0) {
        bail!("--input-len, --output-len and every --batch-size must be at least 1");
    }
    if a.tp_size == 0 {
        bail!("--tp-size must be at least 1");
    }
    let cfg = doppel_exec::model::ModelConfig::load(&a.model)?;
    let ctx = a.input_len + a.output_len;
    let opts = BenchOptions {
        batch_sizes: a.batch_size.clone(),
        input_len: a.input_len,
        output_len: a.output_len,
        repeats: a.repeats,
        seed: 1,
    };
    if a.tp_size > 1 {
        return bench_tp(&a, &cfg, ctx, &opts);
    }
    let gpu = Gpu::new(a.device).context("--device cuda")?;
    let mut model = if a.random_weights {
        GpuModel::random(&gpu, &cfg, 7, ctx)?
    } else {
        let store = doppel_exec::model::WeightStore::open(&a.model)?;
        GpuModel::load(&gpu, &cfg, &store, ctx)?
    };
    model.kernels = a.kernels.choice();
    let max_b = a.batch_size.iter().copied().max().unwrap_or(1);
    eprintln!(
        "{} (sm_{}{}): {}; KV cache {} tokens ({:.3} GB); decode CUDA graphs for batch sizes {:?}; kernels loaded in {:.2}s",
        gpu.name,
        gpu.cc.0,
        gpu.cc.1,
        model.weights_summary(),
        max_b * ctx,
        (max_b * ctx * model.kv_bytes_per_slot()) as f64 / 1e9,
        a.batch_size,
        gpu.kernels.load_seconds
    );
    // Each batch prefills in one step, as SGLang's does: its activations grow with
    // batch x input, so a large shape can run out of memory where serving would chunk it.
    let rows = run(&gpu, &model, &opts).with_context(|| {
        format!(
            "batch sizes {:?} at input {} (the largest prefills {} tokens in one step)",
            a.batch_size,
            a.input_len,
            max_b * a.input_len
        )
    })?;
    print_rows(&a, &rows, None);
    Ok(ExitCode::SUCCESS)
}

/// bench-one-batch over `a.tp_size` GPUs: rank 0's table, and the all-reduce time per layer
/// of each batch size (measured apart: a graph of the decode step's all-reduces).
fn bench_tp(
    a: &BenchOneBatchArgs,
    cfg: &ModelConfig,
    ctx: usize,
    opts: &BenchOptions,
) -> anyhow::Result<ExitCode> {
    use doppel_exec::cuda::tp::startup::load_group;
    use doppel_measure::bench_one_batch::tp::run_group;
    let n = a.tp_size;
    let store = match a.random_weights {
        true => None,
        false => Some(doppel_exec::model::WeightStore::open(&a.model)?),
    };
    let mut ranks = load_group(&a.model, cfg, store.as_ref(), (a.device, n), 7, ctx)
        .with_context(|| format!("--tp-size {n} --device {}", a.device))?;
    let max_b = a.batch_size.iter().copied().max().unwrap_or(1);
    for (r, rank) in ranks.iter_mut().enumerate() {
        rank.model.kernels = a.kernels.choice();
        let (gpu, m) = (&rank.gpu, &rank.model);
        eprintln!(
            "TP rank {r}/{n}: {} (sm_{}{}): weights {:.3} GB; KV cache {} tokens ({:.3} GB, {} of {} KV heads)",
            gpu.name,
            gpu.cc.0,
            gpu.cc.1,
            m.weight_bytes as f64 / 1e9,
            max_b * ctx,
            (max_b * ctx * m.kv_bytes_per_slot()) as f64 / 1e9,
            m.cfg.num_kv_heads,
            cfg.num_kv_heads
        );
    }
    let (rows, all_reduce) = run_group(ranks, opts)?;
    print_rows(a, &rows, Some(&all_reduce));
    Ok(ExitCode::SUCCESS)
}

/// The table (or JSON) of `rows`; with tensor parallelism, each batch size's all-reduce time
/// per layer (µs) too.
fn print_rows(a: &BenchOneBatchArgs, rows: &[BenchRow], all_reduce: Option<&[f64]>) {
    for r in rows {
        eprintln!(
            "batch {}: GEMM shapes measured in {:.0} ms ({})",
            r.batch_size,
            r.gemm_tune_ms,
            if !a.kernels.no_gemm_tuning {
                "fastest of cublasGemmEx and cuBLASLt per shape"
            } else {
                "off: cublasGemmEx default"
            }
        );
    }
    let Some(ar) = all_reduce else {
        match a.json {
            true => println!("{}", to_json(rows)),
            false => print!("{}", format_table(rows)),
        }
        return;
    };
    if a.json {
        let mut v = to_json(rows);
        if let Some(list) = v.as_array_mut() {
            for (row, us) in list.iter_mut().zip(ar) {
                row["tp_size"] = a.tp_size.into();
                row["all_reduce_us_per_layer"] = (*us).into();
            }
        }
        println!("{v}");
        return;
    }
    print!("{}", format_table(rows));
    for (r, us) in rows.iter().zip(ar) {
        println!(
            "tp {} batch {}: all-reduce {us:.1} us per layer (2 x {} rows x hidden, bf16, graph replay on rank 0)",
            a.tp_size, r.batch_size, r.batch_size
        );
    }
}
