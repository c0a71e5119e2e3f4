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
    /// OpenAI POST /v1/chat/completions (text prompts as one user message).
    OpenAiChat,
}

impl Api {
    /// bench_serving's backend names this client speaks.
    pub const BACKENDS: &'static str = "sglang, sglang-native, sglang-oai, sglang-oai-chat, \
         vllm, vllm-chat, lmdeploy, lmdeploy-chat, openai or openai-chat";

    /// A bench_serving backend name: the server it names decides only the API.
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "sglang" | "sglang-native" => Some(Api::Sglang),
            "openai" | "sglang-oai" | "vllm" | "lmdeploy" => Some(Api::OpenAi),
            "openai-chat" | "sglang-oai-chat" | "vllm-chat" | "lmdeploy-chat" => {
                Some(Api::OpenAiChat)
            }
            _ => None,
        }
    }

    /// Label for the report.
    pub fn label(&self) -> &'static str {
        match self {
            Api::Sglang => "sglang",
            Api::OpenAi => "openai",
            Api::OpenAiChat => "openai-chat",
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Api::Sglang => "/generate",
            Api::OpenAi => "/v1/completions",
            Api::OpenAiChat => "/v1/chat/completions",
        }
    }
}

/// What every request of a run shares: where it goes and how its body is built.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// host:port.
    pub addr: String,
    /// API.
    pub api: Api,
    /// Model name for the OpenAI APIs.
    pub model: String,
    /// Ask the server to ignore EOS (outputs have exactly the asked lengths).
    pub ignore_eos: bool,
    /// Merged into the top level of every body, as bench_serving's --extra-request-body.
    pub extra_body: serde_json::Map<String, Value>,
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

fn body(spec: &RequestSpec, p: &Prepared) -> Value {
    let prompt = match &p.text {
        Some(t) => json!(t),
        None => json!(p.ids),
    };
    let mut v = match spec.api {
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
                    "ignore_eos": spec.ignore_eos,
                },
                "stream": true,
            })
        }
        Api::OpenAi => json!({
            "model": spec.model,
            "prompt": prompt,
            "max_tokens": p.output_len,
            "temperature": 0.0,
            "ignore_eos": spec.ignore_eos,
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
        // Chat prompts are text (the CLI refuses token-id datasets for chat).
        Api::OpenAiChat => json!({
            "model": spec.model,
            "messages": [{"role": "user", "content": p.text.as_deref().unwrap_or_default()}],
            "max_completion_tokens": p.output_len,
            "temperature": 0.0,
            "ignore_eos": spec.ignore_eos,
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    };
    if let Value::Object(m) = &mut v {
        for (k, x) in &spec.extra_body {
            m.insert(k.clone(), x.clone());
        }
    }
    v
}

/// Send `p` and stream the answer; `t0` is the start of the run.
pub async fn send(spec: &RequestSpec, p: &Prepared, t0: Instant) -> ReqResult {
    let (api, path) = (spec.api, spec.api.path());
    let bytes = body(spec, p).to_string().into_bytes();
    let st = Instant::now();
    let send_ns = st.duration_since(t0).as_nanos() as TimeNs;
    let since = |i: Instant| i.duration_since(st).as_nanos() as TimeNs;
    let mut s = match client::open(&spec.addr, "POST", path, Some(&bytes)).await {
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
            Api::OpenAi | Api::OpenAiChat => {
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    usage_tokens = u["completion_tokens"].as_u64().map(|c| c as usize);
                    if let Some(c) = u["prompt_tokens_details"]["cached_tokens"].as_u64() {
                        r.cached_tokens = c as usize;
                    }
                }
                let choice = &v["choices"][0];
                let text = match api {
                    Api::OpenAiChat => choice["delta"]["content"].as_str(),
                    _ => choice["text"].as_str(),
                };
                usize::from(!text.unwrap_or("").is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(api: Api, ignore_eos: bool, extra: &str) -> RequestSpec {
        RequestSpec {
            addr: "127.0.0.1:1".into(),
            api,
            model: "m".into(),
            ignore_eos,
            extra_body: super::super::extra_body(extra).unwrap(),
        }
    }

    fn prepared(text: Option<&str>) -> Prepared {
        Prepared {
            ids: vec![5, 6, 7],
            text: text.map(str::to_string),
            prompt_len: 3,
            output_len: 9,
        }
    }

    #[test]
    fn disable_ignore_eos_and_extra_body_reach_every_api_body() {
        let native = body(
            &spec(Api::Sglang, false, r#"{"rid": "x"}"#),
            &prepared(None),
        );
        assert_eq!(native["sampling_params"]["ignore_eos"], false);
        assert_eq!(native["input_ids"], json!([5, 6, 7]));
        assert_eq!(native["rid"], "x");
        let comp = body(
            &spec(Api::OpenAi, true, r#"{"max_tokens": 2}"#),
            &prepared(None),
        );
        assert_eq!(comp["ignore_eos"], true);
        assert_eq!(
            comp["max_tokens"], 2,
            "the extra body wins, as in bench_serving"
        );
        assert_eq!(comp["prompt"], json!([5, 6, 7]));
        let chat = body(&spec(Api::OpenAiChat, false, "{}"), &prepared(Some("hi")));
        assert_eq!(chat["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(chat["max_completion_tokens"], 9);
        assert_eq!(chat["ignore_eos"], false);
    }

    #[test]
    fn every_bench_serving_openai_backend_name_parses() {
        for (name, api) in [
            ("sglang", Api::Sglang),
            ("sglang-native", Api::Sglang),
            ("sglang-oai", Api::OpenAi),
            ("vllm", Api::OpenAi),
            ("lmdeploy", Api::OpenAi),
            ("openai", Api::OpenAi),
            ("sglang-oai-chat", Api::OpenAiChat),
            ("vllm-chat", Api::OpenAiChat),
            ("lmdeploy-chat", Api::OpenAiChat),
            ("openai-chat", Api::OpenAiChat),
        ] {
            assert_eq!(Api::parse(name), Some(api), "{name}");
            assert!(Api::BACKENDS.contains(name), "{name}");
        }
        assert_eq!(Api::parse("trt"), None);
    }
}
