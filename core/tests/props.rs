//! Property tests of the core: pools, radix cache and scheduler over random workloads.
//! Each test's name states the invariant it checks.

use doppel_core::pool::KvAllocator;
use doppel_core::radix::RadixCache;
use doppel_core::testing::ToyBackend;
use doppel_core::{
    Engine, Event, EvictionPolicy, FinishReason, KvSlot, Plan, Policy, RequestId, RequestSpec,
    SamplingParams, Scheduler, SchedulerConfig, TokenId,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Workload {
    cfg: SchedulerConfig,
    overlap: bool,
    /// (iteration at which it arrives, spec)
    reqs: Vec<(usize, RequestSpec)>,
}

fn arb_cfg() -> impl Strategy<Value = (SchedulerConfig, bool)> {
    (
        prop::sample::select(vec![1usize, 16]),
        150usize..1500,
        prop::sample::select(Policy::ALL.to_vec()),
        prop::sample::select(EvictionPolicy::ALL.to_vec()),
        prop::option::of(prop::sample::select(vec![16usize, 32, 64, 256])),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![0.02f64, 0.05, 0.3, 0.7]),
        any::<u64>(),
        prop::option::of(prop::sample::select(vec![24usize, 48, 96])),
    )
        .prop_map(
            |(page, cap, policy, eviction, chunk, overlap, mixed, disable, ratio, seed, step)| {
                let cfg = SchedulerConfig {
                    kv_capacity_tokens: cap,
                    page_size: page,
                    context_len: 1024,
                    max_running_requests: None,
                    req_pool_size: Some(64),
                    max_prefill_tokens: 512,
                    chunked_prefill_size: chunk.map(|c| c.max(page)),
                    policy,
                    eviction,
                    disable_radix_cache: disable,
                    enable_mixed_chunk: mixed,
                    mixed_step_tokens: step.filter(|_| mixed),
                    init_new_token_ratio: ratio,
                    eos_token_ids: vec![0],
                    seed,
                    ..Default::default()
                };
                (cfg, overlap)
            },
        )
}

fn arb_workload() -> impl Strategy<Value = Workload> {
    (
        arb_cfg(),
        prop::collection::vec(
            (
                0usize..40,
                0usize..4,
                1usize..120,
                1usize..80,
                any::<bool>(),
                0u8..3,
                -2i64..3,
            ),
            1..24,
        ),
    )
        .prop_map(|((cfg, overlap), raw)| {
            // A few shared system prompts make prefix sharing, splits and dfs-weight trees happen.
            let groups: Vec<Vec<TokenId>> = (0..4u32)
                .map(|g| (0..48).map(|i| 1 + (g * 131 + i * 7) % 500).collect())
                .collect();
            let reqs = raw
                .into_iter()
                .enumerate()
                .map(|(i, (at, group, len, max_new, ignore_eos, ns, prio))| {
                    let mut prompt: Vec<TokenId> = if group < 3 {
                        groups[group][..len.min(48)].to_vec()
                    } else {
                        Vec::new()
                    };
                    prompt.extend((0..len).map(|k| 1 + ((i * 37 + k * 11) % 700) as TokenId));
                    let mut sp = SamplingParams::greedy(max_new);
                    sp.ignore_eos = ignore_eos;
                    let mut spec = RequestSpec::new(RequestId(i as u64), prompt, sp, at as u64);
                    spec.namespace = (ns == 2).then_some(9);
                    spec.priority = prio;
                    (at, spec)
                })
                .collect();
            Workload { cfg, overlap, reqs }
        })
}

struct Outcome {
    finished: BTreeMap<u64, (FinishReason, usize)>,
    tokens: BTreeMap<u64, Vec<TokenId>>,
    refused: Vec<u64>,
    plans: Vec<String>,
}

