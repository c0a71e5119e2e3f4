//! Workspace-level simulator tests: every shipped trace replays, replays are byte-identical, and
//! the sanity properties the simulator must keep.

use doppel_sim::serde_json;
use doppel_sim::{replay, replay_file, report, SimOptions, Trace};

const SHIPPED: [&str; 6] = [
    "traces/burst.yaml",
    "traces/poisson.yaml",
    "traces/shared_prefix.yaml",
    "traces/multi_turn.yaml",
    "traces/memory_pressure.yaml",
    "traces/long_context.yaml",
];

fn path(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
}

fn all_opts() -> SimOptions {
    SimOptions {
        timing_from: None,
        record_steps: true,
        log_batches: true,
    }
}

#[test]
fn every_shipped_trace_replays_completely() {
    for t in SHIPPED {
        let r = replay_file(&path(t), all_opts()).unwrap_or_else(|e| panic!("{t}: {e}"));
        let n = r.outcome.records.len();
        assert!(n > 0, "{t}");
        assert_eq!(r.summary.completed, n, "{t}: every request finishes");
        assert_eq!(r.summary.refused + r.summary.aborted, 0, "{t}");
        // Every request got exactly the output it asked for (ignore_eos, max_new_tokens).
        let want: u64 = r
            .outcome
            .records
            .iter()
            .map(|x| x.output_tokens as u64)
            .sum();
        assert_eq!(r.summary.total_output, want);
        assert_eq!(r.outcome.counters.generated_tokens, want, "{t}");
        for rec in &r.outcome.records {
            assert!(
                rec.send <= rec.first && rec.first <= rec.finish,
                "{t}: {rec:?}"
            );
        }
        assert!(
            r.summary.output_throughput > 0.0 && r.summary.ttft_ms.mean > 0.0,
            "{t}"
        );
        let text = r.stdout(true);
        assert!(text.contains("Serving Benchmark Result"), "{t}");
        assert!(text.contains("Prefill batch. #new-seq:"), "{t}");
        // The timeline is valid JSON with one event per step at least.
        let tl: serde_json::Value =
            serde_json::from_str(&report::to_chrome_trace(&r.outcome)).unwrap();
        assert!(tl["traceEvents"].as_array().unwrap().len() > r.outcome.step_records.len());
        let js: serde_json::Value =
            serde_json::from_str(&report::to_json(&r.trace, &r.outcome, &r.summary)).unwrap();
        assert_eq!(js["requests"].as_array().unwrap().len(), n);
    }
}

#[test]
fn memory_pressure_trace_evicts_and_retracts() {
    let r = replay_file(&path("traces/memory_pressure.yaml"), SimOptions::default()).unwrap();
    assert!(r.summary.evicted_tokens > 0, "no eviction");
    assert!(r.summary.retractions > 0, "no retraction");
    assert!(r.summary.peak_kv_tokens <= r.summary.kv_capacity);
}

#[test]
fn replays_are_byte_identical() {
    for t in [
        "traces/poisson.yaml",
        "traces/memory_pressure.yaml",
        "traces/multi_turn.yaml",
    ] {
        let run = || {
            let r = replay_file(&path(t), all_opts()).unwrap();
            (
                r.stdout(true),
                report::to_json(&r.trace, &r.outcome, &r.summary),
                report::to_chrome_trace(&r.outcome),
            )
        };
        assert!(run() == run(), "{t}: two replays differ");
    }
}

#[test]
fn the_seed_changes_the_workload() {
    let base = Trace::load(&path("traces/poisson.yaml")).unwrap();
    let mut other = base.clone();
    other.seed = 2;
    let a = replay(base, "a", SimOptions::default()).unwrap();
    let b = replay(other, "b", SimOptions::default()).unwrap();
    assert_ne!(a.summary.total_input, b.summary.total_input);
}

fn with_kv(t: &Trace, kv: usize) -> Trace {
    let mut t = t.clone();
    t.engine.kv_capacity_tokens = Some(kv);
    t
}

#[test]
fn more_kv_capacity_never_lowers_throughput() {
    for file in ["traces/memory_pressure.yaml", "traces/burst.yaml"] {
        let base = Trace::load(&path(file)).unwrap();
        let mut prev: Option<(usize, f64)> = None;
        for kv in [20_000, 30_000, 40_000, 60_000, 100_000, 200_000, 400_000] {
            let r = replay(with_kv(&base, kv), file, SimOptions::default()).unwrap();
            let tput = r.summary.output_throughput;
            if let Some((pkv, p)) = prev {
                assert!(
                    tput >= p,
                    "{file}: {kv} tokens gives {tput:.1} tok/s < {p:.1} at {pkv}"
                );
            }
            prev = Some((kv, tput));
        }
    }
}

