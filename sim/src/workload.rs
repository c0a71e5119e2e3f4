//! Turning a trace's workload and arrival sections into concrete requests (seeded, deterministic).

use crate::trace::{Arrival, ArrivalPattern, Trace, Workload};
use doppel_core::{TimeNs, TokenId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// When a request may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At a fixed virtual time.
    At(TimeNs),
    /// `think_ns` after request `prev` (an earlier index) finished, as the client saw it.
    After {
        /// The request whose reply this one follows.
        prev: usize,
        /// Think time.
        think_ns: TimeNs,
    },
}

/// One request of the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRequest {
    /// Prompt tokens.
    pub prompt: Vec<TokenId>,
    /// Tokens to generate (max_new_tokens, with ignore_eos).
    pub output_len: usize,
    /// As given in the trace (the simulator never samples EOS, so every request runs to output_len).
    pub ignore_eos: bool,
    /// When it may be sent.
    pub start: Start,
}

/// The expanded workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expanded {
    /// Requests; the index is the request id.
    pub requests: Vec<SimRequest>,
    /// Cap on requests in flight.
    pub max_concurrency: Option<usize>,
}

/// The token the virtual GPU "samples" for output position `index` of request `id`: a fixed hash,
/// so multi-turn workloads can replay a previous reply into the next prompt. Ids below 1000 are
/// avoided (special tokens).
pub fn synth_token(id: u64, index: usize, vocab: usize) -> TokenId {
    let mut z =
        id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let span = vocab.saturating_sub(1000).max(1) as u64;
    (1000 + z % span) as TokenId
}

/// bench_serving's random length rule: uniform on [max(floor(L * r), 1), L].
fn random_len(rng: &mut ChaCha8Rng, max: usize, ratio: f64) -> usize {
    let lo = ((max as f64 * ratio).floor() as usize).max(1).min(max);
    rng.gen_range(lo..=max)
}

fn random_tokens(rng: &mut ChaCha8Rng, n: usize, vocab: usize, out: &mut Vec<TokenId>) {
    out.extend((0..n).map(|_| rng.gen_range(0..vocab as TokenId)));
}

fn std_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; 1 - u keeps the log's argument in (0, 1].
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Gamma(shape, scale) by Marsaglia and Tsang.
pub fn gamma(rng: &mut ChaCha8Rng, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.gen::<f64>();
        return gamma(rng, shape + 1.0, scale) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = std_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v * scale;
        }
    }
}

/// Send times of `n` requests (the first at 0), as bench_serving spaces them.
pub fn arrival_times(n: usize, arrival: &Arrival, seed: u64) -> Vec<TimeNs> {
    // A separate stream: changing the rate never changes the prompts.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA11_1BA1);
    let mut t = 0.0f64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 {
            let gap = match arrival.pattern {
                ArrivalPattern::Burst | ArrivalPattern::Concurrency => 0.0,
                ArrivalPattern::Poisson => {
                    let rate = arrival.rate.unwrap_or(1.0);
                    -(1.0 - rng.gen::<f64>()).ln() / rate
                }
                ArrivalPattern::Gamma => {
                    let rate = arrival.rate.unwrap_or(1.0);
                    let k = arrival.burstiness.unwrap_or(1.0);
                    gamma(&mut rng, k, 1.0 / (rate * k))
                }
            };
            t += gap;
        }
        out.push((t * 1e9).round() as TimeNs);
    }
    out
}

