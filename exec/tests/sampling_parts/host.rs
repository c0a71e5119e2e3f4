//! The host paths: logprobs (chosen token and top alternatives) teacher-forced against the
//! reference, repetition / frequency / presence penalties and logit bias taking effect.

use super::checks::{base_config, explain, sampled};
use super::{prompt, req, Checks, Subject};
use doppel_core::{Backend, SamplingParams, TokenId, TokenLogprob};
use doppel_exec::sampling::{apply_bias_and_penalties, argmax, logprobs};
use std::collections::HashMap;

/// Worst error of returned logprobs against the reference's, as a fraction of the tolerance
/// (2 x the logit bound: a log-softmax moves by at most twice its logits' largest move), and the
/// first problem found. `adjust` turns a reference row into what the sampler saw (penalties).
fn compare_logprobs<B: Backend>(
    s: &Subject<'_, B>,
    pr: &[u32],
    tokens: &[u32],
    got: &[Option<TokenLogprob>],
    adjust: &dyn Fn(&mut Vec<f32>, usize),
) -> (f64, Option<String>) {
    let rows = s.reference.rows(pr, tokens);
    let (mut worst, mut problem) = (0.0f64, None);
    let mut measured = s.measured.get();
    for (i, &t) in tokens.iter().enumerate() {
        let mut row = rows[i].clone();
        adjust(&mut row, i);
        let Some(g) = &got[i] else {
            problem.get_or_insert(format!("index {i}: no logprob returned"));
            continue;
        };
        let tol = 2.0 * s.tol.logit(&row);
        let want = logprobs(&row, Some(t), g.top.len());
        let lse = row[t as usize] - want.logprob;
        let at = |id: TokenId| (row[id as usize] - lse) as f64;
        let err = (g.logprob as f64 - want.logprob as f64).abs();
        measured = measured.max(err);
        worst = worst.max(err / tol);
        // Each alternative's value, and its rank: within the tolerance of the reference's k-th.
        let kth = want.top.last().map_or(f64::NEG_INFINITY, |x| x.1 as f64);
        for &(id, lp) in &g.top {
            let err = (lp as f64 - at(id)).abs();
            measured = measured.max(err);
            worst = worst.max(err / tol);
            if at(id) < kth - 2.0 * tol {
                problem.get_or_insert(format!("index {i}: top token {id} is not among the top"));
            }
        }
        if g.top.windows(2).any(|w| w[0].1 < w[1].1) {
            problem.get_or_insert(format!("index {i}: top alternatives out of order"));
        }
    }
    s.measured.set(measured);
    if worst > 1.0 {
        problem.get_or_insert(format!("error {worst:.2} x the tolerance"));
    }
    (worst, problem)
}

/// Logprobs of greedy and sampled requests (sampled on the host because they ask for logprobs)
/// against the reference's on the same tokens; the sampled tokens explained by their draws.
pub fn logprob_checks<B: Backend>(s: &Subject<'_, B>, c: &mut Checks) {
    let v = s.reference.vocab;
    let mut specs = vec![
        (1u64, SamplingParams::greedy(16)),
        (2, sampled(1.0, -1, 0.9, 0.0, 7, 16)),
        (3, sampled(0.8, 30, 1.0, 0.02, 8, 16)),
    ];
    for (i, (_, p)) in specs.iter_mut().enumerate() {
        p.return_logprob = true;
        p.top_logprobs = [5, 3, 0][i];
    }
    let reqs: Vec<_> = specs
        .iter()
        .map(|(id, p)| req(*id, prompt(*id as u32 + 40, 14, v), p.clone()))
        .collect();
    let o = s.run(&base_config(), true, std::slice::from_ref(&reqs));
    for (r, (id, p)) in reqs.iter().zip(&specs) {
        let (worst, problem) =
            compare_logprobs(s, &r.prompt, &o.tokens[id], &o.logprobs[id], &|_, _| {});
        c.add(
            format!(
                "request {id} (top {}): logprobs vs the reference",
                p.top_logprobs
            ),
            format!(
                "worst {worst:.3} of the tolerance; {}",
                problem.clone().unwrap_or_default()
            ),
            problem.is_none(),
        );
        let toks = &o.tokens[id];
        let rows = s.reference.rows(&r.prompt, toks);
        let bad = explain(&rows, s.order(p), p, toks, s.draw_err());
        let n = toks.len();
        c.add(
            format!("request {id}: tokens explained by the reference and their draws"),
            format!(
                "{}/{n}; {}",
                n - bad.len(),
                bad.first().cloned().unwrap_or_default()
            ),
            bad.is_empty(),
        );
    }
}

