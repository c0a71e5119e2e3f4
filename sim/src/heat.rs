//! Sustained load: a GPU kept busy by compute-bound steps (large prefills back to back) reaches
//! its power cap and lowers its SM clock, so later steps of the run take longer than the same
//! steps on a rested GPU. On the H100 (run 10's profile) 14 336-token prefills run back to back
//! started ~2 % faster than the fitted model and settled ~1.5 % slower after ~150 ms; the
//! fidelity burst's 8192-token prefills ran at 1770-1905 MHz against ~1941 MHz in the profile.
//!
//! The model is one state, the heat `h` in [0, 1]: while a step runs it approaches the step's
//! load (its compute-bound share, [`crate::cost::CostModel::load`]) with time constant `tau`,
//! while the GPU idles it falls toward 0 with the same constant, and a step takes
//! `1 + slowdown x` its mean heat `x` its own load longer than the rested cost model says
//! ([`factor`]): the cap lowers the SM clock, which slows the compute-bound share of a step, and
//! the clock is back at its peak as soon as the power drops (the fidelity burst's decode steps ran
//! at 1950-1980 MHz right after its capped prefills).

use crate::calibrate::StepPoint;
use crate::cost::RooflineCost;

/// The heat of one GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Heat {
    level: f64,
}

impl Heat {
    /// A rested GPU.
    pub fn new() -> Heat {
        Heat { level: 0.0 }
    }

    /// The current level.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// The GPU idles for `ns`.
    pub fn idle(&mut self, ns: f64, tau_ns: f64) {
        if ns > 0.0 && tau_ns > 0.0 {
            self.level *= (-ns / tau_ns).exp();
        }
    }

    /// A step of `ns` at `load` runs; returns the mean level over it (the level it started at for
    /// an empty step).
    pub fn run(&mut self, ns: f64, load: f64, tau_ns: f64) -> f64 {
        if !(ns > 0.0 && tau_ns > 0.0) {
            return self.level;
        }
        let load = load.clamp(0.0, 1.0);
        let a = (-ns / tau_ns).exp();
        let mean = load + (self.level - load) * tau_ns / ns * (1.0 - a);
        self.level = load + (self.level - load) * a;
        mean
    }
}

/// How much longer than on a rested GPU a step of `load` (its compute-bound share) runs at mean
/// heat `heat`, for a profile's `slowdown`.
pub fn factor(slowdown: f64, heat: f64, load: f64) -> f64 {
    1.0 + slowdown * heat * load.clamp(0.0, 1.0)
}

/// One step of a measured run: when it started since the run's first step started, how long it
/// ran and at what load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunStep {
    /// Start since the run's first step started (ns).
    pub at_ns: f64,
    /// Duration (ns).
    pub ns: f64,
    /// Compute-bound share (0..1).
    pub load: f64,
}

/// Mean heat of each step of a run that starts rested: the gaps between one step's end and the
/// next one's start are idle.
pub fn run_levels(steps: &[RunStep], tau_ns: f64) -> Vec<f64> {
    let mut h = Heat::new();
    let mut end = 0.0f64;
    steps
        .iter()
        .map(|s| {
            h.idle(s.at_ns - end, tau_ns);
            end = end.max(s.at_ns) + s.ns;
            h.run(s.ns, s.load, tau_ns)
        })
        .collect()
}

/// A measured run for the fit: its steps, and per step the measured and rested-model device
/// times and whether the step enters the error (compute-bound steps: decode steps only cool).
#[derive(Clone, Debug, Default)]
pub struct FitRun {
    /// The steps, in order.
    pub steps: Vec<RunStep>,
    /// (measured ns, rested model ns, counted) per step.
    pub times: Vec<(f64, f64, bool)>,
}

