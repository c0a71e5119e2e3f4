//! `doppel sim plan`: the cheapest setup (profile x replicas x TP x chunk x policy x router)
//! whose replay of a trace meets latency targets, and the cost/latency frontier.
//!
//! Every candidate replays the whole trace: the router places each request on a replica
//! (`crate::router`), each replica replays its share on its own virtual GPU, and the clients'
//! figures are merged. Candidates run in parallel (rayon); results keep candidate order, so
//! the output does not depend on the thread count.

pub mod slo;
mod svg;

use crate::driver::{simulate_work, Outcome};
use crate::error::SimError;
use crate::metrics::{summarize, Summary};
use crate::profile::Profile;
use crate::router::{route, Router};
use crate::sweep::apply;
use crate::trace::{ArrivalPattern, Trace};
use crate::workload::{expand, Expanded};
use crate::SimOptions;
use doppel_core::TimeNs;
use rayon::prelude::*;
use std::fmt::Write;

pub use slo::Target;
pub use svg::to_svg;

/// What the search varies.
#[derive(Clone, Debug)]
pub struct Space {
    /// Profiles (names or YAML files).
    pub profiles: Vec<String>,
    /// Replica counts 1..=max_replicas.
    pub max_replicas: usize,
    /// Tensor-parallel sizes.
    pub tps: Vec<usize>,
    /// Chunked-prefill sizes (None: the trace's own).
    pub chunks: Vec<Option<i64>>,
    /// Scheduling policies.
    pub policies: Vec<String>,
    /// Routers (only one runs for a single replica: they are the same there).
    pub routers: Vec<Router>,
}

/// One setup.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// Profile name.
    pub profile: String,
    /// Replicas behind the router.
    pub replicas: usize,
    /// GPUs per replica.
    pub tp: usize,
    /// Chunked-prefill size (None: the trace's).
    pub chunk: Option<i64>,
    /// Waiting-queue policy.
    pub policy: String,
    /// Router.
    pub router: Router,
}

impl Candidate {
    /// GPUs it takes: the cost the search minimises.
    pub fn gpus(&self) -> usize {
        self.replicas * self.tp
    }

    /// One-line description.
    pub fn label(&self) -> String {
        let chunk = self.chunk.map_or("trace".to_string(), |c| c.to_string());
        format!(
            "{} x{} tp{} chunk {} {} {}",
            self.profile,
            self.replicas,
            self.tp,
            chunk,
            self.policy,
            self.router.name()
        )
    }
}

/// A candidate's replay.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluated {
    /// The setup.
    pub candidate: Candidate,
    /// Each target's value (ms), in the order given; empty where the replay failed.
    pub values: Vec<f64>,
    /// The largest value / limit over the targets (below 1: every target met).
    pub worst_ratio: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Why it could not run (an impossible configuration), if so.
    pub error: Option<String>,
}

impl Evaluated {
    /// Whether every target is met.
    pub fn meets(&self) -> bool {
        self.error.is_none() && self.worst_ratio < 1.0
    }
}

/// The search's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanResult {
    /// Trace name.
    pub trace: String,
    /// The targets.
    pub targets: Vec<Target>,
    /// Every candidate, in search order.
    pub runs: Vec<Evaluated>,
    /// Indices into `runs` of the frontier: no other run is as cheap and lower in worst ratio.
    pub frontier: Vec<usize>,
    /// Index of the cheapest run meeting every target (ties: the lower worst ratio).
    pub chosen: Option<usize>,
}