/// Run a workload to completion, checking the memory invariants after every iteration.
fn run(w: &Workload) -> Result<Outcome, TestCaseError> {
    let sched = Scheduler::new(w.cfg.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut engine = Engine::new(sched, toy_backend(), w.overlap);
    let mut out = Outcome {
        finished: BTreeMap::new(),
        tokens: BTreeMap::new(),
        refused: Vec::new(),
        plans: Vec::new(),
    };
    let mut events = Vec::new();
    let mut now = 0;
    let last_arrival = w.reqs.iter().map(|r| r.0).max().unwrap_or(0);
    for iter in 0..20_000usize {
        for (at, spec) in &w.reqs {
            if *at == iter && engine.scheduler.submit(spec.clone()).is_err() {
                out.refused.push(spec.id.0);
            }
        }
        let it = engine
            .iterate(now, &mut events)
            .map_err(TestCaseError::fail)?;
        if let Some(t) = it.completed_at {
            now = t;
        }
        if let Some(s) = it.launched {
            out.plans.push(format!("{s:?}"));
        }
        engine
            .scheduler
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("iteration {iter}: {e}")))?;
        if iter > last_arrival && engine.is_idle() {
            break;
        }
    }
    prop_assert!(engine.is_idle(), "a request waited forever");
    if std::env::var_os("DOPPEL_PROP_STATS").is_some() {
        eprintln!("{:?}", engine.scheduler.counters());
    }
    for e in events {
        match e {
            Event::Token {
                id, token, index, ..
            } => {
                let v = out.tokens.entry(id.0).or_default();
                prop_assert_eq!(index, v.len(), "token indices are dense");
                v.push(token);
            }
            Event::Finished(f) => {
                prop_assert!(
                    out.finished
                        .insert(f.id.0, (f.reason, f.output_tokens))
                        .is_none(),
                    "finished twice"
                );
            }
            // These workloads ask for no prompt logprobs.
            Event::PromptLogprobs { .. } => {}
        }
    }
    Ok(out)
}

/// The token sequence the toy backend gives a request when nothing interferes.
fn reference_tokens(spec: &RequestSpec, n: usize) -> Vec<TokenId> {
    let b = toy_backend();
    let mut last = *spec.prompt.last().expect("non-empty");
    (0..n)
        .map(|k| {
            last = b.next_token(spec.id, last, spec.prompt.len() - 1 + k);
            last
        })
        .collect()
}

