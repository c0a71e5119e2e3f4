//! doppel-sim: the discrete-event simulator. It drives doppel-core's real scheduler and engine loop
//! with a virtual GPU ([`backend::SimBackend`]) priced by a [`cost::CostModel`] from a
//! [`profile::Profile`], on an integer-nanosecond virtual clock.
#![deny(missing_docs)]

pub mod backend;
pub mod calibrate;
pub mod calibrate_peer;
pub mod clients;
pub mod compare;
pub mod cost;
pub mod driver;
pub mod error;
mod fit_roofline;
pub mod fit_split;
pub mod gaps;
pub mod heat;
pub mod kv_sharing;
pub mod metrics;
mod nelder_mead;
pub mod one_batch;
pub mod plan;
pub mod profile;
pub mod report;
pub mod router;
pub mod sends;
pub mod sweep;
pub mod trace;
pub mod workload;

pub use cost::{BatchShape, CostModel, RooflineCost};
pub use driver::{simulate, Outcome, RealTiming, SimOptions};
pub use error::SimError;
pub use metrics::{format_table, summarize, Summary};
pub use profile::Profile;
pub use trace::Trace;

/// A finished replay: the raw outcome and its figures.
pub struct Replay {
    /// The trace that ran.
    pub trace: Trace,
    /// Raw outcome.
    pub outcome: Outcome,
    /// Figures.
    pub summary: Summary,
}

impl Replay {
    /// The text `doppel sim replay` prints: header, optional batch log, the result table.
    pub fn stdout(&self, with_batch_log: bool) -> String {
        let t = &self.trace;
        let cfg = self.outcome.config.clone().unwrap_or_default();
        let mut s = format!(
            "trace: {}  profile: {}  seed: {}  requests: {}\nengine: policy {}, page {}, chunk {}, max prefill {}, KV {} tokens, max running {}, overlap {}, tp {}\n",
            t.name(),
            t.profile,
            t.seed,
            self.outcome.records.len(),
            t.engine.policy,
            cfg.page_size,
            cfg.chunked_prefill_size.map(|c| c.to_string()).unwrap_or_else(|| "off".into()),
            cfg.max_prefill_tokens,
            cfg.capacity_tokens(),
            self.outcome.max_running,
            if self.outcome.overlap { "on" } else { "off" },
            t.engine.tp_size,
        );
        if with_batch_log {
            s.push_str(&self.outcome.batch_log);
        }
        for (id, why) in self.outcome.refused.iter().take(5) {
            s.push_str(&format!("refused request {id}: {why}\n"));
        }
        if self.outcome.refused.len() > 5 {
            s.push_str(&format!(
                "... and {} more refused\n",
                self.outcome.refused.len() - 5
            ));
        }
        s.push('\n');
        s.push_str(&format_table(&self.summary));
        s
    }
}

/// Load a trace file and replay it.
pub fn replay_file(path: &str, opts: SimOptions) -> Result<Replay, SimError> {
    let trace = Trace::load(path)?;
    replay(trace, path, opts)
}

/// Replay a parsed trace (`origin` names it in errors).
pub fn replay(trace: Trace, origin: &str, opts: SimOptions) -> Result<Replay, SimError> {
    let outcome = simulate(&trace, origin, opts)?;
    Ok(replay_of(trace, outcome))
}

/// Replay a parsed open-loop trace with each request sent at `sends[i]` (a real run's send
/// times, `sends::load_sends`; `file` names them in errors) instead of its schedule.
pub fn replay_sent(
    trace: Trace,
    origin: &str,
    opts: SimOptions,
    sends: &[doppel_core::TimeNs],
    file: &str,
) -> Result<Replay, SimError> {
    let profile = Profile::load(&trace.profile)?;
    let mut work = workload::expand(&trace, trace.prompt_vocab(profile.model.vocab));
    sends::apply_sends(&trace, &mut work, sends, file)?;
    let outcome = driver::simulate_work(&trace, &profile, work, origin, opts)?;
    Ok(replay_of(trace, outcome))
}

fn replay_of(trace: Trace, outcome: Outcome) -> Replay {
    let rate = match trace.arrival.pattern {
        trace::ArrivalPattern::Poisson | trace::ArrivalPattern::Gamma => trace.arrival.rate,
        _ => None,
    };
    let summary = summarize(&outcome, rate, trace.arrival.max_concurrency);
    Replay {
        trace,
        outcome,
        summary,
    }
}

/// Re-exported so callers (and the workspace tests) can read the JSON reports with the same version.
pub use serde_json;
