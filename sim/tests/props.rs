//! Properties over many small random traces (a fixed list of seeds, so CI is deterministic):
//! every request finishes with exactly its output length, KV use never exceeds the pool, replays
//! are identical, and more KV capacity does not lower throughput.

use doppel_sim::{replay, SimOptions, Trace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_trace(seed: u64) -> (String, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let policy = ["fcfs", "lpm", "dfs-weight", "lof", "random"][rng.gen_range(0..5)];
    let page = [1, 1, 4, 16][rng.gen_range(0..4)];
    let chunk = [-1i64, 256, 1024, 4096][rng.gen_range(0..4)];
    let overlap = rng.gen_bool(0.5);
    let mixed = rng.gen_bool(0.25);
    let n = rng.gen_range(5..60);
    let workload = match rng.gen_range(0..3) {
        0 => format!(
            "{{kind: random, num_requests: {n}, input_len: {}, output_len: {}, range_ratio: {:.2}}}",
            rng.gen_range(8..1500),
            rng.gen_range(1..300),
            rng.gen::<f64>()
        ),
        1 => format!(
            "{{kind: shared_prefix, num_groups: {}, prompts_per_group: {}, system_prompt_len: {}, question_len: {}, output_len: {}}}",
            rng.gen_range(1..4),
            rng.gen_range(1..12),
            rng.gen_range(16..800),
            rng.gen_range(1..64),
            rng.gen_range(1..200)
        ),
        _ => format!(
            "{{kind: multi_turn, num_sessions: {}, turns: {}, first_prompt_len: {}, turn_prompt_len: {}, output_len: {}, think_time_ms: {}}}",
            rng.gen_range(1..8),
            rng.gen_range(1..4),
            rng.gen_range(8..400),
            rng.gen_range(1..64),
            rng.gen_range(1..100),
            rng.gen_range(0..500)
        ),
    };
    let arrival = match rng.gen_range(0..3) {
        0 => "{pattern: burst}".to_string(),
        1 => format!("{{pattern: poisson, rate: {}}}", rng.gen_range(1..50)),
        _ => format!(
            "{{pattern: concurrency, max_concurrency: {}}}",
            rng.gen_range(1..16)
        ),
    };
    // A pool between "tight" and "roomy" for these sizes.
    let kv = rng.gen_range(4_000..40_000);
    (
        format!(
            "profile: a100-80g/qwen3-0.6b/sglang\nseed: {seed}\nengine: {{policy: {policy}, page_size: {page}, chunked_prefill_size: {chunk}, overlap: {overlap}, enable_mixed_chunk: {mixed}}}\nworkload: {workload}\narrival: {arrival}\n"
        ),
        kv,
    )
}

fn with_kv(text: &str, kv: usize) -> Trace {
    let t = Trace::parse(text, "prop.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut t = t;
    t.engine.kv_capacity_tokens = Some(kv);
    t
}

#[test]
fn random_traces_complete_within_the_pool_and_replay_identically() {
    for seed in 0..40 {
        let (text, kv) = random_trace(seed);
        let a = replay(with_kv(&text, kv), "prop.yaml", SimOptions::default())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        let n = a.outcome.records.len();
        assert_eq!(
            a.summary.completed + a.summary.refused,
            n,
            "seed {seed}\n{text}"
        );
        assert_eq!(a.summary.aborted, 0, "seed {seed}\n{text}");
        assert!(
            a.summary.peak_kv_tokens <= a.summary.kv_capacity,
            "seed {seed}"
        );
        assert_eq!(
            a.outcome.counters.generated_tokens, a.summary.total_output,
            "seed {seed}"
        );
        let b = replay(with_kv(&text, kv), "prop.yaml", SimOptions::default()).unwrap();
        assert_eq!(a.stdout(false), b.stdout(false), "seed {seed}");
    }
}

#[test]
fn more_kv_never_lowers_throughput_on_random_traces() {
    for seed in 100..130 {
        let (text, kv) = random_trace(seed);
        let mut prev: Option<(usize, f64, usize)> = None;
        for k in [kv, kv * 2, kv * 4] {
            let r = replay(with_kv(&text, k), "prop.yaml", SimOptions::default()).unwrap();
            let t = r.summary.output_throughput;
            if let Some((pk, p, pdone)) = prev {
                // Compare like with like: a bigger pool may also admit requests a smaller one refused.
                // Strictly "never lower" does not hold for every schedule: seed 118 (page 4, chunk
                // 256, 53 short requests in a burst) runs 0.008% faster with 4,647 tokens than with
                // 9,294, because the tighter admission budget happens to form slightly better
                // batches. The shipped traces are held to the strict property (tests/replay.rs);
                // random ones to within 1%.
                if r.summary.completed == pdone {
                    assert!(
                        t >= p * 0.99,
                        "seed {seed}: kv {k} gives {t:.2} tok/s < {p:.2} at {pk}\n{text}\n{}",
                        r.stdout(false)
                    );
                }
            }
            prev = Some((k, t, r.summary.completed));
        }
    }
}
