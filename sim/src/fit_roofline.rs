//! The roofline part of `doppel sim calibrate`: the GEMM curve, bandwidth and attention
//! efficiencies and fixed step times that minimise the squared log error of the cost model over
//! the measured prefill and mixed steps (and decode steps where no decode table is measured).
//!
//! The measurement does not pin every term (a bandwidth floor under a max() trades against a
//! fixed time; GEMM points below the smallest measured prefill price nothing measured), and the
//! error has several troughs. So: efficiencies are bounded by the hardware's peak, a weak prior
//! keeps terms the data leaves free at the base profile's value, and the optimiser descends from
//! several deterministic starts and keeps the lowest.

use crate::cost::{BatchShape, RooflineCost};
use crate::nelder_mead::nelder_mead;
use crate::profile::Profile;

// Parameter vector layout (natural logs): fixed terms first, then the GEMM curve values.
const N_FIXED: usize = 8;

fn apply(base: &Profile, x: &[f64]) -> Profile {
    // Bounded: a term the measurements do not constrain must not run off to 0 or infinity. The
    // efficiencies are fractions of the sheet's peak (HBM bandwidth, tensor FLOPs), so at most 1:
    // above it a bandwidth term turns into a free parameter that trades against the fixed times
    // (the fits of run 13's measurement put weight_bandwidth at 0.26 or at 261 for the same
    // error, and priced the prefills in between differently).
    let frac = |v: f64| v.clamp(-25.0, 0.0).exp();
    let ns = |v: f64| v.clamp(-25.0, 25.0).exp();
    let mut p = base.clone();
    let e = &mut p.efficiency;
    e.weight_bandwidth = frac(x[0]);
    e.kv_bandwidth = frac(x[1]);
    e.attention_compute = frac(x[2]);
    e.decode_step_ns = ns(x[3]);
    e.prefill_step_ns = ns(x[4]);
    e.prefill_per_req_ns = ns(x[5]);
    // The single-sequence attention floor replaces the serial term of earlier fits (the same
    // effect: fitted together they trade); old profiles keep theirs.
    e.attention_seq_ns = 0.0;
    e.attention_seq_rows = 0.0;
    e.attention_grid_ns = ns(x[6]);
    e.attention_grid_rows = ns(x[7]).max(1.0);
    for (g, v) in e.gemm.iter_mut().zip(&x[N_FIXED..]) {
        g.1 = frac(*v);
    }
    p
}

/// The base's GEMM points plus powers of 4 from 1 to 16384, valued on the base's curve.
fn gemm_grid(p: &Profile) -> Vec<(f64, f64)> {
    let cost = RooflineCost::new(p, 1);
    let mut t: Vec<f64> = p.efficiency.gemm.iter().map(|g| g.0).collect();
    t.extend((0..8).map(|k| 4f64.powi(k)));
    t.sort_by(f64::total_cmp);
    t.dedup();
    t.into_iter()
        .map(|x| (x, cost.gemm_efficiency(x as usize)))
        .collect()
}

fn start(p: &Profile) -> Vec<f64> {
    let e = &p.efficiency;
    let pos = |v: f64| v.max(1e-9).ln();
    let frac = |v: f64| pos(v).min(0.0);
    let mut x = vec![
        frac(e.weight_bandwidth),
        frac(e.kv_bandwidth),
        frac(e.attention_compute),
        pos(e.decode_step_ns.max(1.0)),
        pos(e.prefill_step_ns.max(1.0)),
        pos(e.prefill_per_req_ns.max(1.0)),
        // Where the base has none: 0.3 ns per pair, rate falling past 4 blocks' rows.
        pos(if e.attention_grid_ns > 0.0 {
            e.attention_grid_ns
        } else {
            0.3
        }),
        pos(if e.attention_grid_rows > 0.0 {
            e.attention_grid_rows
        } else {
            256.0
        }),
    ];
    x.extend(e.gemm.iter().map(|g| frac(g.1)));
    x
}

