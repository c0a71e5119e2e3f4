//! `doppel sim plan`: the chosen setup meets the targets and no cheaper one does, the output
//! does not depend on the thread count, and the routers place requests as sglang-router does.

use doppel_sim::plan::{self, slo, Candidate, Space};
use doppel_sim::router::Router;
use doppel_sim::Trace;

fn trace(workload: &str, arrival: &str) -> Trace {
    let text = format!(
        "name: t\nprofile: a100-80g/qwen3-0.6b/sglang\nseed: 3\nengine: {{mem_fraction_static: 0.85}}\nworkload: {workload}\narrival: {arrival}\n"
    );
    Trace::parse(&text, "t.yaml").unwrap()
}

fn space(max_replicas: usize) -> Space {
    Space {
        profiles: vec!["a100-80g/qwen3-0.6b/sglang".into()],
        max_replicas,
        tps: vec![1],
        chunks: vec![None, Some(2048)],
        policies: vec!["fcfs".into(), "lpm".into()],
        routers: Router::ALL.to_vec(),
    }
}

#[test]
fn the_chosen_setup_is_the_cheapest_that_meets_every_target_and_output_is_thread_independent() {
    let t = trace(
        "{kind: random, num_requests: 300, input_len: 1024, output_len: 128}",
        "{pattern: poisson, rate: 60}",
    );
    let targets = slo::parse("ttft_p99<300ms,itl_p99<40ms").unwrap();
    let r = plan::plan(&t, "t.yaml", &space(4), &targets);
    // 4 settings x (1 + 3 x 2 routers) replica/router pairs.
    assert_eq!(r.runs.len(), 4 * 7);
    let chosen = &r.runs[r.chosen.expect("some setup meets the targets")];
    assert!(chosen.meets());
    for (v, target) in chosen.values.iter().zip(&targets) {
        assert!(*v < target.limit_ms);
    }
    let cheapest = chosen.candidate.gpus();
    assert!(r
        .runs
        .iter()
        .all(|e| !e.meets() || e.candidate.gpus() >= cheapest));
    // One replica at 60 req/s of up to 1024-token prompts misses a 300 ms TTFT p99.
    assert!(cheapest > 1, "{}", plan::format(&r));
    // The frontier's runs are not dominated.
    for &i in &r.frontier {
        let a = &r.runs[i];
        assert!(!r.runs.iter().any(|b| b.error.is_none()
            && b.candidate.gpus() < a.candidate.gpus()
            && b.worst_ratio < a.worst_ratio));
    }
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let r1 = one.install(|| plan::plan(&t, "t.yaml", &space(4), &targets));
    assert_eq!(plan::to_json(&r), plan::to_json(&r1));
    assert_eq!(plan::format(&r), plan::format(&r1));
    let svg = plan::to_svg(&r);
    assert!(
        svg.starts_with("<svg") && svg.contains("limit 300.0 ms"),
        "{svg}"
    );
}

#[test]
fn cache_aware_routing_keeps_shared_prefixes_together_where_round_robin_spreads_them() {
    let t = trace(
        "{kind: shared_prefix, num_groups: 8, prompts_per_group: 32, system_prompt_len: 2048, question_len: 64, output_len: 32}",
        "{pattern: poisson, rate: 40}",
    );
    let run = |router| {
        let c = Candidate {
            profile: "a100-80g/qwen3-0.6b/sglang".into(),
            replicas: 4,
            tp: 1,
            chunk: None,
            policy: "lpm".into(),
            router,
        };
        plan::evaluate(&t, "t.yaml", &c).unwrap()
    };
    let (rr, ca) = (run(Router::RoundRobin), run(Router::CacheAware));
    assert_eq!((rr.completed, ca.completed), (256, 256));
    // Round robin prefills each system prompt on every replica: 8 x 4 misses; cache-aware on one.
    assert!(
        ca.cached_tokens > rr.cached_tokens,
        "{} vs {}",
        ca.cached_tokens,
        rr.cached_tokens
    );
    // Round robin prefills each of the 8 system prompts on every replica (4 misses each),
    // cache-aware on one: 8 x 3 fewer misses of 2048 tokens.
    assert_eq!(ca.cached_tokens - rr.cached_tokens, 8 * 3 * 2048);
}
