//! Turning a trace's workload and arrival sections into concrete requests (seeded, deterministic).
//!
//! Prompts are described, not stored: each request's tokens are drawn from its own ChaCha stream
//! when the client sends it, so memory stays proportional to the requests in flight rather than
//! to the whole trace.

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

/// How a request's prompt is made.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSpec {
    /// Given token ids.
    Tokens(Vec<TokenId>),
    /// `prefix_len` tokens of a shared group prefix, then random tokens up to `len`.
    Random {
        /// Shared prefix group (index into `Expanded::groups`), if any.
        group: Option<u32>,
        /// Tokens taken from the group prefix.
        prefix_len: u32,
        /// Total prompt length.
        len: u32,
    },
    /// Recorded pages: page k's tokens are drawn from its chained hash (equal hashes, equal
    /// prefixes), then random tokens up to `len`.
    Pages {
        /// The chained page hashes.
        hashes: Vec<u64>,
        /// Tokens per page.
        page_len: u32,
        /// Total prompt length.
        len: u32,
    },
    /// The previous turn's prompt and reply, then `new_len` random tokens.
    Continue {
        /// The previous turn (an earlier request).
        prev: usize,
        /// Tokens of the new message.
        new_len: u32,
    },
}

/// One request of the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRequest {
    /// How its prompt is made.
    pub prompt: PromptSpec,
    /// Prompt length.
    pub prompt_len: usize,
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
    /// Shared prefixes (system prompts, explicit prefix groups).
    pub groups: Vec<Vec<TokenId>>,
    /// Cap on requests in flight.
    pub max_concurrency: Option<usize>,
    /// Seed of the per-request token streams.
    pub seed: u64,
    /// Vocabulary size.
    pub vocab: usize,
    /// Prompts kept for follow-up turns, until the follower is built.
    history: Vec<Option<Vec<TokenId>>>,
    /// Whether request i has a follower (its prompt must be kept).
    has_follower: Vec<bool>,
    /// Token stream of request i (empty: i + 1); a subset keeps its requests' streams, so each
    /// prompt is the one the whole workload would send.
    streams: Vec<u64>,
}

impl Expanded {
    /// Build request `i`'s prompt. Call in send order: a follow-up turn needs its previous turn
    /// built first. Returns None if that order was broken.
    pub fn build_prompt(&mut self, i: usize) -> Option<Vec<TokenId>> {
        let r = &self.requests[i];
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        // Stream 0 made the shared prefixes; request i draws from stream i + 1.
        rng.set_stream(self.streams.get(i).copied().unwrap_or(i as u64 + 1));
        let mut v = Vec::with_capacity(r.prompt_len);
        match &r.prompt {
            PromptSpec::Tokens(t) => v.extend_from_slice(t),
            PromptSpec::Random {
                group,
                prefix_len,
                len,
            } => {
                if let Some(g) = group {
                    v.extend_from_slice(&self.groups[*g as usize][..*prefix_len as usize]);
                }
                random_tokens(&mut rng, *len as usize - v.len(), self.vocab, &mut v);
            }
            PromptSpec::Pages {
                hashes,
                page_len,
                len,
            } => {
                for &h in hashes {
                    let mut page = ChaCha8Rng::seed_from_u64(self.seed ^ h);
                    random_tokens(&mut page, *page_len as usize, self.vocab, &mut v);
                }
                random_tokens(&mut rng, *len as usize - v.len(), self.vocab, &mut v);
            }
            PromptSpec::Continue { prev, new_len } => {
                let prev_prompt = self.history.get_mut(*prev)?.take()?;
                v.extend_from_slice(&prev_prompt);
                let prev_out = self.requests[*prev].output_len;
                v.extend((0..prev_out).map(|k| synth_token(*prev as u64, k, self.vocab)));
                random_tokens(&mut rng, *new_len as usize, self.vocab, &mut v);
            }
        }
        if self.has_follower[i] {
            self.history[i] = Some(v.clone());
        }
        Some(v)
    }

    /// The requests `ids` (increasing) as a workload of their own, numbered in that order,
    /// with at most `max_concurrency` in flight: what one replica behind a router serves. A
    /// follow-up turn must come with the turn it continues (None otherwise).
    pub fn subset(&self, ids: &[usize], max_concurrency: Option<usize>) -> Option<Expanded> {
        let mut local = vec![usize::MAX; self.requests.len()];
        for (k, &i) in ids.iter().enumerate() {
            local[i] = k;
        }
        let map = |prev: usize| Some(local[prev]).filter(|&k| k != usize::MAX);
        let mut requests = Vec::with_capacity(ids.len());
        for &i in ids {
            let mut r = self.requests[i].clone();
            if let Start::After { prev, think_ns } = r.start {
                r.start = Start::After {
                    prev: map(prev)?,
                    think_ns,
                };
            }
            if let PromptSpec::Continue { prev, new_len } = r.prompt {
                r.prompt = PromptSpec::Continue {
                    prev: map(prev)?,
                    new_len,
                };
            }
            requests.push(r);
        }
        let stream = |i: usize| self.streams.get(i).copied().unwrap_or(i as u64 + 1);
        Some(Expanded {
            history: vec![None; ids.len()],
            has_follower: ids.iter().map(|&i| self.has_follower[i]).collect(),
            streams: ids.iter().map(|&i| stream(i)).collect(),
            requests,
            groups: self.groups.clone(),
            max_concurrency,
            seed: self.seed,
            vocab: self.vocab,
        })
    }

