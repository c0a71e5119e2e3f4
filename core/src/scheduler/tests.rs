use super::*;
use crate::engine::Engine;
use crate::ids::TokenId;
use crate::plan::ForwardMode;
use crate::request::SamplingParams;
use crate::testing::{run_to_idle, ToyBackend};
use std::collections::BTreeMap;
use std::sync::Arc;

fn cfg(capacity: usize) -> SchedulerConfig {
    SchedulerConfig {
        kv_capacity_tokens: capacity,
        context_len: 4096,
        chunked_prefill_size: None,
        ..Default::default()
    }
}

fn spec(id: u64, prompt: Vec<TokenId>, max_new: usize) -> RequestSpec {
    let mut sp = SamplingParams::greedy(max_new);
    sp.ignore_eos = true;
    RequestSpec::new(RequestId(id), prompt, sp, id)
}

fn prompt(seed: u32, len: usize) -> Vec<TokenId> {
    (0..len as u32)
        .map(|i| (seed * 7919 + i * 31) % 997 + 1)
        .collect()
}

fn finished(events: &[Event]) -> Vec<&FinishInfo> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Finished(f) => Some(f),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_run_to_completion_and_memory_returns() {
    let mut s = Scheduler::new(cfg(10_000)).unwrap();
    for i in 0..5 {
        s.submit(spec(i, prompt(i as u32, 20 + i as usize), 7))
            .unwrap();
    }
    let mut e = Engine::new(s, ToyBackend::new(), false);
    let ev = run_to_idle(&mut e, 0, 1000).unwrap();
    let f = finished(&ev);
    assert_eq!(f.len(), 5);
    assert!(f
        .iter()
        .all(|f| f.output_tokens == 7 && f.reason == FinishReason::Length));
    e.scheduler.check_invariants().unwrap();
    let m = e.scheduler.memory();
    assert_eq!(m.free + m.evictable, m.capacity);
    assert_eq!(m.protected, 0);
}

#[test]
fn second_identical_prompt_hits_the_cache() {
    let mut s = Scheduler::new(cfg(10_000)).unwrap();
    let p = prompt(1, 64);
    s.submit(spec(1, p.clone(), 4)).unwrap();
    let mut e = Engine::new(s, ToyBackend::new(), false);
    run_to_idle(&mut e, 0, 100).unwrap();
    e.scheduler.submit(spec(2, p, 4)).unwrap();
    let ev = run_to_idle(&mut e, 0, 100).unwrap();
    // All but the last prompt token come from the cache.
    assert_eq!(finished(&ev)[0].cached_tokens, 63);
    e.scheduler.check_invariants().unwrap();
}

/// Run `plan` (just formed by `s`) on `b` and apply its result, checking the invariants after.
fn run_step(s: &mut Scheduler, b: &mut ToyBackend, plan: &Plan, events: &mut Vec<Event>) {
    let mut r = StepResult::default();
    crate::Backend::launch(b, plan, 0).unwrap();
    crate::Backend::collect(b, plan, &mut r).unwrap();
    s.complete(plan, &r, events);
    s.check_invariants().unwrap();
}

#[test]
fn chunked_prefill_splits_long_prompts() {
    let mut c = cfg(10_000);
    c.chunked_prefill_size = Some(32);
    let mut s = Scheduler::new(c).unwrap();
    s.submit(spec(1, prompt(3, 100), 3)).unwrap();
    let mut plan = Plan::default();
    let mut lens = Vec::new();
    let mut b = ToyBackend::new();
    let mut events = Vec::new();
    while s.schedule(&mut plan) {
        if plan.mode == ForwardMode::Decode {
            break;
        }
        lens.push((
            plan.entries[0].prefix_len,
            plan.entries[0].extend_len,
            plan.entries[0].need_logits,
        ));
        run_step(&mut s, &mut b, &plan, &mut events);
    }
    assert_eq!(
        lens,
        vec![
            (0, 32, false),
            (32, 32, false),
            (64, 32, false),
            (96, 4, true)
        ]
    );
}

