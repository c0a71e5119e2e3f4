//! `doppel exec profile`: step times of the real engine over a sweep of batch shapes (prefill
//! lengths x batch sizes, decode batch x KV lengths, mixed batches), plus the scheduler's CPU time
//! per step. Every step runs through the real scheduler and backend in the plain order, so each
//! measured span is one whole step (launch to results) and the scheduler time is what is left of
//! the loop iteration.

use crate::replay::Recorder;
use doppel_core::{
    Backend, Engine, Event, ForwardMode, RequestId, RequestSpec, SamplingParams, Scheduler,
    SchedulerConfig, TimeNs, TokenId,
};
use doppel_exec::warmup::ByRef;
use doppel_sim::calibrate::{Measurements, SchedulePoint, StepPoint, SubmitPoint};
use doppel_sim::cost::BatchShape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

mod plan;

pub use plan::ProfilePlan;
use plan::{scenarios, Scenario};

/// A backend's hooks for measuring device time apart from host launch time.
pub trait StepTiming {
    /// Report each step's device time in `StepResult::device_ns` (default: not measured).
    fn set_step_timing(&mut self, _on: bool) {}
    /// Keep the device busy for `ns` before the next step, so the step is wholly launched before
    /// the device reaches it (default: nothing to stall).
    fn stall_next_step(&mut self, _ns: u64) {}
}

impl StepTiming for doppel_exec::cpu_backend::CpuBackend {}

impl StepTiming for doppel_exec::cuda::backend::CudaBackend {
    fn set_step_timing(&mut self, on: bool) {
        doppel_exec::cuda::backend::CudaBackend::set_step_timing(self, on);
    }
    fn stall_next_step(&mut self, ns: u64) {
        doppel_exec::cuda::backend::CudaBackend::stall_next_step(self, ns);
    }
}

/// GPU stall queued before each step of the stalled runs: longer than any measured launch.
const STALL_NS: u64 = 8_000_000;

/// One scenario's steps as measured: (shape, mode, plain span, host launch, device ns, start
/// since the run's first step started), the scheduler time per step, and each request's
/// submission time.
type ScenarioRun = (
    Vec<(BatchShape, ForwardMode, u64, u64, Option<u64>, u64)>,
    Vec<(usize, u64)>,
    Vec<SubmitPoint>,
);

/// What the sweep measured: steps, scheduler times, submission times.
pub type Profiled = (Vec<StepPoint>, Vec<SchedulePoint>, Vec<SubmitPoint>);

/// What went wrong while profiling.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The scheduler refused a configuration or request.
    #[error("profile: {0}")]
    Scheduler(String),
    /// The backend failed a step.
    #[error("profile: backend: {0}")]
    Backend(String),
}

/// Request-table rows the profile's scheduler uses (a backend's table must have this many).
pub const PROFILE_ROWS: usize = 1024;