#[test]
fn shared_prefix_beats_its_random_twin_on_cache_hits() {
    let shared = Trace::load(&path("traces/shared_prefix.yaml")).unwrap();
    // The twin: same request count and lengths, no shared tokens.
    let text = std::fs::read_to_string(path("traces/shared_prefix.yaml")).unwrap();
    let twin_text = text.replace(
        "  kind: shared_prefix\n  num_groups: 16\n  prompts_per_group: 32\n  system_prompt_len: 2048\n  question_len: 128\n  output_len: 128\n",
        "  kind: random\n  num_requests: 512\n  input_len: 2176\n  output_len: 128\n  range_ratio: 1.0\n",
    );
    assert_ne!(text, twin_text, "the twin rewrite must apply");
    let twin = Trace::parse(&twin_text, "twin.yaml").unwrap();
    let a = replay(shared, "shared", SimOptions::default()).unwrap();
    let b = replay(twin, "twin", SimOptions::default()).unwrap();
    assert_eq!(a.summary.total_input, b.summary.total_input);
    assert!(
        a.summary.cache_hit_rate > 0.8,
        "{}",
        a.summary.cache_hit_rate
    );
    assert!(
        b.summary.cache_hit_rate < 0.01,
        "{}",
        b.summary.cache_hit_rate
    );
    assert!(a.summary.ttft_ms.mean < b.summary.ttft_ms.mean);
}

#[test]
fn overlap_hides_scheduling_time() {
    let base = Trace::load(&path("traces/poisson.yaml")).unwrap();
    let mut plain = base.clone();
    plain.engine.overlap = false;
    let o = replay(base, "overlap", SimOptions::default()).unwrap();
    let p = replay(plain, "plain", SimOptions::default()).unwrap();
    assert!(
        o.summary.itl_ms.median < p.summary.itl_ms.median,
        "{} vs {}",
        o.summary.itl_ms.median,
        p.summary.itl_ms.median
    );
}

#[test]
fn fixed_concurrency_caps_requests_in_flight() {
    let text = "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: random\n  num_requests: 64\n  input_len: 256\n  output_len: 64\n  range_ratio: 1.0\narrival:\n  pattern: concurrency\n  max_concurrency: 4\n";
    let r = replay(
        Trace::parse(text, "c.yaml").unwrap(),
        "c.yaml",
        SimOptions::default(),
    )
    .unwrap();
    assert_eq!(r.summary.completed, 64);
    // Sweep over time: never more than 4 requests between send and finish.
    let mut ev: Vec<(u64, i32)> = r
        .outcome
        .records
        .iter()
        .flat_map(|x| [(x.send, 1), (x.finish, -1)])
        .collect();
    ev.sort_by_key(|&(t, d)| (t, d));
    let mut alive = 0;
    for (_, d) in ev {
        alive += d;
        assert!(alive <= 4);
    }
    assert!(
        (r.summary.concurrency - 4.0).abs() < 0.5,
        "{}",
        r.summary.concurrency
    );
}

#[test]
fn tp_and_chunking_and_policies_all_run() {
    let base = Trace::load(&path("traces/shared_prefix.yaml")).unwrap();
    for (param, values) in [
        (
            "policy",
            vec!["fcfs", "lpm", "dfs-weight", "lof", "random", "priority"],
        ),
        ("chunk", vec!["-1", "512", "4096"]),
        ("tp", vec!["1", "2"]),
        ("page", vec!["1", "16"]),
        ("mixed", vec!["true"]),
        ("mixed-step", vec!["off", "256"]),
    ] {
        for v in values {
            let t = doppel_sim::sweep::apply(&base, "s.yaml", param, v).unwrap();
            let r = replay(t, "s.yaml", SimOptions::default())
                .unwrap_or_else(|e| panic!("{param}={v}: {e}"));
            assert_eq!(r.summary.completed, 512, "{param}={v}");
        }
    }
}

#[test]
fn refused_requests_are_reported_not_fatal() {
    let text = "profile: a100-80g/qwen3-0.6b/sglang\nengine:\n  kv_capacity_tokens: 3000\nworkload:\n  kind: requests\n  requests:\n    - {prompt_len: 100, output_len: 10}\n    - {prompt_len: 5000, output_len: 10}\n";
    let r = replay(
        Trace::parse(text, "r.yaml").unwrap(),
        "r.yaml",
        SimOptions::default(),
    )
    .unwrap();
    assert_eq!((r.summary.completed, r.summary.refused), (1, 1));
    assert!(r.stdout(false).contains("refused request 1"));
    // A pool smaller than every request is an error that says so.
    let none = text.replace("prompt_len: 100", "prompt_len: 4000");
    let e = replay(
        Trace::parse(&none, "r.yaml").unwrap(),
        "r.yaml",
        SimOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("every request was refused") && e.contains("KV pool"),
        "{e}"
    );
}

#[test]
fn explicit_requests_share_prefix_groups_and_keep_arrival_times() {
    let text = "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: requests\n  requests:\n    - {arrival_ms: 0, prompt_len: 600, prefix_group: 1, prefix_len: 512, output_len: 8}\n    - {arrival_ms: 500, prompt_len: 700, prefix_group: 1, prefix_len: 512, output_len: 8}\n    - {arrival_ms: 1000, prompt: [5, 6, 7, 8], output_len: 3}\n";
    let r = replay(
        Trace::parse(text, "e.yaml").unwrap(),
        "e.yaml",
        SimOptions::default(),
    )
    .unwrap();
    let recs = &r.outcome.records;
    assert_eq!(recs[1].send, 500_000_000);
    assert_eq!(recs[2].send, 1_000_000_000);
    assert_eq!(recs[0].cached_tokens, 0);
    assert_eq!(recs[1].cached_tokens, 512);
    assert_eq!((recs[2].prompt_len, recs[2].output_tokens), (4, 3));
}

