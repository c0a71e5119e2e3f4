//! Scheduler cost per step (the CPU time the core adds to every forward pass).
//!
//! `cargo bench -p doppel-core --bench scheduler` prints:
//! - decode: schedule + complete of one decode step with 256 running requests;
//! - prefill: schedule + complete of one prefill step admitting 64 requests against a warm radix
//!   tree of about 10k nodes (two tree shapes: typical, and deep chains).
//!
//! Targets (issue 2): under 20 us per decode step, under 100 us per prefill step.

use doppel_core::{
    Plan, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig, StepResult, TokenId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn spec(id: u64, prompt: Vec<TokenId>, max_new: usize) -> RequestSpec {
    let mut sp = SamplingParams::greedy(max_new);
    sp.ignore_eos = true;
    RequestSpec::new(RequestId(id), prompt, sp, id)
}

/// One step: schedule, fake results, complete. Returns whether a step ran.
fn step(
    s: &mut Scheduler,
    plan: &mut Plan,
    res: &mut StepResult,
    events: &mut Vec<doppel_core::Event>,
) -> bool {
    if !s.schedule(plan) {
        return false;
    }
    res.clear();
    res.tokens.extend(
        plan.entries
            .iter()
            .map(|e| (e.seq_len() % 1000) as TokenId + 1),
    );
    s.complete(plan, res, events);
    events.clear();
    true
}

fn bench_decode() {
    let cfg = SchedulerConfig {
        kv_capacity_tokens: 1_000_000,
        context_len: 8192,
        max_running_requests: Some(256),
        ..Default::default()
    };
    let mut s = Scheduler::new(cfg).expect("valid config");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for i in 0..256 {
        let prompt: Vec<TokenId> = (0..512).map(|_| rng.gen_range(1..50_000)).collect();
        s.submit(spec(i, prompt, 3000)).expect("fits");
    }
    let (mut plan, mut res, mut ev) = (Plan::default(), StepResult::default(), Vec::new());
    // Prefill everything.
    while s.num_waiting() > 0 {
        step(&mut s, &mut plan, &mut res, &mut ev);
    }
    for _ in 0..50 {
        step(&mut s, &mut plan, &mut res, &mut ev);
    }
    assert_eq!(plan.entries.len(), 256);
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        step(&mut s, &mut plan, &mut res, &mut ev);
    }
    let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    assert_eq!(plan.entries.len(), 256);
    println!("decode step, 256 running requests: {per:.2} us per step (schedule + complete), target < 20 us");
}

fn bench_prefill(label: &str, cuts: &[usize]) {
    let cfg = SchedulerConfig {
        kv_capacity_tokens: 2_000_000,
        context_len: 8192,
        max_prefill_tokens: 1 << 20,
        chunked_prefill_size: None,
        ..Default::default()
    };
    let mut s = Scheduler::new(cfg).expect("valid config");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // 200 "system prompts" of 64 tokens; requests extend one with a random tail, so the tree
    // has shared prefixes, splits and many leaves.
    let systems: Vec<Vec<TokenId>> = (0..200)
        .map(|_| (0..64).map(|_| rng.gen_range(1..50_000)).collect())
        .collect();
    let make = |id: u64, rng: &mut ChaCha8Rng| {
        let mut p = systems[rng.gen_range(0..systems.len())].clone();
        let cut = cuts[rng.gen_range(0..cuts.len())];
        p.truncate(cut);
        p.extend((0..rng.gen_range(16..64)).map(|_| rng.gen_range(1..50_000)));
        spec(id, p, 1)
    };
    let (mut plan, mut res, mut ev) = (Plan::default(), StepResult::default(), Vec::new());
    let mut id = 0;
    while s.tree().num_nodes() < 10_000 {
        for _ in 0..64 {
            s.submit(make(id, &mut rng)).expect("fits");
            id += 1;
        }
        while step(&mut s, &mut plan, &mut res, &mut ev) {}
    }
    let nodes = s.tree().num_nodes();
    let rounds = 300;
    let (mut sched_t, mut total_t) = (0.0, 0.0);
    for _ in 0..rounds {
        for _ in 0..64 {
            s.submit(make(id, &mut rng)).expect("fits");
            id += 1;
        }
        let t = Instant::now();
        assert!(s.schedule(&mut plan));
        sched_t += t.elapsed().as_secs_f64();
        assert_eq!(plan.entries.len(), 64, "one prefill step admits all 64");
        res.clear();
        res.tokens.extend(plan.entries.iter().map(|_| 7));
        s.complete(&plan, &res, &mut ev);
        total_t += t.elapsed().as_secs_f64();
        ev.clear();
    }
    println!(
        "prefill step admitting 64 requests, warm tree of {nodes} nodes ({label}): {:.2} us schedule, {:.2} us schedule + complete, target < 100 us",
        sched_t / rounds as f64 * 1e6,
        total_t / rounds as f64 * 1e6
    );
}

fn main() {
    // `cargo bench ... -- decode` or `-- prefill` runs one of them.
    let only = std::env::args()
        .skip(1)
        .find(|a| a == "decode" || a == "prefill");
    if only.as_deref() != Some("prefill") {
        bench_decode();
    }
    if only.as_deref() != Some("decode") {
        // System prompts shared whole or at a few section boundaries (a typical tree) ...
        bench_prefill("sections of 16 tokens", &[16, 32, 48, 64]);
        // ... and cut at every length, which turns each system prompt into a deep chain of
        // one-token nodes that every match, insert and lock walks.
        let every: Vec<usize> = (8..64).collect();
        bench_prefill("cut at every length", &every);
    }
}
