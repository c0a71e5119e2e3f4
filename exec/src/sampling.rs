//! Token sampling on one logits row, usable by any backend: logit bias, repetition / frequency /
//! presence penalties, greedy, temperature, top-k, top-p, min-p, per-request seeded RNG, logprobs.
//!
//! Randomness for the token at output index i comes from a ChaCha stream derived from
//! (seed, i) alone, so the same request and seed give the same tokens however requests are
//! batched, chunked, or retracted and re-prefilled.

use doppel_core::{SamplingParams, TokenId, TokenLogprob};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Per-request sampling state: the generated tokens so far (for penalties) and the seed.
#[derive(Clone, Debug)]
pub struct RequestSampler {
    seed: u64,
    /// Generated tokens by output index.
    generated: Vec<TokenId>,
    /// Counts over `generated[..counted]`.
    counts: HashMap<TokenId, u32>,
    counted: usize,
}

/// A sampled token and, if asked for, its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The token.
    pub token: TokenId,
    /// Its logprob and the top alternatives (log-softmax of the logits after bias and penalties,
    /// before temperature and truncation, as SGLang reports by default).
    pub logprob: Option<TokenLogprob>,
}

/// Mix a request seed with the output index into a stream id (splitmix64 finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RequestSampler {
    /// State for a request whose sampling seed is `seed`.
    pub fn new(seed: u64) -> RequestSampler {
        RequestSampler {
            seed,
            generated: Vec::new(),
            counts: HashMap::new(),
            counted: 0,
        }
    }

    /// The seed a request uses: its own, or one derived from the backend seed and its id.
    pub fn seed_for(params: &SamplingParams, backend_seed: u64, request: u64) -> u64 {
        params
            .seed
            .unwrap_or_else(|| mix(backend_seed ^ mix(request)))
    }

    /// Generated tokens recorded so far.
    pub fn generated(&self) -> &[TokenId] {
        &self.generated
    }

    /// Record that output index `index` holds `token` (drops anything recorded after it).
    pub fn record(&mut self, index: usize, token: TokenId) {
        if index < self.generated.len() {
            self.generated.truncate(index);
        }
        if index == self.generated.len() {
            self.generated.push(token);
        }
        if self.counted > self.generated.len() {
            self.counted = 0;
            self.counts.clear();
        }
    }

    fn sync_counts(&mut self, upto: usize) {
        let upto = upto.min(self.generated.len());
        if upto < self.counted {
            self.counts.clear();
            self.counted = 0;
        }
        for &t in &self.generated[self.counted..upto] {
            *self.counts.entry(t).or_insert(0) += 1;
        }
        self.counted = upto;
    }

    /// Sample output token number `index` from `logits` (modified in place), and record it.
    pub fn sample(&mut self, logits: &mut [f32], params: &SamplingParams, index: usize) -> Sampled {
        self.sample_masked(logits, params, index, None)
    }

    /// [`Self::sample`] among the tokens `mask` allows (a constraint's bitmask, see
    /// [`crate::constraint::apply_mask`]), applied after bias and penalties as SGLang does, so
    /// logprobs are over the allowed tokens.
    pub fn sample_masked(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        index: usize,
        mask: Option<&[u32]>,
    ) -> Sampled {
        self.sync_counts(index);
        apply_bias_and_penalties(logits, params, &self.counts);
        if let Some(m) = mask {
            crate::constraint::apply_mask(logits, m);
        }
        let logprob = params
            .return_logprob
            .then(|| logprobs(logits, None, params.top_logprobs));
        let token = if params.is_greedy() {
            argmax(logits)
        } else {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(index as u64);
            let u: f32 = rng.gen();
            sample_filtered(logits, params, u)
        };
        let logprob = logprob.map(|mut lp| {
            lp.logprob = log_softmax_at(logits, token);
            lp
        });
        self.record(index, token);
        Sampled { token, logprob }
    }
}

/// Add logit bias, then apply penalties over the generated-token counts (SGLang's order).
pub fn apply_bias_and_penalties(
    logits: &mut [f32],
    p: &SamplingParams,
    counts: &HashMap<TokenId, u32>,
) {
    for &(t, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    // Each token is adjusted independently, so the map's iteration order cannot matter.
    for (&t, &c) in counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if p.repetition_penalty != 1.0 {
            *l = if *l > 0.0 {
                *l / p.repetition_penalty
            } else {
                *l * p.repetition_penalty
            };
        }
        *l -= p.frequency_penalty * c as f32 + p.presence_penalty * (c > 0) as u8 as f32;
    }
}

/// Index of the largest logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as TokenId
}

