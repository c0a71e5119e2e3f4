//! `doppel exec replay`: a trace run in-process on the real engine (CPU or CUDA backend) on the
//! wall clock, with the trace's arrival schedule. It fills the simulator's [`Outcome`], so the
//! report, the JSON and the batch log are the simulator's own and the two runs compare field by
//! field (`doppel sim compare`).

mod setup;

pub use setup::{load_and_replay, Device, ReplaySetup};

use doppel_core::stats::DECODE_LOG_INTERVAL;
use doppel_core::{
    format_decode_log, format_prefill_log, Backend, Engine, Event, ForwardMode, Plan, RequestId,
    RequestSpec, SamplingParams, Scheduler, SchedulerConfig, StepResult, TimeNs, TokenId,
};
use doppel_exec::warmup::warm_up;
use doppel_sim::backend::StepRecord;
use doppel_sim::clients::{fmt_time, Clients};
use doppel_sim::cost::BatchShape;
use doppel_sim::driver::Outcome;
use doppel_sim::gaps::Gaps;
use doppel_sim::kv_sharing::KvSharing;
use doppel_sim::trace::Trace;
use doppel_sim::workload::{expand, PromptSpec};
use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// What can stop a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The trace or its profile is bad.
    #[error(transparent)]
    Sim(#[from] doppel_sim::SimError),
    /// The scheduler refused the configuration.
    #[error("{origin}: scheduler configuration: {why}")]
    Config {
        /// The trace file.
        origin: String,
        /// Why.
        why: String,
    },
    /// The backend failed a step.
    #[error("backend failed at {at_s:.3} s: {why}")]
    Backend {
        /// Seconds since the start.
        at_s: f64,
        /// The backend's error.
        why: String,
    },
    /// A prompt holds a token the model cannot embed.
    #[error("request {id}: prompt token {token} is outside the model's vocabulary of {vocab}")]
    Vocab {
        /// Request index.
        id: usize,
        /// The token.
        token: TokenId,
        /// Model vocabulary size.
        vocab: usize,
    },
    /// Requests are left but the engine formed no step and none will arrive.
    #[error("stalled at {at_s:.3} s: {why}")]
    Stalled {
        /// Seconds since the start.
        at_s: f64,
        /// What was left.
        why: String,
    },
    /// The run went past its time limit.
    #[error("time limit of {limit_s} s reached with {left} of {total} requests unfinished")]
    TimeLimit {
        /// The limit.
        limit_s: f64,
        /// Requests not finished.
        left: usize,
        /// Requests in the trace.
        total: usize,
    },
    /// Model loading or device setup failed.
    #[error("{0}")]
    Setup(String),
}

/// Options of a replay.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Produce SGLang batch log lines.
    pub log_batches: bool,
    /// Give up after this long.
    pub time_limit: Option<Duration>,
    /// Largest decode batch the warm-up runs (the CUDA graph limit; 0: prefills only).
    pub warm_up_batch: usize,
    /// Warm-up prefills of every GEMM row bucket up to this many tokens (0: none).
    pub warm_up_prefill: usize,
    /// Decode batches up to this size replay a CUDA graph (for the batch log; None on the CPU).
    pub graph_max: Option<usize>,
}

/// Wraps a backend: launches at the wall-clock time, and records each step's mode, shape and span.
pub(crate) struct Recorder<B> {
    pub(crate) inner: B,
    pub(crate) origin: Instant,
    pub(crate) steps: Vec<StepRecord>,
    pub(crate) shapes: Vec<BatchShape>,
    pub(crate) open: VecDeque<usize>,
    pub(crate) last_mode: ForwardMode,
    // Shared cached prefixes of decode batches, for the shapes.
    sharing: KvSharing,
}

impl<B> Recorder<B> {
    pub(crate) fn new(inner: B, origin: Instant) -> Recorder<B> {
        Recorder {
            inner,
            origin,
            steps: Vec::new(),
            shapes: Vec::new(),
            open: VecDeque::new(),
            last_mode: ForwardMode::Extend,
            sharing: KvSharing::new(),
        }
    }
}

impl<B> Recorder<B> {
    fn now(&self) -> TimeNs {
        self.origin.elapsed().as_nanos() as TimeNs
    }
}

impl<B: Backend> Backend for Recorder<B> {
    type Error = B::Error;

