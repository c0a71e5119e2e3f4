//! `doppel exec bench-one-batch`: SGLang's bench_one_batch on the GPU (see docs/cuda.md).

use anyhow::{bail, Context};
use clap::Args;
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
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Run every cuBLAS-sized GEMM with cublasGemmEx's default algorithm instead of the one
    /// measured fastest for its shape (cuBLASLt candidates included).
    #[arg(long)]
    no_gemm_tuning: bool,
    /// Decode steps of at most this many rows run the tensor-core decode attention, larger ones
    /// the CUDA-core kernels (0: never; default: the engine's threshold, see
    /// `KernelChoice::decode_mma_max_tokens`).
    #[arg(long)]
    decode_mma_max_rows: Option<usize>,
    /// Decode steps above the tensor-core kernel's rows and up to this many run the tensor-core
    /// decode attention fed from registers (0: never; default: the engine's threshold, see
    /// `KernelChoice::decode_reg_mma_max_tokens`).
    #[arg(long)]
    decode_reg_mma_max_rows: Option<usize>,
    /// Decode steps of at least this many rows ask the o projection's weights into L2 from the
    /// decode attention (default: the engine's threshold, see
    /// `KernelChoice::decode_prefetch_o_min_rows`).
    #[arg(long)]
    decode_prefetch_o_min_rows: Option<usize>,
    /// No o-weights prefetch from the decode attention at any batch size.
    #[arg(long, conflicts_with = "decode_prefetch_o_min_rows")]
    no_decode_prefetch_o: bool,
}

pub fn bench_one_batch(a: BenchOneBatchArgs) -> anyhow::Result<ExitCode> {
    use doppel_exec::cuda::{model::GpuModel, Gpu};
    use doppel_measure::bench_one_batch::{format_table, run, to_json, BenchOptions};
    if a.input_len == 0 || a.output_len == 0 || a.batch_size.contains(&0) {
        bail!("--input-len, --output-len and every --batch-size must be at least 1");
    }
    let cfg = doppel_exec::model::ModelConfig::load(&a.model)?;
    let gpu = Gpu::new(a.device).context("--device cuda")?;
    let ctx = a.input_len + a.output_len;
    let mut model = if a.random_weights {
        GpuModel::random(&gpu, &cfg, 7, ctx)?
    } else {
        let store = doppel_exec::model::WeightStore::open(&a.model)?;
        GpuModel::load(&gpu, &cfg, &store, ctx)?
    };
    if a.no_gemm_tuning {
        model.kernels.gemm_lt_min_tokens = usize::MAX;
    }
    if let Some(n) = a.decode_mma_max_rows {
        model.kernels.decode_mma_max_tokens = n;
    }
    if let Some(n) = a.decode_reg_mma_max_rows {
        model.kernels.decode_reg_mma_max_tokens = n;
    }
    if let Some(n) = a.decode_prefetch_o_min_rows {
        model.kernels.decode_prefetch_o_min_rows = n;
    }
    if a.no_decode_prefetch_o {
        model.kernels.decode_prefetch_o_min_rows = usize::MAX;
    }
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
    let opts = BenchOptions {
        batch_sizes: a.batch_size,
        input_len: a.input_len,
        output_len: a.output_len,
        repeats: a.repeats,
        seed: 1,
    };
    let rows = run(&gpu, &model, &opts)?;
    for r in &rows {
        eprintln!(
            "batch {}: GEMM shapes measured in {:.0} ms ({})",
            r.batch_size,
            r.gemm_tune_ms,
            if !a.no_gemm_tuning {
                "fastest of cublasGemmEx and cuBLASLt per shape"
            } else {
                "off: cublasGemmEx default"
            }
        );
    }
    if a.json {
        println!("{}", to_json(&rows));
    } else {
        print!("{}", format_table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}
