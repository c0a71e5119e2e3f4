//! `doppel exec profile`: step times of the real engine over a sweep of batch shapes (prefill
//! lengths x batch sizes, decode batch x KV lengths, mixed batches), plus the scheduler's CPU time
//! per step. Every step runs through the real scheduler and backend in the plain order, so each
//! measured span is one whole step (launch to results) and the scheduler time is what is left of
//! the loop iteration.

use crate::replay::Recorder;
use crate::warmup::ByRef;
use doppel_core::{
    Backend, Engine, Event, ForwardMode, RequestId, RequestSpec, SamplingParams, Scheduler,
    SchedulerConfig, TimeNs, TokenId,
};
use doppel_sim::calibrate::{Measurements, SchedulePoint, StepPoint, SubmitPoint};
use doppel_sim::cost::BatchShape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// The sweep.
#[derive(Clone, Debug)]
pub struct ProfilePlan {
    /// Prompt lengths of prefill batches.
    pub prefill_lens: Vec<usize>,
    /// Requests per prefill batch.
    pub prefill_batches: Vec<usize>,
    /// Decode batch sizes.
    pub decode_batches: Vec<usize>,
    /// KV lengths of decode batches.
    pub decode_kv: Vec<usize>,
    /// Decode steps measured per (batch, KV length).
    pub decode_steps: usize,
    /// Mixed batches: (decode batch, prefill length) pairs run with mixed chunks on.
    pub mixed: Vec<(usize, usize)>,
    /// Prefix hits: (cached prefix, new suffix, batch): one request caches the prefix, then the
    /// batch extends it (radix cache on).
    pub prefix_hits: Vec<(usize, usize, usize)>,
    /// Chunked prefill: (prompt length, chunk size): each chunk attends to the ones before it.
    pub chunked: Vec<(usize, usize)>,
    /// Decode batches with ragged lengths: (batch, mean length), lengths spread evenly from a
    /// quarter to 1.75 times the mean.
    pub ragged_decode: Vec<(usize, usize)>,
    /// Prefill batches with ragged prompt lengths, spread the same way: (batch, mean length).
    pub ragged_prefill: Vec<(usize, usize)>,
    /// Decode batches of even lengths with fewer requests than their CUDA graph, which pads
    /// them with empty rows: (batch, length).
    pub padded_decode: Vec<(usize, usize)>,
    /// Decode batches over a shared cached prefix (one request computes it, then the batch hits
    /// it and decodes): (batch, shared prefix, own suffix).
    pub shared_decode: Vec<(usize, usize, usize)>,
    /// Timed repeats of the whole sweep (after one untimed warm-up pass).
    pub repeats: usize,
    /// Prefill token budget per step (larger prefill batches are skipped).
    pub max_prefill_tokens: usize,
    /// KV pool in tokens (decode shapes that do not fit are skipped).
    pub kv_capacity: usize,
    /// Prompt token seed.
    pub seed: u64,
    /// Sustained load: (requests, mean prompt length, chunk size): a burst of ragged prompts
    /// (spread as `ragged_prefill`'s) prefilled back to back in the overlap order, as serving
    /// runs them, after `cool_s` of rest, so the steps' device times show how the GPU slows as
    /// it heats toward its power cap (each step carries its start since the run's first).
    pub sustained: Vec<(usize, usize, usize)>,
    /// Rest before each sustained run (s), so it starts on a rested GPU.
    pub cool_s: f64,
    /// Idle time after each scenario run, as a multiple of its wall time. A sweep run back to back
    /// held an H100 at its power cap (592 W, SM clock 1846 MHz on average) while the replays it
    /// calibrates for ran at 317-420 W and 1965-1978 MHz, so every step was measured slow.
    pub rest: f64,
}