/// Expand a trace's workload for a model with `vocab` tokens.
pub fn expand(trace: &Trace, vocab: usize) -> Expanded {
    let mut rng = ChaCha8Rng::seed_from_u64(trace.seed);
    let mut requests = Vec::new();
    let at = |times: &[TimeNs], i: usize| Start::At(times[i]);
    match &trace.workload {
        Workload::Requests { requests: list } => {
            // Group prefixes: one token stream per group, long enough for the longest use.
            let mut groups: std::collections::BTreeMap<u32, usize> = Default::default();
            for r in list {
                if let (Some(g), Some(l)) = (r.prefix_group, r.prefix_len) {
                    let e = groups.entry(g).or_insert(0);
                    *e = (*e).max(l);
                }
            }
            let group_tokens: std::collections::BTreeMap<u32, Vec<TokenId>> = groups
                .into_iter()
                .map(|(g, l)| {
                    let mut v = Vec::with_capacity(l);
                    random_tokens(&mut rng, l, vocab, &mut v);
                    (g, v)
                })
                .collect();
            for r in list {
                let prompt = match (&r.prompt, r.prompt_len) {
                    (Some(p), _) => p.clone(),
                    (None, len) => {
                        let len = len.unwrap_or(1);
                        let mut v = Vec::with_capacity(len);
                        if let (Some(g), Some(l)) = (r.prefix_group, r.prefix_len) {
                            v.extend_from_slice(&group_tokens[&g][..l]);
                        }
                        let rest = len - v.len();
                        random_tokens(&mut rng, rest, vocab, &mut v);
                        v
                    }
                };
                requests.push(SimRequest {
                    prompt,
                    output_len: r.output_len,
                    ignore_eos: r.ignore_eos,
                    start: Start::At((r.arrival_ms * 1e6).round() as TimeNs),
                });
            }
        }
        Workload::Random {
            num_requests,
            input_len,
            output_len,
            range_ratio,
        } => {
            let n = *num_requests;
            let ins: Vec<usize> = (0..n)
                .map(|_| random_len(&mut rng, *input_len, *range_ratio))
                .collect();
            let outs: Vec<usize> = (0..n)
                .map(|_| random_len(&mut rng, *output_len, *range_ratio))
                .collect();
            let times = arrival_times(n, &trace.arrival, trace.seed);
            for i in 0..n {
                let mut prompt = Vec::with_capacity(ins[i]);
                random_tokens(&mut rng, ins[i], vocab, &mut prompt);
                requests.push(SimRequest {
                    prompt,
                    output_len: outs[i],
                    ignore_eos: true,
                    start: at(&times, i),
                });
            }
        }
        Workload::SharedPrefix {
            num_groups,
            prompts_per_group,
            system_prompt_len,
            question_len,
            output_len,
        } => {
            let systems: Vec<Vec<TokenId>> = (0..*num_groups)
                .map(|_| {
                    let mut v = Vec::with_capacity(*system_prompt_len);
                    random_tokens(&mut rng, *system_prompt_len, vocab, &mut v);
                    v
                })
                .collect();
            // Interleave groups in a seeded random order, as a mixed client population would.
            let mut order: Vec<usize> = (0..num_groups * prompts_per_group)
                .map(|i| i % num_groups)
                .collect();
            for i in (1..order.len()).rev() {
                let j = rng.gen_range(0..=i);
                order.swap(i, j);
            }
            let times = arrival_times(order.len(), &trace.arrival, trace.seed);
            for (i, g) in order.into_iter().enumerate() {
                let mut prompt = Vec::with_capacity(system_prompt_len + question_len);
                prompt.extend_from_slice(&systems[g]);
                random_tokens(&mut rng, *question_len, vocab, &mut prompt);
                requests.push(SimRequest {
                    prompt,
                    output_len: *output_len,
                    ignore_eos: true,
                    start: at(&times, i),
                });
            }
        }
        Workload::MultiTurn {
            num_sessions,
            turns,
            first_prompt_len,
            turn_prompt_len,
            output_len,
            think_time_ms,
        } => {
            let s = *num_sessions;
            let times = arrival_times(s, &trace.arrival, trace.seed);
            let think_ns = (think_time_ms * 1e6).round() as TimeNs;
            for turn in 0..*turns {
                for sess in 0..s {
                    let id = requests.len();
                    let (prompt, start) = if turn == 0 {
                        let mut v = Vec::with_capacity(*first_prompt_len);
                        random_tokens(&mut rng, *first_prompt_len, vocab, &mut v);
                        (v, at(&times, sess))
                    } else {
                        let prev = id - s;
                        let p: &SimRequest = &requests[prev];
                        let mut v =
                            Vec::with_capacity(p.prompt.len() + p.output_len + turn_prompt_len);
                        v.extend_from_slice(&p.prompt);
                        v.extend((0..p.output_len).map(|k| synth_token(prev as u64, k, vocab)));
                        random_tokens(&mut rng, *turn_prompt_len, vocab, &mut v);
                        (v, Start::After { prev, think_ns })
                    };
                    requests.push(SimRequest {
                        prompt,
                        output_len: *output_len,
                        ignore_eos: true,
                        start,
                    });
                }
            }
        }
        Workload::LongContext {
            num_requests,
            input_len,
            output_len,
            range_ratio,
            short_fraction,
            short_input_len,
        } => {
            let n = *num_requests;
            let times = arrival_times(n, &trace.arrival, trace.seed);
            for i in 0..n {
                let short = rng.gen::<f64>() < *short_fraction;
                let len = if short {
                    random_len(&mut rng, *short_input_len, *range_ratio)
                } else {
                    random_len(&mut rng, *input_len, *range_ratio)
                };
                let out = random_len(&mut rng, *output_len, *range_ratio);
                let mut prompt = Vec::with_capacity(len);
                random_tokens(&mut rng, len, vocab, &mut prompt);
                requests.push(SimRequest {
                    prompt,
                    output_len: out,
                    ignore_eos: true,
                    start: at(&times, i),
                });
            }
        }
    }
    Expanded {
        requests,
        max_concurrency: trace.arrival.max_concurrency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(workload: &str, arrival: &str) -> Trace {
        let text = format!("profile: a100-80g/qwen3-0.6b/sglang\nseed: 7\nworkload:\n{workload}\narrival:\n{arrival}\n");
        Trace::parse(&text, "t.yaml").unwrap()
    }

    #[test]
    fn random_lengths_follow_bench_serving_rule() {
        let t = trace(
            "  kind: random\n  num_requests: 2000\n  input_len: 100\n  output_len: 50\n  range_ratio: 0.5",
            "  pattern: burst",
        );
        let w = expand(&t, 1000);
        assert_eq!(w.requests.len(), 2000);
        let lens: Vec<usize> = w.requests.iter().map(|r| r.prompt.len()).collect();
        assert!(lens.iter().all(|&l| (50..=100).contains(&l)));
        assert!(lens.contains(&50) && lens.contains(&100));
        assert!(w
            .requests
            .iter()
            .all(|r| (25..=50).contains(&r.output_len) && r.start == Start::At(0)));
        // Deterministic.
        assert_eq!(expand(&t, 1000), w);
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
        let w = expand(&t, 5000);
        assert_eq!(w.requests.len(), 12);
        let mut prefixes: Vec<&[u32]> = w.requests.iter().map(|r| &r.prompt[..64]).collect();
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
        let w = expand(&t, 5000);
        assert_eq!(w.requests.len(), 6);
        let r0 = &w.requests[0];
        let r2 = &w.requests[2];
        assert_eq!(
            r2.start,
            Start::After {
                prev: 0,
                think_ns: 100_000_000
            }
        );
        assert_eq!(r2.prompt.len(), 10 + 4 + 5);
        assert_eq!(&r2.prompt[..10], &r0.prompt[..]);
        assert_eq!(r2.prompt[10], synth_token(0, 0, 5000));
        assert_eq!(w.requests[4].prompt.len(), 19 + 4 + 5);
    }

    #[test]
    fn synth_tokens_avoid_special_ids() {
        assert!((0..1000).all(|i| (1000..5000).contains(&synth_token(i, i as usize, 5000))));
    }
}
