//! Seeded reproducibility, every sampled token against the reference (teacher-forced), and
//! sampled frequencies against the expected distribution.

use super::stats::{chi2, chi2_bound, interval, kept, CdfOrder};
use super::{prompt, req, Batching, Checks, Subject};
use doppel_core::{Backend, SamplingParams, SchedulerConfig, TokenLogprob};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A roomy scheduler: no chunking, 32 request rows.
pub fn base_config() -> SchedulerConfig {
    SchedulerConfig {
        kv_capacity_tokens: 4000,
        context_len: 512,
        req_pool_size: Some(32),
        max_prefill_tokens: 512,
        chunked_prefill_size: None,
        ..Default::default()
    }
}

/// Sampling parameters: temperature, top-k, top-p, min-p, seed, tokens.
pub fn sampled(t: f32, k: i32, p: f32, m: f32, seed: u64, n: usize) -> SamplingParams {
    SamplingParams {
        temperature: t,
        top_k: k,
        top_p: p,
        min_p: m,
        seed: Some(seed),
        max_new_tokens: n,
        ..Default::default()
    }
}

/// The uniform draw the engine uses for output index `index` of a request seeded `seed`.
pub fn uniform(seed: u64, index: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng.gen::<f32>() as f64
}

/// Positions of `tokens` that `rows` (row i: the logits behind token i, each logit within `e`
/// of the backend's) cannot explain: each sampled token's interval on the backend's inverse CDF
/// `order`, widened by what `e` can move, must hold the request's uniform draw, and a greedy
/// token must be the argmax up to a near tie.
pub fn explain(
    rows: &[Vec<f32>],
    order: CdfOrder,
    p: &SamplingParams,
    tokens: &[u32],
    e: f64,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        let row = &rows[i];
        if p.is_greedy() {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            if (row[t as usize] as f64) < m - 2.0 * e {
                bad.push(format!(
                    "index {i}: greedy token {t} is {:.4} below the max",
                    m - row[t as usize] as f64
                ));
            }
            continue;
        }
        // Each probability is off by a factor within exp(+-2e/T): numerator and normaliser.
        let rel = (2.0 * e / p.temperature as f64).exp() - 1.0;
        let k = kept(row, p, rel);
        let u = uniform(p.seed.unwrap_or(0), i);
        match interval(&k, t as usize, order, p, rel) {
            Some((lo, hi)) if u >= lo - 2.0 * rel && u <= hi + 2.0 * rel => {}
            Some((lo, hi)) => bad.push(format!(
                "index {i}: token {t} covers [{lo:.5}, {hi:.5}) of the CDF, the draw is {u:.5}"
            )),
            None => bad.push(format!(
                "index {i}: token {t} is outside every filter's set"
            )),
        }
    }
    bad
}

/// The backend's own logits (as full-vocabulary logprobs, host path) behind each token of each
/// `(prompt, tokens)`: one greedy one-token request per position, teacher-forced on the tokens,
/// all in one run.
pub fn own_rows<B: Backend>(s: &Subject<'_, B>, seqs: &[(&[u32], &[u32])]) -> Vec<Vec<Vec<f32>>> {
    let v = s.reference.vocab;
    let id = |q: usize, i: usize| (q * 1000 + i) as u64;
    let mut reqs = Vec::new();
    for (q, (pr, tokens)) in seqs.iter().enumerate() {
        for i in 0..tokens.len() {
            let mut g = SamplingParams::greedy(1);
            g.return_logprob = true;
            g.top_logprobs = v;
            reqs.push(req(id(q, i), [pr, &tokens[..i]].concat(), g));
        }
    }
    let o = s.run(&base_config(), false, &[reqs]);
    let row = |q: usize, i: usize| {
        let lp = o.logprobs[&id(q, i)][0]
            .as_ref()
            .expect("logprobs asked for");
        let mut row = vec![f32::NEG_INFINITY; v];
        for &(t, x) in &lp.top {
            row[t as usize] = x;
        }
        row
    };
    seqs.iter()
        .enumerate()
        .map(|(q, (_, tokens))| (0..tokens.len()).map(|i| row(q, i)).collect())
        .collect()
}

