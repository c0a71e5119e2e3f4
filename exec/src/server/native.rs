//! SGLang's native POST /generate.

use super::error::ApiError;
use super::gen::{self, Chunk, End, Finish, Generation};
use super::params::{self, Api, Fields, MAX_TOP_LOGPROBS};
use super::routes::{done_frame, frame, read_body, sse};
use super::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use doppel_core::{TokenId, TokenLogprob};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

/// POST /generate.
pub async fn generate(State(s): State<Arc<AppState>>, body: Body) -> Response {
    match run(s, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Prompts of a request: token ids per prompt, whether it was a batch, the field they came from.
pub struct Prompts {
    /// Token ids per prompt.
    pub ids: Vec<Vec<TokenId>>,
    /// A list was given (answer with a list).
    pub batch: bool,
    /// "text" or "input_ids".
    pub field: &'static str,
}

fn prompts(s: &AppState, f: &Fields) -> Result<Prompts, ApiError> {
    let enc = |t: &str, name: &str| {
        s.codec
            .encode(t)
            .map_err(|e| ApiError::field(name, format!("`{name}`: {e}")))
    };
    let vocab = s.info.vocab;
    match (f.get("text"), f.get("input_ids")) {
        (Some(_), Some(_)) => Err(ApiError::bad("give either `text` or `input_ids`, not both")),
        (None, None) => Err(ApiError::field(
            "text",
            "one of `text` or `input_ids` is required",
        )),
        (Some(Value::String(t)), None) => Ok(Prompts {
            ids: vec![enc(t, "text")?],
            batch: false,
            field: "text",
        }),
        (Some(Value::Array(a)), None) => {
            if a.is_empty() {
                return Err(ApiError::field("text", "`text` is an empty list"));
            }
            let ids = a
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some(t) => enc(t, &format!("text[{i}]")),
                    None => Err(ApiError::field(
                        "text",
                        format!("`text[{i}]` must be a string, got {}", params::kind(v)),
                    )),
                })
                .collect::<Result<_, _>>()?;
            Ok(Prompts {
                ids,
                batch: true,
                field: "text",
            })
        }
        (Some(v), None) => Err(ApiError::field(
            "text",
            format!(
                "`text` must be a string or a list of strings, got {}",
                params::kind(v)
            ),
        )),
        (None, Some(v)) => match v.as_array() {
            Some(a) if a.first().is_some_and(Value::is_array) => Ok(Prompts {
                ids: a
                    .iter()
                    .enumerate()
                    .map(|(i, p)| params::token_list(p, &format!("input_ids[{i}]"), vocab))
                    .collect::<Result<_, _>>()?,
                batch: true,
                field: "input_ids",
            }),
            _ => Ok(Prompts {
                ids: vec![params::token_list(v, "input_ids", vocab)?],
                batch: false,
                field: "input_ids",
            }),
        },
    }
}

async fn run(s: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let started = Instant::now();
    let bytes = read_body(&s, body).await?;
    let obj = params::parse_object(&bytes)?;
    let f = Fields::new(&obj, "");
    let p = prompts(&s, &f)?;
    let empty = Map::new();
    let spm = f.object("sampling_params")?.unwrap_or(&empty);
    let sf = Fields::new(spm, "sampling_params");
    let mut gp = params::sampling(
        &sf,
        Api::Native,
        &s.defaults,
        s.info.vocab,
        s.info.context_len,
    )?;
    params::refuse_unsupported(&f)?;
    params::refuse_unsupported(&sf)?;
    gp.priority = params::priority(&f, &s.info.policy)?;
    let text_in_logprobs = f.bool("return_text_in_logprobs")?.unwrap_or(false);
    super::constrain::attach(&s, &mut gp)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let return_logprob = f.bool("return_logprob")?.unwrap_or(false);
    let top = f
        .int_in("top_logprobs_num", 0, MAX_TOP_LOGPROBS as i64)?
        .unwrap_or(0) as usize;
    gp.sampling.return_logprob = return_logprob;
    gp.sampling.top_logprobs = if return_logprob { top } else { 0 };
    let start = logprob_start(&f, &sf, return_logprob)?;
    let total = gp.check_total(p.ids.len(), p.field)?;
    let rids = client_rids(&f, total)?;
    let sps = per_prompt(&s, &p, &gp, return_logprob.then_some(start))?;
    let mut gens = Vec::with_capacity(total);
    let mut prompts = Vec::with_capacity(total);
    for (ids, sp) in p.ids.into_iter().zip(sps) {
        for j in 0..gp.n {
            prompts.push(sp.prompt_logprobs_from.map(|from| Prompt {
                ids: ids.clone(),
                from,
            }));
            let mut sp = sp.clone();
            sp.seed = sp.seed.map(|x| x.wrapping_add(j as u64));
            let rid = rids.as_ref().map(|r| r[gens.len()].as_str());
            gens.push(gen::submit_as(&s, ids.clone(), sp, &gp, started, rid)?);
        }
    }
    gen::admit_all(&mut gens, p.field).await?;
    let rids: Vec<String> = gens.iter().map(Generation::rid).collect();
    let list = p.batch || gp.n > 1;
    if stream {
        let lp = return_logprob.then_some(text_in_logprobs);
        return Ok(stream_response(s, gens, prompts, rids, list, lp));
    }
    let mut items = Vec::with_capacity(gens.len());
    for ((g, rid), prompt) in gens.iter_mut().zip(&rids).zip(prompts) {
        let c = g.collect().await;
        if let Some(End {
            finish: Finish::Failed(m),
            ..
        }) = &c.end
        {
            return Err(ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "engine_error",
                m.clone(),
            ));
        }
        let mut acc = Acc::new(g.prompt_tokens(), prompt);
        acc.add(&c);
        items.push(acc.item(&s, rid, return_logprob.then_some(text_in_logprobs), None));
    }
    Ok(if list {
        Json(Value::Array(items)).into_response()
    } else {
        Json(items.pop().unwrap_or(Value::Null)).into_response()
    })
}

