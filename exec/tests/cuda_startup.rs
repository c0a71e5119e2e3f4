//! `CudaBackend::from_checkpoint` and `--device cuda` in the server. Without a driver or GPU the
//! tests check that start-up fails with a clear message; with one, that the backend built from a
//! checkpoint directory serves the CPU backend's greedy tokens and the server starts and stops.

mod cuda_common;

use cuda_common::tiny_qwen3_bf16;
use doppel_core::{Engine, Event, RequestId, RequestSpec, SamplingParams, Scheduler};
use doppel_core::{SchedulerConfig, TimeNs};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::cuda::backend::CudaBackend;
use doppel_exec::cuda::startup::CudaOptions;
use doppel_exec::cuda::Gpu;
use doppel_exec::model::CpuModel;
use doppel_exec::server::{BackendKind, Server, ServerConfig};
use std::collections::BTreeMap;

fn has_gpu() -> Option<String> {
    Gpu::new(0).err().map(|e| e.to_string())
}

fn greedy_tokens<B: doppel_core::Backend>(mut engine: Engine<B>) -> BTreeMap<u64, Vec<u32>> {
    for i in 0..3u64 {
        let prompt: Vec<u32> = (0..20 + 7 * i as u32).map(|t| (t * 13 + 5) % 300).collect();
        let mut p = SamplingParams::greedy(12);
        p.ignore_eos = true;
        engine
            .scheduler
            .submit(RequestSpec::new(RequestId(i), prompt, p, 0))
            .unwrap();
    }
    let (mut events, mut now, mut iters): (Vec<Event>, TimeNs, usize) = (Vec::new(), 0, 0);
    while !engine.is_idle() {
        engine.iterate(now, &mut events).unwrap();
        now += 1000;
        iters += 1;
        assert!(iters < 10_000, "engine did not finish");
    }
    let mut out: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for e in events {
        if let Event::Token { id, token, .. } = e {
            out.entry(id.0).or_default().push(token);
        }
    }
    out
}

#[test]
fn from_checkpoint_sizes_kv_and_matches_cpu() {
    let dir = tiny_qwen3_bf16();
    let sched = SchedulerConfig {
        context_len: 0,
        chunked_prefill_size: Some(32),
        ..Default::default()
    };
    let opts = CudaOptions {
        mem_fraction_static: Some(0.5),
        cuda_graph_max_bs: 8,
        ..Default::default()
    };
    let built = CudaBackend::from_checkpoint(dir.path(), &opts, &sched);
    if let Some(why) = has_gpu() {
        let e = built.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("CUDA") || e.contains("driver"), "{e}");
        eprintln!("skipping the GPU half: {why}");
        return;
    }
    let (backend, capacity) = built.unwrap();
    assert!(
        capacity > 100_000,
        "KV capacity {capacity} at half the card"
    );
    assert_eq!(backend.graph_batch_sizes(), (1..=8).collect::<Vec<_>>());
    let cfg = doppel_exec::model::ModelConfig::load(dir.path()).unwrap();
    let sc = SchedulerConfig {
        kv_capacity_tokens: capacity,
        context_len: cfg.max_position_embeddings,
        ..sched.clone()
    };
    let got = greedy_tokens(Engine::new(
        Scheduler::new(sc.clone()).unwrap(),
        backend,
        true,
    ));
    let (m, _) = CpuModel::load(dir.path(), false).unwrap();
    let want = greedy_tokens(Engine::new(
        Scheduler::new(sc.clone()).unwrap(),
        CpuBackend::new(m, sc.capacity_tokens(), 0),
        true,
    ));
    assert_eq!(got, want, "GPU greedy tokens differ from the CPU backend's");
    // A fixed capacity overrides the fraction and is rounded down to whole pages.
    let opts = CudaOptions {
        kv_capacity_tokens: Some(1000),
        ..opts
    };
    let paged = SchedulerConfig {
        page_size: 16,
        ..sched
    };
    let (_, c) = CudaBackend::from_checkpoint(dir.path(), &opts, &paged).unwrap();
    assert_eq!(c, 992);
}

#[test]
fn server_on_cuda_device() {
    let dir = tiny_qwen3_bf16();
    let cfg = ServerConfig {
        model: Some(dir.path().to_path_buf()),
        log_batches: false,
        ..Default::default()
    };
    let cuda = BackendKind::Cuda {
        device: 0,
        mem_fraction_static: Some(0.3),
        cuda_graph_max_bs: 4,
        kernels: Default::default(),
    };
    let built = Server::build(cfg, cuda);
    if let Some(why) = has_gpu() {
        let e = built.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--device cuda:0") && e.contains("CUDA"), "{e}");
        eprintln!("skipping the GPU half: {why}");
        return;
    }
    let server = built.unwrap();
    assert_eq!(server.info().backend, "cuda:0");
    assert!(server.info().capacity > 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snap = rt
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            server.serve(listener, async {}).await
        })
        .unwrap();
    assert_eq!(
        snap.memory.free + snap.memory.evictable,
        snap.memory.capacity
    );
}