/// Run the sweep on `backend`; `vocab` bounds prompt tokens, `context_len` the model's positions;
/// `show_progress` draws a progress bar on stderr.
///
/// Each timed pass runs every scenario twice: in the plain order as it comes (the step's span
/// from launch to results, and how long the launch call took), then with the device stalled
/// before every step, so that the step's CUDA-event time is its device time without the gaps
/// of a host that launches slower than the GPU runs.
pub fn run<B: Backend + StepTiming>(
    backend: &mut B,
    p: &ProfilePlan,
    vocab: usize,
    context_len: usize,
    show_progress: bool,
) -> Result<Profiled, ProfileError> {
    let bar = if show_progress {
        indicatif::ProgressBar::new(1)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let list = scenarios(p);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut next_id = 0u64;
    let mut steps = Vec::new();
    let mut sched = Vec::new();
    let mut submit = Vec::new();
    let total = list.len() * (p.repeats + 1);
    // Each timed scenario run gets an id: the fit follows the GPU's heat along a run.
    let mut run_id = 0u32;
    backend.set_step_timing(true);
    for pass in 0..=p.repeats {
        for (k, sc) in list.iter().enumerate() {
            progress(pass * list.len() + k, total);
            let mut ctx = RunCtx {
                p,
                vocab,
                context_len,
                rng: &mut rng,
                next_id: &mut next_id,
            };
            if sc.overlap {
                if sc.cool {
                    if let Ok(d) = std::time::Duration::try_from_secs_f64(p.cool_s) {
                        std::thread::sleep(d);
                    }
                }
                let (run, _, _) = rested(p.rest, || run_scenario(backend, sc, &mut ctx, false))?;
                if pass > 0 {
                    steps.extend(run.iter().map(|&(shape, mode, ns, _, dev, at)| {
                        // The device time from the step's own events: in the overlap order the
                        // GPU reaches a step when the previous one ends. Launch times are not
                        // the plain order's (host_ns 0 keeps the step out of the launch fit),
                        // nor is the loop's time the scheduler's alone.
                        let mut point = StepPoint::of(&shape, mode_name(mode), ns);
                        point.device_ns = dev;
                        point.run = Some(run_id);
                        point.run_ns = Some(at);
                        point
                    }));
                    run_id += 1;
                }
                continue;
            }
            let (plain, iter_ns, submitted) =
                rested(p.rest, || run_scenario(backend, sc, &mut ctx, false))?;
            if pass == 0 {
                continue;
            }
            submit.extend(submitted);
            let (stalled, _, _) = rested(p.rest, || run_scenario(backend, sc, &mut ctx, true))?;
            // The last iteration queued a stall no step consumed: drop it.
            backend.stall_next_step(0);
            // Same scenario, same scheduler: the same step sequence, unless the scheduler saw
            // different timing (it does not read the clock for plans); check anyway.
            let same = stalled.len() == plain.len()
                && stalled
                    .iter()
                    .zip(&plain)
                    .all(|(a, b)| a.0 == b.0 && a.1 == b.1);
            for (i, ((shape, mode, ns, host_ns, _, _), (entries, spent))) in
                plain.iter().zip(&iter_ns).enumerate()
            {
                let mut point = StepPoint::of(shape, mode_name(*mode), *ns);
                point.host_ns = *host_ns;
                if same {
                    let (_, _, _, stalled_host, dev, at) = stalled[i];
                    // A launch longer than the stall let the device catch up: no clean figure.
                    point.device_ns = dev.filter(|_| stalled_host < STALL_NS);
                    point.host_busy_ns = (stalled_host < STALL_NS).then_some(stalled_host);
                    // The device time is the stalled run's: so is the heat it ran at.
                    point.run = Some(run_id);
                    point.run_ns = Some(at);
                }
                steps.push(point);
                sched.push(SchedulePoint {
                    entries: *entries,
                    ns: spent.saturating_sub(*ns),
                });
            }
            run_id += u32::from(same);
        }
    }
    backend.set_step_timing(false);
    bar.finish_and_clear();
    Ok((steps, sched, submit))
}

fn mode_name(mode: ForwardMode) -> &'static str {
    match mode {
        ForwardMode::Extend => "prefill",
        ForwardMode::Decode => "decode",
        ForwardMode::Mixed => "mixed",
    }
}

/// Run `f`, then stay idle for `rest` times as long as it took (keeps the device's average
/// power, and so its clocks, near what serving sees).
/// An error returns at once.
fn rested<T, E>(rest: f64, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let t0 = Instant::now();
    let out = f()?;
    if rest > 0.0 {
        if let Ok(d) = std::time::Duration::try_from_secs_f64(t0.elapsed().as_secs_f64() * rest) {
            std::thread::sleep(d);
        }
    }
    Ok(out)
}

/// What a scenario run needs besides the backend.
struct RunCtx<'a> {
    p: &'a ProfilePlan,
    vocab: usize,
    context_len: usize,
    rng: &'a mut ChaCha8Rng,
    next_id: &'a mut u64,
}

