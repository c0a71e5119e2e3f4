//! Starting a tensor-parallel group from a checkpoint: check the group fits (NCCL present,
//! enough devices, heads / KV heads / MLP width divisible), load each rank's shard on its
//! GPU, make the communicators, size one KV capacity that fits every rank, and print what
//! each rank holds.

use super::backend::TpCudaBackend;
use super::{check_devices, ensure_nccl, init_group};
use crate::cuda::backend::CudaBackend;
use crate::cuda::model::GpuModel;
use crate::cuda::startup::{
    backend_config, checked_config, default_mem_fraction, kv_tokens_for, model_error, CudaOptions,
};
use crate::cuda::{open_context, CudaError, DriverCtx, Gpu, Result};
use crate::model::{shard, ModelConfig, Shard, WeightStore};
use cudarc::driver::CudaContext;
use doppel_core::SchedulerConfig;
use std::path::Path;
use std::time::Instant;

/// One GPU and the shard it holds, before its backend is built.
pub struct RankModel {
    /// The rank's device.
    pub gpu: Gpu,
    /// Its shard, joined to the group.
    pub model: GpuModel,
}

/// Open `size` GPUs from `first`, load each rank's shard of `cfg` (random weights of the
/// rank's shapes when `store` is None) with a RoPE table of `max_pos`, and join them into one
/// NCCL group. Fails before touching a GPU when NCCL is missing, the devices are too few or
/// the model does not split `size` ways.
pub fn load_group(
    dir: &Path,
    cfg: &ModelConfig,
    store: Option<&WeightStore>,
    (first, size): (usize, usize),
    seed: u64,
    max_pos: usize,
) -> Result<Vec<RankModel>> {
    let shards = Shard::group(cfg, size).map_err(|e| model_error(dir, e.to_string()))?;
    ensure_nccl()?;
    open_context(first)?;
    let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(e.to_string()))?;
    check_devices(first, size, count.max(0) as usize).map_err(CudaError::NoDevice)?;
    let mut ranks = Vec::with_capacity(size);
    for s in shards {
        let gpu = Gpu::new(first + s.rank)?;
        gpu.ctx.bind_to_thread().ctx("binding a rank's context")?;
        let model = match store {
            Some(st) => GpuModel::load_shard(&gpu, cfg, st, s, max_pos)?,
            None => GpuModel::random(&gpu, &s.local_config(cfg), seed, max_pos)?,
        };
        gpu.sync()?;
        ranks.push(RankModel { gpu, model });
    }
    let comms = init_group(&ranks.iter().map(|r| &r.gpu).collect::<Vec<_>>())?;
    for (r, c) in ranks.iter_mut().zip(comms) {
        r.model.join_group(c);
    }
    Ok(ranks)
}

impl TpCudaBackend {
    /// [`CudaBackend::from_checkpoint`] over `size` GPUs from `opts.device`: one KV capacity
    /// for all ranks (the smallest any rank's memory allows), one line per rank with its
    /// weight and KV bytes. Returns the group and the capacity the scheduler must be given.
    pub fn from_checkpoint(
        dir: &Path,
        opts: &CudaOptions,
        sched: &SchedulerConfig,
        size: usize,
    ) -> Result<(TpCudaBackend, usize)> {
        let t0 = Instant::now();
        let model_err = |msg: String| model_error(dir, msg);
        let (cfg, context_len) = checked_config(dir, opts, sched)?;
        shard::check(&cfg, size).map_err(|e| model_err(e.to_string()))?;
        let store = match opts.random_weights {
            true => None,
            false => Some(WeightStore::open(dir).map_err(|e| model_err(e.to_string()))?),
        };
        let group = (opts.device, size);
        let ranks = load_group(dir, &cfg, store.as_ref(), group, opts.seed, context_len)?;
        let capacity = kv_capacity(&ranks, opts, sched)?;
        if capacity == 0 {
            return Err(model_err(format!(
                "no room for a KV cache on some rank after {:.2} GB of weights (raise \
                 mem_fraction_static or pass a KV capacity)",
                ranks[0].model.weight_bytes as f64 / 1e9
            )));
        }
        let bcfg = backend_config(sched, opts, capacity, context_len);
        let mut backends = Vec::with_capacity(size);
        for (r, RankModel { gpu, mut model }) in ranks.into_iter().enumerate() {
            gpu.ctx.bind_to_thread().ctx("binding a rank's context")?;
            model.kernels = opts.kernels;
            let b = CudaBackend::new(gpu, model, bcfg.clone())?;
            b.gpu.sync()?;
            eprintln!(
                "TP rank {r}/{size}: {}; weights {:.3} GB, KV cache {capacity} tokens ({:.3} GB, \
                 {} of {} KV heads)",
                b.gpu.name,
                b.model.weight_bytes as f64 / 1e9,
                b.kv.bytes() as f64 / 1e9,
                b.model.cfg.num_kv_heads,
                cfg.num_kv_heads
            );
            backends.push(b);
        }
        let tp = TpCudaBackend::start(backends)?;
        eprintln!(
            "tensor parallel over {size} GPUs (NCCL, {}=0): max_total_num_tokens={capacity}, \
             max_running_requests={}, context_len={context_len}; ready in {:.2} s",
            super::NVLS_ENV,
            bcfg.max_seqs,
            t0.elapsed().as_secs_f64()
        );
        Ok((tp, capacity))
    }
}

/// The KV capacity every rank can hold: the given one, or the smallest SGLang sizing of the
/// ranks' free memory (each rank holds only its KV heads).
fn kv_capacity(ranks: &[RankModel], opts: &CudaOptions, sched: &SchedulerConfig) -> Result<usize> {
    let page = sched.page_size.max(1);
    if let Some(c) = opts.kv_capacity_tokens {
        return Ok(c / page * page);
    }
    let mut capacity = usize::MAX;
    for r in ranks {
        let (free, total) = r.gpu.ctx.mem_get_info().ctx("reading memory info")?;
        let fraction = opts.mem_fraction_static.unwrap_or_else(|| {
            default_mem_fraction(total, sched.chunked_prefill_size, opts.cuda_graph_max_bs)
        });
        let per_slot = r.model.kv_bytes_per_slot();
        capacity = capacity.min(kv_tokens_for(free, total, fraction, per_slot, page));
    }
    Ok(if capacity == usize::MAX { 0 } else { capacity })
}
