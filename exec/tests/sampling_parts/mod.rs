//! Sampling checks over any backend under the real scheduler, shared by the CPU backend's test
//! (sampling.rs, in CI: it validates the statistics and tolerances where the logits are exact)
//! and the CUDA backend's (cuda_sampling.rs). See docs/exec-model.md, "Sampling checks".
//!
//! The truth is the CPU model's forward pass over the backend's own tokens (teacher-forced): the
//! CPU backend's logits equal it exactly (scheduler_scenarios.rs), so "matches the reference"
//! also means "matches the CPU backend on the same weights and token sequence".
#![allow(dead_code)]

pub mod checks;
pub mod host;
pub mod scenarios;
pub mod stats;

pub use crate::engine_common::req;
use crate::engine_common::run_waves;
use doppel_core::{
    Backend, Engine, Event, RequestSpec, SamplingParams, Scheduler, SchedulerConfig, TokenLogprob,
};
use doppel_exec::model::{Arch, CpuModel, DType, KvCache, LogitsWanted, RopeScaling, SeqInput};
use doppel_exec::testgen::{write_model, TinySpec};
pub use stats::CdfOrder;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

/// Whether a backend promises the same seeded tokens whatever the batch around a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Same tokens in any batch, chunking or order (the CPU backend: its rows never mix).
    Invariant,
    /// Logits move by rounding with the batch's shape (bf16 GEMMs pick algorithms by size), so a
    /// draw near a CDF boundary may flip; agreement is reported and every token is checked
    /// against the reference instead.
    Rounding,
}

/// How far a backend's logits may be from the reference's.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Error of one logit relative to the row's largest |logit|.
    pub logit_rel: f64,
    /// Plus this much, absolute.
    pub logit_abs: f64,
    /// Error of one logit between two batch shapes of the backend itself (absolute).
    pub batch_logit: f64,
}

impl Tolerance {
    /// Bound on any logit's error in `row`.
    pub fn logit(&self, row: &[f32]) -> f64 {
        let m = row
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f32, |a, &x| a.max(x.abs()));
        self.logit_abs + self.logit_rel * m as f64
    }
}

/// The backend under test.
pub struct Subject<'a, B: Backend> {
    pub name: &'static str,
    /// A fresh backend sized for a scheduler configuration.
    pub backend: &'a dyn Fn(&SchedulerConfig) -> B,
    pub reference: &'a Reference,
    pub tol: Tolerance,
    /// How requests without penalties, bias or logprobs are drawn.
    pub plain_order: CdfOrder,
    pub batching: Batching,
    /// Largest logprob error against the reference seen so far (the logprob checks record it).
    pub measured: Cell<f64>,
}

impl<B: Backend> Subject<'_, B> {
    /// Every sampling check on this backend, titled `title`; fails the test if any failed. The
    /// logprob checks come first: they measure the error the draws are then checked with.
    pub fn check_all(&self, title: &str) {
        let mut c = Checks::new(title);
        host::logprob_checks(self, &mut c);
        checks::frequencies(self, &mut c, 2000);
        c.note(
            "largest logprob error vs the reference (draws checked with 3x it)",
            format!("{:.3e}", self.measured.get()),
        );
        checks::seeded(self, &mut c);
        host::penalty_and_bias_checks(self, &mut c);
        c.finish();
    }

    /// Bound on the logit error behind a draw: three times the largest logprob error measured
    /// against the reference so far (a log-softmax error is a logit error less a weighted mean
    /// of them, so of the same size; three times covers positions not measured), at least
    /// `logit_abs`. Tighter than [`Tolerance::logit`], so the draws are checked closely.
    pub fn draw_err(&self) -> f64 {
        (3.0 * self.measured.get()).max(self.tol.logit_abs)
    }

    /// The CDF order the backend uses for a request with `p`.
    pub fn order(&self, p: &SamplingParams) -> CdfOrder {
        let host = !p.logit_bias.is_empty()
            || p.repetition_penalty != 1.0
            || p.frequency_penalty != 0.0
            || p.presence_penalty != 0.0
            || p.return_logprob;
        if host {
            CdfOrder::HostSampler
        } else {
            self.plain_order
        }
    }

    /// Run `waves` (each after the engine went idle) under `cfg`.
    pub fn run(&self, cfg: &SchedulerConfig, overlap: bool, waves: &[Vec<RequestSpec>]) -> Outcome {
        let engine = Engine::new(
            Scheduler::new(cfg.clone()).unwrap(),
            (self.backend)(cfg),
            overlap,
        );
        run(engine, waves)
    }
}