impl ProfilePlan {
    /// Shapes for a Qwen3-0.6B-sized model on one GPU.
    pub fn gpu_default() -> ProfilePlan {
        ProfilePlan {
            prefill_lens: vec![64, 256, 1024, 4096],
            prefill_batches: vec![1, 2, 4, 8, 16],
            // Every CUDA-graph batch size: a decode batch runs padded to one of them, so the
            // simulator's decode table is exact at each.
            decode_batches: crate::cuda::backend::graph_sizes(256),
            decode_kv: vec![128, 512, 2048],
            decode_steps: 8,
            mixed: vec![(16, 256), (64, 512), (128, 1024)],
            // Batches of extends over cached prefixes, and single ones (a follow-up turn, a
            // question after a shared system prompt), which do not fill the GPU.
            prefix_hits: vec![
                (512, 64, 16),
                (1024, 128, 8),
                (2048, 128, 32),
                (4096, 256, 4),
                (256, 128, 1),
                (512, 128, 1),
                (1024, 128, 1),
                (1024, 256, 2),
                (2048, 64, 1),
                (4096, 128, 1),
            ],
            chunked: vec![(8192, 2048), (12288, 4096), (16384, 8192)],
            // Full graphs, and batches a graph pads (10 and 12 run as 16, 20 as 24, ...), which
            // real traces run most of the time.
            ragged_decode: [
                2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 44, 48, 64, 72, 96, 104, 128, 144, 192, 256,
            ]
            .iter()
            .flat_map(|&b| [(b, 512), (b, 1024)])
            .collect(),
            ragged_prefill: vec![
                (2, 2048),
                (4, 1024),
                (8, 1024),
                (12, 680),
                (16, 512),
                (32, 256),
            ],
            padded_decode: vec![
                (10, 512),
                (12, 1024),
                (20, 512),
                (28, 1024),
                (44, 512),
                (72, 1024),
                (144, 512),
                // A burst's decode batches: 170-200 requests in graphs 192 and 224.
                (170, 1024),
                (200, 1024),
            ],
            // Shared system prompts: the KV of the prefix is read once per request, from L2
            // after the first.
            shared_decode: vec![
                (4, 1024, 128),
                (8, 1024, 128),
                (12, 1024, 128),
                (16, 1024, 128),
                (16, 2048, 64),
                (32, 512, 128),
                (64, 1024, 64),
                (128, 512, 64),
            ],
            // ~460k tokens in 8192-token steps (SGLang's chunk on an H100): ~1 s of prefill
            // without a pause, long enough for the power cap to settle (~150 ms).
            sustained: vec![(448, 1024, 8192)],
            cool_s: 1.0,
            repeats: 2,
            max_prefill_tokens: 16384,
            // Room for every graph batch at every KV length (256 x 2057 tokens, 59 GB here).
            kv_capacity: 540_000,
            seed: 1,
            rest: 1.0,
        }
    }

    /// Small shapes for the CPU backend.
    pub fn cpu_default() -> ProfilePlan {
        ProfilePlan {
            prefill_lens: vec![16, 64, 256],
            prefill_batches: vec![1, 4],
            decode_batches: vec![1, 4, 16],
            decode_kv: vec![32, 256],
            decode_steps: 4,
            mixed: vec![(4, 64)],
            prefix_hits: vec![(64, 16, 4)],
            chunked: vec![(256, 64)],
            ragged_decode: vec![(4, 64)],
            ragged_prefill: vec![(4, 64)],
            padded_decode: vec![(3, 32)],
            shared_decode: vec![(4, 64, 16)],
            sustained: vec![(8, 64, 128)],
            cool_s: 0.0,
            repeats: 1,
            max_prefill_tokens: 4096,
            kv_capacity: 16_384,
            seed: 1,
            rest: 0.0,
        }
    }

    /// Largest request (prompt + output) in the sweep.
    pub fn longest(&self) -> usize {
        let p = self.prefill_lens.iter().max().copied().unwrap_or(1) + 1;
        let d = self.decode_kv.iter().max().copied().unwrap_or(1) + self.decode_steps + 1;
        let m = self.mixed.iter().map(|&(_, l)| l + 2).max().unwrap_or(1)
            + self.decode_kv.first().copied().unwrap_or(1)
            + 4 * self.decode_steps;
        let h = self
            .prefix_hits
            .iter()
            .map(|&(a, b, _)| a + b + 3)
            .max()
            .unwrap_or(1);
        let c = self.chunked.iter().map(|&(l, _)| l + 2).max().unwrap_or(1);
        let s = self
            .padded_decode
            .iter()
            .map(|&(_, l)| l)
            .chain(self.shared_decode.iter().map(|&(_, a, b)| a + b))
            .max()
            .unwrap_or(1)
            + self.decode_steps
            + 1;
        let r = self
            .ragged_decode
            .iter()
            .chain(&self.ragged_prefill)
            .map(|&(_, mean)| spread(2, mean)[1] + self.decode_steps + 1)
            .max()
            .unwrap_or(1);
        let u = self
            .sustained
            .iter()
            .map(|&(n, mean, _)| spread(n, mean).last().copied().unwrap_or(1) + 2)
            .max()
            .unwrap_or(1);
        p.max(d).max(m).max(h).max(c).max(r).max(s).max(u)
    }
}

/// One batch of requests run to completion: (prompt length, output length, submitted after step).
struct Scenario {
    mixed: bool,
    /// Run in the overlap order, once per pass, without a stall (a sustained run).
    overlap: bool,
    /// Chunked prefill size (None: off).
    chunk: Option<usize>,
    /// Radix cache on (prefix hits).
    cache: bool,
    /// (prompt length, max new tokens, submit once this many steps ran, leading tokens taken
    /// from the scenario's shared prefix).
    reqs: Vec<(usize, usize, usize, usize)>,
}

impl Scenario {
    fn plain(reqs: Vec<(usize, usize, usize, usize)>) -> Scenario {
        Scenario {
            mixed: false,
            overlap: false,
            chunk: None,
            cache: false,
            reqs,
        }
    }
}

/// `n` lengths spread evenly from a quarter to 1.75 times `mean` (mean `mean`).
fn spread(n: usize, mean: usize) -> Vec<usize> {
    let lo = mean as f64 / 4.0;
    let step = if n > 1 {
        1.5 * mean as f64 / (n - 1) as f64
    } else {
        0.0
    };
    (0..n)
        .map(|i| ((lo + step * i as f64).round() as usize).max(1))
        .collect()
}