#[test]
fn retraction_keeps_generated_tokens_and_everything_finishes() {
    // 8 requests of 40 + 60 tokens cannot all decode in 400 slots.
    let mut c = cfg(400);
    // An optimistic ratio admits more than fits, so decode must retract.
    c.init_new_token_ratio = 0.05;
    let mut s = Scheduler::new(c).unwrap();
    for i in 0..8 {
        s.submit(spec(i, prompt(i as u32, 40), 60)).unwrap();
    }
    let mut e = Engine::new(s, ToyBackend::new(), false);
    let ev = run_to_idle(&mut e, 0, 10_000).unwrap();
    assert!(
        e.scheduler.counters().retractions > 0,
        "the pool is small enough to force retraction"
    );
    let f = finished(&ev);
    assert_eq!(f.len(), 8);
    assert!(f.iter().all(|f| f.output_tokens == 60));
    // Tokens equal the reference sequence whatever the retractions did.
    let b = ToyBackend::new();
    for i in 0..8u64 {
        let toks: Vec<TokenId> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Token { id, token, .. } if id.0 == i => Some(*token),
                _ => None,
            })
            .collect();
        let mut last = *prompt(i as u32, 40).last().unwrap();
        for (k, &t) in toks.iter().enumerate() {
            let want = b.next_token(RequestId(i), last, 39 + k);
            assert_eq!(t, want, "request {i} token {k}");
            last = t;
        }
    }
    e.scheduler.check_invariants().unwrap();
}

#[test]
fn impossible_requests_are_refused_at_submission() {
    let mut s = Scheduler::new(cfg(1000)).unwrap();
    assert!(matches!(
        s.submit(spec(1, vec![], 4)),
        Err(SubmitError::EmptyPrompt(_))
    ));
    assert!(matches!(
        s.submit(spec(2, prompt(1, 5000), 4)),
        Err(SubmitError::PromptTooLong { .. })
    ));
    assert!(matches!(
        s.submit(spec(3, prompt(1, 900), 200)),
        Err(SubmitError::ExceedsPool { .. })
    ));
    assert!(matches!(
        s.submit(spec(4, prompt(1, 9), 0)),
        Err(SubmitError::ZeroMaxNewTokens(_))
    ));
    s.submit(spec(5, prompt(1, 9), 4)).unwrap();
    assert!(matches!(
        s.submit(spec(5, prompt(1, 9), 4)),
        Err(SubmitError::DuplicateId(_))
    ));
    let mut s = Scheduler::new(cfg(100_000)).unwrap();
    let a = s.submit(spec(6, prompt(2, 4000), 500)).unwrap();
    assert_eq!((a.max_new_tokens, a.clipped), (96, true));
}

#[test]
fn bad_configurations_are_rejected() {
    let mut c = cfg(1000);
    c.page_size = 0;
    assert_eq!(
        Scheduler::new(c).err(),
        Some(ConfigError::Zero { field: "page_size" })
    );
    let mut c = cfg(1000);
    c.page_size = 16;
    c.chunked_prefill_size = Some(8);
    assert!(matches!(
        Scheduler::new(c).err(),
        Some(ConfigError::ChunkBelowPage { .. })
    ));
    let mut c = cfg(20);
    c.page_size = 16;
    assert!(matches!(
        Scheduler::new(c).err(),
        Some(ConfigError::PoolTooSmall { .. })
    ));
}

