//! OpenAI-compatible /v1/completions and /v1/chat/completions.

use super::chat::{self, ChatRequest, ToolChoice};
use super::chatout::{ChatOut, OutConfig};
use super::constrain::Requested;
use super::error::ApiError;
use super::forced::Forced;
use super::gen::{self, Chunk, End, Finish, Generation};
use super::params::{self, Api, Fields, GenParams, MAX_TOP_LOGPROBS};
use super::routes::{check_model, done_frame, frame, read_body, sse};
use super::AppState;
use choice::{Head, Part, Usage};

mod choice;
use crate::constraint::ConstraintSpec;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use doppel_core::TokenId;
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

struct Req {
    prompts: Vec<(Vec<TokenId>, String)>,
    echo: bool,
    top: Option<usize>,
    out: Option<OutConfig>,
}

/// How to read a chat request's output; refuses tool settings this server cannot honour.
fn out_config(s: &AppState, cr: &ChatRequest) -> Result<OutConfig, ApiError> {
    let mut forced = None;
    let tools = match &cr.tool_choice {
        ToolChoice::None => None,
        ToolChoice::Auto => {
            let Some(fmt) = s.info.tool_call_parser else {
                return Err(ApiError::field(
                    "tools",
                    "`tools` need a tool-call parser: start the server with --tool-call-parser",
                ));
            };
            Some((fmt, cr.tool_names.clone()))
        }
        ToolChoice::Required => {
            forced = Some(Forced::Required);
            None
        }
        ToolChoice::Named(n) => {
            forced = Some(Forced::Named(n.clone()));
            None
        }
    };
    Ok(OutConfig {
        // A forced answer is JSON from its first token: there is no reasoning to split off.
        reasoning: s
            .info
            .reasoning_parser
            .filter(|_| cr.separate_reasoning && forced.is_none()),
        prompt_opened: false,
        tools,
        forced,
        parallel_tool_calls: cr.parallel_tool_calls,
        stream_reasoning: cr.stream_reasoning,
    })
}

/// Constrain the answer to the calls `forced` asks for (docs/structured.md).
fn force_calls(gp: &mut GenParams, forced: &Forced, cr: &ChatRequest) -> Result<(), ApiError> {
    if let Some(r) = &gp.constraint {
        return Err(ApiError::field(
            &r.field,
            format!(
                "`{}` cannot be set with `tool_choice` \"required\" or a named function, which constrain the answer to tool calls",
                r.field
            ),
        ));
    }
    let tools = cr.input.tools.as_deref().unwrap_or_default();
    gp.constraint = Some(Requested {
        field: "tool_choice".into(),
        spec: ConstraintSpec::json_schema(forced.schema(tools, cr.parallel_tool_calls)),
    });
    Ok(())
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
    params::refuse_unsupported(&f)?;
    refuse_fields(&f)?;
    let mut gp = params::sampling(&f, api, &s.defaults, s.info.vocab, s.info.context_len)?;
    gp.priority = params::priority(&f, &s.info.policy)?;
    let req = read_req(&s, &f, kind, &mut gp)?;
    super::constrain::attach(&s, &mut gp)?;
    if let Some(k) = req.top {
        gp.sampling.return_logprob = true;
        gp.sampling.top_logprobs = k;
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = stream_options(&f, stream)?;
    let field = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    gp.check_total(req.prompts.len(), field)?;
    let sps = per_prompt(&s, &gp, &req, field)?;
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
        echo_ids: if req.echo && req.top.is_some() {
            req.prompts.iter().map(|p| p.0.clone()).collect()
        } else {
            Vec::new()
        },
    };
    let outs: Vec<ChatOut> = match &req.out {
        Some(cfg) => gens.iter().map(|g| ChatOut::new(cfg, &g.rid())).collect(),
        None => Vec::new(),
    };
    let echo: Vec<String> = if req.echo {
        req.prompts.into_iter().map(|p| p.1).collect()
    } else {
        Vec::new()
    };
    if stream {
        return Ok(stream_response(s, gens, head, outs, echo, include_usage));
    }
    whole_response(&s, gens, head, outs, echo).await
}

/// Fields the OpenAI routes refuse beyond `params::UNSUPPORTED`.
fn refuse_fields(f: &Fields) -> Result<(), ApiError> {
    if f.get("logprob_start_len").is_some_and(|v| v != &json!(-1)) {
        return Err(ApiError::field(
            "logprob_start_len",
            "`logprob_start_len` is a /generate field; here prompt logprobs come with `echo` and `logprobs` (completions)",
        ));
    }
    if let Some(m) = f.get("modalities") {
        if m != &json!(["text"]) {
            return Err(ApiError::field(
                "modalities",
                format!("`modalities` may only be [\"text\"], got {m}"),
            ));
        }
    }
    Ok(())
}

