//! Prompt logprobs on the CPU backend under the real scheduler: each value is the log-softmax of
//! the model's full logits at the position before the token, and chunked prefill, prefix-cache
//! hits and the overlap order give the same values.

mod engine_common;

use doppel_core::{
    Engine, Event, FinishInfo, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig,
    TokenLogprob,
};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::model::{Arch, CpuModel, KvCache, LogitsWanted, SeqInput};
use doppel_exec::sampling::logprobs;
use doppel_exec::testgen::{write_model, TinySpec};
use engine_common::run_waves;
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

fn cfg(chunk: Option<usize>) -> SchedulerConfig {
    SchedulerConfig {
        kv_capacity_tokens: 2000,
        context_len: 512,
        req_pool_size: Some(32),
        max_prefill_tokens: 512,
        chunked_prefill_size: chunk,
        ..Default::default()
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 131 + i * 17) % 250 + 3)
        .collect()
}

fn req(id: u64, prompt: Vec<u32>, from: Option<usize>, top: usize) -> RequestSpec {
    let mut sp = SamplingParams::greedy(3);
    sp.ignore_eos = true;
    sp.return_logprob = from.is_some();
    sp.top_logprobs = top;
    sp.prompt_logprobs_from = from;
    RequestSpec::new(RequestId(id), prompt, sp, id)
}

struct Got {
    /// Prompt logprobs of each request: (position of the first scored token, values).
    prompt: Vec<(u64, usize, Vec<TokenLogprob>)>,
    finished: Vec<FinishInfo>,
}

/// Run `waves` of requests (each wave after the engine went idle).
fn run(cfg: SchedulerConfig, overlap: bool, waves: &[Vec<RequestSpec>]) -> Got {
    let (model, _) = CpuModel::load(model_dir(), false).unwrap();
    let backend = CpuBackend::new(model, cfg.kv_capacity_tokens, 5);
    let mut engine = Engine::new(Scheduler::new(cfg).unwrap(), backend, overlap);
    let events = run_waves(&mut engine, waves, 10_000, |_| {});
    let mut got = Got {
        prompt: Vec::new(),
        finished: Vec::new(),
    };
    for e in events {
        match e {
            Event::PromptLogprobs {
                id,
                first,
                logprobs,
            } => got.prompt.push((id.0, first, logprobs)),
            Event::Finished(f) => got.finished.push(f),
            Event::Token { .. } => {}
        }
    }
    got
}

/// A request's prompt logprobs joined across chunks, checking that the chunks are contiguous
/// and start right after `from`.
fn joined(got: &Got, id: u64, from: usize) -> Vec<TokenLogprob> {
    let mut out = Vec::new();
    for (i, first, lps) in &got.prompt {
        if *i == id {
            assert_eq!(*first, from + 1 + out.len(), "chunks are contiguous");
            out.extend(lps.iter().cloned());
        }
    }
    out
}

/// The logprob of every prompt token (after the first) from the model's full logits.
fn reference(p: &[u32], top: usize) -> Vec<TokenLogprob> {
    let (model, _) = CpuModel::load(model_dir(), false).unwrap();
    let vocab = model.config().vocab_size;
    let mut kv = KvCache::new(model.config(), p.len() + 1);
    let row: Vec<doppel_core::KvSlot> = (1..=p.len() as u32).map(doppel_core::KvSlot).collect();
    let mut full = Vec::new();
    let seq = SeqInput {
        tokens: p,
        kv_row: &row,
        logits: LogitsWanted::All,
    };
    model.forward(&mut kv, &[seq], &mut full).unwrap();
    (1..p.len())
        .map(|q| logprobs(&full[(q - 1) * vocab..q * vocab], Some(p[q]), top))
        .collect()
}

fn assert_close(got: &[TokenLogprob], want: &[TokenLogprob], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.logprob - w.logprob).abs() < 1e-4,
            "{what}: row {i}: {} vs {}",
            g.logprob,
            w.logprob
        );
        assert_eq!(g.top.len(), w.top.len(), "{what}: row {i} top");
        for (a, b) in g.top.iter().zip(&w.top) {
            assert!(
                a.0 == b.0 && (a.1 - b.1).abs() < 1e-4,
                "{what}: row {i}: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn prompt_logprobs_are_the_log_softmax_of_the_full_logits() {
    let p = prompt(1, 40);
    let got = run(cfg(None), false, &[vec![req(1, p.clone(), Some(0), 3)]]);
    let lps = joined(&got, 1, 0);
    let want = reference(&p, 3);
    assert_close(&lps, &want, "unchunked");
    // Numerically a distribution: the scored token's logprob is at most the best one's.
    for l in &lps {
        assert!(l.logprob <= l.top[0].1 + 1e-6 && l.logprob < 0.0);
    }
}

#[test]
fn chunked_prefill_and_overlap_give_the_unchunked_values() {
    let p = prompt(2, 70);
    let want = reference(&p, 2);
    for overlap in [false, true] {
        let got = run(
            cfg(Some(16)),
            overlap,
            &[vec![req(1, p.clone(), Some(5), 2)]],
        );
        assert!(
            got.prompt.len() >= 4,
            "a 70-token prompt spans several 16-token chunks"
        );
        assert_close(
            &joined(&got, 1, 5),
            &want[5..],
            &format!("chunked, overlap {overlap}"),
        );
    }
}

#[test]
fn a_cached_prefix_is_matched_only_up_to_the_start_position() {
    let p = prompt(3, 50);
    let want = reference(&p, 0);
    // The first request caches the whole prompt; the second wants logprobs from position 20.
    let got = run(
        cfg(None),
        true,
        &[
            vec![req(1, p.clone(), None, 0)],
            vec![req(2, p.clone(), Some(20), 0)],
            vec![req(3, p.clone(), None, 0)],
        ],
    );
    let cached = |id: u64| {
        got.finished
            .iter()
            .find(|f| f.id.0 == id)
            .unwrap()
            .cached_tokens
    };
    assert_eq!(cached(2), 20, "the match stops at the start position");
    assert_eq!(
        cached(3),
        49,
        "without prompt logprobs the whole prompt but one is cached"
    );
    assert_close(&joined(&got, 2, 20), &want[20..], "after a cache hit");
    assert!(got.prompt.iter().all(|(id, _, _)| *id == 2));
}