#[test]
fn abort_frees_everything_and_skips_inflight_results() {
    let mut s = Scheduler::new(cfg(10_000)).unwrap();
    s.submit(spec(1, prompt(1, 30), 50)).unwrap();
    s.submit(spec(2, prompt(2, 30), 50)).unwrap();
    let mut e = Engine::new(s, ToyBackend::new(), true);
    let mut ev = Vec::new();
    for t in 0..5 {
        e.iterate(t, &mut ev).unwrap();
    }
    assert!(e.scheduler.abort(
        RequestId(1),
        FinishReason::Abort("client gone".into()),
        10,
        &mut ev
    ));
    assert!(!e.scheduler.abort(
        RequestId(1),
        FinishReason::Abort("again".into()),
        10,
        &mut ev
    ));
    ev.extend(run_to_idle(&mut e, 10, 1000).unwrap());
    let f = finished(&ev);
    assert_eq!(f.len(), 2);
    assert_eq!(f[1].output_tokens, 50);
    e.scheduler.check_invariants().unwrap();
}

#[test]
fn stop_token_ends_a_request_after_min_new_tokens() {
    let mut c = cfg(10_000);
    c.eos_token_ids = vec![0];
    let mut s = Scheduler::new(c).unwrap();
    let mut sp = SamplingParams::greedy(50);
    sp.min_new_tokens = 0;
    s.submit(RequestSpec::new(RequestId(3), prompt(1, 10), sp.clone(), 0))
        .unwrap();
    let mut b = ToyBackend::new();
    b.eos = 0;
    b.eos_every = 16; // (3 + pos) % 16 == 0 first at pos 13: output positions 9..=13, the 5th token
    let mut e = Engine::new(s, b, false);
    let ev = run_to_idle(&mut e, 0, 1000).unwrap();
    let f = finished(&ev);
    assert_eq!(f[0].reason, FinishReason::StopToken(0));
    assert_eq!(f[0].output_tokens, 5);
}

#[test]
fn overlap_and_plain_orders_give_the_same_tokens() {
    let run = |overlap: bool| {
        let mut s = Scheduler::new(cfg(600)).unwrap();
        for i in 0..6 {
            s.submit(spec(i, prompt(i as u32 % 2, 50), 30)).unwrap();
        }
        let mut e = Engine::new(s, ToyBackend::new(), overlap);
        let ev = run_to_idle(&mut e, 0, 10_000).unwrap();
        e.scheduler.check_invariants().unwrap();
        let mut toks: Vec<(u64, usize, TokenId)> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Token {
                    id, token, index, ..
                } => Some((id.0, *index, *token)),
                _ => None,
            })
            .collect();
        toks.sort();
        toks
    };
    assert_eq!(run(false), run(true));
}

fn first_plan(s: &mut Scheduler) -> Plan {
    let mut p = Plan::default();
    assert!(s.schedule(&mut p));
    p
}

#[test]
fn admission_stops_when_the_total_budget_runs_out() {
    // Each request is charged prompt 100 + max_new 100 against 1000 free tokens: the fifth's 200
    // is not below the remaining 200.
    let mut s = Scheduler::new(cfg(1000)).unwrap();
    for i in 0..10 {
        s.submit(spec(i, prompt(i as u32, 100), 100)).unwrap();
    }
    let p = first_plan(&mut s);
    assert_eq!(p.entries.len(), 4);
    assert_eq!(p.stats.new_tokens, 400);
    assert_eq!(p.stats.queue_reqs, 6);
}

#[test]
fn admission_stops_when_the_prefill_token_budget_runs_out() {
    let mut c = cfg(100_000);
    c.max_prefill_tokens = 250;
    let mut s = Scheduler::new(c).unwrap();
    for i in 0..10 {
        s.submit(spec(i, prompt(i as u32, 100), 10)).unwrap();
    }
    assert_eq!(first_plan(&mut s).entries.len(), 2);
    // The first request may exceed the budget on its own.
    let mut c = cfg(100_000);
    c.max_prefill_tokens = 50;
    let mut s = Scheduler::new(c).unwrap();
    s.submit(spec(1, prompt(1, 100), 10)).unwrap();
    s.submit(spec(2, prompt(2, 100), 10)).unwrap();
    assert_eq!(first_plan(&mut s).entries.len(), 1);
}