fn loss(base: &Profile, shapes: &[(BatchShape, f64)], x: &[f64]) -> f64 {
    let cost = RooflineCost::new(&apply(base, x), 1);
    shapes
        .iter()
        .map(|(s, m)| {
            let d = (cost.step_seconds(s) / m).ln();
            d * d
        })
        .sum::<f64>()
        / shapes.len() as f64
}

/// Starts of the device fit besides the base's point.
const STARTS: usize = 6;

/// Scatter of a measured shape's time around the model (relative, ~2 % on the H100).
const NOISE: f64 = 0.02;
/// Width of the prior on each parameter around the base profile's value: a factor of 10.
const PRIOR_WIDTH: f64 = std::f64::consts::LN_10;

/// The negative log posterior (scaled to the mean squared log error): the fit's error plus a
/// weak Gaussian prior (in log units) around the base profile. Where the measured shapes pin a
/// parameter the prior is negligible (a factor of 10 away costs what 0.1 % of error on one
/// shape in a few hundred does); where they do not (decode_step_ns once decode steps come from
/// the measured table, GEMM points below the smallest measured prefill, a direction along
/// which two terms trade) it keeps the base's value instead of wherever the simplex stopped.
fn objective(base: &Profile, shapes: &[(BatchShape, f64)], x0: &[f64], x: &[f64]) -> f64 {
    let w = (NOISE / PRIOR_WIDTH).powi(2) / shapes.len().max(1) as f64;
    let prior: f64 = x.iter().zip(x0).map(|(a, b)| (a - b) * (a - b)).sum();
    loss(base, shapes, x) + w * prior
}

/// Radical inverse of `k` in base `b` (the Halton sequence): well-spread, deterministic points
/// in [0, 1).
fn halton(mut k: usize, b: usize) -> f64 {
    let (mut f, mut r) = (1.0, 0.0);
    while k > 0 {
        f /= b as f64;
        r += f * (k % b) as f64;
        k /= b;
    }
    r
}

/// Deterministic starts: the base's point, then `n` Halton points within +-`spread` (log units)
/// of it, one prime base per parameter.
fn starts(x0: &[f64], n: usize, spread: f64) -> Vec<Vec<f64>> {
    const PRIMES: [usize; 24] = [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
    ];
    let mut out = vec![x0.to_vec()];
    for k in 1..=n {
        out.push(
            x0.iter()
                .enumerate()
                .map(|(j, v)| v + spread * (2.0 * halton(k, PRIMES[j % PRIMES.len()]) - 1.0))
                .collect(),
        );
    }
    out
}

/// Nelder-Mead from `x`, restarted from its best point with each of `steps` in turn (restarts
/// escape the simplex's early collapse).
fn descend(f: &dyn Fn(&[f64]) -> f64, x: &[f64], steps: &[f64]) -> (Vec<f64>, f64) {
    let (mut best, mut best_v) = nelder_mead(f, x, 0.5, 4000);
    for &step in steps {
        let (x, v) = nelder_mead(f, &best, step, 4000);
        if v < best_v {
            best = x;
            best_v = v;
        }
    }
    (best, best_v)
}

/// One point per distinct shape, at its median time: each measured shape weighs the same in the
/// fit, however many steps of it a scenario ran (a scenario's decode transients or a long
/// chunked prefill would otherwise outweigh the single extends the traces are made of).
fn per_shape_medians(points: Vec<(BatchShape, f64)>) -> Vec<(BatchShape, f64)> {
    let mut groups: Vec<(BatchShape, Vec<f64>)> = Vec::new();
    for (s, t) in points {
        match groups.iter_mut().find(|g| g.0 == s) {
            Some(g) => g.1.push(t),
            None => groups.push((s, vec![t])),
        }
    }
    groups
        .into_iter()
        .map(|(s, mut v)| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let med = if n % 2 == 1 {
                v[n / 2]
            } else {
                0.5 * (v[n / 2 - 1] + v[n / 2])
            };
            (s, med)
        })
        .collect()
}