/// The client's `rid`s: one for a single generation, else one per prompt and choice.
fn client_rids(f: &Fields, total: usize) -> Result<Option<Vec<String>>, ApiError> {
    match f.get("rid") {
        None => Ok(None),
        Some(Value::String(r)) if total == 1 => Ok(Some(vec![r.clone()])),
        Some(Value::Array(a)) if a.len() == total && a.iter().all(Value::is_string) => Ok(Some(
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
        )),
        Some(v) => Err(ApiError::field(
            "rid",
            format!(
                "`rid` must be a string (one request) or a list of {total} strings (one per prompt and choice), got {}",
                super::wire::clip(&v.to_string())
            ),
        )),
    }
}

/// Each prompt's sampling parameters; `start` (with `return_logprob`) is `logprob_start_len`.
fn per_prompt(
    s: &AppState,
    p: &Prompts,
    gp: &params::GenParams,
    start: Option<Option<usize>>,
) -> Result<Vec<doppel_core::SamplingParams>, ApiError> {
    let mut sps = Vec::with_capacity(p.ids.len());
    for (i, ids) in p.ids.iter().enumerate() {
        let field = if p.batch {
            format!("{}[{i}]", p.field)
        } else {
            p.field.to_string()
        };
        let mut sp = gp.for_prompt(ids.len(), s.info.context_len, &field)?;
        if let Some(start) = start {
            sp.prompt_logprobs_from = Some(prompt_start(start, ids.len(), &field)?);
        }
        sps.push(sp);
    }
    Ok(sps)
}

/// A prompt whose token logprobs are returned from position `from` on.
struct Prompt {
    ids: Vec<TokenId>,
    from: usize,
}

/// `logprob_start_len` (top level, as SGLang reads it): None for SGLang's default (-1, only the
/// last prompt token, which has no logprob).
fn logprob_start(f: &Fields, sf: &Fields, return_logprob: bool) -> Result<Option<usize>, ApiError> {
    if sf.get("logprob_start_len").is_some() {
        return Err(ApiError::field(
            "sampling_params.logprob_start_len",
            "`logprob_start_len` goes at the top level of the request, next to `return_logprob`",
        ));
    }
    match f.i64("logprob_start_len")? {
        None | Some(-1) => Ok(None),
        Some(v) if v < 0 => Err(f.range("logprob_start_len", "-1 or a prompt position >= 0", v)),
        Some(v) if !return_logprob => Err(ApiError::field(
            "logprob_start_len",
            format!("`logprob_start_len` {v} needs `return_logprob: true`"),
        )),
        Some(v) => Ok(Some(v as usize)),
    }
}

/// The first prompt position returned for a prompt of `len` tokens (SGLang refuses a start at or
/// past the end).
fn prompt_start(start: Option<usize>, len: usize, field: &str) -> Result<usize, ApiError> {
    match start {
        None => Ok(len - 1),
        Some(s) if s < len => Ok(s),
        Some(s) => Err(ApiError::field(
            "logprob_start_len",
            format!("`logprob_start_len` {s} is not below the {len} tokens of `{field}`"),
        )),
    }
}

/// Output so far of one generation.
struct Acc {
    text: String,
    ids: Vec<TokenId>,
    lps: Vec<Option<TokenLogprob>>,
    prompt_tokens: usize,
    prompt: Option<Prompt>,
    prompt_lps: Vec<TokenLogprob>,
    end: Option<End>,
}