    /// Every prompt, in request order (small workloads and tests).
    pub fn build_all(&mut self) -> Vec<Vec<TokenId>> {
        (0..self.requests.len())
            .map(|i| self.build_prompt(i).unwrap_or_default())
            .collect()
    }
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

/// `n` tokens uniform in `0..vocab`, the very draws of `n` calls to `rng.gen_range(0..vocab)`
/// (rand 0.8's single-sample rule: one u32 per try, widening multiply, reject above `zone`),
/// leaving `rng` where those calls would. The u32s come in blocks and the accept is branch-free:
/// with a vocabulary like 151,936 about 4 tries in 10 are rejected, and a mispredicted branch
/// per try made prompt generation a sixth of a large replay's time.
fn random_tokens(rng: &mut ChaCha8Rng, n: usize, vocab: usize, out: &mut Vec<TokenId>) {
    let range = vocab as u32;
    debug_assert!(
        range > 0,
        "traces and profiles have a vocabulary of at least 1"
    );
    let zone = (range << range.leading_zeros()).wrapping_sub(1);
    let start = out.len();
    out.resize(start + n, 0);
    let dst = &mut out[start..];
    let mut buf = [0u32; 256];
    let mut filled = 0;
    while filled < n {
        // Never more tries than tokens still missing, so no draw is taken beyond the last one.
        let tries = &mut buf[..(n - filled).min(256)];
        rng.fill(&mut tries[..]);
        for &v in tries.iter() {
            let m = u64::from(v) * u64::from(range);
            // filled < n here: each try adds at most one token and tries <= n - filled.
            dst[filled] = (m >> 32) as u32;
            filled += usize::from(m as u32 <= zone);
        }
    }
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
    let mut groups: Vec<Vec<TokenId>> = Vec::new();
    let at = |times: &[TimeNs], i: usize| Start::At(times[i]);
    let random = |len: usize| PromptSpec::Random {
        group: None,
        prefix_len: 0,
        len: len as u32,
    };
    match &trace.workload {
        Workload::Requests {
            requests: list,
            page_len,
        } => {
            // Group prefixes: one token stream per group, long enough for the longest use.
            let mut lens: std::collections::BTreeMap<u32, usize> = Default::default();
            for r in list {
                if let (Some(g), Some(l)) = (r.prefix_group, r.prefix_len) {
                    let e = lens.entry(g).or_insert(0);
                    *e = (*e).max(l);
                }
            }
            let mut index: std::collections::BTreeMap<u32, u32> = Default::default();
            for (g, l) in lens {
                let mut v = Vec::with_capacity(l);
                random_tokens(&mut rng, l, vocab, &mut v);
                index.insert(g, groups.len() as u32);
                groups.push(v);
            }
            for r in list {
                let (prompt, len) = match (&r.prompt, r.prompt_len) {
                    (Some(p), _) => (PromptSpec::Tokens(p.clone()), p.len()),
                    (None, len) => {
                        let len = len.unwrap_or(1);
                        let spec = match (r.prefix_group, r.prefix_len) {
                            _ if r.pages.is_some() => PromptSpec::Pages {
                                hashes: r.pages.clone().unwrap_or_default(),
                                page_len: page_len.unwrap_or(1) as u32,
                                len: len as u32,
                            },
                            (Some(g), Some(l)) => PromptSpec::Random {
                                group: index.get(&g).copied(),
                                prefix_len: l as u32,
                                len: len as u32,
                            },
                            _ => random(len),
                        };
                        (spec, len)
                    }
                };
                requests.push(SimRequest {
                    prompt,
                    prompt_len: len,
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
                requests.push(SimRequest {
                    prompt: random(ins[i]),
                    prompt_len: ins[i],
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
            for _ in 0..*num_groups {
                let mut v = Vec::with_capacity(*system_prompt_len);
                random_tokens(&mut rng, *system_prompt_len, vocab, &mut v);
                groups.push(v);
            }
            // Interleave groups in a seeded random order, as a mixed client population would.
            let mut order: Vec<usize> = (0..num_groups * prompts_per_group)
                .map(|i| i % num_groups)
                .collect();
            for i in (1..order.len()).rev() {
                let j = rng.gen_range(0..=i);
                order.swap(i, j);
            }
            let times = arrival_times(order.len(), &trace.arrival, trace.seed);
            let len = system_prompt_len + question_len;
            for (i, g) in order.into_iter().enumerate() {
                requests.push(SimRequest {
                    prompt: PromptSpec::Random {
                        group: Some(g as u32),
                        prefix_len: *system_prompt_len as u32,
                        len: len as u32,
                    },
                    prompt_len: len,
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
                    let (prompt, len, start) = if turn == 0 {
                        (
                            random(*first_prompt_len),
                            *first_prompt_len,
                            at(&times, sess),
                        )
                    } else {
                        let prev = id - s;
                        let p: &SimRequest = &requests[prev];
                        let len = p.prompt_len + p.output_len + turn_prompt_len;
                        let spec = PromptSpec::Continue {
                            prev,
                            new_len: *turn_prompt_len as u32,
                        };
                        (spec, len, Start::After { prev, think_ns })
                    };
                    requests.push(SimRequest {
                        prompt,
                        prompt_len: len,
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
                requests.push(SimRequest {
                    prompt: random(len),
                    prompt_len: len,
                    output_len: out,
                    ignore_eos: true,
                    start: at(&times, i),
                });
            }
        }
    }
    let mut has_follower = vec![false; requests.len()];
    for r in &requests {
        if let PromptSpec::Continue { prev, .. } = r.prompt {
            has_follower[prev] = true;
        }
    }
    Expanded {
        history: vec![None; requests.len()],
        has_follower,
        streams: Vec::new(),
        requests,
        groups,
        max_concurrency: trace.arrival.max_concurrency,
        seed: trace.seed,
        vocab,
    }
}

#[cfg(test)]
mod tests;