/// What a run produced, by request id.
#[derive(Default)]
pub struct Outcome {
    pub tokens: BTreeMap<u64, Vec<u32>>,
    pub logprobs: BTreeMap<u64, Vec<Option<TokenLogprob>>>,
    pub cached: BTreeMap<u64, usize>,
    pub retractions: u64,
}

/// Run waves of requests on `engine`, each after it went idle.
pub fn run<B: Backend>(mut engine: Engine<B>, waves: &[Vec<RequestSpec>]) -> Outcome {
    let events = run_waves(&mut engine, waves, 100_000, |_| {});
    let mut out = Outcome {
        retractions: engine.scheduler.counters().retractions,
        ..Default::default()
    };
    for e in events {
        match e {
            Event::Token {
                id,
                token,
                index,
                logprob,
                ..
            } => {
                let v = out.tokens.entry(id.0).or_default();
                assert_eq!(v.len(), index, "request {}: tokens out of order", id.0);
                v.push(token);
                out.logprobs.entry(id.0).or_default().push(logprob);
            }
            Event::Finished(f) => {
                out.cached.insert(f.id.0, f.cached_tokens);
            }
            Event::PromptLogprobs { .. } => {}
        }
    }
    out
}

/// The checkpoint both backends run: a tiny random Qwen3 in bf16 with head_dim 64 (what the
/// GPU kernels take), vocabulary 384.
pub fn model_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut spec = TinySpec::tiny(Arch::Qwen3);
    (spec.hidden_size, spec.intermediate_size) = (256, 512);
    (spec.num_heads, spec.num_kv_heads, spec.head_dim) = (4, 2, 64);
    spec.dtype = DType::BF16;
    spec.rope_scaling = RopeScaling::None;
    spec.tie_word_embeddings = false;
    write_model(d.path(), &spec).unwrap();
    d
}

/// Token ids spread over the vocabulary, distinct per seed.
pub fn prompt(seed: u32, len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + seed * 17 + 3) % (vocab as u32 - 4))
        .collect()
}

/// The CPU model's logits, one full forward pass per question (no cache, no batching).
pub struct Reference {
    model: CpuModel,
    pub vocab: usize,
}

impl Reference {
    pub fn load(dir: &Path) -> Reference {
        let (model, _) = CpuModel::load(dir, false).unwrap();
        let vocab = model.config().vocab_size;
        Reference { model, vocab }
    }

    /// The logits rows that predict `output[0..]` after `prompt` (row i: after
    /// `prompt + output[..i]`), and one more row after all of `output`.
    pub fn rows(&self, prompt: &[u32], output: &[u32]) -> Vec<Vec<f32>> {
        let mut seq = prompt.to_vec();
        seq.extend_from_slice(output);
        let mut kv = KvCache::new(self.model.config(), seq.len() + 1);
        let slots: Vec<doppel_core::KvSlot> =
            (1..=seq.len() as u32).map(doppel_core::KvSlot).collect();
        let mut all = Vec::new();
        self.model
            .forward(
                &mut kv,
                &[SeqInput {
                    tokens: &seq,
                    kv_row: &slots,
                    logits: LogitsWanted::All,
                }],
                &mut all,
            )
            .unwrap();
        let v = self.vocab;
        (prompt.len() - 1..seq.len())
            .map(|pos| all[pos * v..(pos + 1) * v].to_vec())
            .collect()
    }
}

/// Named pass/fail rows with a figure each, printed as they come (so a run cut short still
/// shows what it checked); fails the test at the end if any row failed.
pub struct Checks {
    title: String,
    failed: Vec<String>,
    passed: usize,
    /// Put before the names of the rows added from now on.
    pub prefix: String,
}

impl Checks {
    pub fn new(title: &str) -> Checks {
        eprintln!("=== {title} ===");
        Checks {
            title: title.to_string(),
            failed: Vec::new(),
            passed: 0,
            prefix: String::new(),
        }
    }

    pub fn add(&mut self, name: impl Into<String>, figure: impl Into<String>, ok: bool) {
        let name = format!("{}{}", self.prefix, name.into());
        let figure = figure.into();
        eprintln!(
            "{:<6} {name:<70} {figure}",
            if ok { "ok" } else { "FAILED" }
        );
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(name);
        }
    }

    /// A line of information (never fails).
    pub fn note(&mut self, name: impl Into<String>, figure: impl Into<String>) {
        self.add(name, figure, true);
    }

    pub fn finish(self) {
        let (title, failed) = (&self.title, &self.failed);
        eprintln!(
            "{title}: {} checks ok, {} failed",
            self.passed,
            failed.len()
        );
        assert!(failed.is_empty(), "{title}: failed checks: {failed:#?}");
    }
}
