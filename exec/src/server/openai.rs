//! OpenAI-compatible /v1/completions and /v1/chat/completions.

use super::error::ApiError;
use super::gen::{self, Chunk, End, Finish, Generation};
use super::params::{self, Api, Fields, MAX_TOP_LOGPROBS};
use super::routes::{check_model, done_frame, frame, read_body, sse};
use super::AppState;
use crate::tokenizer::ChatMessage;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use doppel_core::{TokenId, TokenLogprob};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// POST /v1/completions.
pub async fn completions(State(s): State<Arc<AppState>>, body: Body) -> Response {
    match run(s, body, Kind::Completion).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// POST /v1/chat/completions.
pub async fn chat(State(s): State<Arc<AppState>>, body: Body) -> Response {
    match run(s, body, Kind::Chat).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Prompts of a completions request: ids and (for echo) text.
fn completion_prompts(s: &AppState, f: &Fields) -> Result<Vec<(Vec<TokenId>, String)>, ApiError> {
    let enc = |t: &str, name: &str| {
        s.codec
            .encode(t)
            .map(|ids| (ids, t.to_string()))
            .map_err(|e| ApiError::field(name, format!("`{name}`: {e}")))
    };
    let ids = |v: &Value, name: &str| {
        params::token_list(v, name, s.info.vocab).map(|ids| {
            let t = s.codec.decode(&ids);
            (ids, t)
        })
    };
    match f.get("prompt") {
        None => Err(ApiError::field("prompt", "`prompt` is required")),
        Some(Value::String(t)) => Ok(vec![enc(t, "prompt")?]),
        Some(Value::Array(a)) if a.is_empty() => {
            Err(ApiError::field("prompt", "`prompt` is an empty list"))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .enumerate()
            .map(|(i, v)| enc(v.as_str().unwrap_or_default(), &format!("prompt[{i}]")))
            .collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .enumerate()
            .map(|(i, v)| ids(v, &format!("prompt[{i}]")))
            .collect(),
        Some(v @ Value::Array(_)) => Ok(vec![ids(v, "prompt")?]),
        Some(v) => Err(ApiError::field(
            "prompt",
            format!(
                "`prompt` must be a string, a list of strings, a list of token ids or a list of such lists, got {}",
                params::kind(v)
            ),
        )),
    }
}

fn chat_messages(f: &Fields) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(v) = f.get("messages") else {
        return Err(ApiError::field("messages", "`messages` is required"));
    };
    let Some(list) = v.as_array() else {
        return Err(ApiError::field(
            "messages",
            format!("`messages` must be a list, got {}", params::kind(v)),
        ));
    };
    if list.is_empty() {
        return Err(ApiError::field("messages", "`messages` is an empty list"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let name = format!("messages[{i}]");
        let Some(obj) = m.as_object() else {
            return Err(ApiError::field(
                &name,
                format!("`{name}` must be an object, got {}", params::kind(m)),
            ));
        };
        let mf = Fields::new(obj, &name);
        let role = mf.str("role")?.ok_or_else(|| {
            ApiError::field(&mf.name("role"), format!("`{name}.role` is required"))
        })?;
        let content = match mf.get("content") {
            None => String::new(),
            Some(Value::String(c)) => c.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::field(
                                &mf.name("content"),
                                format!("`{name}.content[{j}]`: only {{\"type\": \"text\", \"text\": ...}} parts are supported"),
                            ))
                        }
                    }
                }
                text
            }
            Some(c) => {
                return Err(ApiError::field(
                    &mf.name("content"),
                    format!(
                        "`{name}.content` must be a string or a list of text parts, got {}",
                        params::kind(c)
                    ),
                ))
            }
        };
        out.push(ChatMessage::new(role, &content));
    }
    Ok(out)
}

struct Req {
    prompts: Vec<(Vec<TokenId>, String)>,
    echo: bool,
    top: Option<usize>,
}

