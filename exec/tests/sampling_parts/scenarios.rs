//! The scheduler scenarios of scheduler_scenarios.rs (prefix hit, chunked prefill, retraction,
//! mixed batch) on any backend: greedy tokens against one plain pass of each request alone (no
//! cache, no chunking). The CPU backend runs them on a tiny model in CI (sampling.rs), the CUDA
//! backend at Llama-3.1-8B's shapes (cuda_sampling.rs).
//!
//! Unlike the CPU backend, the GPU's logits move by bf16 rounding with the batch's shape, so a
//! near tie may pick the other token and the sequences part there. Where the backend's batching
//! is [`Batching::Rounding`] the check is therefore: tokens equal up to a divergence that the
//! plain pass shows to be a near tie (its top-2 logprob gap under [`Rounding::tie`]), and for the
//! requests that return logprobs (half of them, sampled on the host in the same batches as the
//! device-sampled half) every logprob before it within [`Rounding::logprob`] of the plain
//! pass's. A wrong cache or table entry moves logits by whole units at once.

use super::{prompt, req, run, Batching, Checks, Outcome};
use doppel_core::{Backend, Engine, RequestSpec, SamplingParams, SchedulerConfig};

/// How far a backend's results may move with the batch's shape: floors, raised to what a
/// control (every request in one batch, no cache, no chunking) measures against the plain pass.
#[derive(Clone, Copy, Debug)]
pub struct Rounding {
    /// Most a returned logprob may differ from the plain pass's.
    pub logprob: f64,
    /// A divergence is a near tie when the plain pass's top two logprobs are this close.
    pub tie: f64,
}

/// Largest difference between the logprobs (chosen token, and alternatives of the same id) of
/// `got` and `want` over each request's positions before its tokens part.
fn logprob_noise(reqs: &[RequestSpec], got: &Outcome, want: &Outcome) -> f64 {
    let mut worst = 0.0f64;
    for id in reqs.iter().map(|r| r.id.0) {
        let (Some(g), Some(w)) = (got.tokens.get(&id), want.tokens.get(&id)) else {
            continue;
        };
        let d = g.iter().zip(w).take_while(|(a, b)| a == b).count();
        let (Some(glp), Some(wlp)) = (got.logprobs.get(&id), want.logprobs.get(&id)) else {
            continue;
        };
        for (a, b) in glp.iter().zip(wlp).take(d) {
            let (Some(a), Some(b)) = (a, b) else { continue };
            worst = worst.max((a.logprob as f64 - b.logprob as f64).abs());
            for (x, y) in a.top.iter().zip(&b.top).filter(|(x, y)| x.0 == y.0) {
                worst = worst.max((x.1 as f64 - y.1 as f64).abs());
            }
        }
    }
    worst
}

/// A roomy pool, 16 request rows, prompts up to 2048 tokens.
pub fn base() -> SchedulerConfig {
    SchedulerConfig {
        kv_capacity_tokens: 8192,
        context_len: 2048,
        req_pool_size: Some(16),
        max_prefill_tokens: 2048,
        chunked_prefill_size: None,
        ..Default::default()
    }
}

/// Greedy for `n` tokens; odd ids also return logprobs with the top 2 (sampled on the host).
fn greedy(id: u64, p: Vec<u32>, n: usize) -> RequestSpec {
    let mut sp = SamplingParams::greedy(n);
    sp.return_logprob = id % 2 == 1;
    sp.top_logprobs = 2;
    req(id, p, sp)
}

/// The prefix / chunked / mixed requests: three sharing a 200-token prefix, and lone prompts of
/// 37, 300 and 700 tokens (ids 1-6); the retraction requests: six 20-token prompts with 40
/// tokens each, as the CPU scenario (ids 11-16).
fn requests(v: usize) -> (Vec<RequestSpec>, Vec<RequestSpec>) {
    let shared = prompt(1, 200, v);
    let with = |tail: Vec<u32>| [shared.clone(), tail].concat();
    let main = vec![
        greedy(1, with(prompt(2, 9, v)), 16),
        greedy(2, with(prompt(3, 30, v)), 16),
        greedy(3, with(prompt(4, 1, v)), 16),
        greedy(4, prompt(5, 37, v), 16),
        greedy(5, prompt(6, 300, v), 16),
        greedy(6, prompt(7, 700, v), 16),
    ];
    let retract = (11..17)
        .map(|i| greedy(i, prompt(i as u32 + 10, 20, v), 40))
        .collect();
    (main, retract)
}

