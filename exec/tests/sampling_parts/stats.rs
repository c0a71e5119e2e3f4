//! The host's f64 model of what a sampler may pick: the filtered distribution with the tokens
//! near a cut marked, each kept token's interval of the inverse CDF, and the chi-square bound.

use doppel_core::SamplingParams;

/// In which order a sampler lays the kept tokens along [0, 1) for its inverse CDF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdfOrder {
    /// Token id order (the GPU's `sample_rows` kernel).
    Vocabulary,
    /// Most likely first when top-k or top-p is on, else token id order (the host sampler,
    /// `sampling::filtered_distribution`).
    HostSampler,
}

/// What the filters keep from one row, with the tokens whose fate a small error could change.
pub struct Kept {
    /// Probability of every token after temperature (before filtering).
    pub p: Vec<f64>,
    /// Kept whatever the error.
    pub sure: Vec<bool>,
    /// Kept for some error within the bound (a superset of `sure`).
    pub maybe: Vec<bool>,
}

impl Kept {
    /// Tokens near a cut (kept or dropped depending on rounding).
    pub fn ambiguous(&self) -> usize {
        self.sure
            .iter()
            .zip(&self.maybe)
            .filter(|(s, m)| !**s && **m)
            .count()
    }
}

/// Softmax of `logits / temperature` in f64 (NaN and -inf get 0).
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| {
            let l = l as f64;
            if l.is_nan() {
                0.0
            } else {
                ((l - m) / temperature).exp()
            }
        })
        .collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// The kept sets of `logits` under `p`'s temperature, top-k, top-p and min-p (SGLang's cuts on
/// the unfiltered probabilities, all applied), when every probability may be off by the factor
/// `1 ± rel` (so a cumulative sum by `rel` times itself).
pub fn kept(logits: &[f32], p: &SamplingParams, rel: f64) -> Kept {
    let probs = softmax(logits, p.temperature as f64);
    let mut sorted = probs.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top = sorted[0];
    let (up, down) = (1.0 + rel, 1.0 - rel);
    // Per active cut, the probability that keeps a token for sure and the one that may keep it.
    let mut cuts: Vec<(f64, f64)> = Vec::new();
    if p.min_p > 0.0 {
        let t = p.min_p as f64 * top;
        cuts.push((t * up / down, t * down / up));
    }
    if p.top_k > 0 && (p.top_k as usize) < probs.len() {
        // Sure: beats the first token dropped under any error; maybe: can reach the k-th.
        let k = p.top_k as usize;
        cuts.push((sorted[k] * up / down, sorted[k - 1] * down / up));
    }
    if p.top_p < 1.0 {
        // The last token whose exclusive cumulative mass is within the limit is kept.
        let cut = |limit: f64| {
            let (mut acc, mut last) = (0.0, sorted[0]);
            for &s in &sorted {
                if acc > limit {
                    break;
                }
                last = s;
                acc += s;
            }
            last
        };
        let tp = p.top_p as f64;
        cuts.push((cut(tp * down), cut(tp * up)));
    }
    let sure = probs
        .iter()
        .map(|&x| x > 0.0 && (x == top || cuts.iter().all(|c| x >= c.0)))
        .collect();
    let maybe = probs
        .iter()
        .map(|&x| x > 0.0 && (x == top || cuts.iter().all(|c| x >= c.1)))
        .collect();
    Kept {
        p: probs,
        sure,
        maybe,
    }
}

/// Where `token` sits on the inverse CDF over the `maybe` tokens of `k` laid out in `order`:
/// (start, end) as fractions of their mass, widened by the mass of tokens whose place relative to
/// it rounding could swap (equal within `1 ± rel` under a probability order, or near a cut).
/// None when `token` cannot be kept.
pub fn interval(
    k: &Kept,
    token: usize,
    order: CdfOrder,
    p: &SamplingParams,
    rel: f64,
) -> Option<(f64, f64)> {
    if !k.maybe.get(token).copied().unwrap_or(false) {
        return None;
    }
    let mut ids: Vec<usize> = (0..k.p.len()).filter(|&i| k.maybe[i]).collect();
    let by_prob = order == CdfOrder::HostSampler && (p.top_k > 0 || p.top_p < 1.0);
    if by_prob {
        ids.sort_by(|&a, &b| k.p[b].total_cmp(&k.p[a]).then(a.cmp(&b)));
    }
    let total: f64 = ids.iter().map(|&i| k.p[i]).sum();
    let near = |i: usize| {
        let (a, b) = (k.p[i], k.p[token]);
        by_prob && i != token && a <= b * (1.0 + 2.0 * rel) && a >= b * (1.0 - 2.0 * rel)
    };
    let uncertain: f64 = ids
        .iter()
        .filter(|&&i| !k.sure[i] || near(i))
        .map(|&i| k.p[i])
        .sum();
    let mut start = 0.0;
    for &i in &ids {
        if i == token {
            break;
        }
        start += k.p[i];
    }
    // Dropping or moving the uncertain tokens shifts both ends by at most their mass, and the
    // renormalisation by as much again.
    let widen = 2.0 * uncertain / total;
    Some((start / total - widen, (start + k.p[token]) / total + widen))
}

/// The chi-square statistic's upper `1e-6` quantile for `dof` degrees of freedom, by
/// Wilson-Hilferty: never below the exact value (so a false failure stays under 1e-6), at most
/// 10 % above it from 2 degrees of freedom on.
pub fn chi2_bound(dof: usize) -> f64 {
    const Z: f64 = 4.753_424; // upper 1e-6 point of the standard normal
    let d = dof.max(1) as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + Z * a.sqrt()).powi(3)
}

/// Chi-square of `counts` (n draws) against `expected` probabilities, cells with fewer than 5
/// expected draws merged into one; (statistic, degrees of freedom).
pub fn chi2(counts: &[usize], expected: &[f64], n: usize) -> (f64, usize) {
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut rest_c, mut rest_e) = (0.0, 0.0);
    for (&c, &e) in counts.iter().zip(expected) {
        let ex = e * n as f64;
        if ex >= 5.0 {
            stat += (c as f64 - ex).powi(2) / ex;
            cells += 1;
        } else {
            rest_c += c as f64;
            rest_e += ex;
        }
    }
    if rest_e > 0.0 {
        stat += (rest_c - rest_e).powi(2) / rest_e;
        cells += 1;
    }
    (stat, cells.saturating_sub(1))
}

#[test]
fn chi2_bound_is_near_the_exact_quantiles() {
    // Exact upper 1e-6 quantiles (regularised incomplete gamma, bisected).
    for (dof, exact) in [
        (2, 27.63),
        (5, 35.89),
        (10, 46.86),
        (100, 182.13),
        (383, 529.23),
    ] {
        let b = chi2_bound(dof);
        assert!(b >= exact && b < exact * 1.1, "dof {dof}: {b} vs {exact}");
    }
}