    fn launch(&mut self, plan: &Plan, scheduled: TimeNs) -> Result<(), B::Error> {
        // The engine's `now` was read before the scheduler formed the plan: the step really
        // starts after that CPU work, so read the clock again.
        let start = self.now();
        self.inner.launch(plan, start)?;
        let launched = self.now();
        self.last_mode = plan.mode;
        let mut shape = BatchShape::of_plan(plan);
        shape.shared_kv_tokens = self.sharing.observe(plan);
        self.shapes.push(shape);
        self.open.push_back(self.steps.len());
        self.steps.push(StepRecord {
            step: plan.step,
            start,
            end: start,
            scheduled,
            launched,
            device_ns: None,
            mode: plan.mode,
            batch: plan.entries.len() as u32,
            tokens: plan.num_tokens() as u32,
            kv_tokens: self.shapes.last().map_or(0, |s| s.kv_read_tokens as u64),
            model: None,
        });
        Ok(())
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), B::Error> {
        self.inner.collect(plan, out)?;
        if let Some(i) = self.open.pop_front() {
            let s = &mut self.steps[i];
            s.end = out.done_at.max(s.start);
            s.device_ns = out.device_ns;
        }
        Ok(())
    }
}

/// Replay `trace` on `backend` with scheduler configuration `cfg`; `vocab` is the model's
/// vocabulary (prompts are drawn from it); `origin` names the trace in errors.
pub fn replay<B: Backend>(
    trace: &Trace,
    origin: &str,
    cfg: SchedulerConfig,
    backend: B,
    vocab: usize,
    opts: ReplayOptions,
) -> Result<Outcome, ReplayError> {
    let scheduler = Scheduler::new(cfg.clone()).map_err(|e| ReplayError::Config {
        origin: origin.to_string(),
        why: e.to_string(),
    })?;
    let mut backend = backend;
    warm_up(
        &mut backend,
        &cfg,
        vocab,
        opts.warm_up_batch,
        opts.warm_up_prefill,
    )
    .map_err(|why| ReplayError::Backend { at_s: 0.0, why })?;
    let clock = Instant::now();
    let rec = Recorder::new(backend, clock);
    let mut engine = Engine::new(scheduler, rec, trace.engine.overlap);
    // A trace's own `vocab` wins; a token it puts outside the model's is refused below.
    let mut work = expand(trace, trace.prompt_vocab(vocab));
    let n = work.requests.len();
    let mut out = Outcome {
        kv_capacity: cfg.capacity_tokens(),
        max_running: engine.scheduler.max_running_requests(),
        config: Some(cfg),
        overlap: trace.engine.overlap,
        itls: Gaps::new(),
        ..Default::default()
    };
    let mut clients = Clients::new(&work, &mut out);
    // Replies of turns that have a follow-up: a real client re-sends what the model said, so the
    // next prompt carries these tokens where the simulator puts its synthetic ones.
    let mut replies: Vec<Option<Vec<TokenId>>> = (0..n)
        .map(|i| clients.has_followers(i).then(Vec::new))
        .collect();
    let mut sent: Vec<Option<Vec<TokenId>>> = vec![None; n];
    // Sent requests reach the server at once (in-process): (time, id).
    let mut incoming: Vec<(TimeNs, usize)> = Vec::new();
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut decode_log_tokens = 0u64;
    let mut decode_log_since: TimeNs = 0;
    let now_ns = || clock.elapsed().as_nanos() as TimeNs;
    let secs = |ns: TimeNs| ns as f64 * 1e-9;

    loop {
        let now = now_ns();
        // The simulator locked to this run replays every iteration at this clock (not only the
        // ones that launch a step: one that only applies results changes what the next sees).
        out.iterations.push(now);
        if let Some(limit) = opts.time_limit {
            if now > limit.as_nanos() as TimeNs {
                return Err(ReplayError::TimeLimit {
                    limit_s: limit.as_secs_f64(),
                    left: n - clients.settled(),
                    total: n,
                });
            }
        }
        // Clients: a request is sent at its scheduled time (the server queues it even while a
        // step is running), up to the concurrency cap.
        clients.send_due(now, &mut out, &mut incoming);
        // Server: submit in arrival order (no HTTP or tokenization in-process).
        let mut k = 0;
        while k < incoming.len() {
            let (t, i) = incoming[k];
            k += 1;
            let mut prompt = work.build_prompt(i).ok_or_else(|| ReplayError::Stalled {
                at_s: secs(now),
                why: format!("request {i} was sent before the turn it continues"),
            })?;
            let r = &work.requests[i];
            if let PromptSpec::Continue { prev, .. } = r.prompt {
                // The simulator's prompt is the previous prompt, its synthetic reply, the new
                // message; rebuild it from what was really sent and really generated.
                let skip = work.requests[prev].prompt_len + work.requests[prev].output_len;
                if let (Some(mut sent), Some(reply)) = (sent[prev].take(), replies[prev].take()) {
                    sent.extend_from_slice(&reply);
                    sent.extend_from_slice(prompt.get(skip..).unwrap_or(&[]));
                    prompt = sent;
                }
            }
            if replies[i].is_some() {
                sent[i] = Some(prompt.clone());
            }
            if let Some(&token) = prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(ReplayError::Vocab {
                    id: i,
                    token,
                    vocab,
                });
            }
            let sampling = SamplingParams {
                max_new_tokens: r.output_len,
                ignore_eos: r.ignore_eos,
                ..SamplingParams::greedy(r.output_len)
            };
            let spec = RequestSpec::new(RequestId(i as u64), prompt, sampling, t);
            if let Err(e) = engine.scheduler.submit(spec) {
                clients.refused(i, t, e.to_string(), &mut out, &mut incoming);
            }
        }
        incoming.clear();

        events.clear();
        let it = engine
            .iterate(now, &mut events)
            .map_err(|e| ReplayError::Backend {
                at_s: secs(now_ns()),
                why: e.to_string(),
            })?;
        if let Some(mut s) = it.launched {
            s.mode = engine.backend.last_mode;
            out.steps += 1;
            out.batch_sum += s.batch_size as u64;
            if s.mode == ForwardMode::Decode {
                out.decode_steps += 1;
                out.decode_batch_sum += s.batch_size as u64;
            }
            if opts.log_batches {
                let at = engine.backend.steps.last().map(|r| r.start).unwrap_or(now);
                if s.mode == ForwardMode::Decode {
                    if out.decode_steps.is_multiple_of(DECODE_LOG_INTERVAL) {
                        let dt = at.saturating_sub(decode_log_since).max(1) as f64 * 1e-9;
                        let graph = opts.graph_max.is_some_and(|g| s.decode_reqs <= g);
                        let line = format_decode_log(&s, graph, decode_log_tokens as f64 / dt);
                        let _ = writeln!(out.batch_log, "{} {line}", fmt_time(at));
                        decode_log_tokens = 0;
                        decode_log_since = at;
                    }
                } else {
                    let _ = writeln!(out.batch_log, "{} {}", fmt_time(at), format_prefill_log(&s));
                }
            }
        }
        if it.is_idle() && clients.next_ready().is_none() && incoming.is_empty() && engine.is_idle()
        {
            break;
        }
        if it.is_idle() {
            let mut drained = false;
            if engine.inflight().is_some() {
                drained = engine
                    .drain(&mut events)
                    .map_err(|e| ReplayError::Backend {
                        at_s: secs(now_ns()),
                        why: e.to_string(),
                    })?
                    .is_some();
            }
            // Pending events may make a follow-up turn ready sooner: handle them first.
            if !drained && incoming.is_empty() && events.is_empty() {
                match clients.next_ready() {
                    Some(t) => {
                        // Idle until the next send (bounded so the time limit is still checked).
                        let wait = t.saturating_sub(now_ns()).min(50_000_000);
                        std::thread::sleep(Duration::from_nanos(wait));
                    }
                    None => {
                        let why = format!(
                            "{} waiting and {} running requests but no step was formed",
                            engine.scheduler.num_waiting(),
                            engine.scheduler.num_running()
                        );
                        return Err(ReplayError::Stalled {
                            at_s: secs(now),
                            why,
                        });
                    }
                }
            }
        }

        for ev in events.drain(..) {
            match ev {
                Event::Token {
                    id,
                    token,
                    index,
                    at,
                    ..
                } => {
                    let i = id.0 as usize;
                    clients.token(i, index, at, &mut out);
                    decode_log_tokens += 1;
                    if let Some(reply) = replies[i].as_mut() {
                        reply.truncate(index);
                        reply.push(token);
                    }
                }
                Event::Finished(info) => {
                    clients.finished(&info, info.at, &mut out, &mut incoming);
                }
                // Replayed traces ask for no prompt logprobs.
                Event::PromptLogprobs { .. } => {}
            }
        }
        out.end_ns = out.end_ns.max(now_ns());
    }
    if clients.settled() < n {
        return Err(ReplayError::Stalled {
            at_s: secs(now_ns()),
            why: format!("{} of {n} requests never finished", n - clients.settled()),
        });
    }
    out.counters = engine.scheduler.counters();
    let rec = engine.backend;
    out.gpu_busy_ns = rec.steps.iter().map(|s| s.end - s.start).sum();
    out.step_records = rec.steps;
    Ok(out)
}