async fn run(s: Arc<AppState>, body: Body, kind: Kind) -> Result<Response, ApiError> {
    let started = Instant::now();
    let bytes = read_body(&s, body).await?;
    let obj = params::parse_object(&bytes)?;
    check_model(&s, &obj)?;
    let f = Fields::new(&obj, "");
    let api = match kind {
        Kind::Completion => Api::Completions,
        Kind::Chat => Api::Chat,
    };
    let mut gp = params::sampling(&f, api, &s.defaults, s.info.vocab, s.info.context_len)?;
    super::constrain::attach(&s, &mut gp)?;
    let req = match kind {
        Kind::Completion => {
            if f.get("suffix").is_some() {
                return Err(ApiError::field("suffix", "`suffix` is not supported"));
            }
            let top = f
                .int_in("logprobs", 0, MAX_TOP_LOGPROBS as i64)?
                .map(|k| k as usize);
            Req {
                prompts: completion_prompts(&s, &f)?,
                echo: f.bool("echo")?.unwrap_or(false),
                top,
            }
        }
        Kind::Chat => {
            if f.get("tools")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty())
            {
                return Err(ApiError::field("tools", "tool calling is not supported"));
            }
            let msgs = chat_messages(&f)?;
            let ids = s
                .codec
                .encode_chat(&msgs)
                .map_err(|e| ApiError::field("messages", format!("`messages`: {e}")))?;
            let want = f.bool("logprobs")?.unwrap_or(false);
            let k = f.int_in("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?;
            if k.is_some_and(|k| k > 0) && !want {
                return Err(ApiError::field(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            Req {
                prompts: vec![(ids, String::new())],
                echo: false,
                top: want.then_some(k.unwrap_or(0) as usize),
            }
        }
    };
    if let Some(k) = req.top {
        gp.sampling.return_logprob = true;
        gp.sampling.top_logprobs = k;
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = f
        .object("stream_options")?
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let field = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    gp.check_total(req.prompts.len(), field)?;
    let mut sps = Vec::new();
    for (i, (ids, _)) in req.prompts.iter().enumerate() {
        let name = if req.prompts.len() > 1 {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        sps.push(gp.for_prompt(ids.len(), s.info.context_len, &name)?);
    }
    let mut gens = Vec::new();
    for ((ids, _), sp) in req.prompts.iter().zip(&sps) {
        for j in 0..gp.n {
            let mut sp = sp.clone();
            sp.seed = sp.seed.map(|x| x.wrapping_add(j as u64));
            gens.push(gen::submit(&s, ids.clone(), sp, &gp, started)?);
        }
    }
    gen::admit_all(&mut gens, field).await?;
    let id = match kind {
        Kind::Completion => format!("cmpl-{}", gens[0].rid()),
        Kind::Chat => format!("chatcmpl-{}", gens[0].rid()),
    };
    let head = Head {
        id,
        kind,
        model: s.info.model_name.clone(),
        created: s.info.created,
        n: gp.n,
        logprobs: req.top.is_some(),
        prompt_tokens: req.prompts.iter().map(|p| p.0.len()).collect(),
    };
    let echo: Vec<String> = if req.echo {
        req.prompts.into_iter().map(|p| p.1).collect()
    } else {
        Vec::new()
    };
    if stream {
        return Ok(stream_response(s, gens, head, echo, include_usage));
    }
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for (i, g) in gens.iter_mut().enumerate() {
        let mut c = g.collect().await;
        let end = c.end.clone().unwrap_or(End {
            finish: Finish::Failed("no end".into()),
            completion_tokens: 0,
            cached_tokens: 0,
            e2e_latency: 0.0,
        });
        if let Finish::Failed(m) = &end.finish {
            return Err(ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "engine_error",
                m.clone(),
            ));
        }
        usage.add(&end);
        if let Some(e) = echo.get(i / head.n) {
            c.delta.insert_str(0, e);
        }
        choices.push(head.choice(&s, i, &c, Some(&end.finish), false));
    }
    let mut body = head.envelope(false);
    body["choices"] = Value::Array(choices);
    body["usage"] = usage.json(&head);
    Ok(Json(body).into_response())
}

struct Head {
    id: String,
    kind: Kind,
    model: String,
    created: u64,
    n: usize,
    logprobs: bool,
    prompt_tokens: Vec<usize>,
}

#[derive(Default)]
struct Usage {
    completion: usize,
    cached: usize,
}

impl Usage {
    fn add(&mut self, e: &End) {
        self.completion += e.completion_tokens;
        self.cached += e.cached_tokens;
    }

    fn json(&self, h: &Head) -> Value {
        // Prompt tokens count once per prompt, not per choice (as SGLang and OpenAI do).
        let prompt: usize = h.prompt_tokens.iter().sum();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.completion,
            "total_tokens": prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

impl Head {
    fn envelope(&self, chunk: bool) -> Value {
        let object = match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model})
    }

    fn logprobs(&self, s: &AppState, c: &Chunk, offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let lps: Vec<(TokenId, Option<&TokenLogprob>)> = c
            .tokens
            .iter()
            .zip(
                c.logprobs
                    .iter()
                    .map(Option::as_ref)
                    .chain(std::iter::repeat(None)),
            )
            .map(|(t, l)| (*t, l))
            .collect();
        match self.kind {
            Kind::Completion => {
                let mut tokens = Vec::new();
                let mut token_lps = Vec::new();
                let mut tops = Vec::new();
                let mut offsets = Vec::new();
                let mut at = offset;
                for (t, l) in &lps {
                    let text = s.codec.token_text(*t);
                    offsets.push(at);
                    at += text.len();
                    tokens.push(text);
                    token_lps.push(l.map(|l| l.logprob));
                    let mut top = serde_json::Map::new();
                    for (tt, p) in l.map(|l| l.top.as_slice()).unwrap_or_default() {
                        top.insert(s.codec.token_text(*tt), json!(p));
                    }
                    tops.push(Value::Object(top));
                }
                json!({"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets})
            }
            Kind::Chat => {
                let entry = |t: TokenId, p: Option<f32>| {
                    let text = s.codec.token_text(t);
                    json!({"token": text, "logprob": p, "bytes": text.as_bytes()})
                };
                let content: Vec<Value> = lps
                    .iter()
                    .map(|(t, l)| {
                        let mut e = entry(*t, l.map(|l| l.logprob));
                        e["top_logprobs"] = Value::Array(
                            l.map(|l| l.top.iter().map(|(tt, p)| entry(*tt, Some(*p))).collect())
                                .unwrap_or_default(),
                        );
                        e
                    })
                    .collect();
                json!({"content": content})
            }
        }
    }

    fn choice(
        &self,
        s: &AppState,
        index: usize,
        c: &Chunk,
        finish: Option<&Finish>,
        chunk: bool,
    ) -> Value {
        let finish_reason = finish.map(Finish::openai);
        let matched = match finish {
            Some(Finish::StopString(m)) => json!(m),
            Some(Finish::StopToken(t)) => json!(t),
            _ => Value::Null,
        };
        match self.kind {
            Kind::Completion => json!({
                "index": index,
                "text": c.delta,
                "logprobs": self.logprobs(s, c, 0),
                "finish_reason": finish_reason,
                "matched_stop": matched,
            }),
            Kind::Chat => {
                let body = if chunk {
                    if c.delta.is_empty() {
                        json!({})
                    } else {
                        json!({"content": c.delta})
                    }
                } else {
                    json!({"role": "assistant", "content": c.delta})
                };
                let key = if chunk { "delta" } else { "message" };
                json!({
                    "index": index,
                    key: body,
                    "logprobs": self.logprobs(s, c, 0),
                    "finish_reason": finish_reason,
                    "matched_stop": matched,
                })
            }
        }
    }
}

fn stream_response(
    s: Arc<AppState>,
    gens: Vec<Generation>,
    head: Head,
    echo: Vec<String>,
    include_usage: bool,
) -> Response {
    let n = gens.len();
    let rx = gen::fan_in(gens);
    struct St {
        rx: tokio::sync::mpsc::Receiver<(usize, Chunk)>,
        s: Arc<AppState>,
        head: Head,
        started: Vec<bool>,
        echo: Vec<String>,
        usage: Usage,
        include_usage: bool,
    }
    let st = St {
        rx,
        s,
        head,
        started: vec![false; n],
        echo,
        usage: Usage::default(),
        include_usage,
    };
    let stream = futures_util::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        match st.rx.recv().await {
            Some((i, mut c)) => {
                let mut out = Vec::new();
                if !st.started[i] {
                    st.started[i] = true;
                    if st.head.kind == Kind::Chat {
                        let mut v = st.head.envelope(true);
                        v["choices"] = json!([{
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": null,
                            "finish_reason": null,
                        }]);
                        out.extend_from_slice(&frame(&v));
                    } else if let Some(e) = st.echo.get(i / st.head.n) {
                        c.delta.insert_str(0, e);
                    }
                }
                if let Some(End {
                    finish: Finish::Failed(m),
                    ..
                }) = &c.end
                {
                    let e = ApiError::status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "engine_error",
                        m.clone(),
                    );
                    out.extend_from_slice(&frame(&e.body()));
                } else {
                    if let Some(e) = &c.end {
                        st.usage.add(e);
                    }
                    let finish = c.end.as_ref().map(|e| &e.finish);
                    // A final chunk always goes out; an empty middle one (text held back) does not.
                    if finish.is_some() || !c.delta.is_empty() || st.head.logprobs {
                        let mut v = st.head.envelope(true);
                        v["choices"] = json!([st.head.choice(&st.s, i, &c, finish, true)]);
                        out.extend_from_slice(&frame(&v));
                    }
                }
                Some((Ok(axum::body::Bytes::from(out)), Some(st)))
            }
            None => {
                let mut out = Vec::new();
                if st.include_usage {
                    let mut v = st.head.envelope(true);
                    v["choices"] = json!([]);
                    v["usage"] = st.usage.json(&st.head);
                    out.extend_from_slice(&frame(&v));
                }
                out.extend_from_slice(&done_frame());
                Some((Ok(axum::body::Bytes::from(out)), None))
            }
        }
    });
    sse(stream)
}