/// Compare the requests `reqs` of `got` with the plain pass `want`, request by request (see the
/// module comment).
fn compare(
    c: &mut Checks,
    (name, r): (&str, Rounding),
    reqs: &[RequestSpec],
    got: &Outcome,
    want: &Outcome,
) {
    let (mut identical, mut ties, mut bad) = (0, Vec::new(), Vec::new());
    let worst_lp = logprob_noise(reqs, got, want);
    for id in reqs.iter().map(|r| r.id.0) {
        let (id, w) = (&id, &want.tokens[&id]);
        let g = got.tokens.get(id).map_or(&[][..], |g| &g[..]);
        let d = g.iter().zip(w).take_while(|(a, b)| a == b).count();
        let wlp = &want.logprobs[id];
        if d == w.len() && g.len() == w.len() {
            identical += 1;
            continue;
        }
        let gap = wlp
            .get(d)
            .and_then(|l| l.as_ref())
            .filter(|l| l.top.len() == 2)
            .map(|l| (l.top[0].1 - l.top[1].1) as f64);
        match gap {
            Some(gap) if gap < r.tie && d < g.len() => ties.push(format!("{id}@{d} gap {gap:.3}")),
            _ => bad.push(format!(
                "request {id} parts at {d} (plain-pass gap {gap:?})"
            )),
        }
    }
    let n = reqs.len();
    c.add(
        format!("{name}: greedy tokens as the plain pass, up to near ties"),
        format!(
            "{identical}/{n} identical; near ties {ties:?}; {}",
            bad.join("; ")
        ),
        bad.is_empty(),
    );
    c.add(
        format!("{name}: logprobs as the plain pass's before any divergence"),
        format!("max difference {worst_lp:.3e} (limit {})", r.logprob),
        worst_lp <= r.logprob,
    );
}

/// The four scenarios against one plain pass per request, on engines from `engine` (a
/// scheduler configuration and the overlap order) over a vocabulary of `vocab`. A
/// [`Batching::Invariant`] backend must give equal tokens and logprobs; otherwise `rounding`
/// (raised by the control's measure) bounds the differences.
pub fn scheduler_scenarios<B: Backend>(
    c: &mut Checks,
    engine: &dyn Fn(&SchedulerConfig, bool) -> Engine<B>,
    vocab: usize,
    batching: Batching,
    rounding: Rounding,
) {
    let (main, retract) = requests(vocab);
    let plain = SchedulerConfig {
        disable_radix_cache: true,
        ..base()
    };
    // Logprobs for every request of the plain pass: the gaps that tell a near tie.
    let alone: Vec<Vec<RequestSpec>> = main
        .iter()
        .chain(&retract)
        .map(|r| {
            let mut r = r.clone();
            std::sync::Arc::make_mut(&mut r.sampling).return_logprob = true;
            vec![r]
        })
        .collect();
    let want = run(engine(&plain, false), &alone);
    // The control: the same plain pass with every request in one batch. Batch-shape rounding
    // alone moves its logprobs (bf16 at 32 layers of random weights amplifies it: the
    // architecture checks measured 8.8e-2 between two bf16 forwards); the scenarios may move
    // them 3x as much, a wrong cache entry moves them by whole units.
    let all: Vec<RequestSpec> = alone.iter().flatten().cloned().collect();
    let control = run(engine(&plain, false), std::slice::from_ref(&all));
    let noise = logprob_noise(&all, &control, &want);
    let r = match batching {
        Batching::Invariant => Rounding {
            logprob: 0.0,
            tie: 0.0,
        },
        Batching::Rounding => {
            let logprob = rounding.logprob.max(3.0 * noise);
            Rounding {
                logprob,
                tie: rounding.tie.max(2.0 * logprob),
            }
        }
    };
    c.note(
        "control: every request in one batch (no cache, no chunking) vs alone",
        format!(
            "logprobs differ by up to {noise:.3e}; limits: logprob {:.3}, near tie {:.3}",
            r.logprob, r.tie
        ),
    );
    compare(c, ("control, one batch", r), &all, &control, &want);
    // Prefix hit: the shared prefix cached by a first request.
    let warm = greedy(100, prompt(1, 200, vocab), 1);
    let hit = run(engine(&base(), true), &[vec![warm], main.clone()]);
    let cached = hit.cached.get(&1).copied().unwrap_or(0);
    c.add(
        "prefix hit: request 1 found the shared prefix cached",
        format!("{cached} tokens"),
        cached >= 192,
    );
    compare(c, ("prefix hit", r), &main, &hit, &want);
    let chunked = SchedulerConfig {
        chunked_prefill_size: Some(64),
        max_prefill_tokens: 256,
        ..base()
    };
    let got = run(engine(&chunked, true), std::slice::from_ref(&main));
    compare(c, ("chunked prefill (64)", r), &main, &got, &want);
    let mixed = SchedulerConfig {
        chunked_prefill_size: Some(64),
        enable_mixed_chunk: true,
        ..base()
    };
    let got = run(engine(&mixed, true), std::slice::from_ref(&main));
    compare(c, ("mixed batch (chunks of 64)", r), &main, &got, &want);
    let tight = SchedulerConfig {
        kv_capacity_tokens: 160,
        init_new_token_ratio: 0.05,
        ..base()
    };
    let got = run(engine(&tight, true), std::slice::from_ref(&retract));
    c.add(
        "retraction: the 160-token pool forced one",
        format!("{} retractions", got.retractions),
        got.retractions > 0,
    );
    compare(c, ("retraction", r), &retract, &got, &want);
}