fn log_softmax_at(logits: &[f32], token: TokenId) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|&l| ((l - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    logits[token as usize] - lse
}

/// Logprob of `token` (if given) and the `top` most likely tokens.
pub fn logprobs(logits: &[f32], token: Option<TokenId>, top: usize) -> TokenLogprob {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|&l| ((l - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let top = top.min(logits.len());
    if top > 0 {
        idx.select_nth_unstable_by(top - 1, |&a, &b| {
            logits[b].total_cmp(&logits[a]).then(a.cmp(&b))
        });
        idx.truncate(top);
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    } else {
        idx.clear();
    }
    TokenLogprob {
        logprob: token.map_or(0.0, |t| logits[t as usize] - lse),
        top: idx
            .into_iter()
            .map(|i| (i as TokenId, logits[i] - lse))
            .collect(),
    }
}

/// The probability distribution after temperature, top-k, top-p and min-p, as (token, prob)
/// pairs, renormalised. Sorted by probability (descending, then token id) when top-k or top-p
/// is on; otherwise in token order, which saves sorting the whole vocabulary every step.
/// Top-p and min-p are measured on the full distribution, as SGLang does.
pub fn filtered_distribution(logits: &[f32], p: &SamplingParams) -> Vec<(TokenId, f32)> {
    let t = p.temperature.max(1e-6);
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(TokenId, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as TokenId, ((l - m) / t).exp()))
        .filter(|&(_, q)| q > 0.0)
        .collect();
    let sum: f32 = probs.iter().map(|x| x.1).sum();
    for x in probs.iter_mut() {
        x.1 /= sum;
    }
    let by_prob = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = if p.top_k > 0 {
        p.top_k as usize
    } else {
        usize::MAX
    };
    if k < probs.len() {
        probs.select_nth_unstable_by(k - 1, by_prob);
        probs.truncate(k);
        probs.sort_by(by_prob);
    } else if p.top_p < 1.0 {
        probs.sort_by(by_prob);
    }
    if p.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (the token that crosses it stays).
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, x) in probs.iter().enumerate() {
            acc += x.1;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let top = probs.iter().map(|x| x.1).fold(0.0, f32::max);
        let floor = top * p.min_p;
        probs.retain(|x| x.1 >= floor);
    }
    let sum: f32 = probs.iter().map(|x| x.1).sum();
    for x in probs.iter_mut() {
        x.1 /= sum;
    }
    probs
}

/// Draw from the filtered distribution with a uniform number `u` in [0, 1).
pub fn sample_filtered(logits: &[f32], p: &SamplingParams, u: f32) -> TokenId {
    let probs = filtered_distribution(logits, p);
    let mut acc = 0.0;
    for &(t, q) in &probs {
        acc += q;
        if u < acc {
            return t;
        }
    }
    // Rounding left u above the total: the last kept token.
    probs.last().map_or_else(|| argmax(logits), |x| x.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    const LOGITS: [f32; 6] = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0];

    fn softmax(l: &[f32], t: f32) -> Vec<f64> {
        let e: Vec<f64> = l.iter().map(|&x| ((x / t) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    }

    /// Empirical frequencies over many seeds match the expected distribution (chi-square).
    fn check_distribution(p: &SamplingParams, expected: &[f64]) {
        let n = 40_000;
        let mut counts = vec![0usize; LOGITS.len()];
        for seed in 0..n {
            let mut s = RequestSampler::new(seed as u64);
            let mut l = LOGITS;
            counts[s.sample(&mut l, p, 0).token as usize] += 1;
        }
        let mut chi2 = 0.0;
        let mut dof = 0;
        for (c, &e) in counts.iter().zip(expected) {
            if e == 0.0 {
                assert_eq!(*c, 0, "a filtered-out token was sampled: {counts:?}");
                continue;
            }
            let ex = e * n as f64;
            chi2 += (*c as f64 - ex).powi(2) / ex;
            dof += 1;
        }
        // 99.9th percentile of chi-square with at most 5 degrees of freedom is 20.5.
        assert!(
            chi2 < 20.5,
            "chi2 {chi2} (dof {}) counts {counts:?} expected {expected:?}",
            dof - 1
        );
    }

    #[test]
    fn temperature_distribution() {
        check_distribution(&params(|p| p.temperature = 0.7), &softmax(&LOGITS, 0.7));
    }

    #[test]
    fn top_k_distribution() {
        let full = softmax(&LOGITS, 1.0);
        // Top 3: tokens 5, 0, 1.
        let s = full[5] + full[0] + full[1];
        let exp: Vec<f64> = (0..6)
            .map(|i| {
                if [5, 0, 1].contains(&i) {
                    full[i] / s
                } else {
                    0.0
                }
            })
            .collect();
        check_distribution(&params(|p| p.top_k = 3), &exp);
    }

    #[test]
    fn top_p_distribution() {
        let full = softmax(&LOGITS, 1.0);
        // Sorted: 5 (0.57), 0 (0.21), 1 (0.08)...: top_p 0.7 keeps 5 and 0.
        let s = full[5] + full[0];
        let exp: Vec<f64> = (0..6)
            .map(|i| {
                if [5, 0].contains(&i) {
                    full[i] / s
                } else {
                    0.0
                }
            })
            .collect();
        check_distribution(&params(|p| p.top_p = 0.7), &exp);
    }

    #[test]
    fn min_p_distribution() {
        let full = softmax(&LOGITS, 1.0);
        // min_p 0.1 of top prob 0.57 keeps p >= 0.057: tokens 5, 0, 1, 2 (0.049 dropped).
        let keep: Vec<usize> = (0..6).filter(|&i| full[i] >= 0.1 * full[5]).collect();
        let s: f64 = keep.iter().map(|&i| full[i]).sum();
        let exp: Vec<f64> = (0..6)
            .map(|i| if keep.contains(&i) { full[i] / s } else { 0.0 })
            .collect();
        check_distribution(&params(|p| p.min_p = 0.1), &exp);
    }

    #[test]
    fn combined_filters_distribution() {
        let full = softmax(&LOGITS, 1.0);
        // top_p 0.9 alone keeps 5, 0, 1, 2; top_k 2 cuts that to 5, 0.
        let s = full[5] + full[0];
        let exp: Vec<f64> = (0..6)
            .map(|i| {
                if [5, 0].contains(&i) {
                    full[i] / s
                } else {
                    0.0
                }
            })
            .collect();
        check_distribution(
            &params(|p| {
                p.top_k = 2;
                p.top_p = 0.9;
            }),
            &exp,
        );
        // min_p 0.4 of the top probability leaves only token 5.
        let only: Vec<f64> = (0..6).map(|i| if i == 5 { 1.0 } else { 0.0 }).collect();
        check_distribution(&params(|p| p.min_p = 0.4), &only);
    }

    #[test]
    fn greedy_penalties_and_bias() {
        let mut s = RequestSampler::new(1);
        let p = SamplingParams::greedy(10);
        let mut l = LOGITS;
        assert_eq!(s.sample(&mut l, &p, 0).token, 5);
        // Bias flips the winner.
        let pb = params(|p| {
            p.temperature = 0.0;
            p.logit_bias = vec![(0, 1.5)];
        });
        let mut l = LOGITS;
        assert_eq!(s.sample(&mut l, &pb, 1).token, 0);
        // Token 5 was generated at index 0: a presence penalty of 1.5 drops it below token 0.
        let pp = params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 1.5;
        });
        let mut l = LOGITS;
        assert_eq!(s.sample(&mut l, &pp, 1).token, 0);
        // Repetition penalty divides the positive logit: 3.0 / 2 = 1.5 < 2.0.
        let pr = params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 2.0;
        });
        let mut l = LOGITS;
        assert_eq!(s.sample(&mut l, &pr, 1).token, 0);
        assert_eq!(s.generated(), &[5, 0]);
    }

    #[test]
    fn same_seed_same_tokens_any_history() {
        let p = params(|p| p.temperature = 1.0);
        let draw = |idx: usize| {
            let mut s = RequestSampler::new(42);
            let mut l = LOGITS;
            s.sample(&mut l, &p, idx).token
        };
        let a: Vec<_> = (0..50).map(draw).collect();
        let mut s = RequestSampler::new(42);
        let b: Vec<_> = (0..50)
            .map(|i| {
                let mut l = LOGITS;
                s.sample(&mut l, &p, i).token
            })
            .collect();
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&t| t != a[0]),
            "a temperature-1 draw should vary across indices"
        );
    }

    #[test]
    fn logprobs_are_normalised() {
        let lp = logprobs(&LOGITS, Some(5), 3);
        assert_eq!(
            lp.top.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![5, 0, 1]
        );
        let total: f64 = softmax(&LOGITS, 1.0).iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!((lp.logprob - (softmax(&LOGITS, 1.0)[5] as f32).ln()).abs() < 1e-5);
    }
    #[test]
    fn masked_sampling_draws_only_allowed_tokens_with_renormalised_logprobs() {
        // Tokens 1 and 3 allowed: the greedy pick skips the best logit (token 5).
        let mask = [0b1010u32];
        let g = params(|p| {
            p.temperature = 0.0;
            p.return_logprob = true;
        });
        let mut l = LOGITS;
        let s = RequestSampler::new(1).sample_masked(&mut l, &g, 0, Some(&mask));
        assert_eq!(s.token, 1);
        let lp = s.logprob.unwrap().logprob as f64;
        let expected = (1.0f64.exp() / (1.0f64.exp() + 1.0)).ln();
        assert!((lp - expected).abs() < 1e-5, "{lp} vs {expected}");
        // Random sampling over many seeds never leaves the mask.
        let t = params(|p| p.temperature = 1.5);
        for seed in 0..2000 {
            let mut l = LOGITS;
            let tok = RequestSampler::new(seed).sample_masked(&mut l, &t, 0, Some(&mask));
            assert!(
                tok.token == 1 || tok.token == 3,
                "seed {seed}: {}",
                tok.token
            );
        }
    }
}