#[test]
fn running_requests_reserve_their_remaining_output_at_new_token_ratio() {
    // One running request with 1000 tokens to go reserves 1000 * 0.7 = 700 of 1500 free.
    let mut s = Scheduler::new(cfg(1600)).unwrap();
    s.submit(spec(1, prompt(1, 100), 1000)).unwrap();
    let p = first_plan(&mut s);
    let mut ev = Vec::new();
    s.complete(
        &p,
        &StepResult {
            tokens: vec![5],
            done_at: 1,
            ..Default::default()
        },
        &mut ev,
    );
    // available 1500 (+0 evictable: prompt cached but locked): rem_total = 1500 - 999*0.7 = 800.7.
    // A new request charged 100 + 700 = 800 fits; 100 + 701 does not.
    s.submit(spec(2, prompt(2, 100), 700)).unwrap();
    assert_eq!(first_plan(&mut s).mode, ForwardMode::Extend);
    let mut s2 = Scheduler::new(cfg(1600)).unwrap();
    s2.submit(spec(1, prompt(1, 100), 1000)).unwrap();
    let p = first_plan(&mut s2);
    s2.complete(
        &p,
        &StepResult {
            tokens: vec![5],
            done_at: 1,
            ..Default::default()
        },
        &mut ev,
    );
    s2.submit(spec(2, prompt(2, 100), 701)).unwrap();
    assert_eq!(first_plan(&mut s2).mode, ForwardMode::Decode);
}

#[test]
fn new_token_ratio_decays_per_decode_step_to_its_floor_and_resets_when_idle() {
    let c = cfg(100_000);
    let (init, min, decay) = (c.init_ratio(), c.min_ratio(), c.ratio_decay());
    assert!((init - 0.7).abs() < 1e-12 && (min - 0.098).abs() < 1e-12);
    assert!((decay - (0.7 - 0.098) / 600.0).abs() < 1e-15);
    let mut s = Scheduler::new(c).unwrap();
    s.submit(spec(1, prompt(1, 10), 700)).unwrap();
    let mut e = Engine::new(s, ToyBackend::new(), false);
    let mut ev = Vec::new();
    for t in 0..11 {
        e.iterate(t, &mut ev).unwrap();
    }
    // One prefill and ten decode steps.
    assert!((e.scheduler.new_token_ratio() - (init - 10.0 * decay)).abs() < 1e-9);
    run_to_idle(&mut e, 100, 10_000).unwrap();
    let mut p = Plan::default();
    assert!(!e.scheduler.schedule(&mut p));
    assert_eq!(e.scheduler.new_token_ratio(), init);
}

#[test]
fn retraction_picks_fewest_outputs_then_longest_prompt_and_resets_the_ratio() {
    let mut c = cfg(300);
    c.init_new_token_ratio = 0.01;
    let mut s = Scheduler::new(c).unwrap();
    let prompts = [(1u64, 50usize), (2, 60), (3, 40), (4, 60)];
    for &(id, len) in &prompts {
        s.submit(spec(id, prompt(id as u32, len), 120)).unwrap();
    }
    let plen = |id: u64| prompts.iter().find(|p| p.0 == id).unwrap().1;
    let mut b = ToyBackend::new();
    let mut ev = Vec::new();
    let mut outputs: BTreeMap<u64, usize> = BTreeMap::new();
    let mut prev: Vec<u64> = Vec::new();
    for _ in 0..2000 {
        let mut p = Plan::default();
        if !s.schedule(&mut p) {
            break;
        }
        let ids: Vec<u64> = p.entries.iter().map(|e| e.id.0).collect();
        if p.stats.retracted > 0 {
            let mut victims: Vec<u64> = prev.clone();
            victims.sort_by_key(|&i| {
                (
                    outputs.get(&i).copied().unwrap_or(0),
                    std::cmp::Reverse(plen(i)),
                    std::cmp::Reverse(i),
                )
            });
            let gone: Vec<u64> = prev.iter().copied().filter(|i| !ids.contains(i)).collect();
            let mut want_gone = victims[..gone.len()].to_vec();
            want_gone.sort();
            assert_eq!(
                gone, want_gone,
                "victims: fewest outputs first, ties to the longest prompt"
            );
            let gen: usize = ids.iter().map(|i| outputs[i]).sum();
            let want = ((gen + 20 * ids.len()) as f64 / (120 * ids.len() + 1) as f64).min(1.0);
            assert!(
                (s.new_token_ratio() - want).abs() < 1e-9,
                "{} vs {want}",
                s.new_token_ratio()
            );
            return;
        }
        if p.mode == ForwardMode::Decode {
            prev = ids;
        }
        let mut r = StepResult::default();
        crate::Backend::launch(&mut b, &p, 0).unwrap();
        crate::Backend::collect(&mut b, &p, &mut r).unwrap();
        s.complete(&p, &r, &mut ev);
        for e in ev.drain(..) {
            if let Event::Token { id, .. } = e {
                *outputs.entry(id.0).or_default() += 1;
            }
        }
    }
    panic!("no retraction happened");
}

