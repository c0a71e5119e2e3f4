//! `doppel exec replay` and `doppel exec profile`: the measuring side of the real engine.

use anyhow::{bail, Context};
use clap::Args;
use doppel_exec::model::ModelConfig;
use doppel_measure::profile::{self, ProfilePlan};
use doppel_measure::replay::{self, Device, ReplayOptions, ReplaySetup};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `doppel exec replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// The trace file (see traces/README.md).
    trace: String,
    /// Checkpoint directory (config.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Random weights of the checkpoint's shapes (cuda only; reads config.json alone).
    #[arg(long)]
    random_weights: bool,
    /// Write every figure, per-request records and the step sequence as JSON.
    #[arg(long)]
    json: Option<String>,
    /// Write a Chrome trace of the steps and requests.
    #[arg(long)]
    timeline: Option<String>,
    /// Print SGLang-style batch log lines.
    #[arg(long)]
    log_batches: bool,
    /// Replace the trace's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Replace the trace's profile (it sets the scheduler configuration).
    #[arg(long)]
    profile: Option<String>,
    /// Give up after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Largest host KV cache the CPU backend may allocate (GiB).
    #[arg(long, default_value_t = 4.0)]
    max_cpu_kv_gib: f64,
}

/// `doppel exec profile`.
#[derive(Args)]
pub struct ProfileArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Random weights of the checkpoint's shapes (cuda only).
    #[arg(long)]
    random_weights: bool,
    /// Where to write the measurement file (JSON).
    #[arg(long)]
    out: String,
    /// Prefill prompt lengths (default: by device).
    #[arg(long, num_args = 1..)]
    prefill_len: Vec<usize>,
    /// Prefill batch sizes.
    #[arg(long, num_args = 1..)]
    prefill_batch: Vec<usize>,
    /// Decode batch sizes.
    #[arg(long, num_args = 1..)]
    decode_batch: Vec<usize>,
    /// Decode KV lengths.
    #[arg(long, num_args = 1..)]
    decode_kv: Vec<usize>,
    /// Timed repeats of the sweep (after one warm-up pass).
    #[arg(long)]
    repeats: Option<usize>,
    /// KV pool in tokens.
    #[arg(long)]
    kv_capacity: Option<usize>,
    /// Idle time after each scenario, as a multiple of its run time, so the device's power and
    /// clocks stay near what serving sees (default: 1 on a GPU, 0 on the CPU).
    #[arg(long)]
    rest: Option<f64>,
}

fn parse_device(s: &str) -> anyhow::Result<Device> {
    Device::parse(s).with_context(|| format!("--device {s}: expected cpu, cuda or cuda:N"))
}

/// Run `doppel exec replay`.
pub fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let device = parse_device(&a.device)?;
    if let Some(t) = a.time_limit {
        if !(t.is_finite() && t > 0.0) {
            bail!("--time-limit {t}: must be a positive number of seconds");
        }
    }
    if !(a.max_cpu_kv_gib.is_finite() && a.max_cpu_kv_gib > 0.0) {
        bail!("--max-cpu-kv-gib {}: must be positive", a.max_cpu_kv_gib);
    }
    let setup = ReplaySetup {
        model: a.model,
        device,
        random_weights: a.random_weights,
        seed: a.seed,
        profile: a.profile,
        max_cpu_kv_bytes: (a.max_cpu_kv_gib * (1u64 << 30) as f64) as usize,
    };
    let opts = ReplayOptions {
        log_batches: a.log_batches,
        time_limit: a.time_limit.map(Duration::from_secs_f64),
        ..Default::default()
    };
    let r = replay::load_and_replay(&a.trace, &setup, opts)?;
    print!("{}", r.stdout(a.log_batches));
    if let Some(path) = a.json {
        let text = doppel_sim::compare::report_with_steps(&r.trace, &r.outcome, &r.summary);
        std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
    }
    if let Some(path) = a.timeline {
        let text = doppel_sim::report::to_chrome_trace(&r.outcome);
        std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `doppel exec profile`.
pub fn profile(a: ProfileArgs) -> anyhow::Result<ExitCode> {
    let device = parse_device(&a.device)?;
    let mut plan = match device {
        Device::Cpu => ProfilePlan::cpu_default(),
        Device::Cuda(_) => ProfilePlan::gpu_default(),
    };
    for (v, arg) in [
        (&a.prefill_len, &mut plan.prefill_lens),
        (&a.prefill_batch, &mut plan.prefill_batches),
        (&a.decode_batch, &mut plan.decode_batches),
        (&a.decode_kv, &mut plan.decode_kv),
    ] {
        if !v.is_empty() {
            *arg = v.clone();
        }
    }
    let all = [
        &plan.prefill_lens,
        &plan.prefill_batches,
        &plan.decode_batches,
        &plan.decode_kv,
    ];
    if all.iter().any(|v| v.contains(&0)) {
        bail!("--prefill-len, --prefill-batch, --decode-batch and --decode-kv values must be at least 1");
    }
    if let Some(r) = a.repeats {
        if r == 0 {
            bail!("--repeats must be at least 1");
        }
        plan.repeats = r;
    }
    if let Some(k) = a.kv_capacity {
        plan.kv_capacity = k;
    }
    if let Some(r) = a.rest {
        if !(r.is_finite() && (0.0..=100.0).contains(&r)) {
            bail!("--rest {r}: must be a number from 0 to 100");
        }
        plan.rest = r;
    }
    let cfg = ModelConfig::load(&a.model)?;
    let context = plan.longest().min(cfg.max_position_embeddings);
    if plan.longest() > cfg.max_position_embeddings {
        bail!(
            "the sweep needs {} positions but the model has {}: shorten --prefill-len/--decode-kv",
            plan.longest(),
            cfg.max_position_embeddings
        );
    }
    let method = format!(
        "doppel exec profile --device {} (plain order, radix cache off, {} timed repeats after a warm-up pass; step = launch to results; schedule = rest of the loop iteration; submit = building a prompt and submitting it)",
        a.device, plan.repeats
    );
    let ((steps, sched, submit), device_name) = match device {
        Device::Cpu => {
            if a.random_weights {
                bail!("--random-weights is for --device cuda");
            }
            let (model, _) = doppel_exec::model::CpuModel::load(&a.model, false)?;
            let mut b = doppel_exec::cpu_backend::CpuBackend::new(model, plan.kv_capacity, 1);
            let run = profile::run(&mut b, &plan, cfg.vocab_size, context, true)?;
            (
                run,
                format!("CPU ({} threads)", rayon::current_num_threads()),
            )
        }
        Device::Cuda(ordinal) => {
            use doppel_exec::cuda::backend::{CudaBackend, CudaBackendConfig};
            use doppel_exec::cuda::{model::GpuModel, Gpu};
            let gpu = Gpu::new(ordinal).context("--device cuda")?;
            let name = gpu.name.clone();
            let model = if a.random_weights {
                GpuModel::random(&gpu, &cfg, 7, context)?
            } else {
                let store = doppel_exec::model::WeightStore::open(&a.model)?;
                GpuModel::load(&gpu, &cfg, &store, context)?
            };
            let max_b = plan
                .decode_batches
                .iter()
                .chain(&plan.prefill_batches)
                .copied()
                .max()
                .unwrap_or(1)
                + plan.mixed.iter().map(|m| m.0 + 1).max().unwrap_or(0);
            let bcfg = CudaBackendConfig {
                kv_capacity_tokens: plan.kv_capacity,
                table_rows: profile::PROFILE_ROWS,
                context_len: context,
                max_tokens: plan.max_prefill_tokens + max_b,
                max_seqs: max_b.max(256),
                max_graph_batch: 256,
                seed: 1,
            };
            let mut b = CudaBackend::new(gpu, model, bcfg)?;
            eprintln!("{}", b.summary());
            let run = profile::run(&mut b, &plan, cfg.vocab_size, context, true)?;
            (run, name)
        }
    };
    let m = profile::measurements(
        &device_name,
        &a.model.display().to_string(),
        &cfg,
        &method,
        steps,
        sched,
        submit,
    );
    let text = doppel_sim::serde_json::to_string_pretty(&m)?;
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out))?;
    println!(
        "{} steps and {} scheduler samples measured on {}; written to {}",
        m.steps.len(),
        m.schedule.len(),
        device_name,
        a.out
    );
    Ok(ExitCode::SUCCESS)
}
