//! Prompt logprobs on the GPU: the `token_logprobs_rows` kernel against the CPU's log-softmax
//! and top-k (`sampling::logprobs`), then the CUDA backend against the CPU backend on a tiny
//! bf16 model (plain, chunked prefill, a cache hit capped at the start position, top-k ids).
//! Skips (printing why) when no GPU is present. On the GPU machine:
//! `scripts/gpu/prompt-logprobs.sh`.

mod cuda_common;

use cuda_common::{open_gpu, Report, Rng};
use doppel_core::{
    Engine, Event, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig, TokenLogprob,
};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::cuda::backend::{CudaBackend, CudaBackendConfig};
use doppel_exec::cuda::model::GpuModel;
use doppel_exec::cuda::prompt_logprobs::RowLogprobsOut;
use doppel_exec::cuda::Gpu;
use doppel_exec::model::{Arch, CpuModel, DType, ModelConfig, RopeScaling, WeightStore};
use doppel_exec::sampling::logprobs;
use doppel_exec::testgen::{write_model, TinySpec};
use std::collections::BTreeMap;

#[test]
fn token_logprobs_rows_matches_the_cpu_log_softmax_and_top_k() {
    let Some(gpu) = open_gpu() else { return };
    let mut rng = Rng::new(7);
    let mut rep = Report::default();
    for (vocab, n, k) in [(1000, 5, 0), (151_936, 3, 20), (4099, 70, 5)] {
        let mut logits: Vec<f32> = (0..n * vocab).map(|_| rng.normal() * 3.0).collect();
        // Ties and -inf: the order must still be the CPU's (lower id first).
        logits[7] = logits[3];
        logits[11] = f32::NEG_INFINITY;
        let targets: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
        let want: Vec<TokenLogprob> = (0..n)
            .map(|r| logprobs(&logits[r * vocab..(r + 1) * vocab], Some(targets[r]), k))
            .collect();
        let (dl, dt) = (gpu.upload(&logits).unwrap(), gpu.upload(&targets).unwrap());
        let lp = gpu.zeros::<f32>(n).unwrap();
        let (tl, ti) = (
            gpu.zeros::<f32>(n * k.max(1)).unwrap(),
            gpu.zeros::<u32>(n * k.max(1)).unwrap(),
        );
        let out = RowLogprobsOut {
            lp: gpu.ptr(&lp),
            top_lp: gpu.ptr(&tl),
            top_id: gpu.ptr(&ti),
        };
        gpu.token_logprobs_rows((gpu.ptr(&dl), gpu.ptr(&dt)), &out, (n, vocab, k))
            .unwrap();
        let (lp, tl, ti) = (
            gpu.download(&lp).unwrap(),
            gpu.download(&tl).unwrap(),
            gpu.download(&ti).unwrap(),
        );
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let wl: Vec<f32> = want.iter().map(|w| w.logprob).collect();
        rep.rel(&format!("logprob V={vocab} n={n}"), &f(&lp), &f(&wl), 1e-5);
        let wid: Vec<u32> = want
            .iter()
            .flat_map(|w| w.top.iter().map(|t| t.0))
            .collect();
        let wtl: Vec<f32> = want
            .iter()
            .flat_map(|w| w.top.iter().map(|t| t.1))
            .collect();
        rep.exact(&format!("top-{k} ids V={vocab}"), &ti[..n * k], &wid);
        rep.rel(
            &format!("top-{k} logprobs V={vocab}"),
            &f(&tl[..n * k]),
            &f(&wtl),
            1e-5,
        );
    }
    rep.finish();
}

fn tiny_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut spec = TinySpec::tiny(Arch::Qwen3);
    spec.hidden_size = 256;
    spec.intermediate_size = 512;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    spec.head_dim = 64;
    spec.dtype = DType::BF16;
    spec.rope_scaling = RopeScaling::None;
    write_model(d.path(), &spec).unwrap();
    d
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + seed * 17 + 3) % 380)
        .collect()
}

fn req(id: u64, p: Vec<u32>, from: Option<usize>) -> RequestSpec {
    let mut sp = SamplingParams::greedy(2);
    sp.ignore_eos = true;
    sp.return_logprob = from.is_some();
    sp.top_logprobs = 4;
    sp.prompt_logprobs_from = from;
    RequestSpec::new(RequestId(id), p, sp, id)
}

/// Prompt logprobs per request (joined over chunks) and cached tokens per request.
type Got = (BTreeMap<u64, Vec<TokenLogprob>>, BTreeMap<u64, usize>);

