//! Endpoints clients and routers probe: /tokenize and /detokenize (and their /v1/ forms),
//! GET /v1/models/{id}, /get_load (sglang-router's load policies read `num_tokens`), /ready.

use super::error::ApiError;
use super::params::{self, Fields};
use super::routes::{check_model, read_body};
use super::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// POST /tokenize: `{"prompt": str | [str], "add_special_tokens": true}` ->
/// `{"tokens", "count", "max_model_len"}` (lists for a list of prompts).
pub async fn tokenize(State(s): State<Arc<AppState>>, body: Body) -> Response {
    answer(
        async {
            let bytes = read_body(&s, body).await?;
            let obj = params::parse_object(&bytes)?;
            check_model(&s, &obj)?;
            let f = Fields::new(&obj, "");
            let special = f.bool("add_special_tokens")?.unwrap_or(true);
            let enc = |t: &str, name: &str| {
                s.codec
                    .encode_with(t, special)
                    .map_err(|e| ApiError::field(name, format!("`{name}`: {e}")))
            };
            let ctx = s.info.context_len;
            match f.get("prompt") {
                Some(Value::String(t)) => {
                    let ids = enc(t, "prompt")?;
                    Ok(json!({"tokens": ids, "count": ids.len(), "max_model_len": ctx}))
                }
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                    let mut tokens = Vec::with_capacity(a.len());
                    for (i, t) in a.iter().enumerate() {
                        tokens.push(enc(
                            t.as_str().unwrap_or_default(),
                            &format!("prompt[{i}]"),
                        )?);
                    }
                    let count: Vec<usize> = tokens.iter().map(Vec::len).collect();
                    Ok(json!({"tokens": tokens, "count": count, "max_model_len": ctx}))
                }
                None => Err(ApiError::field("prompt", "`prompt` is required")),
                Some(v) => Err(ApiError::field(
                    "prompt",
                    format!(
                        "`prompt` must be a string or a list of strings, got {}",
                        params::kind(v)
                    ),
                )),
            }
        }
        .await,
    )
}

/// POST /detokenize: `{"tokens": [ids] | [[ids]], "skip_special_tokens": false}` -> `{"text"}`.
pub async fn detokenize(State(s): State<Arc<AppState>>, body: Body) -> Response {
    answer(
        async {
            let bytes = read_body(&s, body).await?;
            let obj = params::parse_object(&bytes)?;
            check_model(&s, &obj)?;
            let f = Fields::new(&obj, "");
            let skip = f.bool("skip_special_tokens")?.unwrap_or(false);
            let vocab = s.info.vocab;
            let dec = |ids: &[u32], name: &str| {
                s.codec
                    .decode_with(ids, skip)
                    .map_err(|e| ApiError::field(name, format!("`{name}`: {e}")))
            };
            match f.get("tokens") {
                None => Err(ApiError::field("tokens", "`tokens` is required")),
                Some(Value::Array(a)) if a.first().is_some_and(Value::is_array) => {
                    let mut texts = Vec::with_capacity(a.len());
                    for (i, v) in a.iter().enumerate() {
                        let name = format!("tokens[{i}]");
                        let ids = params::token_list(v, &name, vocab)?;
                        texts.push(dec(&ids, &name)?);
                    }
                    Ok(json!({"text": texts}))
                }
                Some(v) => {
                    let ids = params::token_list(v, "tokens", vocab)?;
                    Ok(json!({"text": dec(&ids, "tokens")?}))
                }
            }
        }
        .await,
    )
}

/// The served model's card.
pub fn model_card(s: &AppState) -> Value {
    json!({
        "id": s.info.model_name,
        "object": "model",
        "created": s.info.created,
        "owned_by": "doppel",
        "root": s.info.model_name,
        "max_model_len": s.info.context_len,
    })
}

/// GET /v1/models/{id}: the card of the served model (404 for another name).
pub async fn model(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == s.info.model_name {
        Json(model_card(&s)).into_response()
    } else {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no model `{id}`; this server serves `{}` (requests may name any model)",
                s.info.model_name
            ),
            param: Some("model".into()),
            kind: "model_not_found",
        }
        .into_response()
    }
}

/// GET /get_load: SGLang's per-rank load list (one rank here).
pub async fn get_load(State(s): State<Arc<AppState>>) -> Json<Value> {
    let snap = s.shared.snapshot();
    Json(json!([{
        "dp_rank": 0,
        "num_reqs": snap.running + snap.waiting,
        "num_waiting_reqs": snap.waiting,
        "num_tokens": snap.memory.used(),
    }]))
}

/// GET /ready: 200 once the server accepts requests (after warm-up), 503 while draining or
/// after a backend failure.
pub async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let snap = s.shared.snapshot();
    if snap.alive && !snap.draining {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            snap.error
                .unwrap_or_else(|| "the server is shutting down".into()),
        )
        .into_response()
    }
}
