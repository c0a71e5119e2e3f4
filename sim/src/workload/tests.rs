//! Unit tests of the workload generators.

use super::*;

fn trace(workload: &str, arrival: &str) -> Trace {
    let text = format!("profile: a100-80g/qwen3-0.6b/sglang\nseed: 7\nworkload:\n{workload}\narrival:\n{arrival}\n");
    Trace::parse(&text, "t.yaml").unwrap()
}

#[test]
fn random_tokens_are_gen_range_draws_and_leave_the_rng_alike() {
    for (vocab, n) in [
        (151_936, 5000),
        (1000, 300),
        (2, 17),
        (1, 9),
        (u32::MAX as usize, 64),
    ] {
        let mut a = ChaCha8Rng::seed_from_u64(vocab as u64);
        let mut b = a.clone();
        let mut fast = vec![7];
        random_tokens(&mut a, n, vocab, &mut fast);
        let slow: Vec<TokenId> = std::iter::once(7)
            .chain((0..n).map(|_| b.gen_range(0..vocab as TokenId)))
            .collect();
        assert_eq!(fast, slow, "vocab {vocab}");
        assert_eq!(
            a.gen::<u64>(),
            b.gen::<u64>(),
            "rng state after vocab {vocab}"
        );
    }
}

#[test]
fn random_lengths_follow_bench_serving_rule() {
    let t = trace(
        "  kind: random\n  num_requests: 2000\n  input_len: 100\n  output_len: 50\n  range_ratio: 0.5",
        "  pattern: burst",
    );
    let mut w = expand(&t, 1000);
    assert_eq!(w.requests.len(), 2000);
    let prompts = w.build_all();
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    assert!(w
        .requests
        .iter()
        .zip(&lens)
        .all(|(r, &l)| r.prompt_len == l));
    assert!(lens.iter().all(|&l| (50..=100).contains(&l)));
    assert!(lens.contains(&50) && lens.contains(&100));
    assert!(w
        .requests
        .iter()
        .all(|r| (25..=50).contains(&r.output_len) && r.start == Start::At(0)));
    // Deterministic.
    assert_eq!(expand(&t, 1000).build_all(), prompts);
}

#[test]
fn poisson_mean_gap_is_one_over_rate() {
    let t = trace(
        "  kind: random\n  num_requests: 20000\n  input_len: 10\n  output_len: 10",
        "  pattern: poisson\n  rate: 50",
    );
    let times = arrival_times(20000, &t.arrival, 3);
    let mean = *times.last().unwrap() as f64 / 19999.0 / 1e9;
    assert!((mean - 0.02).abs() < 0.001, "{mean}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn gamma_has_the_right_mean_and_burstiness_raises_variance() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 40000;
    let cv = |rng: &mut ChaCha8Rng, k: f64| {
        let xs: Vec<f64> = (0..n).map(|_| gamma(rng, k, 1.0 / k)).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        (m, v.sqrt() / m)
    };
    let (m1, cv1) = cv(&mut rng, 1.0);
    let (m2, cv2) = cv(&mut rng, 0.25);
    assert!(
        (m1 - 1.0).abs() < 0.03 && (m2 - 1.0).abs() < 0.05,
        "{m1} {m2}"
    );
    assert!(
        (cv1 - 1.0).abs() < 0.05 && (cv2 - 2.0).abs() < 0.15,
        "{cv1} {cv2}"
    );
}

#[test]
fn shared_prefix_groups_share_their_system_prompt() {
    let t = trace(
        "  kind: shared_prefix\n  num_groups: 3\n  prompts_per_group: 4\n  system_prompt_len: 64\n  question_len: 8\n  output_len: 4",
        "  pattern: burst",
    );
    let mut w = expand(&t, 5000);
    assert_eq!(w.requests.len(), 12);
    let prompts = w.build_all();
    let mut prefixes: Vec<&[u32]> = prompts.iter().map(|p| &p[..64]).collect();
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), 3);
}

#[test]
fn multi_turn_extends_the_previous_conversation() {
    let t = trace(
        "  kind: multi_turn\n  num_sessions: 2\n  turns: 3\n  first_prompt_len: 10\n  turn_prompt_len: 5\n  output_len: 4\n  think_time_ms: 100",
        "  pattern: burst",
    );
    let mut w = expand(&t, 5000);
    assert_eq!(w.requests.len(), 6);
    assert_eq!(
        w.requests[2].start,
        Start::After {
            prev: 0,
            think_ns: 100_000_000
        }
    );
    let prompts = w.build_all();
    let (r0, r2) = (&prompts[0], &prompts[2]);
    assert_eq!(r2.len(), 10 + 4 + 5);
    assert_eq!(w.requests[2].prompt_len, r2.len());
    assert_eq!(&r2[..10], &r0[..]);
    assert_eq!(r2[10], synth_token(0, 0, 5000));
    assert_eq!(prompts[4].len(), 19 + 4 + 5);
    assert_eq!(&prompts[4][..19], &r2[..]);
}

#[test]
fn synth_tokens_avoid_special_ids() {
    assert!((0..1000).all(|i| (1000..5000).contains(&synth_token(i, i as usize, 5000))));
}
