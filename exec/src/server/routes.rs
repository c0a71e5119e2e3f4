//! The router, the small endpoints (health, info, models, flush, metrics) and shared plumbing:
//! body reading with a size limit, and server-sent events.

use super::engine::Command;
use super::error::ApiError;
use super::gen;
use super::params::GenParams;
use super::{native, openai, probe, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// All endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/generate", post(native::generate))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/models", get(models))
        // Model names may hold slashes (e.g. Qwen/Qwen3-0.6B).
        .route("/v1/models/{*id}", get(probe::model))
        .route("/tokenize", post(probe::tokenize))
        .route("/v1/tokenize", post(probe::tokenize))
        .route("/detokenize", post(probe::detokenize))
        .route("/v1/detokenize", post(probe::detokenize))
        .route("/get_load", get(probe::get_load))
        .route("/ready", get(probe::ready))
        .route("/health", get(health))
        .route("/health_generate", get(health_generate))
        .route("/get_model_info", get(model_info))
        .route("/model_info", get(model_info))
        .route("/get_server_info", get(server_info))
        .route("/server_info", get(server_info))
        .route("/flush_cache", post(flush_cache).get(flush_cache))
        .route("/abort_request", post(abort_request))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// SGLang's `--api-key`: every route but /health needs `Authorization: Bearer <key>`.
async fn auth(
    State(s): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(key) = &s.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_secret(g.trim().as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized("invalid API key"),
        None => unauthorized("missing API key: send `Authorization: Bearer <key>`"),
    }
}

fn unauthorized(why: &str) -> Response {
    let mut r = ApiError::status(StatusCode::UNAUTHORIZED, "invalid_api_key", why).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Compare without an early exit, so the time taken does not reveal how much of a guess matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {} {}",
            req.method(),
            super::wire::clip(req.uri().path())
        ),
    )
}

/// Read a body of at most the configured size: 413 beyond it (at once when the declared length
/// is larger), 408 when it does not arrive in time, 400 when it is cut short.
pub async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody;
    use futures_util::StreamExt;
    let limit = state.info.max_body_bytes;
    let too_large = || {
        ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body larger than {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    let mut data = body.into_data_stream();
    while let Some(piece) = data.next().await {
        match piece {
            Ok(b) if buf.len() + b.len() > limit => return Err(too_large()),
            Ok(b) => buf.extend_from_slice(&b),
            Err(e) => {
                let e = e.into_inner();
                if let Some(t) = e.downcast_ref::<super::wire::BodyTimeout>() {
                    return Err(ApiError::status(
                        StatusCode::REQUEST_TIMEOUT,
                        "invalid_request_error",
                        t.to_string(),
                    ));
                }
                return Err(ApiError::bad(format!(
                    "the request body is incomplete or unreadable after {} bytes: {e}",
                    buf.len()
                )));
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// Check `model`: any name is served (as SGLang does: routers and clients send their own names,
/// and refusing them makes a router mark the server down); only a non-string is refused.
pub fn check_model(
    _state: &AppState,
    obj: &serde_json::Map<String, Value>,
) -> Result<(), ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(v) => Err(ApiError::field(
            "model",
            format!(
                "`model` must be a string, got {}",
                super::wire::clip(&v.to_string())
            ),
        )),
    }
}

/// An SSE response over a stream of ready-made `data: ...` frames.
pub fn sse(stream: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One SSE frame.
pub fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The terminating frame.
pub fn done_frame() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [probe::model_card(&s)]}))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let snap = s.shared.snapshot();
    if snap.alive && !snap.draining {
        StatusCode::OK.into_response()
    } else {
        ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            snap.error
                .unwrap_or_else(|| "the server is shutting down".into()),
        )
        .into_response()
    }
}

/// Generate one token end to end (SGLang's /health_generate).
async fn health_generate(State(s): State<Arc<AppState>>) -> Response {
    let gp = GenParams {
        sampling: doppel_core::SamplingParams::greedy(1),
        max_new_given: true,
        max_new_field: "max_new_tokens",
        stop: Vec::new(),
        include_stop: false,
        skip_special_tokens: true,
        n: 1,
        constraint: None,
        priority: 0,
    };
    let prompt = s.codec.encode("health").unwrap_or_default();
    let prompt = if prompt.is_empty() { vec![0] } else { prompt };
    let run = async {
        let mut g = gen::submit(&s, prompt, gp.sampling.clone(), &gp, Instant::now())?;
        g.admitted("input_ids").await?;
        let c = g.collect().await;
        match c.end.map(|e| e.finish) {
            Some(gen::Finish::Failed(m)) => Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy",
                m,
            )),
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..e
        }
        .into_response(),
        Err(_) => ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            "no token within 20 s",
        )
        .into_response(),
    }
}

