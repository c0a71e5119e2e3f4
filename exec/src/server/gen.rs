//! One generation as the async side sees it: submit to the engine thread, wait for admission,
//! then turn token events into text chunks (detokenized, stop strings applied).

use super::codec::OutStream;
use super::engine::{Command, Refusal, ReqEvent};
use super::error::ApiError;
use super::metrics::Finished;
use super::params::GenParams;
use super::AppState;
use axum::http::StatusCode;
use doppel_core::{FinishReason, RequestId, RequestSpec, SamplingParams, TokenId, TokenLogprob};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// Reached its output length.
    Length,
    /// Sampled EOS or a stop token.
    StopToken(TokenId),
    /// Matched a stop string.
    StopString(String),
    /// Aborted by the engine (out of memory, shutdown).
    Abort(String),
    /// The backend failed.
    Failed(String),
}

impl Finish {
    /// OpenAI's finish_reason.
    pub fn openai(&self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::StopToken(_) | Finish::StopString(_) => "stop",
            Finish::Abort(_) | Finish::Failed(_) => "abort",
        }
    }

    /// SGLang's meta_info.finish_reason.
    pub fn native(&self, completion_tokens: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            Finish::Length => json!({"type": "length", "length": completion_tokens}),
            Finish::StopToken(t) => json!({"type": "stop", "matched": t}),
            Finish::StopString(s) => json!({"type": "stop", "matched": s}),
            Finish::Abort(m) | Finish::Failed(m) => json!({"type": "abort", "message": m}),
        }
    }
}

/// How a generation ended, with its counts.
#[derive(Clone, Debug)]
pub struct End {
    /// Why.
    pub finish: Finish,
    /// Output tokens delivered (up to the stop string, if one matched).
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Seconds from receipt to the end.
    pub e2e_latency: f64,
}

/// New output since the previous chunk.
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    /// Text now certain.
    pub delta: String,
    /// Token ids added.
    pub tokens: Vec<TokenId>,
    /// Their logprobs (same length as `tokens` when asked for, else empty).
    pub logprobs: Vec<Option<TokenLogprob>>,
    /// Logprobs of prompt tokens added (asked for with `prompt_logprobs_from`), in position
    /// order: they all arrive before the first token.
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Set on the last chunk.
    pub end: Option<End>,
}

/// Aborts the request in the engine if the handler goes away before it finished.
struct AbortGuard {
    id: RequestId,
    cmd: Sender<Command>,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmd.send(Command::Abort {
                id: self.id,
                reason: FinishReason::Abort("client disconnected".into()),
            });
        }
    }
}

/// A submitted request.
pub struct Generation {
    state: Arc<AppState>,
    rx: UnboundedReceiver<ReqEvent>,
    guard: AbortGuard,
    stream: OutStream,
    want_logprobs: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
    stopped: Option<String>,
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    done: bool,
    rid: String,
}

impl Drop for Generation {
    fn drop(&mut self) {
        let (rid, id) = (&self.rid, self.guard.id);
        self.state.with_rids(|m| {
            if m.get(rid) == Some(&id) {
                m.remove(rid);
            }
        });
    }
}

/// Submit a request under a generated rid; the caller awaits [`Generation::admitted`] (submit
/// all of a batch first, so they reach the engine in one round).
pub fn submit(
    state: &Arc<AppState>,
    prompt: Vec<TokenId>,
    sampling: SamplingParams,
    gp: &GenParams,
    started: Instant,
) -> Result<Generation, ApiError> {
    submit_as(state, prompt, sampling, gp, started, None)
}

/// Take `rid` (the client's, or a generated one if None) for request `id` among the live ones.
/// A client's rid that is live is refused; a generated rid that a client already holds is
/// extended until it is free, so /abort_request never reaches another client's request.
fn reserve_rid(state: &AppState, rid: Option<&str>, id: RequestId) -> Result<String, ApiError> {
    state.with_rids(|m| match rid {
        Some(r) if m.contains_key(r) => Err(ApiError::field(
            "rid",
            format!(
                "`rid` {:?} is already used by a live request; give each live request its own",
                super::wire::clip(r)
            ),
        )),
        Some(r) => {
            m.insert(r.to_string(), id);
            Ok(r.to_string())
        }
        None => {
            let mut rid = format!("{:016x}", id.0);
            let mut n = 0;
            while m.contains_key(&rid) {
                n += 1;
                rid = format!("{:016x}-{n}", id.0);
            }
            m.insert(rid.clone(), id);
            Ok(rid)
        }
    })
}