fn run<B: doppel_core::Backend>(mut e: Engine<B>, waves: &[Vec<RequestSpec>]) -> Got {
    let (mut lps, mut cached) = (BTreeMap::new(), BTreeMap::new());
    let mut events = Vec::new();
    for wave in waves {
        for r in wave {
            e.scheduler.submit(r.clone()).unwrap();
        }
        let mut iters = 0;
        while !e.is_idle() {
            e.iterate(iters * 1000, &mut events).unwrap();
            iters += 1;
            assert!(iters < 10_000, "engine did not finish");
        }
    }
    for ev in events {
        match ev {
            Event::PromptLogprobs { id, logprobs, .. } => {
                lps.entry(id.0).or_insert_with(Vec::new).extend(logprobs)
            }
            Event::Finished(f) => {
                cached.insert(f.id.0, f.cached_tokens);
            }
            Event::Token { .. } => {}
        }
    }
    (lps, cached)
}

fn backend_cfg(s: &SchedulerConfig) -> CudaBackendConfig {
    CudaBackendConfig {
        kv_capacity_tokens: s.kv_capacity_tokens,
        table_rows: s.req_pool_size.unwrap_or(64),
        context_len: s.context_len,
        max_tokens: s.max_prefill_tokens + s.req_pool_size.unwrap_or(64),
        max_seqs: s.req_pool_size.unwrap_or(64),
        max_graph_batch: 16,
        seed: 99,
    }
}

#[test]
fn cuda_prompt_logprobs_match_the_cpu_backend() {
    let Some(gpu) = open_gpu() else { return };
    drop(gpu);
    let dir = tiny_dir();
    let (long, short) = (prompt(1, 150), prompt(2, 9));
    // Wave 1 caches `long`; wave 2 asks for its logprobs from 30 (the cache hit stops there),
    // a short prompt from 0 and a request without them in the same batch.
    let waves = vec![
        vec![req(1, long.clone(), None)],
        vec![
            req(2, long.clone(), Some(30)),
            req(3, short.clone(), Some(0)),
            req(4, prompt(3, 20), None),
        ],
    ];
    let base = SchedulerConfig {
        kv_capacity_tokens: 2000,
        context_len: 512,
        req_pool_size: Some(32),
        max_prefill_tokens: 512,
        chunked_prefill_size: None,
        ..Default::default()
    };
    let chunked = SchedulerConfig {
        chunked_prefill_size: Some(16),
        max_prefill_tokens: 64,
        ..base.clone()
    };
    let (cpu_lps, cpu_cached) = {
        let (m, _) = CpuModel::load(dir.path(), false).unwrap();
        let b = CpuBackend::new(m, base.kv_capacity_tokens, 99);
        run(
            Engine::new(Scheduler::new(base.clone()).unwrap(), b, false),
            &waves,
        )
    };
    assert_eq!(cpu_lps[&2].len(), 150 - 31);
    assert_eq!(cpu_lps[&3].len(), 8);
    let mut rep = Report::default();
    for (name, sc, overlap) in [
        ("plain", &base, false),
        ("overlap", &base, true),
        ("chunked prefill", &chunked, true),
    ] {
        let gpu = Gpu::new(0).unwrap();
        let cfg = ModelConfig::load(dir.path()).unwrap();
        let store = WeightStore::open(dir.path()).unwrap();
        let model = GpuModel::load(&gpu, &cfg, &store, 1024).unwrap();
        let b = CudaBackend::new(gpu, model, backend_cfg(sc)).unwrap();
        let (lps, cached) = run(
            Engine::new(Scheduler::new(sc.clone()).unwrap(), b, overlap),
            &waves,
        );
        rep.exact(
            &format!("{name}: cached tokens"),
            &cached.values().copied().collect::<Vec<_>>(),
            &cpu_cached.values().copied().collect::<Vec<_>>(),
        );
        for id in [2u64, 3] {
            let (g, c) = (&lps[&id], &cpu_lps[&id]);
            let f = |v: &[TokenLogprob]| v.iter().map(|l| l.logprob as f64).collect::<Vec<_>>();
            // bf16 weights on the GPU against f32 on the CPU: close, not equal.
            rep.rel(
                &format!("{name}: request {id} logprobs"),
                &f(g),
                &f(c),
                2e-2,
            );
            let agree = g
                .iter()
                .zip(c)
                .filter(|(a, b)| a.top.first().map(|t| t.0) == b.top.first().map(|t| t.0))
                .count();
            rep.check(
                &format!("{name}: request {id} top-1 ids agree (fraction)"),
                agree as f64 / c.len() as f64,
                agree * 10 >= c.len() * 9,
            );
        }
    }
    rep.finish();
}
