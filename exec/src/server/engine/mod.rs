//! The engine thread: the core loop and a backend on one OS thread, fed by a command channel.
//!
//! The async side never touches the scheduler; it sends commands (submit with a per-request event
//! sender, abort, stop, flush, shutdown) and reads a snapshot the thread publishes after every
//! round. Time is a real monotonic clock: nanoseconds since the server started.

use super::record::{RecordError, Recorder};
use doppel_core::scheduler::{Counters, MemoryStats};
use doppel_core::{
    format_decode_log, format_prefill_log, Admitted, Backend, Engine, Event, FinishInfo,
    FinishReason, RequestId, RequestSpec, SubmitError, TimeNs, TokenId, TokenLogprob,
};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

/// What the async side asks of the engine thread.
pub enum Command {
    /// Queue a request; its events go to `events` (the first one is `Admitted` or `Refused`).
    Submit {
        /// The request.
        spec: RequestSpec,
        /// Where its events go.
        events: UnboundedSender<ReqEvent>,
    },
    /// End a request early (client gone, stop string matched).
    Abort {
        /// The request.
        id: RequestId,
        /// Why (becomes the finish reason).
        reason: FinishReason,
    },
    /// Drop every cached prefix; answers false while requests are live.
    Flush {
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// Stop taking requests; let live ones finish for `drain`, then abort the rest and exit.
    Shutdown {
        /// How long live requests may keep running.
        drain: Duration,
    },
}

/// Why a submission was refused.
#[derive(Clone, Debug)]
pub enum Refusal {
    /// The scheduler can never run it.
    Invalid(SubmitError),
    /// The waiting queue is full.
    QueueFull(usize),
    /// The server is shutting down.
    ShuttingDown,
}

/// What the engine thread tells one request's handler.
#[derive(Debug)]
pub enum ReqEvent {
    /// Queued.
    Admitted(Admitted),
    /// Not queued.
    Refused(Refusal),
    /// Its first step was formed after this many seconds in the waiting queue.
    Scheduled(f64),
    /// A generated token.
    Token {
        /// The token.
        token: TokenId,
        /// Its logprob, if asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Logprobs of prompt tokens, from position `first` on (before the first token).
    PromptLogprobs {
        /// Position of the prompt token `logprobs[0]` scores.
        first: usize,
        /// One per prompt token.
        logprobs: Vec<TokenLogprob>,
    },
    /// The request ended.
    Finished(FinishInfo),
    /// The backend failed; the engine stopped.
    Failed(String),
}

/// What the engine thread publishes after every round.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// KV accounting.
    pub memory: MemoryStats,
    /// Cumulative counters.
    pub counters: Counters,
    /// Requests waiting.
    pub waiting: usize,
    /// Requests running.
    pub running: usize,
    /// Output tokens per second at the last decode log interval.
    pub gen_throughput: f64,
    /// Requests that ended aborted.
    pub aborted: u64,
    /// False once the engine thread stopped (backend failure or shutdown).
    pub alive: bool,
    /// The backend error that stopped it, if any.
    pub error: Option<String>,
    /// Shutdown was requested.
    pub draining: bool,
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// Refuse submissions while this many requests wait (None = unbounded).
    pub max_queued: Option<usize>,
    /// Print SGLang's batch log lines.
    pub log_batches: bool,
    /// Say "cuda graph: true" in decode lines.
    pub cuda_graph: bool,
    /// Record every request as a trace (`--record`; None: off).
    pub recorder: Option<Arc<Mutex<Recorder>>>,
}

/// State shared between the engine thread and the async side.
pub struct Shared {
    /// The latest snapshot.
    pub snapshot: Mutex<Snapshot>,
    /// The clock's zero.
    pub start: Instant,
}

impl Shared {
    /// A copy of the latest snapshot.
    pub fn snapshot(&self) -> Snapshot {
        match self.snapshot.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the snapshot.
    pub fn publish(&self, s: Snapshot) {
        match self.snapshot.lock() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }
}

struct Loop<B: Backend> {
    engine: Engine<B>,
    routes: HashMap<RequestId, UnboundedSender<ReqEvent>>,
    // Submitted requests not yet in a formed step, with their submission time (queue time).
    queued: Vec<(RequestId, Instant)>,
    // Requests that ended aborted (client gone, /abort_request, shutdown).
    aborted: u64,
    events: Vec<Event>,
    shared: Arc<Shared>,
    opts: LoopOptions,
    shutdown_at: Option<Instant>,
    decode_steps: u64,
    last_log: (Instant, u64),
    gen_throughput: f64,
}

/// Run the loop until shutdown or until every command sender is gone.
pub fn run<B: Backend>(
    engine: Engine<B>,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    opts: LoopOptions,
) {
    let mut l = Loop {
        engine,
        routes: HashMap::new(),
        queued: Vec::new(),
        aborted: 0,
        events: Vec::new(),
        last_log: (Instant::now(), 0),
        shared,
        opts,
        shutdown_at: None,
        decode_steps: 0,
        gen_throughput: 0.0,
    };
    let error = l.main(&rx).err();
    if let Some(e) = &error {
        crate::server::log::error(&format!("engine stopped: {e}"));
        for (_, tx) in l.routes.drain() {
            let _ = tx.send(ReqEvent::Failed(e.clone()));
        }
    }
    let mut snap = l.snapshot();
    snap.alive = false;
    snap.error = error;
    l.shared.publish(snap);
    // Anything still queued in the channel is refused, so no handler waits forever.
    while let Ok(cmd) = rx.try_recv() {
        l.refuse_late(cmd);
    }
}

impl<B: Backend> Loop<B> {
    fn now(&self) -> TimeNs {
        self.shared.start.elapsed().as_nanos() as TimeNs
    }