impl Acc {
    fn new(prompt_tokens: usize, prompt: Option<Prompt>) -> Acc {
        Acc {
            text: String::new(),
            ids: Vec::new(),
            lps: Vec::new(),
            prompt_tokens,
            prompt,
            prompt_lps: Vec::new(),
            end: None,
        }
    }

    fn add(&mut self, c: &Chunk) {
        self.text.push_str(&c.delta);
        self.ids.extend(&c.tokens);
        self.lps.extend(c.logprobs.iter().cloned());
        self.prompt_lps.extend(c.prompt_logprobs.iter().cloned());
        if c.end.is_some() {
            self.end = c.end.clone();
        }
    }

    /// The answer object; `logprobs` is None (not asked) or whether entries carry token text.
    fn item(&self, s: &AppState, rid: &str, logprobs: Option<bool>, index: Option<usize>) -> Value {
        let completion = self
            .end
            .as_ref()
            .map_or(self.ids.len(), |e| e.completion_tokens);
        let mut meta = json!({
            "id": rid,
            "finish_reason": self.end.as_ref().map(|e| e.finish.native(completion)),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "cached_tokens": self.end.as_ref().map_or(0, |e| e.cached_tokens),
            "e2e_latency": self.end.as_ref().map(|e| e.e2e_latency),
        });
        if let Some(with_text) = logprobs {
            let text = |t: TokenId| {
                if with_text {
                    json!(s.codec.token_text(t))
                } else {
                    Value::Null
                }
            };
            let toks: Vec<Value> = self
                .ids
                .iter()
                .zip(&self.lps)
                .map(|(t, lp)| json!([lp.as_ref().map(|l| l.logprob), t, text(*t)]))
                .collect();
            let tops: Vec<Value> = self
                .lps
                .iter()
                .map(|lp| {
                    Value::Array(
                        lp.as_ref()
                            .map(|l| l.top.iter().map(|(t, p)| json!([p, t, text(*t)])).collect())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            meta["output_token_logprobs"] = Value::Array(toks);
            meta["output_top_logprobs"] = Value::Array(tops);
            if let Some(p) = &self.prompt {
                let (toks, tops) = input_logprobs(p, &self.prompt_lps, &text);
                meta["input_token_logprobs"] = toks;
                meta["input_top_logprobs"] = tops;
            }
        }
        let mut v = json!({"text": self.text, "output_ids": self.ids, "meta_info": meta});
        if let Some(i) = index {
            v["index"] = json!(i);
        }
        v
    }
}

/// SGLang's `input_token_logprobs` ([logprob, id, text] from `from` on, the first with a null
/// logprob: nothing scores it) and `input_top_logprobs` (null first).
fn input_logprobs(
    p: &Prompt,
    lps: &[TokenLogprob],
    text: &dyn Fn(TokenId) -> Value,
) -> (Value, Value) {
    let tail = &p.ids[p.from..];
    let mut toks = vec![json!([Value::Null, tail[0], text(tail[0])])];
    let mut tops = vec![Value::Null];
    for (t, l) in tail[1..].iter().zip(lps) {
        toks.push(json!([l.logprob, t, text(*t)]));
        tops.push(Value::Array(
            l.top.iter().map(|(a, q)| json!([q, a, text(*a)])).collect(),
        ));
    }
    (Value::Array(toks), Value::Array(tops))
}

fn stream_response(
    s: Arc<AppState>,
    gens: Vec<Generation>,
    prompts: Vec<Option<Prompt>>,
    rids: Vec<String>,
    list: bool,
    logprobs: Option<bool>,
) -> Response {
    let accs: Vec<Acc> = gens
        .iter()
        .zip(prompts)
        .map(|(g, p)| Acc::new(g.prompt_tokens(), p))
        .collect();
    let rx = gen::fan_in(gens);
    let st = Some((rx, accs, rids, s));
    let stream = futures_util::stream::unfold(st, move |st| async move {
        let (mut rx, mut accs, rids, s) = st?;
        match rx.recv().await {
            Some((i, c)) => {
                let acc = &mut accs[i];
                acc.add(&c);
                let v = match &acc.end {
                    Some(End {
                        finish: Finish::Failed(m),
                        ..
                    }) => ApiError::status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "engine_error",
                        m.clone(),
                    )
                    .body(),
                    _ => acc.item(&s, &rids[i], logprobs, list.then_some(i)),
                };
                Some((Ok(frame(&v)), Some((rx, accs, rids, s))))
            }
            None => Some((Ok(done_frame()), None)),
        }
    });
    sse(stream)
}