/// Penalties over the tokens generated before `index`, as the sampler applies them.
fn penalised(row: &mut [f32], p: &SamplingParams, before: &[u32]) {
    let mut counts: HashMap<TokenId, u32> = HashMap::new();
    for &t in before {
        *counts.entry(t).or_insert(0) += 1;
    }
    apply_bias_and_penalties(row, p, &counts);
}

/// Penalties lower repeated tokens' logprobs by the formula, and logit bias picks its token.
pub fn penalty_and_bias_checks<B: Backend>(s: &Subject<'_, B>, c: &mut Checks) {
    let v = s.reference.vocab;
    let pr = prompt(60, 10, v);
    let mut p = SamplingParams::greedy(24);
    p.repetition_penalty = 1.3;
    p.frequency_penalty = 0.4;
    p.presence_penalty = 0.4;
    p.return_logprob = true;
    p.top_logprobs = 20;
    let o = s.run(
        &base_config(),
        false,
        &[vec![req(1, pr.clone(), p.clone())]],
    );
    let (toks, got) = (&o.tokens[&1], &o.logprobs[&1]);
    let adjust = |row: &mut Vec<f32>, i: usize| penalised(row, &p, &toks[..i]);
    let (worst, problem) = compare_logprobs(s, &pr, toks, got, &adjust);
    c.add(
        "penalties: logprobs vs the reference with the penalties applied",
        format!(
            "worst {worst:.3} of the tolerance; {}",
            problem.clone().unwrap_or_default()
        ),
        problem.is_none(),
    );
    // Evidence the penalties acted: against the best alternative never generated before, each
    // repeated alternative sits lower than the unpenalised logits put it (its own logprob may
    // rise when the penalty also hits a dominant token).
    let rows = s.reference.rows(&pr, toks);
    let (mut seen, mut lowered) = (0, 0);
    for (i, g) in got.iter().enumerate() {
        let Some(g) = g else { continue };
        let Some(&(fresh, fresh_lp)) = g.top.iter().find(|x| !toks[..i].contains(&x.0)) else {
            continue;
        };
        let (row, tol) = (&rows[i], 2.0 * s.tol.logit(&rows[i]));
        for &(id, lp) in g.top.iter().filter(|x| toks[..i].contains(&x.0)) {
            seen += 1;
            let plain_gap = (row[id as usize] - row[fresh as usize]) as f64;
            lowered += (((lp - fresh_lp) as f64) < plain_gap - tol) as usize;
        }
    }
    c.add(
        "penalties: repeated tokens among the alternatives are lowered",
        format!("{lowered}/{seen} lowered beyond the tolerance"),
        seen > 0 && lowered == seen,
    );
    bias_checks(s, c, &pr);
}

/// A +60 bias (beyond any logit spread of this model) makes its token every pick (greedy and
/// sampled); a -50 bias on the argmax makes the greedy pick the runner-up.
fn bias_checks<B: Backend>(s: &Subject<'_, B>, c: &mut Checks, pr: &[u32]) {
    let first = s.reference.rows(pr, &[]).remove(0);
    let best = argmax(&first);
    let mut order: Vec<usize> = (0..first.len()).collect();
    order.sort_by(|&a, &b| first[b].total_cmp(&first[a]));
    let (runner_up, fifth) = (order[1] as u32, order[4] as u32);
    let mut g = SamplingParams::greedy(12);
    g.logit_bias = vec![(fifth, 60.0)];
    let mut t = sampled(1.0, -1, 1.0, 0.0, 11, 12);
    t.logit_bias = vec![(fifth, 60.0)];
    let mut neg = SamplingParams::greedy(1);
    neg.logit_bias = vec![(best, -50.0)];
    let reqs = vec![
        req(1, pr.to_vec(), g),
        req(2, pr.to_vec(), t),
        req(3, pr.to_vec(), neg),
    ];
    let o = s.run(&base_config(), true, &[reqs]);
    for id in [1u64, 2] {
        let all = o.tokens[&id].iter().all(|&x| x == fifth);
        c.add(
            format!(
                "logit bias +60 on token {fifth} ({}): every token is it",
                ["greedy", "sampled"][id as usize - 1]
            ),
            format!("{:?}", o.tokens[&id]),
            all && o.tokens[&id].len() == 12,
        );
    }
    let near_tie =
        (first[runner_up as usize] - first[order[2]]) as f64 <= 2.0 * s.tol.logit(&first);
    let got = o.tokens[&3][0];
    c.add(
        format!("logit bias -50 on the argmax {best}: the runner-up {runner_up} is picked"),
        format!("picked {got}"),
        got == runner_up || (near_tie && got == order[2] as u32),
    );
}
