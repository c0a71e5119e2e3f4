//! Building a ready [`CudaBackend`] from a checkpoint directory, the way SGLang starts a model
//! runner: open the device, load the weights, size the KV pool from a fraction of device memory,
//! allocate the request table and activations, and log one summary.

use crate::cuda::backend::{graph_sizes, CudaBackend, CudaBackendConfig};
use crate::cuda::model::{GpuModel, KernelChoice};
use crate::cuda::{CudaError, DriverCtx, Gpu, Result};
use crate::model::{ModelConfig, WeightStore};
use doppel_core::SchedulerConfig;
use std::path::Path;
use std::time::Instant;

/// Device-side start-up options (the scheduler's own settings come in a [`SchedulerConfig`]).
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// SGLang's mem_fraction_static: the share of device memory for weights + KV cache
    /// (None: SGLang's default for the device's memory size).
    pub mem_fraction_static: Option<f64>,
    /// A fixed KV capacity in tokens (overrides the memory fraction).
    pub kv_capacity_tokens: Option<usize>,
    /// Largest decode batch replayed from a CUDA graph (0 disables graphs; SGLang's
    /// cuda_graph_max_bs).
    pub cuda_graph_max_bs: usize,
    /// Random weights of the checkpoint's shapes (reads config.json only).
    pub random_weights: bool,
    /// Seed of requests that bring none (and of random weights).
    pub seed: u64,
    /// The kernel thresholds every step plan uses (default: the engine's).
    pub kernels: KernelChoice,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            mem_fraction_static: None,
            kv_capacity_tokens: None,
            cuda_graph_max_bs: 256,
            random_weights: false,
            seed: 0,
            kernels: KernelChoice::default(),
        }
    }
}

/// SGLang's default mem_fraction_static: (total − reserved) / total, reserved (MiB) = 512 +
/// 1.5 × max(chunk, 2048) + 2 × cuda_graph_max_bs, at least 10240 on cards over 60 GiB
/// (tensor/pipeline parallel 1: + 128).
pub fn default_mem_fraction(
    total_bytes: usize,
    chunked_prefill_size: Option<usize>,
    cuda_graph_max_bs: usize,
) -> f64 {
    let mib = total_bytes as f64 / (1024.0 * 1024.0);
    let chunk = chunked_prefill_size.unwrap_or(0).max(2048) as f64;
    let mut reserved = 512.0 + chunk * 1.5 + cuda_graph_max_bs as f64 * 2.0 + 1024.0 / 8.0;
    if mib > 60.0 * 1024.0 {
        reserved = reserved.max(10240.0);
    }
    ((mib - reserved) / mib).clamp(0.0, 1.0)
}

/// SGLang's KV sizing: (free memory after the weights − total × (1 − fraction)) / bytes per
/// token, rounded down to whole pages.
pub fn kv_tokens_for(
    free_after_weights: usize,
    total: usize,
    fraction: f64,
    bytes_per_token: usize,
    page_size: usize,
) -> usize {
    let budget = free_after_weights as f64 - total as f64 * (1.0 - fraction);
    if budget <= 0.0 || bytes_per_token == 0 {
        return 0;
    }
    let tokens = (budget / bytes_per_token as f64) as usize;
    tokens / page_size.max(1) * page_size.max(1)
}

/// The backend's sizes for the scheduler `sched` with `capacity` KV tokens.
pub(in crate::cuda) fn backend_config(
    sched: &SchedulerConfig,
    opts: &CudaOptions,
    capacity: usize,
    context_len: usize,
) -> CudaBackendConfig {
    let mut s = sched.clone();
    s.kv_capacity_tokens = capacity;
    s.context_len = context_len;
    let rows = s.effective_req_pool_size();
    let max_running = s.effective_max_running();
    // One plan holds at most one prefill budget (a whole prompt when chunking is off) plus
    // one decode token per running request.
    let prefill = match s.chunked_prefill_size {
        Some(c) => s.max_prefill_tokens.max(c),
        None => s.max_prefill_tokens.max(context_len),
    };
    CudaBackendConfig {
        kv_capacity_tokens: capacity,
        table_rows: rows,
        context_len,
        max_tokens: prefill + max_running,
        max_seqs: max_running,
        max_graph_batch: opts.cuda_graph_max_bs.min(max_running),
        seed: opts.seed,
    }
}