    fn snapshot(&self) -> Snapshot {
        let s = &self.engine.scheduler;
        Snapshot {
            memory: s.memory(),
            counters: s.counters(),
            waiting: s.num_waiting(),
            running: s.num_running(),
            gen_throughput: self.gen_throughput,
            aborted: self.aborted,
            alive: true,
            error: None,
            draining: self.shutdown_at.is_some(),
        }
    }

    fn main(&mut self, rx: &Receiver<Command>) -> Result<(), String> {
        loop {
            if self.engine.is_idle() {
                self.shared.publish(self.snapshot());
                if self.shutdown_at.is_some() {
                    return Ok(());
                }
                // Idle: block until a command arrives (no busy spin).
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return Ok(()),
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                    // Every sender is gone: the server is down; abort what is left.
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown_at.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            }
            if self.shutdown_at.is_some_and(|t| Instant::now() >= t) {
                self.abort_all("server shutting down");
            }
            if self.engine.is_idle() {
                continue;
            }
            let it = self
                .engine
                .iterate(self.now(), &mut self.events)
                .map_err(|e| format!("backend: {e}"))?;
            if let Some(stats) = it.launched {
                self.log_step(&stats);
                self.note_scheduled();
            }
            self.route();
            self.shared.publish(self.snapshot());
            if it.is_idle() && !self.engine.is_idle() {
                // Live requests but nothing schedulable (cannot happen with a sane core); wait
                // for a command briefly instead of spinning.
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(cmd) => self.handle(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.shutdown_at.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { spec, events } => {
                if self.shutdown_at.is_some() {
                    let _ = events.send(ReqEvent::Refused(Refusal::ShuttingDown));
                    return;
                }
                if let Some(max) = self.opts.max_queued {
                    if self.engine.scheduler.num_waiting() >= max {
                        let _ = events.send(ReqEvent::Refused(Refusal::QueueFull(max)));
                        return;
                    }
                }
                let id = spec.id;
                self.record(|r| {
                    r.arrive(id, spec.arrival, &spec.prompt);
                    Ok(())
                });
                match self.engine.scheduler.submit(spec) {
                    Ok(adm) => {
                        if events.send(ReqEvent::Admitted(adm)).is_err() {
                            // The client left before admission.
                            self.abort(id, FinishReason::Abort("client disconnected".into()));
                        } else {
                            self.routes.insert(id, events);
                            self.queued.push((id, Instant::now()));
                        }
                    }
                    Err(e) => {
                        self.record(|r| {
                            r.forget(id);
                            Ok(())
                        });
                        let _ = events.send(ReqEvent::Refused(Refusal::Invalid(e)));
                    }
                }
            }
            Command::Abort { id, reason } => self.abort(id, reason),
            Command::Flush { reply } => {
                let ok = self.engine.is_idle() && self.engine.scheduler.flush_cache();
                // Publish before replying, so a client that reads the server info after the
                // flush returned sees the freed cache, not the snapshot from before it.
                if ok {
                    self.shared.publish(self.snapshot());
                }
                let _ = reply.send(ok);
            }
            Command::Shutdown { drain } => {
                self.shutdown_at.get_or_insert(Instant::now() + drain);
            }
        }
    }

    fn refuse_late(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { events, .. } => {
                let _ = events.send(ReqEvent::Refused(Refusal::ShuttingDown));
            }
            Command::Flush { reply } => {
                let _ = reply.send(false);
            }
            Command::Abort { .. } | Command::Shutdown { .. } => {}
        }
    }

    fn abort(&mut self, id: RequestId, reason: FinishReason) {
        let now = self.now();
        let mut evs = Vec::new();
        if self.engine.scheduler.abort(id, reason, now, &mut evs) {
            self.events.extend(evs);
            self.route();
        }
    }

    fn abort_all(&mut self, why: &str) {
        let ids: Vec<RequestId> = self.routes.keys().copied().collect();
        let mut ids = ids;
        ids.sort();
        for id in ids {
            self.abort(id, FinishReason::Abort(why.into()));
        }
    }

    /// Deliver events; a request whose handler is gone is aborted at once, freeing its KV.
    fn route(&mut self) {
        let mut gone = Vec::new();
        let mut events = std::mem::take(&mut self.events);
        // Counted and published before any client hears of its end, so a client reading
        // /metrics right after its aborted stream closes sees itself counted.
        let aborted = events
            .iter()
            .filter(
                |e| matches!(e, Event::Finished(i) if matches!(i.reason, FinishReason::Abort(_))),
            )
            .count();
        if aborted > 0 {
            self.aborted += aborted as u64;
            self.shared.publish(self.snapshot());
        }
        for ev in events.drain(..) {
            match ev {
                Event::Token {
                    id, token, logprob, ..
                } => {
                    if let Some(tx) = self.routes.get(&id) {
                        if tx.send(ReqEvent::Token { token, logprob }).is_err() {
                            self.routes.remove(&id);
                            gone.push(id);
                        }
                    }
                }
                Event::PromptLogprobs {
                    id,
                    first,
                    logprobs,
                } => {
                    if let Some(tx) = self.routes.get(&id) {
                        if tx
                            .send(ReqEvent::PromptLogprobs { first, logprobs })
                            .is_err()
                        {
                            self.routes.remove(&id);
                            gone.push(id);
                        }
                    }
                }
                Event::Finished(info) => {
                    self.record(|r| r.finish(info.id, info.output_tokens));
                    if let Some(tx) = self.routes.remove(&info.id) {
                        let _ = tx.send(ReqEvent::Finished(info));
                    }
                }
            }
        }
        // Keep the buffer's allocation for the next round.
        self.events = events;
        for id in gone {
            self.abort(id, FinishReason::Abort("client disconnected".into()));
        }
    }

    /// Apply `f` to the recorder, if recording; a write error ends the recording (serving
    /// goes on) and is logged once.
    fn record(&mut self, f: impl FnOnce(&mut Recorder) -> Result<(), RecordError>) {
        let Some(rec) = &self.opts.recorder else {
            return;
        };
        let result = match rec.lock() {
            Ok(mut r) => f(&mut r),
            Err(p) => f(&mut p.into_inner()),
        };
        if let Err(e) = result {
            crate::server::log::warn(&format!("{e}; recording stopped"));
            self.opts.recorder = None;
        }
    }

    /// Tell requests that left the waiting queue how long they waited (aborted ones have no
    /// route any more and are dropped).
    fn note_scheduled(&mut self) {
        let now = Instant::now();
        let (sched, routes) = (&self.engine.scheduler, &self.routes);
        self.queued.retain(|(id, t)| {
            if sched.is_waiting(*id) {
                return true;
            }
            if let Some(tx) = routes.get(id) {
                let _ = tx.send(ReqEvent::Scheduled(now.duration_since(*t).as_secs_f64()));
            }
            false
        });
    }

    fn log_step(&mut self, s: &doppel_core::StepStats) {
        if s.new_seqs > 0 {
            if self.opts.log_batches {
                crate::server::log::info(&format_prefill_log(s));
            }
        } else if s.decode_reqs > 0 {
            self.decode_steps += 1;
            if self
                .decode_steps
                .is_multiple_of(doppel_core::stats::DECODE_LOG_INTERVAL)
            {
                let generated = self.engine.scheduler.counters().generated_tokens;
                let dt = self.last_log.0.elapsed().as_secs_f64().max(1e-9);
                self.gen_throughput = (generated - self.last_log.1) as f64 / dt;
                self.last_log = (Instant::now(), generated);
                if self.opts.log_batches {
                    crate::server::log::info(&format_decode_log(
                        s,
                        self.opts.cuda_graph,
                        self.gen_throughput,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