/// Check every request of an outcome with [`explain`] twice: against the reference within the
/// measured error ([`Subject::draw_err`]: every token), and against the backend's own logits
/// within the batch-shape error (every token where the backend is batch invariant, else at
/// least 95 %: a draw within rounding of a CDF boundary may go either way).
fn explain_all<B: Backend>(
    s: &Subject<'_, B>,
    c: &mut Checks,
    what: &str,
    reqs: &[(u64, Vec<u32>, SamplingParams)],
    tokens: &BTreeMap<u64, Vec<u32>>,
) {
    let (mut n, mut bad, mut own_bad) = (0, Vec::new(), Vec::new());
    let seqs: Vec<(&[u32], &[u32])> = reqs
        .iter()
        .map(|(id, pr, _)| (&pr[..], &tokens[id][..]))
        .collect();
    let own = own_rows(s, &seqs);
    for ((id, pr, p), own) in reqs.iter().zip(own) {
        let t = &tokens[id];
        let order = s.order(p);
        let reference = s.reference.rows(pr, t);
        let b = explain(&reference, order, p, t, s.draw_err());
        bad.extend(b.into_iter().map(|x| format!("request {id} {x}")));
        let b = explain(&own, order, p, t, s.tol.batch_logit);
        own_bad.extend(b.into_iter().map(|x| format!("request {id} {x}")));
        n += t.len();
    }
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    c.add(
        format!("{what}: every token explained by the reference and its draw"),
        format!("{}/{n} tokens; {}", n - bad.len(), first(&bad)),
        bad.is_empty(),
    );
    let ok = match s.batching {
        Batching::Invariant => own_bad.is_empty(),
        Batching::Rounding => own_bad.len() * 20 <= n,
    };
    c.add(
        format!("{what}: tokens explained by the backend's own logits and the draw"),
        format!("{}/{n} tokens; {}", n - own_bad.len(), first(&own_bad)),
        ok,
    );
}

/// Same seeds give the same tokens (twice in one batch; alone and chunked where the backend
/// promises it); other seeds give others; every token is one the reference allows for its draw.
pub fn seeded<B: Backend>(s: &Subject<'_, B>, c: &mut Checks) {
    let v = s.reference.vocab;
    let filters = [
        (0.8, 40, 1.0, 0.0),
        (1.0, -1, 0.9, 0.0),
        (1.2, -1, 1.0, 0.05),
        (0.7, 20, 0.95, 0.02),
        (1.0, -1, 1.0, 0.0),
    ];
    let make = |seed_base: u64| -> Vec<(u64, Vec<u32>, SamplingParams)> {
        filters
            .iter()
            .enumerate()
            .map(|(i, &(t, k, p, m))| {
                let i = i as u64;
                let pr = prompt(i as u32 + 20, 9 + 7 * i as usize, v);
                (i, pr, sampled(t, k, p, m, seed_base + i, 24))
            })
            .collect()
    };
    let specs = make(1000);
    let reqs: Vec<_> = specs
        .iter()
        .map(|(i, pr, p)| req(*i, pr.clone(), p.clone()))
        .collect();
    let base = base_config();
    let a = s.run(&base, true, std::slice::from_ref(&reqs));
    let b = s.run(&base, true, std::slice::from_ref(&reqs));
    c.add(
        "same seeds, same batch, run twice: identical tokens",
        format!("{} requests", reqs.len()),
        a.tokens == b.tokens && a.tokens.len() == reqs.len(),
    );
    let chunked = SchedulerConfig {
        chunked_prefill_size: Some(5),
        ..base.clone()
    };
    let mut alone = BTreeMap::new();
    for r in &reqs {
        let o = s.run(&chunked, false, &[vec![r.clone()]]);
        alone.insert(r.id.0, o.tokens[&r.id.0].clone());
    }
    let same = a
        .tokens
        .iter()
        .filter(|(id, t)| alone.get(*id) == Some(*t))
        .count();
    let what = "each request alone, prefill in chunks of 5, plain order: identical tokens";
    let figure = format!("{same}/{} requests identical", reqs.len());
    match s.batching {
        Batching::Invariant => c.add(what, figure, same == reqs.len()),
        Batching::Rounding => c.note(format!("{what} (not promised)"), figure),
    }
    let other = make(5000);
    let oreqs: Vec<_> = other
        .iter()
        .map(|(i, pr, p)| req(*i, pr.clone(), p.clone()))
        .collect();
    let o = s.run(&base, true, &[oreqs]);
    let differ = a
        .tokens
        .iter()
        .filter(|(id, t)| o.tokens.get(*id) != Some(*t))
        .count();
    c.add(
        "other seeds: different tokens",
        format!("{differ}/{} requests differ", reqs.len()),
        differ == reqs.len(),
    );
    explain_all(s, c, "batched", &specs, &a.tokens);
    explain_all(s, c, "alone, chunked", &specs, &alone);
    explain_all(s, c, "other seeds", &other, &o.tokens);
}