/// The prompts and output settings of a completions or chat request.
fn read_req(s: &AppState, f: &Fields, kind: Kind, gp: &mut GenParams) -> Result<Req, ApiError> {
    Ok(match kind {
        Kind::Completion => {
            if f.get("suffix").is_some() {
                return Err(ApiError::field("suffix", "`suffix` is not supported"));
            }
            let top = f
                .int_in("logprobs", 0, MAX_TOP_LOGPROBS as i64)?
                .map(|k| k as usize);
            let echo = f.bool("echo")?.unwrap_or(false);
            Req {
                prompts: completion_prompts(s, f)?,
                echo,
                top,
                out: None,
            }
        }
        Kind::Chat => {
            let cr = chat::read(f)?;
            let mut out = out_config(s, &cr)?;
            if let Some(forced) = &out.forced {
                force_calls(gp, forced, &cr)?;
            }
            let (ids, text) = s
                .codec
                .encode_chat(&cr.input)
                .map_err(|e| ApiError::field("messages", format!("`messages`: {e}")))?;
            // A template that opens the think block itself (thinking models) starts the output
            // inside it.
            out.prompt_opened = text.trim_end().ends_with("<think>");
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
                out: Some(out),
            }
        }
    })
}

/// Each prompt's sampling parameters (echoed prompts with logprobs score their tokens).
fn per_prompt(
    s: &AppState,
    gp: &GenParams,
    req: &Req,
    field: &str,
) -> Result<Vec<doppel_core::SamplingParams>, ApiError> {
    let mut sps = Vec::new();
    for (i, (ids, _)) in req.prompts.iter().enumerate() {
        let name = if req.prompts.len() > 1 {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        let mut sp = gp.for_prompt(ids.len(), s.info.context_len, &name)?;
        if req.echo && req.top.is_some() {
            // Echoed prompts carry their tokens' logprobs (the first has none).
            sp.prompt_logprobs_from = Some(0);
        }
        sps.push(sp);
    }
    Ok(sps)
}

/// The whole (non-streamed) answer.
async fn whole_response(
    s: &AppState,
    mut gens: Vec<Generation>,
    head: Head,
    outs: Vec<ChatOut>,
    echo: Vec<String>,
) -> Result<Response, ApiError> {
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    let mut outs = outs.into_iter();
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
        let body = match outs.next() {
            Some(mut o) => {
                let d = o.whole(&c.delta);
                Part::Message(o.message_json(&d), o.calls())
            }
            None => Part::Text,
        };
        let prompt = head.prompt_entries(i, 0, &c);
        choices.push(head.choice(s, i, (&c, &prompt), Some(&end.finish), body));
    }
    let mut body = head.envelope(false);
    body["choices"] = Value::Array(choices);
    body["usage"] = usage.json(&head);
    Ok(Json(body).into_response())
}

/// `stream_options.include_usage`; the options only with `stream`.
fn stream_options(f: &Fields, stream: bool) -> Result<bool, ApiError> {
    let Some(o) = f.object("stream_options")? else {
        return Ok(false);
    };
    if !stream {
        return Err(ApiError::field(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    let of = Fields::new(o, "stream_options");
    if of.bool("continuous_usage_stats")?.unwrap_or(false) {
        return Err(ApiError::field(
            "stream_options.continuous_usage_stats",
            "`stream_options.continuous_usage_stats` is not supported",
        ));
    }
    Ok(of.bool("include_usage")?.unwrap_or(false))
}

fn stream_response(
    s: Arc<AppState>,
    gens: Vec<Generation>,
    head: Head,
    outs: Vec<ChatOut>,
    echo: Vec<String>,
    include_usage: bool,
) -> Response {
    let n = gens.len();
    let rx = gen::fan_in(gens);
    struct St {
        rx: tokio::sync::mpsc::Receiver<(usize, Chunk)>,
        s: Arc<AppState>,
        head: Head,
        outs: Vec<ChatOut>,
        started: Vec<bool>,
        /// Echoed prompt logprob entries sent per choice.
        prompt_sent: Vec<usize>,
        echo: Vec<String>,
        usage: Usage,
        include_usage: bool,
    }
    let st = St {
        rx,
        s,
        head,
        outs,
        started: vec![false; n],
        prompt_sent: vec![0; n],
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
                    let (part, empty) = match st.outs.get_mut(i) {
                        Some(o) => {
                            let mut d = o.push(&c.delta);
                            if finish.is_some() {
                                d.add(o.finish());
                            }
                            (Part::Delta(o.delta_json(&d), o.calls()), d.is_empty())
                        }
                        None => (Part::Text, c.delta.is_empty()),
                    };
                    // A final chunk always goes out; an empty middle one (text held back) does not.
                    if finish.is_some() || !empty || st.head.logprobs {
                        let prompt = st.head.prompt_entries(i, st.prompt_sent[i], &c);
                        st.prompt_sent[i] += prompt.len();
                        let mut v = st.head.envelope(true);
                        v["choices"] =
                            json!([st.head.choice(&st.s, i, (&c, &prompt), finish, part)]);
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