fn scenarios(p: &ProfilePlan) -> Vec<Scenario> {
    let mut out = Vec::new();
    for &len in &p.prefill_lens {
        for &b in &p.prefill_batches {
            if b * len <= p.max_prefill_tokens && b * (len + 1) <= p.kv_capacity {
                out.push(Scenario::plain(vec![(len, 1, 0, 0); b]));
            }
        }
    }
    for &b in &p.decode_batches {
        for &kv in &p.decode_kv {
            if b * (kv + p.decode_steps + 1) <= p.kv_capacity {
                out.push(Scenario::plain(vec![(kv, p.decode_steps + 1, 0, 0); b]));
            }
        }
    }
    let kv0 = p.decode_kv.first().copied().unwrap_or(32);
    for &(b, len) in &p.mixed {
        if b * (kv0 + 4 * p.decode_steps) + len + 2 <= p.kv_capacity {
            // A decode batch is running when a new prompt arrives: with mixed chunks on, its
            // prefill carries the running decodes in one step.
            let mut reqs = vec![(kv0, 4 * p.decode_steps, 0, 0); b];
            reqs.push((
                len,
                2,
                2 + b.div_ceil(p.max_prefill_tokens / kv0.max(1)).max(1),
                0,
            ));
            out.push(Scenario {
                mixed: true,
                ..Scenario::plain(reqs)
            });
        }
    }
    for &(prefix, suffix, b) in &p.prefix_hits {
        let len = prefix + suffix;
        if prefix > 0 && b * len <= p.max_prefill_tokens && (b + 1) * (len + 2) <= p.kv_capacity {
            let mut reqs = vec![(prefix, 1, 0, prefix)];
            reqs.extend(vec![(len, 1, 2, prefix); b]);
            out.push(Scenario {
                cache: true,
                ..Scenario::plain(reqs)
            });
        }
    }
    for &(b, mean) in &p.ragged_decode {
        let lens = spread(b, mean);
        if lens.iter().map(|l| l + p.decode_steps + 1).sum::<usize>() <= p.kv_capacity {
            let reqs = lens
                .iter()
                .map(|&l| (l, p.decode_steps + 1, 0, 0))
                .collect();
            out.push(Scenario::plain(reqs));
        }
    }
    for &(b, len) in &p.padded_decode {
        if b * (len + p.decode_steps + 1) <= p.kv_capacity {
            out.push(Scenario::plain(vec![(len, p.decode_steps + 1, 0, 0); b]));
        }
    }
    for &(b, prefix, suffix) in &p.shared_decode {
        let len = prefix + suffix;
        let fits = b * suffix <= p.max_prefill_tokens
            && prefix + b * (suffix + p.decode_steps + 1) + 2 <= p.kv_capacity;
        if prefix > 0 && fits {
            let mut reqs = vec![(prefix, 1, 0, prefix)];
            reqs.extend(vec![(len, p.decode_steps + 1, 2, prefix); b]);
            out.push(Scenario {
                cache: true,
                ..Scenario::plain(reqs)
            });
        }
    }
    for &(b, mean) in &p.ragged_prefill {
        let lens = spread(b, mean);
        let total: usize = lens.iter().sum();
        if total <= p.max_prefill_tokens && total + 2 * b <= p.kv_capacity {
            out.push(Scenario::plain(
                lens.iter().map(|&l| (l, 1, 0, 0)).collect(),
            ));
        }
    }
    for &(len, chunk) in &p.chunked {
        if chunk > 0 && len + 2 <= p.kv_capacity {
            out.push(Scenario {
                chunk: Some(chunk),
                ..Scenario::plain(vec![(len, 1, 0, 0)])
            });
        }
    }
    for &(n, mean, chunk) in &p.sustained {
        let lens = spread(n, mean);
        if chunk > 0 && lens.iter().map(|l| l + 2).sum::<usize>() <= p.kv_capacity {
            out.push(Scenario {
                overlap: true,
                chunk: Some(chunk),
                ..Scenario::plain(lens.iter().map(|&l| (l, 1, 0, 0)).collect())
            });
        }
    }
    out
}

/// A backend's hooks for measuring device time apart from host launch time.
pub trait StepTiming {
    /// Report each step's device time in `StepResult::device_ns` (default: not measured).
    fn set_step_timing(&mut self, _on: bool) {}
    /// Keep the device busy for `ns` before the next step, so the step is wholly launched before
    /// the device reaches it (default: nothing to stall).
    fn stall_next_step(&mut self, _ns: u64) {}
}

impl StepTiming for crate::cpu_backend::CpuBackend {}

impl StepTiming for crate::cuda::backend::CudaBackend {
    fn set_step_timing(&mut self, on: bool) {
        crate::cuda::backend::CudaBackend::set_step_timing(self, on);
    }
    fn stall_next_step(&mut self, ns: u64) {
        crate::cuda::backend::CudaBackend::stall_next_step(self, ns);
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
                if let Ok(d) = std::time::Duration::try_from_secs_f64(p.cool_s) {
                    std::thread::sleep(d);
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
    cfg: &crate::model::ModelConfig,
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