/// The backend's own first-token distribution (log-softmax over the whole vocabulary) after
/// `pr`, from a logprobs run whose prompt was cached by a first request, as the sampling runs
/// find it. Checked against the reference on the way.
fn own_row<B: Backend>(s: &Subject<'_, B>, c: &mut Checks, pr: &[u32]) -> Vec<f32> {
    let v = s.reference.vocab;
    let mut g = SamplingParams::greedy(1);
    g.return_logprob = true;
    g.top_logprobs = v;
    let waves = [
        vec![req(1, pr.to_vec(), SamplingParams::greedy(1))],
        vec![req(2, pr.to_vec(), g)],
    ];
    let o = s.run(&base_config(), false, &waves);
    let top: &TokenLogprob = o.logprobs[&2][0].as_ref().expect("logprob asked for");
    let mut row = vec![f32::NEG_INFINITY; v];
    for &(t, lp) in &top.top {
        row[t as usize] = lp;
    }
    let want = s.reference.rows(pr, &[]).remove(0);
    let want_lp = doppel_exec::sampling::logprobs(&want, None, v);
    let tol = 2.0 * s.tol.logit(&want);
    let worst = want_lp
        .top
        .iter()
        .map(|&(t, lp)| (row[t as usize] as f64 - lp as f64).abs())
        .fold(0.0, f64::max);
    s.measured.set(s.measured.get().max(worst));
    c.add(
        "first-token logprobs over the whole vocabulary vs the reference",
        format!(
            "{} entries, max error {worst:.2e} (tolerance {tol:.2e})",
            top.top.len()
        ),
        top.top.len() == v && worst <= tol,
    );
    row
}

/// Sorted probabilities of `row` at temperature `t`.
fn sorted_probs(row: &[f32], t: f64) -> Vec<f64> {
    let mut p = super::stats::softmax(row, t);
    p.sort_by(|a, b| b.total_cmp(a));
    p
}

/// Cut parameters for `row` each far from a token: (top_k, top_p, min_p), each placed where the
/// probabilities on either side of the cut differ the most.
fn cuts(row: &[f32], t: f64) -> (i32, f32, f32) {
    let p = sorted_probs(row, t);
    let best = |range: std::ops::Range<usize>, score: &dyn Fn(usize) -> f64| {
        range
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap()
    };
    // top_k = j keeps p[..j]: the widest ratio p[j-1] / p[j].
    let k = best(3..24, &|j| p[j - 1] / p[j]);
    // top_p between the exclusive sums of tokens j and j+1 keeps p[..=j]: widest p[j] with the
    // kept mass under 0.9.
    let cum: Vec<f64> = p
        .iter()
        .scan(0.0, |a, &x| {
            let e = *a;
            *a += x;
            Some(e)
        })
        .collect();
    let j = best(2..40, &|j| if cum[j + 1] < 0.9 { p[j] } else { 0.0 });
    let top_p = (cum[j] + cum[j + 1]) / 2.0;
    // min_p between p[j+1] / p[0] and p[j] / p[0]: the widest ratio.
    let m = best(2..30, &|j| p[j] / p[j + 1]);
    let min_p = (p[m] * p[m + 1]).sqrt() / p[0];
    (k as i32, top_p as f32, min_p as f32)
}