/// [`submit`] under the client's rid, if one is given.
pub fn submit_as(
    state: &Arc<AppState>,
    prompt: Vec<TokenId>,
    sampling: SamplingParams,
    gp: &GenParams,
    started: Instant,
    rid: Option<&str>,
) -> Result<Generation, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutting_down",
            "the server is shutting down",
        ));
    }
    check_vocab(&prompt, state.info.vocab)?;
    let id = RequestId(state.next_id.fetch_add(1, Ordering::Relaxed));
    let rid = reserve_rid(state, rid, id)?;
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let want_logprobs = sampling.return_logprob;
    let stream = state.codec.stream(
        &gp.stop,
        gp.include_stop,
        sampling.min_new_tokens,
        gp.skip_special_tokens,
    );
    let now = state.shared.start.elapsed().as_nanos() as u64;
    let mut spec = RequestSpec::new(id, prompt, sampling, now);
    spec.priority = gp.priority;
    // Built before sending, so a failed send frees the rid (Drop) like any other end.
    let g = Generation {
        rid,
        guard: AbortGuard {
            id,
            cmd: state.cmd.clone(),
            armed: true,
        },
        state: state.clone(),
        rx,
        stream,
        want_logprobs,
        prompt_tokens,
        completion_tokens: 0,
        stopped: None,
        started,
        first_token: None,
        last_token: None,
        done: false,
    };
    state
        .cmd
        .send(Command::Submit { spec, events: tx })
        .map_err(|_| engine_down())?;
    Ok(g)
}

/// Every prompt token must be a row of the model's embedding. Ids given by the client are
/// checked where they are parsed; this also catches a tokenizer (or chat template) that emits
/// ids past the model's vocabulary, which would otherwise stop the engine.
fn check_vocab(prompt: &[TokenId], vocab: usize) -> Result<(), ApiError> {
    match prompt.iter().position(|&t| t as usize >= vocab) {
        Some(i) => Err(ApiError::field(
            "prompt",
            format!(
                "prompt token {i} is id {}, outside the model's vocabulary of {vocab} \
                 (the tokenizer knows more tokens than the model embeds)",
                prompt[i]
            ),
        )),
        None => Ok(()),
    }
}

fn engine_down() -> ApiError {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "engine_unavailable",
        "the engine is not running",
    )
}

