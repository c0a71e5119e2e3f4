//! The CPU backend under the real scheduler: every memory plan the core can produce (prefix
//! hits, chunked prefill, retraction, overlap order, mixed batches) gives the same logits and
//! tokens as the simplest plan.

mod engine_common;

use doppel_core::{
    Engine, Event, FinishInfo, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig,
};
use doppel_exec::cpu_backend::{CpuBackend, RecordedLogits};
use doppel_exec::model::{Arch, CpuModel, KvCache, LogitsWanted, SeqInput};
use doppel_exec::testgen::{write_model, TinySpec};
use engine_common::{req, run_waves};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

fn model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        write_model(d.path(), &TinySpec::tiny(Arch::Qwen3)).unwrap();
        d
    })
    .path()
}

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        kv_capacity_tokens: 2000,
        context_len: 512,
        req_pool_size: Some(32),
        max_prefill_tokens: 512,
        chunked_prefill_size: None,
        ..Default::default()
    }
}

struct Outcome {
    tokens: BTreeMap<u64, Vec<u32>>,
    logits: BTreeMap<(u64, usize), Vec<f32>>,
    finished: Vec<FinishInfo>,
    retractions: u64,
}

/// Run `reqs` (submitted in waves: each inner vec waits until the engine is idle).
fn run(cfg: SchedulerConfig, overlap: bool, waves: &[Vec<RequestSpec>]) -> Outcome {
    let (model, _) = CpuModel::load(model_dir(), false).unwrap();
    let mut backend = CpuBackend::new(model, cfg.kv_capacity_tokens, 99);
    backend.record_logits();
    let mut engine = Engine::new(Scheduler::new(cfg).unwrap(), backend, overlap);
    let mut recorded: Vec<RecordedLogits> = Vec::new();
    let events = run_waves(&mut engine, waves, 10_000, |e| {
        recorded.extend(e.backend.take_recorded())
    });
    let mut out = Outcome {
        tokens: BTreeMap::new(),
        logits: BTreeMap::new(),
        finished: Vec::new(),
        retractions: engine.scheduler.counters().retractions,
    };
    for e in events {
        match e {
            Event::Token {
                id, token, index, ..
            } => {
                let v = out.tokens.entry(id.0).or_default();
                assert_eq!(v.len(), index);
                v.push(token);
            }
            Event::Finished(f) => out.finished.push(f),
            Event::PromptLogprobs { .. } => {}
        }
    }
    // The last logits recorded for an index win (a retracted request recomputes them).
    for r in recorded {
        out.logits.insert((r.id.0, r.index), r.logits);
    }
    // Releases reach the backend with the next plan, so only the last wave's requests may remain.
    let last_wave = waves.last().map_or(0, Vec::len);
    assert!(
        engine.backend.live_requests() <= last_wave,
        "released requests keep state"
    );
    out
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + seed * 17 + 3) % 380)
        .collect()
}

fn assert_same(a: &Outcome, b: &Outcome, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: tokens differ");
    for (k, v) in &b.logits {
        assert_eq!(
            a.logits.get(k),
            Some(v),
            "{what}: logits of request {} index {} differ",
            k.0,
            k.1
        );
    }
}

#[test]
fn prefix_hit_equals_miss() {
    let shared = prompt(1, 48);
    let mut p2 = shared.clone();
    p2.extend(prompt(2, 9));
    let miss = run(
        cfg(),
        false,
        &[vec![req(2, p2.clone(), SamplingParams::greedy(12))]],
    );
    let mut warm = shared.clone();
    warm.extend(prompt(3, 5));
    let hit = run(
        cfg(),
        false,
        &[
            vec![req(1, warm, SamplingParams::greedy(4))],
            vec![req(2, p2, SamplingParams::greedy(12))],
        ],
    );
    let f = hit.finished.iter().find(|f| f.id == RequestId(2)).unwrap();
    assert!(
        f.cached_tokens >= 40,
        "expected a prefix hit, cached {}",
        f.cached_tokens
    );
    assert_eq!(miss.tokens[&2].len(), 12);
    assert_eq!(miss.tokens[&2], hit.tokens[&2]);
    for i in 0..12 {
        assert_eq!(miss.logits[&(2, i)], hit.logits[&(2, i)], "index {i}");
    }
}