/// Draw `n` first tokens after one prompt under temperature, top-k, top-p and min-p (seeds
/// 0..n) and test the counts against the backend's own distribution cut by the host's model.
pub fn frequencies<B: Backend>(s: &Subject<'_, B>, c: &mut Checks, n: usize) {
    let v = s.reference.vocab;
    let pr = prompt(3, 12, v);
    let row = own_row(s, c, &pr);
    let (k, tp, mp) = cuts(&row, 1.0);
    let sets = [
        (
            "temperature 0.6".to_string(),
            sampled(0.6, -1, 1.0, 0.0, 0, 1),
        ),
        (format!("top_k {k}"), sampled(1.0, k, 1.0, 0.0, 0, 1)),
        (format!("top_p {tp:.4}"), sampled(1.0, -1, tp, 0.0, 0, 1)),
        (format!("min_p {mp:.4}"), sampled(1.0, -1, 1.0, mp, 0, 1)),
    ];
    let cfg = SchedulerConfig {
        req_pool_size: Some(256),
        kv_capacity_tokens: 8000,
        ..base_config()
    };
    for (name, p) in sets {
        let reqs: Vec<_> = (0..n as u64)
            .map(|i| {
                let mut q = p.clone();
                q.seed = Some(i);
                req(10 + i, pr.clone(), q)
            })
            .collect();
        let warm = vec![req(1, pr.clone(), SamplingParams::greedy(1))];
        let o = s.run(&cfg, true, &[warm, reqs]);
        let mut counts = vec![0usize; v];
        for i in 0..n as u64 {
            counts[o.tokens[&(10 + i)][0] as usize] += 1;
        }
        let rel = (2.0 * s.tol.batch_logit / p.temperature as f64).exp() - 1.0;
        let kk = kept(&row, &p, rel);
        let outside: usize = (0..v).filter(|&t| !kk.maybe[t]).map(|t| counts[t]).sum();
        // Tokens near a cut are kept or not by rounding: the test is on the draws that landed
        // on sure tokens, which follow the sure tokens' renormalised distribution.
        let sure_mass: f64 = (0..v).filter(|&t| kk.sure[t]).map(|t| kk.p[t]).sum();
        let expected: Vec<f64> = (0..v)
            .map(|t| if kk.sure[t] { kk.p[t] / sure_mass } else { 0.0 })
            .collect();
        let sure_counts: Vec<usize> = (0..v)
            .map(|t| if kk.sure[t] { counts[t] } else { 0 })
            .collect();
        let n_sure: usize = sure_counts.iter().sum();
        let (stat, dof) = chi2(&sure_counts, &expected, n_sure);
        // The draws see the backend's logits in other batch shapes than the logprobs run: each
        // probability may be off by a factor 1 + rel, which adds about 4 n rel^2 to chi-square.
        let bound = chi2_bound(dof) + 4.0 * n as f64 * rel * rel;
        let kept_n = kk.sure.iter().filter(|x| **x).count();
        c.add(
            format!("{name}: sampled frequencies"),
            format!(
                "{n_sure}/{n} draws on {kept_n} surely kept tokens, chi2 {stat:.1} (dof {dof}, \
                 bound {bound:.1} for P(false failure) < 1e-6), {outside} outside the kept set, \
                 {} tokens near a cut",
                kk.ambiguous()
            ),
            stat <= bound && outside == 0 && n_sure * 4 >= n * 3,
        );
    }
}