/// Run one scenario to completion in the plain order; `stall`: stall the device before each step.
fn run_scenario<B: Backend + StepTiming>(
    backend: &mut B,
    sc: &Scenario,
    c: &mut RunCtx<'_>,
    stall: bool,
) -> Result<ScenarioRun, ProfileError> {
    let p = c.p;
    let cfg = SchedulerConfig {
        kv_capacity_tokens: p.kv_capacity,
        context_len: c.context_len,
        max_prefill_tokens: p.max_prefill_tokens,
        chunked_prefill_size: sc.chunk,
        disable_radix_cache: !sc.cache,
        req_pool_size: Some(PROFILE_ROWS),
        enable_mixed_chunk: sc.mixed,
        eos_token_ids: Vec::new(),
        ..Default::default()
    };
    let scheduler = Scheduler::new(cfg).map_err(|e| ProfileError::Scheduler(e.to_string()))?;
    let origin = Instant::now();
    let mut engine = Engine::new(scheduler, Recorder::new(ByRef(backend), origin), sc.overlap);
    let mut events: Vec<Event> = Vec::new();
    let mut pending: Vec<(usize, usize, usize, usize)> = sc.reqs.clone();
    let longest = sc.reqs.iter().map(|r| r.3).max().unwrap_or(0);
    let vocab = c.vocab as TokenId;
    let shared: Vec<TokenId> = (0..longest).map(|_| c.rng.gen_range(0..vocab)).collect();
    let mut iter_ns: Vec<(usize, u64)> = Vec::new();
    let mut submitted = Vec::new();
    let mut ran = 0usize;
    loop {
        let mut i = 0;
        while i < pending.len() {
            if pending[i].2 <= ran {
                // As `exec replay` takes in an arrival: build the prompt, submit it.
                let t0 = Instant::now();
                let (len, out, _, from_shared) = pending.swap_remove(i);
                let mut prompt: Vec<TokenId> = shared[..from_shared.min(len)].to_vec();
                prompt.extend((prompt.len()..len).map(|_| c.rng.gen_range(0..vocab)));
                let mut sp = SamplingParams::greedy(out);
                sp.ignore_eos = true;
                let now = origin.elapsed().as_nanos() as TimeNs;
                engine
                    .scheduler
                    .submit(RequestSpec::new(RequestId(*c.next_id), prompt, sp, now))
                    .map_err(|e| ProfileError::Scheduler(e.to_string()))?;
                submitted.push(SubmitPoint {
                    prompt_len: len,
                    ns: t0.elapsed().as_nanos() as u64,
                });
                *c.next_id += 1;
            } else {
                i += 1;
            }
        }
        if stall {
            engine.backend.inner.0.stall_next_step(STALL_NS);
        }
        let t0 = Instant::now();
        let now = origin.elapsed().as_nanos() as TimeNs;
        events.clear();
        let it = engine
            .iterate(now, &mut events)
            .map_err(|e| ProfileError::Backend(e.to_string()))?;
        let spent = t0.elapsed().as_nanos() as u64;
        if let Some(s) = it.launched {
            iter_ns.push((s.batch_size, spent));
            ran += 1;
        } else if pending.is_empty() && engine.is_idle() {
            break;
        } else if pending.is_empty() {
            return Err(ProfileError::Scheduler(format!(
                "{} requests left but no step was formed",
                engine.scheduler.num_waiting() + engine.scheduler.num_running()
            )));
        } else {
            ran += 1;
        }
    }
    let rec = &engine.backend;
    let first = rec.steps.first().map_or(0, |r| r.start);
    let steps = rec
        .steps
        .iter()
        .zip(&rec.shapes)
        .map(|(r, shape)| {
            let ns = r.end.saturating_sub(r.start).max(1);
            let host = r.launched.saturating_sub(r.start);
            let at = r.start.saturating_sub(first);
            (*shape, r.mode, ns, host, r.device_ns, at)
        })
        .collect();
    Ok((steps, iter_ns, submitted))
}

/// Package the points as a measurement file.
pub fn measurements(
    device: &str,
    model: &str,
    cfg: &doppel_exec::model::ModelConfig,
    method: &str,
    steps: Vec<StepPoint>,
    schedule: Vec<SchedulePoint>,
    submit: Vec<SubmitPoint>,
) -> Measurements {
    Measurements {
        device: device.to_string(),
        model: model.to_string(),
        shape: [
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.vocab_size,
        ],
        method: method.to_string(),
        steps,
        schedule,
        submit,
        // In-process: no HTTP, tokenization or streaming between clients and the engine.
        host: Default::default(),
    }
}