#[test]
fn chunked_prefill_equals_one_pass() {
    let reqs = vec![
        req(1, prompt(4, 61), SamplingParams::greedy(6)),
        req(2, prompt(5, 23), SamplingParams::greedy(6)),
    ];
    let one = run(cfg(), false, std::slice::from_ref(&reqs));
    for chunk in [1, 5, 16, 32] {
        for overlap in [false, true] {
            let c = SchedulerConfig {
                chunked_prefill_size: Some(chunk),
                ..cfg()
            };
            let got = run(c, overlap, std::slice::from_ref(&reqs));
            assert_same(&got, &one, &format!("chunk {chunk} overlap {overlap}"));
        }
    }
    // Mixed batches (decode tokens carried inside prefill chunks) as well.
    let c = SchedulerConfig {
        chunked_prefill_size: Some(8),
        enable_mixed_chunk: true,
        ..cfg()
    };
    let staggered = vec![req(1, prompt(4, 61), SamplingParams::greedy(6))];
    let later = vec![req(2, prompt(5, 23), SamplingParams::greedy(6))];
    let got = run(c, true, &[staggered, later]);
    assert_same(&got, &one, "mixed chunk");
}

#[test]
fn retraction_then_reprefill_continues_exactly() {
    let reqs: Vec<RequestSpec> = (0..6)
        .map(|i| req(i, prompt(i as u32 + 10, 20), SamplingParams::greedy(40)))
        .collect();
    let roomy = run(cfg(), false, std::slice::from_ref(&reqs));
    for overlap in [false, true] {
        let tight = SchedulerConfig {
            kv_capacity_tokens: 160,
            init_new_token_ratio: 0.05,
            ..cfg()
        };
        let got = run(tight, overlap, std::slice::from_ref(&reqs));
        assert!(
            got.retractions > 0,
            "the tight pool should force a retraction (overlap {overlap})"
        );
        assert_same(&got, &roomy, &format!("retraction overlap {overlap}"));
    }
}

#[test]
fn incremental_decode_equals_full_recompute() {
    let p = prompt(7, 17);
    let out = run(
        cfg(),
        true,
        &[vec![req(1, p.clone(), SamplingParams::greedy(15))]],
    );
    let mut seq = p.clone();
    seq.extend(&out.tokens[&1]);
    let (model, _) = CpuModel::load(model_dir(), false).unwrap();
    let vocab = model.config().vocab_size;
    let mut kv = KvCache::new(model.config(), seq.len() + 1);
    let row: Vec<doppel_core::KvSlot> = (1..=seq.len() as u32).map(doppel_core::KvSlot).collect();
    let mut full = Vec::new();
    model
        .forward(
            &mut kv,
            &[SeqInput {
                tokens: &seq,
                kv_row: &row,
                logits: LogitsWanted::All,
            }],
            &mut full,
        )
        .unwrap();
    for i in 0..15 {
        let pos = p.len() - 1 + i;
        assert_eq!(
            out.logits[&(1, i)],
            full[pos * vocab..(pos + 1) * vocab],
            "output index {i}"
        );
    }
}

#[test]
fn seeded_sampling_is_independent_of_batching() {
    let sampled = |id: u64, seed: u64| {
        let p = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            repetition_penalty: 1.1,
            seed: Some(seed),
            max_new_tokens: 20,
            ..Default::default()
        };
        req(id, prompt(id as u32, 12 + id as usize), p)
    };
    let together = run(
        cfg(),
        true,
        &[(0..4).map(|i| sampled(i, 1000 + i)).collect()],
    );
    for i in 0..4 {
        let alone = run(
            SchedulerConfig {
                chunked_prefill_size: Some(5),
                ..cfg()
            },
            false,
            &[vec![sampled(i, 1000 + i)]],
        );
        assert_eq!(alone.tokens[&i], together.tokens[&i], "request {i}");
    }
    // A different seed changes the output.
    let other = run(cfg(), false, &[vec![sampled(0, 5)]]);
    assert_ne!(other.tokens[&0], together.tokens[&0]);
}

#[test]
fn paged_kv_equals_token_granular() {
    let shared = prompt(8, 37);
    let mut a = shared.clone();
    a.extend(prompt(9, 6));
    let mut b = shared;
    b.extend(prompt(10, 11));
    let waves = [
        vec![req(1, a, SamplingParams::greedy(9))],
        vec![req(2, b, SamplingParams::greedy(9))],
    ];
    let flat = run(cfg(), false, &waves);
    for (page, chunk, overlap) in [(4, Some(8), false), (16, Some(16), true), (8, None, true)] {
        let c = SchedulerConfig {
            page_size: page,
            chunked_prefill_size: chunk,
            ..cfg()
        };
        let got = run(c, overlap, &waves);
        let f = got.finished.iter().find(|f| f.id == RequestId(2)).unwrap();
        assert!(
            f.cached_tokens >= 32,
            "page {page}: expected a paged prefix hit, cached {}",
            f.cached_tokens
        );
        assert_same(
            &got,
            &flat,
            &format!("page {page} chunk {chunk:?} overlap {overlap}"),
        );
    }
}
