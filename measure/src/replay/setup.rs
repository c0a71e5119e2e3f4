//! Building the engine a replay runs on: trace + profile (scheduler configuration) and a model on
//! the chosen device.

use super::{replay, ReplayError, ReplayOptions};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::model::{CpuModel, ModelConfig};
use doppel_sim::{summarize, Profile, Replay, Trace};
use std::path::{Path, PathBuf};

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU reference backend.
    Cpu,
    /// The CUDA backend on this device ordinal.
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda),
        }
    }

    /// Label used as the report's backend name.
    pub fn label(&self) -> &'static str {
        match self {
            Device::Cpu => "doppel-exec-cpu",
            Device::Cuda(_) => "doppel-exec-cuda",
        }
    }
}

/// What a replay needs besides the trace.
#[derive(Clone, Debug)]
pub struct ReplaySetup {
    /// Checkpoint directory.
    pub model: PathBuf,
    /// Device.
    pub device: Device,
    /// Random weights of the checkpoint's shapes (CUDA only: reads config.json alone).
    pub random_weights: bool,
    /// Replace the trace's seed.
    pub seed: Option<u64>,
    /// Replace the trace's profile.
    pub profile: Option<String>,
    /// Largest host KV cache the CPU backend may allocate, in bytes.
    pub max_cpu_kv_bytes: usize,
}

fn setup_err(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Setup(e.to_string())
}

/// Load the trace, build the engine on the device and replay it.
pub fn load_and_replay(
    trace_path: &str,
    s: &ReplaySetup,
    opts: ReplayOptions,
) -> Result<Replay, ReplayError> {
    let mut trace = Trace::load(trace_path)?;
    if let Some(seed) = s.seed {
        trace.seed = seed;
    }
    if let Some(p) = &s.profile {
        trace.profile = p.clone();
    }
    let profile = Profile::load(&trace.profile)?;
    let mut cfg = trace.scheduler_config(&profile, trace_path)?;
    let mcfg = ModelConfig::load(&s.model).map_err(setup_err)?;
    cfg.context_len = cfg.context_len.min(mcfg.max_position_embeddings);
    // Every request runs to its output length (ignore_eos), as in the simulator.
    cfg.eos_token_ids.clear();
    let vocab = mcfg.vocab_size;
    let mut opts = opts;
    opts.warm_up_batch = profile.engine.cuda_graph_max_bs;
    if let Device::Cuda(_) = s.device {
        opts.graph_max = Some(profile.engine.cuda_graph_max_bs);
        opts.warm_up_prefill = doppel_exec::warmup::PREFILL_BUCKETS;
    }
    let outcome = match s.device {
        Device::Cpu => {
            // f32 K and V per layer per token.
            let per_token = mcfg.num_layers * mcfg.kv_dim() * 2 * 4;
            let bytes = cfg.capacity_tokens().saturating_mul(per_token);
            if bytes > s.max_cpu_kv_bytes {
                return Err(ReplayError::Setup(format!(
                    "{trace_path}: a KV pool of {} tokens needs {:.1} GiB of host memory for this model (limit {:.1} GiB); set engine.kv_capacity_tokens in the trace",
                    cfg.capacity_tokens(),
                    bytes as f64 / (1u64 << 30) as f64,
                    s.max_cpu_kv_bytes as f64 / (1u64 << 30) as f64
                )));
            }
            if s.random_weights {
                return Err(ReplayError::Setup(
                    "--random-weights is for --device cuda; make a CPU checkpoint with `doppel exec make-model`".into(),
                ));
            }
            let (model, _) = CpuModel::load(&s.model, false).map_err(setup_err)?;
            let backend = CpuBackend::new(model, cfg.capacity_tokens(), trace.seed);
            replay(&trace, trace_path, cfg, backend, vocab, opts)?
        }
        Device::Cuda(_) => {
            let graphs = profile.engine.cuda_graph_max_bs;
            cuda_replay(&trace, trace_path, &s.model, &mcfg, cfg, graphs, s, opts)?
        }
    };
    let rate = match trace.arrival.pattern {
        doppel_sim::trace::ArrivalPattern::Poisson | doppel_sim::trace::ArrivalPattern::Gamma => {
            trace.arrival.rate
        }
        _ => None,
    };
    let mut summary = summarize(&outcome, rate, trace.arrival.max_concurrency);
    summary.backend = s.device.label().into();
    Ok(Replay {
        trace,
        outcome,
        summary,
    })
}

#[allow(clippy::too_many_arguments)]
fn cuda_replay(
    trace: &Trace,
    origin: &str,
    dir: &Path,
    mcfg: &ModelConfig,
    cfg: doppel_core::SchedulerConfig,
    graph_max_bs: usize,
    s: &ReplaySetup,
    opts: ReplayOptions,
) -> Result<doppel_sim::Outcome, ReplayError> {
    use doppel_exec::cuda::backend::CudaBackend;
    use doppel_exec::cuda::startup::CudaOptions;
    let Device::Cuda(device) = s.device else {
        return Err(ReplayError::Setup("not a CUDA device".into()));
    };
    // The trace's KV pool, so the simulator replays the same configuration.
    let copts = CudaOptions {
        device,
        mem_fraction_static: None,
        kv_capacity_tokens: Some(cfg.capacity_tokens()),
        cuda_graph_max_bs: graph_max_bs,
        random_weights: s.random_weights,
        seed: trace.seed,

        ..Default::default()
    };
    let (mut backend, capacity) =
        CudaBackend::from_checkpoint(dir, &copts, &cfg).map_err(setup_err)?;
    // Device time per step in the JSON report (two event records per step, a few us of host).
    backend.set_step_timing(true);
    if capacity != cfg.capacity_tokens() {
        return Err(ReplayError::Setup(format!(
            "the CUDA backend made a KV pool of {capacity} tokens, the trace asks for {}",
            cfg.capacity_tokens()
        )));
    }
    replay(trace, origin, cfg, backend, mcfg.vocab_size, opts)
}