#[test]
fn gamma_arrivals_replay() {
    let text = "profile: h100-80g/llama-3-8b/sglang\nworkload: {kind: random, num_requests: 200, input_len: 512, output_len: 64}\narrival: {pattern: gamma, rate: 20, burstiness: 0.5}\n";
    let r = replay(
        Trace::parse(text, "g.yaml").unwrap(),
        "g.yaml",
        SimOptions::default(),
    )
    .unwrap();
    assert_eq!(r.summary.completed, 200);
    assert_eq!(r.summary.request_rate, "20.00");
}

/// One request alone: every client-visible time follows from the profile and the cost model.
#[test]
fn single_request_times_follow_the_cost_model_exactly() {
    use doppel_sim::{BatchShape, CostModel, Profile, RooflineCost};
    let p = Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap();
    let cost = RooflineCost::new(&p, 1);
    let e = &p.engine;
    let (prompt, out) = (300usize, 40usize);
    for overlap in [true, false] {
        let text = format!(
            "profile: a100-80g/qwen3-0.6b/sglang\nengine: {{overlap: {overlap}}}\nworkload:\n  kind: requests\n  requests:\n    - {{prompt_len: {prompt}, output_len: {out}}}\n"
        );
        let r = replay(
            Trace::parse(&text, "one.yaml").unwrap(),
            "one.yaml",
            SimOptions::default(),
        )
        .unwrap();
        let rec = r.outcome.records[0];
        let arrive =
            (e.http_ns + e.tokenize_ns + e.tokenize_ns_per_token * prompt as f64).round() as u64;
        let sched = cost.schedule_ns(1);
        let prefill = cost.step_ns(&BatchShape::prefill(1, prompt));
        let stream = e.stream_ns.round() as u64;
        assert_eq!(
            rec.first - rec.send,
            arrive + sched + prefill + stream,
            "overlap {overlap}"
        );
        // Decode step k attends to prompt + k + 1 tokens; without overlap the scheduling CPU
        // time sits between steps, with overlap it hides behind the GPU.
        let mut expect = rec.first;
        for k in 0..out - 1 {
            let step = cost.step_ns(&BatchShape::decode(1, prompt + k + 1));
            expect += step + if overlap { 0 } else { sched };
        }
        assert_eq!(rec.finish, expect, "overlap {overlap}");
        assert_eq!(r.outcome.itls.count(), out as u64 - 1);
    }
}

#[test]
fn a_refused_turn_does_not_stall_its_conversation() {
    let text = "profile: a100-80g/qwen3-0.6b/sglang\nengine: {kv_capacity_tokens: 2000}\nworkload: {kind: multi_turn, num_sessions: 2, turns: 5, first_prompt_len: 300, turn_prompt_len: 200, output_len: 300, think_time_ms: 10}\n";
    let r = replay(
        Trace::parse(text, "m.yaml").unwrap(),
        "m.yaml",
        SimOptions::default(),
    )
    .unwrap();
    assert_eq!(r.summary.completed + r.summary.refused, 10);
    assert_eq!(r.summary.refused, 4, "turns 4 and 5 of both sessions");
    assert!(r.summary.refused > 0 && r.summary.completed > 0);
}

#[test]
fn taking_in_a_burst_of_arrivals_delays_the_first_step_by_its_submit_time() {
    use doppel_sim::Profile;
    let mut p = Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap();
    // In-process: both requests reach the engine at 0.
    (
        p.engine.http_ns,
        p.engine.tokenize_ns,
        p.engine.tokenize_ns_per_token,
    ) = (0.0, 0.0, 0.0);
    let dir = std::env::temp_dir().join(format!("doppel-submit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = |p: &Profile, name: &str| {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, serde_yaml::to_string(p).unwrap()).unwrap();
        let text = format!(
            "profile: {}\nworkload:\n  kind: requests\n  requests:\n    - {{prompt_len: 300, output_len: 4}}\n    - {{prompt_len: 500, output_len: 4}}\n",
            file.display()
        );
        let r = replay(
            Trace::parse(&text, "two.yaml").unwrap(),
            "two.yaml",
            SimOptions::default(),
        )
        .unwrap();
        r.outcome.records.iter().map(|x| x.first).min().unwrap()
    };
    let free = first(&p, "free");
    p.engine.submit_ns = 20_000.0;
    p.engine.submit_ns_per_token = 10.0;
    let charged = first(&p, "charged");
    // Both arrive at 0 and are taken in before the first step is formed.
    assert_eq!(charged - free, 2 * 20_000 + 10 * (300 + 500));
    std::fs::remove_dir_all(&dir).unwrap();
}