impl CudaBackend {
    /// A ready backend for the checkpoint in `dir`, sized for the scheduler `sched` (its
    /// `kv_capacity_tokens` is ignored: the capacity comes from `opts`), and the KV capacity in
    /// tokens the scheduler must be given. `sched.context_len` of 0 means the model's
    /// max_position_embeddings. Prints SGLang's start-up summary to stderr.
    pub fn from_checkpoint(
        dir: &Path,
        opts: &CudaOptions,
        sched: &SchedulerConfig,
    ) -> Result<(CudaBackend, usize)> {
        let t0 = Instant::now();
        let model_err = |msg: String| model_error(dir, msg);
        let (cfg, context_len) = checked_config(dir, opts, sched)?;
        let gpu = Gpu::new(opts.device)?;
        let mut model = if opts.random_weights {
            GpuModel::random(&gpu, &cfg, opts.seed, context_len)?
        } else {
            let store = WeightStore::open(dir).map_err(|e| model_err(e.to_string()))?;
            GpuModel::load(&gpu, &cfg, &store, context_len)?
        };
        model.kernels = opts.kernels;
        gpu.sync()?;
        let (free, total) = gpu.ctx.mem_get_info().ctx("reading memory info")?;
        let page = sched.page_size.max(1);
        let fraction = opts.mem_fraction_static.unwrap_or_else(|| {
            default_mem_fraction(total, sched.chunked_prefill_size, opts.cuda_graph_max_bs)
        });
        let capacity = match opts.kv_capacity_tokens {
            Some(c) => c / page * page,
            None => kv_tokens_for(free, total, fraction, model.kv_bytes_per_slot(), page),
        };
        if capacity == 0 {
            return Err(model_err(format!(
                "no room for a KV cache: {:.2} GB free of {:.2} GB after {:.2} GB of weights at mem_fraction_static {fraction:.3} (raise it or pass a KV capacity)",
                free as f64 / 1e9,
                total as f64 / 1e9,
                model.weight_bytes as f64 / 1e9
            )));
        }
        let bcfg = backend_config(sched, opts, capacity, context_len);
        let (rows, max_running) = (bcfg.table_rows, bcfg.max_seqs);
        let backend = CudaBackend::new(gpu, model, bcfg)?;
        backend.gpu.sync()?;
        let (free_end, _) = backend.gpu.ctx.mem_get_info().ctx("reading memory info")?;
        eprintln!(
            "{}; mem_fraction_static {fraction:.3}; max_total_num_tokens={capacity}, max_running_requests={max_running}, context_len={context_len}, req_pool_size={rows}; available GPU memory {:.2} GB; ready in {:.2} s",
            backend.summary(),
            free_end as f64 / 1e9,
            t0.elapsed().as_secs_f64()
        );
        Ok((backend, capacity))
    }

    /// Padded decode batch sizes that get a CUDA graph.
    pub fn graph_batch_sizes(&self) -> Vec<usize> {
        graph_sizes(self.max_graph_batch())
    }
}

// The server moves the backend onto its engine thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<CudaBackend>();
};

/// An error about the checkpoint at `dir`.
pub(crate) fn model_error(dir: &Path, msg: String) -> CudaError {
    CudaError::Model {
        path: dir.display().to_string(),
        msg,
    }
}

/// The checkpoint's config and the context length to serve (`sched.context_len`, 0 meaning the
/// model's), after checking `opts`: the first step of every CUDA start-up, one GPU or a group.
pub(crate) fn checked_config(
    dir: &Path,
    opts: &CudaOptions,
    sched: &SchedulerConfig,
) -> Result<(ModelConfig, usize)> {
    if let Some(f) = opts.mem_fraction_static {
        if !(f > 0.0 && f <= 1.0) {
            return Err(model_error(
                dir,
                format!("mem_fraction_static {f}: must be in (0, 1]"),
            ));
        }
    }
    let cfg = ModelConfig::load(dir).map_err(|e| model_error(dir, e.to_string()))?;
    let context_len = match sched.context_len {
        0 => cfg.max_position_embeddings,
        n => n,
    };
    Ok((cfg, context_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fraction_matches_sglang_on_an_h100() {
        // 80 GiB card, chunked prefill 8192, graphs to 256: reserved = max(12928 + 128, 10240).
        let total = 80 * 1024 * 1024 * 1024usize;
        let f = default_mem_fraction(total, Some(8192), 256);
        let want = (81920.0 - (512.0 + 8192.0 * 1.5 + 512.0 + 128.0)) / 81920.0;
        assert!((f - want).abs() < 1e-9, "{f} vs {want}");
        // A small card keeps the plain rule (no 10 GiB floor).
        let small = 16 * 1024 * 1024 * 1024usize;
        let f = default_mem_fraction(small, None, 8);
        let want = (16384.0 - (512.0 + 3072.0 + 16.0 + 128.0)) / 16384.0;
        assert!((f - want).abs() < 1e-9, "{f} vs {want}");
    }

    #[test]
    fn kv_sizing_follows_sglang_and_rounds_to_pages() {
        let gb = 1usize << 30;
        // 78 GiB free of 80 at 0.85: 78 - 12 = 66 GiB for KV.
        let t = kv_tokens_for(78 * gb, 80 * gb, 0.85, 114_688, 1);
        let want = ((78.0 - 80.0 * 0.15) * gb as f64 / 114_688.0) as usize;
        assert_eq!(t, want);
        assert_eq!(kv_tokens_for(78 * gb, 80 * gb, 0.85, 114_688, 16) % 16, 0);
        assert_eq!(kv_tokens_for(5 * gb, 80 * gb, 0.85, 114_688, 1), 0);
    }

    #[test]
    fn no_driver_is_a_clear_error() {
        // On machines without CUDA the constructor must fail with a message, not panic; with a
        // GPU it fails on the missing checkpoint instead.
        let dir = std::env::temp_dir().join("doppel-no-such-checkpoint");
        let e = CudaBackend::from_checkpoint(&dir, &CudaOptions::default(), &Default::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("config.json") || e.contains("CUDA") || e.contains("driver"),
            "{e}"
        );
    }
}