/// Every candidate of `space`, in a fixed order.
pub fn candidates(space: &Space) -> Vec<Candidate> {
    let mut out = Vec::new();
    for profile in &space.profiles {
        for replicas in 1..=space.max_replicas.max(1) {
            for &tp in &space.tps {
                for &chunk in &space.chunks {
                    for policy in &space.policies {
                        for (k, &router) in space.routers.iter().enumerate() {
                            if replicas == 1 && k > 0 {
                                continue;
                            }
                            out.push(Candidate {
                                profile: profile.clone(),
                                replicas,
                                tp,
                                chunk,
                                policy: policy.clone(),
                                router,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The trace as one replica of `c` runs it (validated like a file).
fn configure(base: &Trace, origin: &str, c: &Candidate) -> Result<Trace, SimError> {
    let mut t = base.clone();
    t.profile = c.profile.clone();
    t = apply(&t, origin, "policy", &c.policy)?;
    t = apply(&t, origin, "tp", &c.tp.to_string())?;
    if let Some(chunk) = c.chunk {
        t = apply(&t, origin, "chunk", &chunk.to_string())?;
    }
    Ok(t)
}

/// Replay `work` split over the replicas as the router places it; the merged outcome.
fn run_routed(
    t: &Trace,
    profile: &Profile,
    work: &Expanded,
    c: &Candidate,
    estimate: Option<&[(TimeNs, TimeNs)]>,
    origin: &str,
) -> Result<Outcome, SimError> {
    let to = route(work, c.replicas, c.router, estimate);
    // bench_serving's concurrency cap is the clients'; split evenly over the replicas.
    let cap = work.max_concurrency.map(|m| m.div_ceil(c.replicas));
    let mut merged = Outcome {
        records: vec![Default::default(); work.requests.len()],
        ..Default::default()
    };
    for r in 0..c.replicas {
        let ids: Vec<usize> = (0..to.len()).filter(|&i| to[i] == r).collect();
        if ids.is_empty() {
            continue;
        }
        let sub = work.subset(&ids, cap).ok_or_else(|| SimError::Invalid {
            file: origin.to_string(),
            field: "workload".into(),
            value: format!("replica {r}"),
            why: "a follow-up turn was routed away from the turn it continues".into(),
            line: None,
        })?;
        let o = simulate_work(t, profile, sub, origin, SimOptions::default())?;
        absorb(&mut merged, o, &ids);
    }
    Ok(merged)
}

/// Add one replica's outcome (its requests are `ids` of the whole workload).
fn absorb(into: &mut Outcome, o: Outcome, ids: &[usize]) {
    for (k, rec) in o.records.into_iter().enumerate() {
        into.records[ids[k]] = rec;
    }
    into.itls.absorb(&o.itls);
    if into.tokens_per_sec.len() < o.tokens_per_sec.len() {
        into.tokens_per_sec.resize(o.tokens_per_sec.len(), 0);
    }
    for (a, b) in into.tokens_per_sec.iter_mut().zip(&o.tokens_per_sec) {
        *a += b;
    }
    let (c, d) = (&mut into.counters, &o.counters);
    c.steps += d.steps;
    c.prefill_steps += d.prefill_steps;
    c.decode_steps += d.decode_steps;
    c.prompt_tokens += d.prompt_tokens;
    c.cached_tokens += d.cached_tokens;
    c.evicted_tokens += d.evicted_tokens;
    c.retractions += d.retractions;
    c.finished += d.finished;
    c.generated_tokens += d.generated_tokens;
    c.peak_used_tokens = c.peak_used_tokens.max(d.peak_used_tokens);
    into.kv_capacity = o.kv_capacity;
    into.max_running = o.max_running;
    into.steps += o.steps;
    into.batch_sum += o.batch_sum;
    into.decode_steps += o.decode_steps;
    into.decode_batch_sum += o.decode_batch_sum;
    into.gpu_busy_ns += o.gpu_busy_ns;
    into.end_ns = into.end_ns.max(o.end_ns);
    into.refused
        .extend(o.refused.into_iter().map(|(i, why)| (ids[i], why)));
}

/// Replay `base` as candidate `c` describes; its figures.
pub fn evaluate(base: &Trace, origin: &str, c: &Candidate) -> Result<Summary, SimError> {
    let t = configure(base, origin, c)?;
    let profile = Profile::load(&t.profile)?;
    let work = expand(&t, t.prompt_vocab(profile.model.vocab));
    let mut outcome = run_routed(&t, &profile, &work, c, None, origin)?;
    if c.router == Router::CacheAware && c.replicas > 1 {
        // The router balances on requests in flight: take them from the first pass's replay.
        let est: Vec<(TimeNs, TimeNs)> =
            outcome.records.iter().map(|r| (r.send, r.finish)).collect();
        outcome = run_routed(&t, &profile, &work, c, Some(&est), origin)?;
    }
    let rate = match t.arrival.pattern {
        ArrivalPattern::Poisson | ArrivalPattern::Gamma => t.arrival.rate,
        _ => None,
    };
    Ok(summarize(&outcome, rate, t.arrival.max_concurrency))
}

/// Search `space` for the cheapest candidate meeting `targets`.
pub fn plan(base: &Trace, origin: &str, space: &Space, targets: &[Target]) -> PlanResult {
    let runs: Vec<Evaluated> = candidates(space)
        .into_par_iter()
        .map(|c| match evaluate(base, origin, &c) {
            Ok(m) => {
                let values: Vec<f64> = targets.iter().map(|t| t.value(&m)).collect();
                let worst_ratio = values
                    .iter()
                    .zip(targets)
                    .map(|(v, t)| v / t.limit_ms)
                    .fold(0.0, f64::max);
                // A run where requests were refused does not serve the trace.
                let error = (m.refused > 0).then(|| format!("{} requests refused", m.refused));
                Evaluated {
                    candidate: c,
                    values,
                    worst_ratio,
                    output_throughput: m.output_throughput,
                    error,
                }
            }
            Err(e) => Evaluated {
                candidate: c,
                values: Vec::new(),
                worst_ratio: f64::INFINITY,
                output_throughput: 0.0,
                error: Some(e.to_string()),
            },
        })
        .collect();
    let ok: Vec<usize> = (0..runs.len())
        .filter(|&i| runs[i].error.is_none())
        .collect();
    let frontier = ok
        .iter()
        .copied()
        .filter(|&i| {
            let (c, r) = (runs[i].candidate.gpus(), runs[i].worst_ratio);
            !ok.iter().any(|&j| {
                let (cj, rj) = (runs[j].candidate.gpus(), runs[j].worst_ratio);
                (cj <= c && rj < r) || (cj < c && rj <= r)
            })
        })
        .collect();
    let chosen = ok
        .iter()
        .copied()
        .filter(|&i| runs[i].meets())
        .min_by(|&a, &b| {
            let key = |i: usize| (runs[i].candidate.gpus(), runs[i].worst_ratio);
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(&b))
        });
    PlanResult {
        trace: base.name().to_string(),
        targets: targets.to_vec(),
        runs,
        frontier,
        chosen,
    }
}

/// The frontier and the choice, as text.
pub fn format(r: &PlanResult) -> String {
    let mut s = String::new();
    let names: Vec<String> = r.targets.iter().map(|t| t.label()).collect();
    let failed = r.runs.iter().filter(|e| e.error.is_some()).count();
    let _ = writeln!(
        s,
        "plan for {}: {} setups replayed ({} could not run), targets {}",
        r.trace,
        r.runs.len(),
        failed,
        r.targets
            .iter()
            .map(|t| format!("{}<{}ms", t.label(), t.limit_ms))
            .collect::<Vec<_>>()
            .join(",")
    );
    let _ = writeln!(s, "\nfrontier (cost against worst target ratio):");
    let _ = write!(s, "{:>5} {:>7} ", "GPUs", "ratio");
    for n in &names {
        let _ = write!(s, "{:>12} ", format!("{n} ms"));
    }
    let _ = writeln!(s, "{:>11}  setup", "out tok/s");
    let mut rows = r.frontier.clone();
    rows.sort_by_key(|&i| (r.runs[i].candidate.gpus(), i));
    for i in rows {
        let e = &r.runs[i];
        let _ = write!(s, "{:>5} {:>7.3} ", e.candidate.gpus(), e.worst_ratio);
        for v in &e.values {
            let _ = write!(s, "{v:>12.2} ");
        }
        let mark = if Some(i) == r.chosen {
            "  <- chosen"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{:>11.0}  {}{mark}",
            e.output_throughput,
            e.candidate.label()
        );
    }
    match r.chosen {
        Some(i) => {
            let e = &r.runs[i];
            let _ = writeln!(
                s,
                "\ncheapest setup meeting every target: {} ({} GPUs)",
                e.candidate.label(),
                e.candidate.gpus()
            );
        }
        None => {
            let _ = writeln!(
                s,
                "\nno setup meets every target; raise --max-replicas or the limits"
            );
        }
    }
    s
}

/// Every run, as JSON.
pub fn to_json(r: &PlanResult) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}
