//! The discrete-event loop: clients, the real scheduler and engine loop, the virtual GPU.

use crate::backend::{SimBackend, StepRecord};
use crate::clients::{fmt_time, Clients};
use crate::cost::RooflineCost;
use crate::error::SimError;
use crate::gaps::Gaps;
use crate::profile::Profile;
use crate::trace::Trace;
use crate::workload::{expand, Expanded};
use doppel_core::scheduler::Counters;
use doppel_core::stats::DECODE_LOG_INTERVAL;
use doppel_core::{
    format_decode_log, format_prefill_log, Engine, Event, ForwardMode, RequestId, RequestSpec,
    SamplingParams, Scheduler, SchedulerConfig, TimeNs,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write;
use std::sync::Arc;

/// What happened to a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never sent (the run ended first: only on a stall).
    #[default]
    Pending,
    /// Finished normally.
    Done,
    /// Refused at submission (could never run).
    Refused,
    /// Aborted by the engine.
    Aborted,
}

/// Client-visible timeline of one request (times in virtual ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReqRecord {
    /// When the client sent it.
    pub send: TimeNs,
    /// When the client saw the first token.
    pub first: TimeNs,
    /// When the client saw the last token.
    pub finish: TimeNs,
    /// Prompt tokens.
    pub prompt_len: u32,
    /// Output tokens delivered.
    pub output_tokens: u32,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u32,
    /// Times the request was retracted.
    pub retractions: u32,
    /// Outcome.
    pub status: Status,
}

/// Everything a replay produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Per-request records, by request id.
    pub records: Vec<ReqRecord>,
    /// Every inter-token gap seen by clients (ns).
    pub itls: Gaps,
    /// Output tokens per 1-second bucket of client time.
    pub tokens_per_sec: Vec<u32>,
    /// Scheduler counters at the end.
    pub counters: Counters,
    /// KV capacity in tokens.
    pub kv_capacity: usize,
    /// The scheduler's running-request cap.
    pub max_running: usize,
    /// Steps launched.
    pub steps: u64,
    /// Sum of batch sizes over steps.
    pub batch_sum: u64,
    /// Decode steps and the sum of their batch sizes.
    pub decode_steps: u64,
    /// Sum of decode batch sizes.
    pub decode_batch_sum: u64,
    /// GPU busy time.
    pub gpu_busy_ns: u64,
    /// Virtual time when the last event happened.
    pub end_ns: TimeNs,
    /// Requests refused at submission: (id, reason).
    pub refused: Vec<(usize, String)>,
    /// Executed steps (when recorded).
    pub step_records: Vec<StepRecord>,
    /// The engine loop's clock at each of its iterations, when the arrivals due by then were
    /// taken in and the scheduler ran (recorded with the steps).
    pub iterations: Vec<TimeNs>,
    /// SGLang-style batch log (when asked for).
    pub batch_log: String,
    /// Scheduler configuration used.
    pub config: Option<SchedulerConfig>,
    /// Whether the overlap order ran.
    pub overlap: bool,
}

/// Options of a replay.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Keep a record per step (for the timeline).
    pub record_steps: bool,
    /// Produce SGLang batch log lines.
    pub log_batches: bool,
    /// The timing of a real run of the same trace (`doppel exec replay --json`): every loop
    /// iteration runs at the real one's clock and every step lasts as long as the real one, so
    /// the simulated scheduler sees the arrivals and completions the real one saw and only its
    /// decisions can differ.
    pub timing_from: Option<RealTiming>,
}

/// What the simulator takes from a real run to follow its clock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RealTiming {
    /// Its executed steps: launch number i starts, returns from its launch and ends when
    /// `steps[i]` did.
    pub steps: Vec<StepRecord>,
    /// Its engine loop's clock at each iteration ([`Outcome::iterations`]). Forming each step
    /// at the real step's time is not enough: in the overlap order the real loop may have
    /// applied the previous step's results in an iteration of its own (forming nothing) before
    /// it formed the step, or not, and only the iterations say which. None for a report from
    /// before they were recorded: each step is then formed at the real one's time, which can
    /// part from the real run where it did apply results in an iteration of its own.
    pub iterations: Option<Vec<TimeNs>>,
}

/// Replay a trace (`origin` names it in errors).
pub fn simulate(trace: &Trace, origin: &str, opts: SimOptions) -> Result<Outcome, SimError> {
    let profile = Profile::load(&trace.profile)?;
    let work = expand(trace, trace.prompt_vocab(profile.model.vocab));
    simulate_work(trace, &profile, work, origin, opts)
}

