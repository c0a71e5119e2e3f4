//! The discrete-event loop: clients, the real scheduler and engine loop, the virtual GPU.

use crate::backend::{SimBackend, StepRecord};
use crate::cost::RooflineCost;
use crate::error::SimError;
use crate::gaps::Gaps;
use crate::profile::Profile;
use crate::trace::Trace;
use crate::workload::{expand, Start};
use doppel_core::scheduler::Counters;
use doppel_core::stats::DECODE_LOG_INTERVAL;
use doppel_core::{
    format_decode_log, format_prefill_log, Engine, Event, FinishReason, ForwardMode, RequestId,
    RequestSpec, SamplingParams, Scheduler, SchedulerConfig, TimeNs,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write;

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never sent (the run ended first: only on a stall).
    Pending,
    /// Finished normally.
    Done,
    /// Refused at submission (could never run).
    Refused,
    /// Aborted by the engine.
    Aborted,
}

/// Client-visible timeline of one request (times in virtual ns).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
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
    /// SGLang-style batch log (when asked for).
    pub batch_log: String,
    /// Scheduler configuration used.
    pub config: Option<SchedulerConfig>,
    /// Whether the overlap order ran.
    pub overlap: bool,
}

/// Options of a replay.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimOptions {
    /// Keep a record per step (for the timeline).
    pub record_steps: bool,
    /// Produce SGLang batch log lines.
    pub log_batches: bool,
}

fn fmt_time(ns: TimeNs) -> String {
    format!("[{:>10.6}s]", ns as f64 * 1e-9)
}

/// Replay a trace (`origin` names it in errors).
pub fn simulate(trace: &Trace, origin: &str, opts: SimOptions) -> Result<Outcome, SimError> {
    let profile = Profile::load(&trace.profile)?;
    let cfg = trace.scheduler_config(&profile, origin)?;
    let scheduler = Scheduler::new(cfg.clone()).map_err(|source| SimError::Config {
        file: origin.to_string(),
        source,
    })?;
    let cost = RooflineCost::new(&profile, trace.engine.tp_size);
    let backend = SimBackend::new(cost, profile.model.vocab, opts.record_steps);
    let mut engine = Engine::new(scheduler, backend, trace.engine.overlap);
    let mut work = expand(trace, profile.model.vocab);
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
    out.records = work
        .requests
        .iter()
        .map(|r| ReqRecord {
            send: 0,
            first: 0,
            finish: 0,
            prompt_len: r.prompt_len as u32,
            output_tokens: 0,
            cached_tokens: 0,
            retractions: 0,
            status: Status::Pending,
        })
        .collect();
    out.itls = Gaps::new();
    // Followers of each request (multi-turn), by index.
    let mut followers: Vec<Vec<(usize, TimeNs)>> = vec![Vec::new(); n];
    // Client-side: ready to send (time, id); blocked on the concurrency cap; in flight.
    let mut ready: BinaryHeap<Reverse<(TimeNs, usize)>> = BinaryHeap::with_capacity(n);
    for (i, r) in work.requests.iter().enumerate() {
        match r.start {
            Start::At(t) => ready.push(Reverse((t, i))),
            Start::After { prev, think_ns } => followers[prev].push((i, think_ns)),
        }
    }
    let cap = work.max_concurrency.unwrap_or(usize::MAX);
    let mut blocked: VecDeque<usize> = VecDeque::new();
    let mut in_flight = 0usize;
    // Server-side arrivals (after HTTP + tokenization): (time, id).
    let mut incoming: BinaryHeap<Reverse<(TimeNs, usize)>> = BinaryHeap::with_capacity(n);
    let mut last_token_at: Vec<TimeNs> = vec![0; n];
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut now: TimeNs = 0;
    let mut decode_log_tokens = 0u64;
    let mut decode_log_since: TimeNs = 0;
    let mut settled = 0usize;

    let send = |i: usize,
                at: TimeNs,
                out: &mut Outcome,
                incoming: &mut BinaryHeap<Reverse<(TimeNs, usize)>>| {
        out.records[i].send = at;
        let tok = eng.tokenize_ns + eng.tokenize_ns_per_token * out.records[i].prompt_len as f64;
        incoming.push(Reverse((at + (eng.http_ns + tok).round() as TimeNs, i)));
    };

    loop {
        // Clients: send what is ready, up to the concurrency cap.
        while let Some(&Reverse((t, i))) = ready.peek() {
            if t > now {
                break;
            }
            ready.pop();
            if in_flight < cap {
                in_flight += 1;
                send(i, t, &mut out, &mut incoming);
            } else {
                blocked.push_back(i);
            }
        }
        // Server: submit what has arrived.
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
            let sampling = SamplingParams {
                max_new_tokens: r.output_len,
                ignore_eos: r.ignore_eos,
                ..SamplingParams::greedy(r.output_len)
            };
            let spec = RequestSpec::new(RequestId(i as u64), prompt, sampling, t);
            if let Err(e) = engine.scheduler.submit(spec) {
                out.records[i].status = Status::Refused;
                out.records[i].finish = t;
                out.refused.push((i, e.to_string()));
                settled += 1;
                in_flight -= 1;
                if let Some(b) = blocked.pop_front() {
                    in_flight += 1;
                    send(b, t, &mut out, &mut incoming);
                }
                // The conversation goes on (its next turn is longer and will likely be refused too,
                // which the report then lists).
                for &(f, think) in &followers[i] {
                    ready.push(Reverse((t + think, f)));
                }
            }
        }

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
        if it.is_idle() && ready.is_empty() && incoming.is_empty() && engine.is_idle() {
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
            if !drained {
                let next = [ready.peek(), incoming.peek()]
                    .into_iter()
                    .flatten()
                    .map(|Reverse((t, _))| *t)
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
                    let i = id.0 as usize;
                    let seen = at + stream_ns;
                    let rec = &mut out.records[i];
                    if index == 0 || rec.output_tokens == 0 {
                        rec.first = seen;
                    } else {
                        out.itls.push(seen - last_token_at[i]);
                    }
                    last_token_at[i] = seen;
                    rec.output_tokens += 1;
                    decode_log_tokens += 1;
                    let sec = (seen / 1_000_000_000) as usize;
                    if out.tokens_per_sec.len() <= sec {
                        out.tokens_per_sec.resize(sec + 1, 0);
                    }
                    out.tokens_per_sec[sec] += 1;
                }
                Event::Finished(info) => {
                    let i = info.id.0 as usize;
                    let seen = info.at + stream_ns;
                    let rec = &mut out.records[i];
                    rec.finish = seen.max(last_token_at[i]);
                    rec.cached_tokens = info.cached_tokens as u32;
                    rec.retractions = info.retractions;
                    rec.status = match info.reason {
                        FinishReason::Abort(_) => Status::Aborted,
                        _ => Status::Done,
                    };
                    settled += 1;
                    in_flight -= 1;
                    let done = rec.finish;
                    if let Some(b) = blocked.pop_front() {
                        in_flight += 1;
                        send(b, done, &mut out, &mut incoming);
                    }
                    for &(f, think) in &followers[i] {
                        ready.push(Reverse((done + think, f)));
                    }
                }
            }
        }
        out.end_ns = out.end_ns.max(now);
    }
    if settled < n {
        return Err(SimError::Stalled {
            at_ns: now,
            why: format!("{} of {n} requests never finished", n - settled),
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
