//! One benchmark request: send, stream, time every chunk as bench_serving does.

use super::Prepared;
use doppel_core::TimeNs;
use doppel_exec::server::client;
use serde_json::{json, Value};
use std::time::Instant;

/// The API spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// SGLang's native POST /generate.
    Sglang,
    /// OpenAI POST /v1/completions.
    OpenAi,
}

impl Api {
    /// `sglang` or `openai`.
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "sglang" => Some(Api::Sglang),
            "openai" => Some(Api::OpenAi),
            _ => None,
        }
    }

    /// Label for the report.
    pub fn label(&self) -> &'static str {
        match self {
            Api::Sglang => "sglang",
            Api::OpenAi => "openai",
        }
    }
}

/// What one request saw (times in ns; `send_ns` from the start of the run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReqResult {
    /// When it was sent.
    pub send_ns: TimeNs,
    /// Send to first token.
    pub ttft_ns: TimeNs,
    /// Send to the end of the response.
    pub latency_ns: TimeNs,
    /// Inter-token latencies (a chunk of k tokens counts as k gaps of 1/k of its wait, as
    /// bench_serving's SGLang backend does).
    pub itl_ns: Vec<TimeNs>,
    /// Output tokens.
    pub output_tokens: usize,
    /// Prompt tokens the server reported from its cache.
    pub cached_tokens: usize,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl ReqResult {
    /// A failure at `send_ns`.
    pub fn failed(send_ns: TimeNs, why: String) -> ReqResult {
        ReqResult {
            send_ns,
            error: Some(why),
            ..Default::default()
        }
    }
}

fn body(api: Api, model: &str, p: &Prepared) -> Value {
    let prompt = match &p.text {
        Some(t) => json!(t),
        None => json!(p.ids),
    };
    match api {
        Api::Sglang => {
            let key = if p.text.is_some() {
                "text"
            } else {
                "input_ids"
            };
            json!({
                key: prompt,
                "sampling_params": {
                    "temperature": 0.0,
                    "max_new_tokens": p.output_len,
                    "ignore_eos": true,
                },
                "stream": true,
            })
        }
        Api::OpenAi => json!({
            "model": model,
            "prompt": prompt,
            "max_tokens": p.output_len,
            "temperature": 0.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    }
}

/// Send `p` and stream the answer; `t0` is the start of the run.
pub async fn send(addr: &str, api: Api, model: &str, p: &Prepared, t0: Instant) -> ReqResult {
    let path = match api {
        Api::Sglang => "/generate",
        Api::OpenAi => "/v1/completions",
    };
    let bytes = body(api, model, p).to_string().into_bytes();
    let st = Instant::now();
    let send_ns = st.duration_since(t0).as_nanos() as TimeNs;
    let since = |i: Instant| i.duration_since(st).as_nanos() as TimeNs;
    let mut s = match client::open(addr, "POST", path, Some(&bytes)).await {
        Ok(s) => s,
        Err(e) => return ReqResult::failed(send_ns, format!("POST {path}: {e}")),
    };
    if s.status != 200 {
        let text = s.body().await.unwrap_or_default();
        return ReqResult::failed(
            send_ns,
            format!(
                "POST {path}: HTTP {}: {}",
                s.status,
                String::from_utf8_lossy(&text)
            ),
        );
    }
    let mut r = ReqResult {
        send_ns,
        ..Default::default()
    };
    let mut last_at: Option<TimeNs> = None;
    let mut usage_tokens: Option<usize> = None;
    loop {
        let ev = match s.event().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                r.error = Some(format!("reading the stream: {e}"));
                break;
            }
        };
        if ev.trim() == "[DONE]" {
            break;
        }
        let at = since(Instant::now());
        let v: Value = match serde_json::from_str(&ev) {
            Ok(v) => v,
            Err(e) => {
                r.error = Some(format!("bad stream chunk {ev:?}: {e}"));
                break;
            }
        };
        if let Some(err) = v.get("error") {
            r.error = Some(format!("server error: {err}"));
            break;
        }
        // New tokens in this chunk.
        let new = match api {
            Api::Sglang => {
                let meta = &v["meta_info"];
                if let Some(c) = meta["cached_tokens"].as_u64() {
                    r.cached_tokens = c as usize;
                }
                let total = meta["completion_tokens"].as_u64().unwrap_or(0) as usize;
                total.saturating_sub(r.output_tokens)
            }
            Api::OpenAi => {
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    usage_tokens = u["completion_tokens"].as_u64().map(|c| c as usize);
                    if let Some(c) = u["prompt_tokens_details"]["cached_tokens"].as_u64() {
                        r.cached_tokens = c as usize;
                    }
                }
                let text = v["choices"][0]["text"].as_str().unwrap_or("");
                usize::from(!text.is_empty())
            }
        };
        if new == 0 {
            continue;
        }
        match last_at {
            // As bench_serving: the first chunk sets TTFT and adds no ITL.
            None => r.ttft_ns = at,
            Some(prev) => {
                let gap = (at - prev) / new as TimeNs;
                r.itl_ns.extend(std::iter::repeat_n(gap, new));
            }
        }
        last_at = Some(at);
        r.output_tokens += new;
    }
    r.latency_ns = since(Instant::now());
    if let Some(u) = usage_tokens {
        r.output_tokens = u;
    }
    if r.error.is_none() && r.output_tokens == 0 {
        r.error = Some("the response carried no tokens".into());
    }
    r
}