/// The measured runs of `steps` (those with `run` and `run_ns`), in the order of their first
/// step: each run's step indices and its [`FitRun`], priced by `cost` as on a rested GPU.
/// Counted: prefill and mixed steps at least half compute-bound.
pub fn measured_runs(steps: &[StepPoint], cost: &RooflineCost) -> Vec<(Vec<usize>, FitRun)> {
    let mut runs: Vec<(u32, Vec<usize>)> = Vec::new();
    for (i, p) in steps.iter().enumerate() {
        let (Some(r), Some(_)) = (p.run, p.run_ns) else {
            continue;
        };
        match runs.iter_mut().rev().find(|x| x.0 == r) {
            Some(x) => x.1.push(i),
            None => runs.push((r, vec![i])),
        }
    }
    runs.into_iter()
        .map(|(_, mut idx)| {
            idx.sort_by_key(|&i| steps[i].run_ns);
            let t0 = steps[idx[0]].run_ns.unwrap_or(0);
            let mut run = FitRun::default();
            for &i in &idx {
                let p = &steps[i];
                let shape = p.shape();
                let ns = p.device_ns.unwrap_or(p.ns) as f64;
                let step_s = cost.step_seconds(&shape);
                let load = cost.load_at(&shape, step_s);
                run.steps.push(RunStep {
                    at_ns: p.run_ns.unwrap_or(t0).saturating_sub(t0) as f64,
                    ns,
                    load,
                });
                let counted = !shape.is_decode && load >= 0.5;
                run.times.push((ns, step_s * 1e9, counted));
            }
            (idx, run)
        })
        .collect()
}

/// Time constants tried (ns): 5 ms to 2 s, log-spaced.
fn tau_grid() -> Vec<f64> {
    (0..=26)
        .map(|k| 5e6 * 400f64.powf(k as f64 / 26.0))
        .collect()
}

/// Squared log error of `runs` under (slowdown, tau), each run's counted steps measured against
/// the model up to a constant of the run (the rested model's error for the run's shapes, which
/// the heat does not explain); and the number of counted steps.
fn loss(runs: &[FitRun], slowdown: f64, tau_ns: f64) -> (f64, usize) {
    let (mut sum, mut n) = (0.0, 0usize);
    for r in runs {
        let levels = run_levels(&r.steps, tau_ns);
        let e: Vec<f64> = r
            .times
            .iter()
            .zip(levels.iter().zip(&r.steps))
            .filter(|((_, _, counted), _)| *counted)
            .map(|(&(m, p, _), (h, s))| (m / p).ln() - factor(slowdown, *h, s.load).ln())
            .collect();
        if e.len() < 2 {
            continue;
        }
        let mean = e.iter().sum::<f64>() / e.len() as f64;
        sum += e.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>();
        n += e.len();
    }
    (sum, n)
}