/// Replay an expanded workload on the engine and profile of `trace` (one replica behind a
/// router serves a subset of the trace's requests: `Expanded::subset`).
pub fn simulate_work(
    trace: &Trace,
    profile: &Profile,
    mut work: Expanded,
    origin: &str,
    opts: SimOptions,
) -> Result<Outcome, SimError> {
    let cfg = trace.scheduler_config(profile, origin)?;
    let scheduler = Scheduler::new(cfg.clone()).map_err(|source| SimError::Config {
        file: origin.to_string(),
        source,
    })?;
    let cost = RooflineCost::new(profile, trace.engine.tp_size);
    let mut backend = SimBackend::new(cost, profile.model.vocab, opts.record_steps);
    let (locked_iterations, locked_by_step): (&[TimeNs], bool) = match &opts.timing_from {
        Some(t) => {
            backend.lock_to(t.steps.clone());
            (
                t.iterations.as_deref().unwrap_or(&[]),
                t.iterations.is_none(),
            )
        }
        None => (&[], false),
    };
    let mut engine = Engine::new(scheduler, backend, trace.engine.overlap);
    let n = work.requests.len();
    let eng = &profile.engine;
    let stream_ns = eng.stream_ns.round() as TimeNs;

    let mut out = Outcome {
        kv_capacity: cfg.capacity_tokens(),
        max_running: engine.scheduler.max_running_requests(),
        config: Some(cfg),
        overlap: trace.engine.overlap,
        ..Default::default()
    };
    out.itls = Gaps::new();
    let mut clients = Clients::new(&work, &mut out);
    // Sends by clients, before the path to the server: (time, id).
    let mut sent: Vec<(TimeNs, usize)> = Vec::new();
    // Server-side arrivals (after HTTP + tokenization): (time, id).
    let mut incoming: BinaryHeap<Reverse<(TimeNs, usize)>> = BinaryHeap::with_capacity(n);
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut now: TimeNs = 0;
    let mut iterations = 0usize;
    let mut decode_log_tokens = 0u64;
    let mut decode_log_since: TimeNs = 0;
    // Requests differ in sampling parameters only by output length, so they share them: every
    // decode entry clones its request's Arc, and a few shared ones stay in cache where one per
    // request missed on every token (5 % of a 10,000-request burst).
    let mut params: BTreeMap<(usize, bool), Arc<SamplingParams>> = BTreeMap::new();
    let arrive = |sent: &mut Vec<(TimeNs, usize)>,
                  out: &Outcome,
                  incoming: &mut BinaryHeap<Reverse<(TimeNs, usize)>>| {
        for (at, i) in sent.drain(..) {
            let tok =
                eng.tokenize_ns + eng.tokenize_ns_per_token * out.records[i].prompt_len as f64;
            incoming.push(Reverse((at + (eng.http_ns + tok).round() as TimeNs, i)));
        }
    };

    loop {
        // Locked to a real run's timing: this iteration runs when the real loop's did (an older
        // report: the next step is formed when the real one was).
        let locked_at = if locked_by_step {
            engine.backend.locked_schedule(out.steps as usize)
        } else {
            locked_iterations.get(iterations).copied()
        };
        if let Some(t) = locked_at {
            now = now.max(t);
        }
        iterations += 1;
        if opts.record_steps {
            out.iterations.push(now);
        }
        // Clients: send what is ready, up to the concurrency cap.
        clients.send_due(now, &mut out, &mut sent);
        arrive(&mut sent, &out, &mut incoming);
        // Server: submit what has arrived (engine-thread time before the next step).
        let mut submit_ns = 0.0;
        while let Some(&Reverse((t, i))) = incoming.peek() {
            if t > now {
                break;
            }
            incoming.pop();
            let prompt = work.build_prompt(i).ok_or_else(|| SimError::Stalled {
                at_ns: now,
                why: format!("request {i} was sent before the turn it continues"),
            })?;
            let r = &work.requests[i];
            let sampling = params
                .entry((r.output_len, r.ignore_eos))
                .or_insert_with(|| {
                    Arc::new(SamplingParams {
                        max_new_tokens: r.output_len,
                        ignore_eos: r.ignore_eos,
                        ..SamplingParams::greedy(r.output_len)
                    })
                })
                .clone();
            submit_ns += eng.submit_ns + eng.submit_ns_per_token * prompt.len() as f64;
            let spec = RequestSpec::new(RequestId(i as u64), prompt, sampling, t);
            if let Err(e) = engine.scheduler.submit(spec) {
                clients.refused(i, t, e.to_string(), &mut out, &mut sent);
                arrive(&mut sent, &out, &mut incoming);
            }
        }
        engine.backend.host_work(now, submit_ns.round() as u64);

        events.clear();
        let it = engine
            .iterate(now, &mut events)
            .map_err(|e| SimError::Stalled {
                at_ns: now,
                why: e.to_string(),
            })?;
        if let Some(mut s) = it.launched {
            s.mode = engine.backend.last_mode();
            out.steps += 1;
            out.batch_sum += s.batch_size as u64;
            if s.mode == ForwardMode::Decode {
                out.decode_steps += 1;
                out.decode_batch_sum += s.batch_size as u64;
            }
            if opts.log_batches {
                let at = engine.backend.cpu_free_at();
                if s.retracted > 0 {
                    // SGLang's warning when decode runs out of KV and retracts requests.
                    let _ = writeln!(
                        out.batch_log,
                        "{} KV cache pool is full. Retract requests. #retracted_reqs: {}, #new_token_ratio: {:.4}",
                        fmt_time(at),
                        s.retracted,
                        s.new_token_ratio
                    );
                }
                if s.mode == ForwardMode::Decode {
                    if out.decode_steps.is_multiple_of(DECODE_LOG_INTERVAL) {
                        let dt = at.saturating_sub(decode_log_since).max(1) as f64 * 1e-9;
                        let graph = s.decode_reqs <= profile.engine.cuda_graph_max_bs;
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
        let mut drained = false;
        if it.is_idle() && clients.next_ready().is_none() && incoming.is_empty() && engine.is_idle()
        {
            break;
        }
        if it.is_idle() {
            if engine.inflight().is_some() {
                // Nothing new to launch: wait for the step on the GPU.
                if let Some(t) = engine.drain(&mut events).map_err(|e| SimError::Stalled {
                    at_ns: now,
                    why: e.to_string(),
                })? {
                    now = now.max(t);
                    drained = true;
                }
            }
            // Locked, the real loop's next iteration says when to look again (it slept until the
            // next send, or a bounded while, and woke when it did).
            if !drained && iterations >= locked_iterations.len() {
                let next = [
                    clients.next_ready(),
                    incoming.peek().map(|Reverse((t, _))| *t),
                ]
                .into_iter()
                .flatten()
                .min();
                match next {
                    Some(t) => now = now.max(t),
                    None => {
                        return Err(SimError::Stalled {
                            at_ns: now,
                            why: format!(
                            "{} waiting and {} running requests but the scheduler formed no step",
                            engine.scheduler.num_waiting(),
                            engine.scheduler.num_running()
                        ),
                        })
                    }
                }
            }
        } else if let Some(t) = it.completed_at {
            now = now.max(t);
        } else {
            // Overlap order, first step: the CPU is free once the plan is formed.
            now = now.max(engine.backend.cpu_free_at());
        }

        for ev in events.drain(..) {
            match ev {
                Event::Token { id, index, at, .. } => {
                    clients.token(id.0 as usize, index, at + stream_ns, &mut out);
                    decode_log_tokens += 1;
                }
                Event::Finished(info) => {
                    clients.finished(&info, info.at + stream_ns, &mut out, &mut sent);
                    arrive(&mut sent, &out, &mut incoming);
                }
                // Workloads ask for no prompt logprobs.
                Event::PromptLogprobs { .. } => {}
            }
        }
        out.end_ns = out.end_ns.max(now);
    }
    if clients.settled() < n {
        return Err(SimError::Stalled {
            at_ns: now,
            why: format!("{} of {n} requests never finished", n - clients.settled()),
        });
    }
    if out.refused.len() == n {
        return Err(SimError::Invalid {
            file: origin.to_string(),
            field: "engine.kv_capacity_tokens".into(),
            value: out.kv_capacity.to_string(),
            why: format!("every request was refused, e.g. {}", out.refused[0].1),
            line: None,
        });
    }
    out.counters = engine.scheduler.counters();
    out.gpu_busy_ns = engine.backend.gpu_busy_ns();
    out.step_records = std::mem::take(&mut engine.backend.steps);
    Ok(out)
}