async fn model_info(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "model_path": s.info.model_path,
        "tokenizer_path": s.info.tokenizer_path,
        "served_model_name": s.info.model_name,
        "is_generation": true,
        "architecture": s.info.arch,
        "context_length": s.info.context_len,
        "vocab_size": s.info.vocab,
    }))
}

async fn server_info(State(s): State<Arc<AppState>>) -> Json<Value> {
    let snap = s.shared.snapshot();
    let m = &snap.memory;
    let c = &snap.counters;
    let i = &s.info;
    Json(json!({
        "model_path": i.model_path,
        "served_model_name": i.model_name,
        "backend": i.backend,
        "context_length": i.context_len,
        "max_total_num_tokens": i.capacity,
        "page_size": i.page_size,
        "chunked_prefill_size": i.chunked_prefill_size,
        "max_running_requests": i.max_running_requests,
        "max_queued_requests": i.max_queued_requests,
        "schedule_policy": i.policy,
        "disable_radix_cache": i.disable_radix_cache,
        "enable_mixed_chunk": i.enable_mixed_chunk,
        "mixed_step_tokens": i.mixed_step_tokens,
        "enable_overlap": i.overlap,
        "tp_size": i.tp_size,
        "dp_size": 1,
        "tool_call_parser": i.tool_call_parser.map(|t| t.name()),
        "reasoning_parser": i.reasoning_parser.map(|r| r.name()),
        "version": env!("CARGO_PKG_VERSION"),
        "alive": snap.alive,
        "draining": snap.draining,
        "num_running_reqs": snap.running,
        "num_waiting_reqs": snap.waiting,
        "memory": {
            "capacity": m.capacity,
            "free": m.free,
            "evictable": m.evictable,
            "protected": m.protected,
            "held": m.held,
            "used": m.used(),
        },
        "counters": {
            "steps": c.steps,
            "prefill_steps": c.prefill_steps,
            "mixed_steps": c.mixed_steps,
            "decode_steps": c.decode_steps,
            "prompt_tokens": c.prompt_tokens,
            "cached_tokens": c.cached_tokens,
            "evicted_tokens": c.evicted_tokens,
            "retractions": c.retractions,
            "finished": c.finished,
            "generated_tokens": c.generated_tokens,
            "peak_used_tokens": c.peak_used_tokens,
        },
        "gen_throughput": snap.gen_throughput,
        "structured_outputs": structured(&s),
    }))
}

/// Whether constraints are on, and the token masks computed so far with their total time.
fn structured(s: &AppState) -> Value {
    let (masks, ns) = crate::constraint::mask_stats();
    json!({
        "available": s.grammars.is_ok(),
        "unavailable_because": s.grammars.as_ref().err(),
        "masks": masks,
        "mask_ns": ns,
    })
}

async fn flush_cache(State(s): State<Arc<AppState>>) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if s.cmd.send(Command::Flush { reply: tx }).is_err() {
        return ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            "the engine is not running",
        )
        .into_response();
    }
    match rx.await {
        Ok(true) => (StatusCode::OK, "Cache flushed.\n").into_response(),
        Ok(false) => ApiError::bad(
            "cannot flush the cache while requests are running or waiting; retry when idle",
        )
        .into_response(),
        Err(_) => ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            "the engine is not running",
        )
        .into_response(),
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let snap = s.shared.snapshot();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&snap, &s.info.model_name),
    )
        .into_response()
}

/// SGLang's /abort_request: `{"rid": "..."}` or `{"abort_all": true}`; unknown rids are ignored.
async fn abort_request(State(s): State<Arc<AppState>>, body: Body) -> Response {
    let run = async {
        let bytes = read_body(&s, body).await?;
        let obj = super::params::parse_object(&bytes)?;
        let f = super::params::Fields::new(&obj, "");
        let all = f.bool("abort_all")?.unwrap_or(false);
        let rid = f.str("rid")?;
        if !all && rid.is_none() {
            return Err(ApiError::field("rid", "give `rid` or `abort_all: true`"));
        }
        let ids: Vec<doppel_core::RequestId> = s.with_rids(|m| {
            if all {
                m.values().copied().collect()
            } else {
                rid.and_then(|r| m.get(r)).copied().into_iter().collect()
            }
        });
        for id in &ids {
            let _ = s.cmd.send(Command::Abort {
                id: *id,
                reason: doppel_core::FinishReason::Abort("aborted by /abort_request".into()),
            });
        }
        Ok(Json(json!({"aborted": ids.len()})))
    };
    match run.await {
        Ok(j) => j.into_response(),
        Err(e) => e.into_response(),
    }
}