/// The roofline terms of `base` (GEMM curve on a finer grid, bandwidths, attention, fixed times)
/// fitted to measured `(shape, device seconds)` points; the rest of `base` is kept.
pub(crate) fn fit_roofline(base: &Profile, shapes: Vec<(BatchShape, f64)>) -> Profile {
    let shapes = per_shape_medians(shapes);
    // A finer GEMM curve than a hand-written profile's: small decode batches sit between its
    // points, and a coarse log-linear curve cannot follow them.
    let mut base = base.clone();
    base.efficiency.gemm = gemm_grid(&base);
    let base = &base;
    let x0 = start(base);
    let f = |x: &[f64]| objective(base, &shapes, &x0, x);
    // The error has several troughs (max() terms, interpolated curves): descend from several
    // spread starts and keep the lowest; the first wins a tie, so the fit is deterministic.
    // Each start is screened by a short descent; the best is then polished.
    let mut best = (x0.clone(), f64::INFINITY);
    for x in starts(&x0, STARTS, 1.5) {
        let (x, v) = descend(&f, &x, &[1.0, 0.3]);
        if v < best.1 {
            best = (x, v);
        }
    }
    let polished = descend(
        &f,
        &best.0,
        &[1.0, 0.3, 1.0, 0.3, 1.0, 0.3, 0.1, 0.03, 0.01],
    );
    apply(base, &polished.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Profile {
        Profile::load("h100-80g/qwen3-0.6b/sglang").unwrap()
    }

    #[test]
    fn starts_are_deterministic_spread_and_begin_at_the_base() {
        let x0 = [0.0, -1.0, 2.0];
        let s = starts(&x0, 6, 1.5);
        assert_eq!(s.len(), 7);
        assert_eq!(s[0], x0.to_vec());
        assert_eq!(s, starts(&x0, 6, 1.5));
        for x in &s[1..] {
            assert!(
                x.iter().zip(&x0).all(|(a, b)| (a - b).abs() <= 1.5),
                "{x:?}"
            );
            assert_ne!(x, &x0.to_vec());
        }
        assert_eq!(
            (halton(1, 2), halton(3, 2), halton(2, 3)),
            (0.5, 0.75, 2.0 / 3.0)
        );
    }

    #[test]
    fn efficiencies_stay_fractions_of_the_peak() {
        let b = base();
        let mut x = start(&b);
        x.iter_mut().for_each(|v| *v = 5.0);
        let e = apply(&b, &x).efficiency;
        assert_eq!(
            (e.weight_bandwidth, e.kv_bandwidth, e.attention_compute),
            (1.0, 1.0, 1.0)
        );
        assert!(e.gemm.iter().all(|g| g.1 == 1.0), "{:?}", e.gemm);
    }

    #[test]
    fn terms_the_points_do_not_price_keep_the_base_value() {
        // Prefills only, priced by a known profile: decode_step_ns prices none of them, and the
        // fit leaves it at the base's value instead of wherever the simplex stopped.
        let b = base();
        let mut truth = b.clone();
        truth.efficiency.prefill_step_ns = 900_000.0;
        truth.efficiency.attention_compute = 0.3;
        let cost = RooflineCost::new(&truth, 1);
        let shapes: Vec<(BatchShape, f64)> = [(1usize, 512usize), (4, 256), (2, 2048), (8, 1024)]
            .iter()
            .flat_map(|&(n, len)| [BatchShape::prefill(n, len), BatchShape::prefill(n * 2, len)])
            .map(|s| (s, cost.step_seconds(&s)))
            .collect();
        let fit = fit_roofline(&b, shapes.clone());
        let got = RooflineCost::new(&fit, 1);
        for (s, t) in &shapes {
            let e = got.step_seconds(s) / t - 1.0;
            assert!(e.abs() < 0.01, "{s:?}: {e}");
        }
        let rel = fit.efficiency.decode_step_ns / b.efficiency.decode_step_ns - 1.0;
        assert!(rel.abs() < 0.05, "{}", fit.efficiency.decode_step_ns);
        // Deterministic: the same points fit to the same profile.
        assert_eq!(fit_roofline(&b, shapes), fit);
    }
}