#[test]
fn plan_stats_carry_the_forward_mode() {
    let mut s = Scheduler::new(cfg(10_000)).unwrap();
    s.submit(spec(1, prompt(1, 10), 3)).unwrap();
    let mut e = Engine::new(s, ToyBackend::new(), false);
    let mut ev = Vec::new();
    let a = e.iterate(0, &mut ev).unwrap().launched.unwrap();
    let b = e.iterate(1, &mut ev).unwrap().launched.unwrap();
    assert_eq!((a.mode, b.mode), (ForwardMode::Extend, ForwardMode::Decode));
}

#[test]
fn a_request_is_waiting_until_its_first_step_is_formed() {
    let mut s = Scheduler::new(cfg(10_000)).unwrap();
    s.submit(spec(1, prompt(1, 30), 3)).unwrap();
    assert!(s.is_waiting(RequestId(1)));
    assert!(!s.is_waiting(RequestId(2)), "an unknown id is not waiting");
    let mut plan = Plan::default();
    assert!(s.schedule(&mut plan));
    assert!(!s.is_waiting(RequestId(1)) && s.is_live(RequestId(1)));
}

/// The prompt logprob events of request `id`: (first position, values), in order, and whether
/// they all came before its first token.
fn prompt_events(events: &[Event], id: u64) -> (Vec<(usize, Vec<f32>)>, bool) {
    let mut out = Vec::new();
    let mut before_tokens = true;
    let mut seen_token = false;
    for e in events {
        match e {
            Event::PromptLogprobs {
                id: i,
                first,
                logprobs,
            } if i.0 == id => {
                before_tokens &= !seen_token;
                out.push((*first, logprobs.iter().map(|l| l.logprob).collect()));
            }
            Event::Token { id: i, .. } if i.0 == id => seen_token = true,
            _ => {}
        }
    }
    (out, before_tokens)
}