/// The backend every property run uses: EOS (token 0) now and then, so stop tokens are exercised.
fn toy_backend() -> ToyBackend {
    let mut b = ToyBackend::new();
    b.eos = 0;
    b.eos_every = 23;
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn conservation_holds_after_every_step_and_every_request_finishes_exactly_once(w in arb_workload()) {
        let out = run(&w)?;
        for (_, spec) in &w.reqs {
            let id = spec.id.0;
            if out.refused.contains(&id) {
                prop_assert!(!out.finished.contains_key(&id));
                continue;
            }
            let (reason, n) = out.finished.get(&id).cloned().ok_or_else(|| TestCaseError::fail(format!("request {id} never finished")))?;
            prop_assert!(n >= 1 && n <= spec.sampling.max_new_tokens, "request {} output {}", id, n);
            prop_assert_eq!(out.tokens.get(&id).map_or(0, |t| t.len()), n);
            if matches!(reason, FinishReason::Abort(_)) {
                continue;
            }
            if reason == FinishReason::Length {
                prop_assert!(n == spec.sampling.max_new_tokens.min(1024 - spec.prompt.len()));
            }
        }
    }

    #[test]
    fn retracted_and_chunked_requests_lose_no_generated_token(w in arb_workload()) {
        let out = run(&w)?;
        for (_, spec) in &w.reqs {
            if let Some(toks) = out.tokens.get(&spec.id.0) {
                prop_assert_eq!(toks, &reference_tokens(spec, toks.len()), "request {}", spec.id.0);
            }
        }
    }

    #[test]
    fn same_inputs_and_seed_give_the_same_sequence_of_plans(w in arb_workload()) {
        let a = run(&w)?;
        let b = run(&w)?;
        prop_assert_eq!(a.plans, b.plans);
        prop_assert_eq!(a.tokens, b.tokens);
    }

    #[test]
    fn match_prefix_returns_the_longest_cached_page_aligned_prefix(
        page in prop::sample::select(vec![1usize, 2, 4]),
        seqs in prop::collection::vec(prop::collection::vec(0u32..4, 1..24), 1..20),
        queries in prop::collection::vec(prop::collection::vec(0u32..4, 0..24), 1..20),
    ) {
        let mut t = RadixCache::new(page, EvictionPolicy::Lru);
        let mut inserted: Vec<Vec<u32>> = Vec::new();
        let mut next = 1u32;
        for s in &seqs {
            let len = s.len() / page * page;
            let vals: Vec<KvSlot> = (0..len as u32).map(|i| KvSlot(next + i)).collect();
            next += len as u32;
            t.insert(None, &s[..len], &vals, 0);
            inserted.push(s[..len].to_vec());
            t.check().map_err(TestCaseError::fail)?;
        }
        for q in &queries {
            let want = inserted
                .iter()
                .map(|s| s.iter().zip(q).take_while(|(a, b)| a == b).count() / page * page)
                .max()
                .unwrap_or(0);
            let mut slots = Vec::new();
            let m = t.match_prefix(None, q, Some(&mut slots));
            prop_assert_eq!(m.len, want);
            prop_assert_eq!(slots.len(), want);
            t.check().map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn locked_nodes_are_never_evicted_and_eviction_frees_exactly_what_it_reports(
        seqs in prop::collection::vec(prop::collection::vec(0u32..3, 1..16), 1..16),
        lock_mask in prop::collection::vec(any::<bool>(), 16),
        policy in prop::sample::select(EvictionPolicy::ALL.to_vec()),
        evict_sizes in prop::collection::vec(1usize..20, 1..8),
    ) {
        let mut alloc = KvAllocator::new(1000, 1);
        let mut t = RadixCache::new(1, policy);
        let mut locked = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let mut slots = Vec::new();
            prop_assert!(alloc.alloc_extend(0, None, s.len(), &mut slots));
            let cached = t.insert(None, s, &slots, i as i64);
            alloc.free(&slots[..cached]);
            if lock_mask[i] {
                let m = t.match_prefix(None, s, None);
                t.inc_lock_ref(m.node);
                locked.push(s.clone());
            }
        }
        for n in evict_sizes {
            let before = alloc.available_size();
            let ev_before = t.evictable_size();
            let freed = t.evict(n, &mut alloc);
            prop_assert_eq!(alloc.available_size() - before, freed);
            prop_assert_eq!(ev_before - t.evictable_size(), freed);
            prop_assert!(freed >= n.min(ev_before));
            t.check().map_err(TestCaseError::fail)?;
            for s in &locked {
                prop_assert_eq!(t.match_prefix(None, s, None).len, s.len(), "a locked prefix was evicted");
            }
        }
        prop_assert_eq!(alloc.available_size() + t.total_size(), 1000);
    }
}

#[test]
fn plan_is_self_contained_for_an_executor_mirroring_the_table() {
    // An executor that only applies table_writes and out_slots sees exactly the core's rows, also
    // after duplicates computed in the same batch are folded into the cache (rows rewritten).
    for overlap in [false, true] {
        let cfg = SchedulerConfig {
            kv_capacity_tokens: 700,
            context_len: 512,
            chunked_prefill_size: Some(32),
            req_pool_size: Some(16),
            ..Default::default()
        };
        let mut s = Scheduler::new(cfg).unwrap();
        let shared: Vec<TokenId> = (1..60).collect();
        for i in 0..8u64 {
            let mut p = shared.clone();
            p.extend((0..(i % 3) as u32 * 7).map(|k| 100 + k));
            s.submit(RequestSpec::new(
                RequestId(i),
                p,
                SamplingParams::greedy(40),
                0,
            ))
            .unwrap();
        }
        let mut backend = ToyBackend::new();
        let mut mirror: Vec<Vec<KvSlot>> = vec![Vec::new(); 16];
        let (mut events, mut inflight): (Vec<Event>, Option<Plan>) = (Vec::new(), None);
        let mut rewrites = 0;
        for _ in 0..5000 {
            let mut plan = Plan::default();
            let formed = s.schedule(&mut plan);
            if formed {
                rewrites += plan.table_writes.iter().filter(|w| w.start > 0).count();
                apply_plan(&mut mirror, &plan);
                for e in &plan.entries {
                    assert_eq!(
                        &mirror[e.row.index()][..e.seq_len()],
                        &s.table_row(e.row)[..e.seq_len()]
                    );
                }
                doppel_core::Backend::launch(&mut backend, &plan, 0).unwrap();
            }
            let done = if overlap {
                std::mem::replace(&mut inflight, formed.then_some(plan))
            } else {
                formed.then_some(plan)
            };
            if let Some(p) = done {
                let mut r = doppel_core::StepResult::default();
                doppel_core::Backend::collect(&mut backend, &p, &mut r).unwrap();
                s.complete(&p, &r, &mut events);
            }
            if s.is_idle() && inflight.is_none() {
                break;
            }
        }
        assert!(s.is_idle());
        assert!(
            rewrites > 0,
            "the workload folds duplicates, so rows get rewritten"
        );
        s.check_invariants().unwrap();
    }
}

fn apply_plan(mirror: &mut [Vec<KvSlot>], p: &Plan) {
    for w in &p.table_writes {
        let row = &mut mirror[w.row.index()];
        if row.len() < w.start + w.len {
            row.resize(w.start + w.len, KvSlot(0));
        }
        row[w.start..w.start + w.len].copy_from_slice(p.write_values(w));
    }
    for e in &p.entries {
        let row = &mut mirror[e.row.index()];
        if row.len() < e.seq_len() {
            row.resize(e.seq_len(), KvSlot(0));
        }
        row[e.positions()].copy_from_slice(p.entry_slots(e));
    }
}