/// The slowdown (0 to 0.5) and time constant that best explain how the steps of each run slow
/// down as it goes on; (0, 0) where no run has two counted steps, or where the best slowdown
/// does not lower the error by at least 5 % (no heat in the measurement).
pub fn fit_sustained(runs: &[FitRun]) -> (f64, f64) {
    let (base, n) = loss(runs, 0.0, 1e8);
    if n == 0 || base <= 0.0 {
        return (0.0, 0.0);
    }
    let mut best = (base, 0.0, 0.0);
    for tau in tau_grid() {
        // The error is smooth and single-troughed in the slowdown for a fixed tau.
        let (mut lo, mut hi) = (0.0f64, 0.5f64);
        for _ in 0..60 {
            let a = lo + (hi - lo) / 3.0;
            let b = hi - (hi - lo) / 3.0;
            if loss(runs, a, tau).0 <= loss(runs, b, tau).0 {
                hi = b;
            } else {
                lo = a;
            }
        }
        let d = 0.5 * (lo + hi);
        let v = loss(runs, d, tau).0;
        if v < best.0 {
            best = (v, d, tau);
        }
    }
    if best.0 > 0.95 * base || best.1 < 1e-4 {
        return (0.0, 0.0);
    }
    // Rounded, so the profile's YAML is short and stable.
    let d = (best.1 * 1e4).round() / 1e4;
    let tau = (best.2 / 1e5).round() * 1e5;
    (d, tau)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_rises_toward_the_load_and_falls_while_idle() {
        let tau = 100e6;
        let mut h = Heat::new();
        let mean = h.run(100e6, 1.0, tau);
        let e1 = (-1.0f64).exp();
        assert!((h.level() - (1.0 - e1)).abs() < 1e-12);
        // Mean of 1 - exp(-t/tau) over one tau.
        assert!((mean - (1.0 - (1.0 - e1))).abs() < 1e-12, "{mean}");
        h.idle(100e6, tau);
        assert!((h.level() - (1.0 - e1) * e1).abs() < 1e-12);
        // A memory-bound step (load 0) cools like idle time.
        let mut c = h;
        c.run(50e6, 0.0, tau);
        h.idle(50e6, tau);
        assert!((c.level() - h.level()).abs() < 1e-12);
        // Never past the load.
        let mut f = Heat::new();
        for _ in 0..100 {
            f.run(50e6, 0.7, tau);
        }
        assert!((f.level() - 0.7).abs() < 1e-9 && f.level() <= 0.7);
    }

    #[test]
    fn run_levels_counts_gaps_as_idle() {
        let tau = 50e6;
        let steps = |gap: f64| -> Vec<RunStep> {
            (0..10)
                .map(|i| RunStep {
                    at_ns: i as f64 * (20e6 + gap),
                    ns: 20e6,
                    load: 1.0,
                })
                .collect()
        };
        let tight = run_levels(&steps(0.0), tau);
        let gapped = run_levels(&steps(10e6), tau);
        assert!(tight.windows(2).all(|w| w[1] > w[0]));
        assert!(tight.iter().zip(&gapped).skip(1).all(|(a, b)| a > b));
        assert_eq!(tight[0], gapped[0]);
    }

    /// Runs of `n` back-to-back steps of the same shape, slowed by a known heat, on a model that
    /// is off by a constant factor per run.
    /// `noise`: a deterministic wobble of +-noise on alternate steps.
    fn synthetic(slowdown: f64, tau: f64, noise: f64) -> Vec<FitRun> {
        [(12, 40e6, 1.03), (20, 18e6, 0.97), (8, 30e6, 1.0)]
            .iter()
            .map(|&(n, ns, bias)| {
                let steps: Vec<RunStep> = (0..n)
                    .map(|i| RunStep {
                        at_ns: i as f64 * (ns + 8e6),
                        ns,
                        load: 0.9,
                    })
                    .collect();
                let levels = run_levels(&steps, tau);
                let times = levels
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let w = if i % 2 == 0 { 1.0 + noise } else { 1.0 - noise };
                        (ns * factor(slowdown, *h, 0.9) * w, ns * bias, true)
                    })
                    .collect();
                FitRun { steps, times }
            })
            .collect()
    }

    #[test]
    fn the_fit_recovers_a_known_slowdown_and_time_constant() {
        let (d, tau) = fit_sustained(&synthetic(0.06, 120e6, 0.0));
        assert!((d - 0.06).abs() < 0.003, "{d}");
        assert!(tau > 90e6 && tau < 160e6, "{tau}");
        // Through noise of half a percent a step.
        let (d, tau) = fit_sustained(&synthetic(0.06, 120e6, 0.005));
        assert!((d - 0.06).abs() < 0.01, "{d}");
        assert!(tau > 50e6 && tau < 300e6, "{tau}");
    }

    #[test]
    fn no_heat_fits_to_off() {
        // Steps that do not slow down (only the per-run model bias): the term stays off.
        assert_eq!(fit_sustained(&synthetic(0.0, 100e6, 0.0)), (0.0, 0.0));
        assert_eq!(fit_sustained(&synthetic(0.0, 100e6, 0.005)), (0.0, 0.0));
        // No runs at all.
        assert_eq!(fit_sustained(&[]), (0.0, 0.0));
    }
}