#[test]
fn prompt_logprobs_cover_each_position_once_across_chunks_and_cap_the_cache_match() {
    let mut c = cfg(10_000);
    c.chunked_prefill_size = Some(32);
    let p = prompt(5, 100);
    let mut s = Scheduler::new(c).unwrap();
    s.submit(spec(1, p.clone(), 3)).unwrap();
    let mut e = Engine::new(s, ToyBackend::new(), true);
    run_to_idle(&mut e, 0, 100).unwrap();
    for (id, from) in [(2u64, 0usize), (3, 40), (4, 99)] {
        let mut sp = spec(id, p.clone(), 3);
        Arc::make_mut(&mut sp.sampling).prompt_logprobs_from = Some(from);
        e.scheduler.submit(sp).unwrap();
        let ev = run_to_idle(&mut e, 0, 100).unwrap();
        // The cache serves at most `from` tokens: row `from` must be computed.
        assert_eq!(finished(&ev)[0].cached_tokens, from.min(99));
        let (chunks, before) = prompt_events(&ev, id);
        assert!(before, "prompt logprobs come before the first token");
        let mut next = from + 1;
        let mut values = Vec::new();
        for (first, lps) in &chunks {
            assert_eq!(*first, next, "positions continue across chunks");
            next += lps.len();
            values.extend(lps.iter().copied());
        }
        assert_eq!(next, 100, "every prompt token after `from` is scored once");
        let want: Vec<f32> = (from + 1..100)
            .map(|q| ToyBackend::prompt_logprob(q - 1, p[q]).logprob)
            .collect();
        assert_eq!(values, want);
        if from < 68 {
            assert!(chunks.len() > 1, "a long remainder spans several chunks");
        }
    }
    e.scheduler.check_invariants().unwrap();
}

/// Mixing with a 40-token step budget: 4 requests decoding; then, per step, (mode, decode rows,
/// extend lengths) of the steps that `submit` requests join.
fn thin_mixed_steps(late: &[usize]) -> Vec<(ForwardMode, usize, Vec<usize>)> {
    let mut c = cfg(10_000);
    c.chunked_prefill_size = Some(8192);
    c.enable_mixed_chunk = true;
    c.mixed_step_tokens = Some(40);
    let mut s = Scheduler::new(c).unwrap();
    for i in 0..4 {
        s.submit(spec(i, prompt(i as u32, 10), 50)).unwrap();
    }
    let (mut b, mut events, mut plan) = (ToyBackend::new(), Vec::new(), Plan::default());
    let mut step = |s: &mut Scheduler, plan: &mut Plan| {
        assert!(s.schedule(plan));
        run_step(s, &mut b, plan, &mut events);
        let decode = plan.entries.iter().filter(|e| e.is_decode).count();
        let extend = plan.entries.iter().filter(|e| !e.is_decode);
        (plan.mode, decode, extend.map(|e| e.extend_len).collect())
    };
    step(&mut s, &mut plan); // the four prompts
    step(&mut s, &mut plan); // a decode step
    for (i, &len) in late.iter().enumerate() {
        s.submit(spec(10 + i as u64, prompt(10 + i as u32, len), 5))
            .unwrap();
    }
    let mut out = Vec::new();
    loop {
        let st = step(&mut s, &mut plan);
        if st.0 == ForwardMode::Decode {
            return out;
        }
        out.push(st);
    }
}

#[test]
fn mixed_step_tokens_spread_a_lone_prompt_over_decode_steps() {
    use ForwardMode::Mixed;
    // 36 prompt tokens ride each step with the 4 decode rows: 36 + 36 + 28.
    assert_eq!(
        thin_mixed_steps(&[100]),
        vec![
            (Mixed, 4, vec![36]),
            (Mixed, 4, vec![36]),
            (Mixed, 4, vec![28])
        ]
    );
}

#[test]
fn mixed_step_tokens_give_way_to_the_chunk_size_when_a_queue_builds() {
    // Two waiting: SGLang's budget (8192 less the decode rows) takes both at once.
    assert_eq!(
        thin_mixed_steps(&[100, 100]),
        vec![(ForwardMode::Mixed, 4, vec![100, 100])]
    );
}

#[test]
fn mixed_step_tokens_need_mixing_and_a_positive_budget() {
    let mut c = cfg(1000);
    c.mixed_step_tokens = Some(64);
    assert_eq!(
        Scheduler::new(c.clone()).err(),
        Some(ConfigError::MixedStepWithoutMixing)
    );
    c.enable_mixed_chunk = true;
    c.mixed_step_tokens = Some(0);
    assert_eq!(
        Scheduler::new(c).err(),
        Some(ConfigError::Zero {
            field: "mixed_step_tokens"
        })
    );
}
