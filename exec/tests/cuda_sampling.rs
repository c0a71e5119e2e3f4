//! The sampling paths on the GPU (issue 21, "Correctness"), and the scheduler's scenarios at
//! 8B shapes. Both skip (printing why) without a GPU. On the GPU machine:
//! `JOBS=sampling bash scripts/gpu/verify.sh` (see docs/exec-model.md, "Sampling checks").
//!
//! * `sampling_checks_pass_on_the_cuda_backend`: the checks of sampling_parts/ (the CPU backend
//!   passes them in CI, sampling.rs) on CudaBackend over a tiny bf16 model, against the CPU
//!   model's forward pass on the same weights: temperature / top-k / top-p / min-p drawn by the
//!   `sample_rows` kernel; penalties, logit bias and logprobs on the host from the GPU's logits.
//! * `scheduler_scenarios_at_8b_shapes`: sampling_parts/scenarios.rs (prefix hit, chunked
//!   prefill, retraction, mixed batch against one plain pass per request) on CudaBackend over
//!   random weights of Llama-3.1-8B's shapes (4096 wide, GQA 32/8, head dim 128, vocabulary
//!   128256, llama3 RoPE scaling), at 4 layers and at all 32.

mod cuda_common;
mod engine_common;
mod sampling_parts;

use cuda_common::open_gpu;
use doppel_core::{Engine, Scheduler, SchedulerConfig};
use doppel_exec::cuda::backend::{CudaBackend, CudaBackendConfig};
use doppel_exec::cuda::model::GpuModel;
use doppel_exec::cuda::Gpu;
use doppel_exec::model::{ModelConfig, WeightStore};
use sampling_parts::scenarios::{scheduler_scenarios, Rounding};
use sampling_parts::{Batching, CdfOrder, Checks, Reference, Subject, Tolerance};
use std::path::Path;

/// Sized as `exec serve` sizes it: one prefill budget plus a decode token per request row.
fn backend_cfg(s: &SchedulerConfig, max_graph_batch: usize) -> CudaBackendConfig {
    let rows = s.req_pool_size.unwrap_or(64);
    let prefill = s
        .max_prefill_tokens
        .max(s.chunked_prefill_size.unwrap_or(s.context_len));
    CudaBackendConfig {
        kv_capacity_tokens: s.kv_capacity_tokens,
        table_rows: rows,
        context_len: s.context_len,
        max_tokens: prefill + rows,
        max_seqs: rows,
        max_graph_batch,
        seed: 99,
    }
}

#[test]
fn sampling_checks_pass_on_the_cuda_backend() {
    let Some(gpu) = open_gpu() else { return };
    drop(gpu);
    let dir = sampling_parts::model_dir();
    let reference = Reference::load(dir.path());
    let make = |sc: &SchedulerConfig| {
        let gpu = Gpu::new(0).unwrap();
        let cfg = ModelConfig::load(dir.path()).unwrap();
        let store = WeightStore::open(dir.path()).unwrap();
        let model = GpuModel::load(&gpu, &cfg, &store, 1024).unwrap();
        CudaBackend::new(gpu, model, backend_cfg(sc, 16)).unwrap()
    };
    let s = Subject {
        name: "cuda",
        backend: &make,
        reference: &reference,
        // bf16 keeps 8 significant bits (a rounding moves a value by up to 2^-9 of it). The GPU
        // rounds the residual stream, the normalised hidden rows and the projections' outputs
        // to bf16 where the CPU keeps f32: about six roundings on the way to a logit over two
        // layers, so up to ~1.2e-2 of the largest logit, 1.5e-2 with margin; a log-softmax
        // moves by at most twice its logits' largest move (the checks double it).
        tol: Tolerance {
            logit_rel: 1.5e-2,
            logit_abs: 1e-3,
            // Between two batch shapes of the GPU itself (other GEMM and attention kernels, the
            // same bf16 roundings but for the few values an f32 reordering pushes across a
            // rounding boundary): a few 1e-3 of a logit; 1e-2 with margin.
            batch_logit: 1e-2,
        },
        plain_order: CdfOrder::Vocabulary,
        batching: Batching::Rounding,
        measured: Default::default(),
    };
    s.check_all("sampling checks, CUDA backend");
}

const LLAMA31_8B: &str = include_str!("../../scripts/gpu/llama3.1-8b/config.json");

/// Llama-3.1-8B's shapes with `layers` layers.
fn llama31_8b(layers: usize) -> ModelConfig {
    let mut cfg = ModelConfig::parse(LLAMA31_8B, Path::new("config.json")).unwrap();
    cfg.num_layers = layers;
    cfg
}

#[test]
fn scheduler_scenarios_at_8b_shapes() {
    let Some(gpu) = open_gpu() else { return };
    drop(gpu);
    // The whole-model checks hold each path within 2e-2 (relative) of the f32 logits at a few
    // layers; these random weights give logits of rms ~1.9 (uniform +-0.05 weights over 4096
    // inputs), so a logit moves by ~0.04 rms, ~0.1 at the extreme of 128k; two paths and a
    // log-softmax (up to twice a logit's move) bound a logprob's difference near 0.25, and a
    // tie two paths can split near twice that. At 32 layers bf16 differences grow (8.8e-2
    // between two bf16 forwards in the architecture checks): the control raises the limits to
    // what it measures, so the 4-layer pass keeps the tight ones.
    let rounding = Rounding {
        logprob: 0.25,
        tie: 0.5,
    };
    let mut c =
        Checks::new("scheduler scenarios, Llama-3.1-8B shapes (random weights), CUDA backend");
    for layers in [4, 32] {
        let cfg = llama31_8b(layers);
        let engine = |sc: &SchedulerConfig, overlap: bool| {
            let gpu = Gpu::new(0).unwrap();
            // The same seed every time: the same weights in every scenario.
            let model = GpuModel::random(&gpu, &cfg, 7, 2048).unwrap();
            let backend = CudaBackend::new(gpu, model, backend_cfg(sc, 8)).unwrap();
            Engine::new(Scheduler::new(sc.clone()).unwrap(), backend, overlap)
        };
        c.prefix = format!("{layers} layers, ");
        let start = std::time::Instant::now();
        scheduler_scenarios(
            &mut c,
            &engine,
            cfg.vocab_size,
            Batching::Rounding,
            rounding,
        );
        c.note("time", format!("{:.1} s", start.elapsed().as_secs_f64()));
    }
    c.finish();
}