impl Generation {
    /// Wait until the engine queued the request (or refused it).
    pub async fn admitted(&mut self, prompt_field: &str) -> Result<(), ApiError> {
        match self.rx.recv().await {
            Some(ReqEvent::Admitted(_)) => Ok(()),
            Some(ReqEvent::Refused(r)) => {
                self.guard.armed = false;
                self.done = true;
                Err(match r {
                    Refusal::Invalid(e) => ApiError::field(prompt_field, e.to_string()),
                    Refusal::QueueFull(n) => ApiError::status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "queue_full",
                        format!("the waiting queue is full ({n} requests); retry later"),
                    ),
                    Refusal::ShuttingDown => ApiError::status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_shutting_down",
                        "the server is shutting down",
                    ),
                })
            }
            Some(ReqEvent::Failed(m)) => {
                self.guard.armed = false;
                self.done = true;
                Err(ApiError::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine_error",
                    m,
                ))
            }
            Some(_) | None => {
                self.guard.armed = false;
                self.done = true;
                Err(engine_down())
            }
        }
    }

    /// The request id (/abort_request takes it).
    pub fn rid(&self) -> String {
        self.rid.clone()
    }

    /// Prompt length in tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next chunk; None once the last one was returned. Tokens already waiting are merged
    /// into one chunk so a slow reader gets fewer, larger chunks.
    pub async fn next(&mut self) -> Option<Chunk> {
        if self.done {
            return None;
        }
        let mut chunk = Chunk::default();
        let first = self.rx.recv().await;
        self.apply(first, &mut chunk);
        while chunk.end.is_none() {
            match self.rx.try_recv() {
                Ok(ev) => self.apply(Some(ev), &mut chunk),
                Err(_) => break,
            }
        }
        Some(chunk)
    }

    /// Run to the end, gathering everything.
    pub async fn collect(&mut self) -> Chunk {
        let mut all = Chunk::default();
        while let Some(c) = self.next().await {
            all.delta.push_str(&c.delta);
            all.tokens.extend(c.tokens);
            all.logprobs.extend(c.logprobs);
            all.prompt_logprobs.extend(c.prompt_logprobs);
            if c.end.is_some() {
                all.end = c.end;
            }
        }
        all
    }

    fn apply(&mut self, ev: Option<ReqEvent>, chunk: &mut Chunk) {
        match ev {
            Some(ReqEvent::Token { token, logprob }) => {
                // Tokens the engine produced after a stop string matched are not output.
                if self.stopped.is_some() {
                    return;
                }
                let now = Instant::now();
                match self.last_token {
                    None => {
                        self.first_token = Some(now);
                        self.state
                            .metrics
                            .ttft(now.duration_since(self.started).as_secs_f64())
                    }
                    Some(t) => self.state.metrics.itl(now.duration_since(t).as_secs_f64()),
                }
                self.last_token = Some(now);
                self.completion_tokens += 1;
                chunk.tokens.push(token);
                if self.want_logprobs {
                    chunk.logprobs.push(logprob);
                }
                match self.stream.push(token) {
                    Ok(step) => {
                        chunk.delta.push_str(&step.emit);
                        if let Some(s) = step.stopped {
                            self.stopped = Some(s.clone());
                            let _ = self.state.cmd.send(Command::Abort {
                                id: self.guard.id,
                                reason: FinishReason::StopString(s),
                            });
                        }
                    }
                    Err(e) => {
                        let _ = self.state.cmd.send(Command::Abort {
                            id: self.guard.id,
                            reason: FinishReason::Abort(format!("detokenizer: {e}")),
                        });
                    }
                }
            }
            Some(ReqEvent::PromptLogprobs { logprobs, .. }) => {
                chunk.prompt_logprobs.extend(logprobs)
            }
            Some(ReqEvent::Finished(info)) => {
                if self.stopped.is_none() {
                    if let Ok(tail) = self.stream.finish() {
                        chunk.delta.push_str(&tail);
                    }
                }
                let finish = match (&self.stopped, info.reason) {
                    (Some(s), _) => Finish::StopString(s.clone()),
                    (None, FinishReason::Length) => Finish::Length,
                    (None, FinishReason::StopToken(t)) => Finish::StopToken(t),
                    (None, FinishReason::StopString(s)) => Finish::StopString(s),
                    (None, FinishReason::Abort(m)) => Finish::Abort(m),
                };
                self.end(finish, info.cached_tokens, chunk);
            }
            Some(ReqEvent::Failed(m)) => self.end(Finish::Failed(m), 0, chunk),
            Some(ReqEvent::Scheduled(secs)) => self.state.metrics.queue_time(secs),
            Some(ReqEvent::Admitted(_)) | Some(ReqEvent::Refused(_)) => {}
            None => self.end(Finish::Failed("the engine stopped".into()), 0, chunk),
        }
    }

    fn end(&mut self, finish: Finish, cached_tokens: usize, chunk: &mut Chunk) {
        self.guard.armed = false;
        self.done = true;
        let e2e = self.started.elapsed().as_secs_f64();
        // SGLang's and vLLM's per-request decode time per token: after the first token.
        let tpot = match (self.first_token, self.completion_tokens) {
            (Some(t), n) if n >= 2 => Some(t.elapsed().as_secs_f64() / (n - 1) as f64),
            _ => None,
        };
        self.state.metrics.finished(Finished {
            e2e,
            tpot,
            prompt: self.prompt_tokens,
            generated: self.completion_tokens,
        });
        chunk.end = Some(End {
            finish,
            completion_tokens: self.completion_tokens,
            cached_tokens,
            e2e_latency: e2e,
        });
    }
}

/// Run generations concurrently, forwarding their chunks (tagged with their position) into one
/// channel. A reader that drops the receiver drops the generations, which aborts them.
pub fn fan_in(gens: Vec<Generation>) -> tokio::sync::mpsc::Receiver<(usize, Chunk)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for (i, mut g) in gens.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                // A reader that left aborts the request at once, even while it waits in the queue.
                let c = tokio::select! {
                    c = g.next() => c,
                    _ = tx.closed() => return,
                };
                let Some(c) = c else { return };
                if tx.send((i, c)).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// Wait for the admission of every generation (all were submitted first).
pub async fn admit_all(gens: &mut [Generation], prompt_field: &str) -> Result<(), ApiError> {
    for g in gens.iter_mut() {
        g.admitted(prompt_field).await?;
    }
    Ok(())
}
