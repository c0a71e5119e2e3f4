//! Prompt logprobs through the HTTP server (tiny random-weight Qwen3 on the CPU, chunked
//! prefill of 8 tokens): /generate's input_token_logprobs and /v1/completions echo + logprobs,
//! whole and streamed, and the values' agreement between the two routes.

mod server_common;

use doppel_exec::server::client::post_json;
use serde_json::{json, Value};
use server_common::{assert_no_leak, idle_info, sse_events, start};

const PROMPT: &str = "the quick brown fox jumps over the lazy dog again and again";

async fn generate(a: &str, body: Value) -> Value {
    let r = post_json(a, "/generate", &body).await.unwrap();
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    r.json()
}

/// Logprob values of an `input_token_logprobs` list (null stays None).
fn values(list: &Value) -> Vec<Option<f64>> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_f64())
        .collect()
}

#[tokio::test]
async fn generate_returns_input_token_logprobs_from_the_start_position() {
    let srv = start(|c| c.chunked_prefill_size = Some(8)).await;
    let a = srv.addr.as_str();
    let sp = json!({"max_new_tokens": 3, "temperature": 0});
    let all = generate(
        a,
        json!({"text": PROMPT, "return_logprob": true, "logprob_start_len": 0,
               "top_logprobs_num": 2, "return_text_in_logprobs": true, "sampling_params": sp}),
    )
    .await;
    let m = &all["meta_info"];
    let n = m["prompt_tokens"].as_u64().unwrap() as usize;
    assert!(n > 8, "the prompt spans several chunks ({n} tokens)");
    let toks = m["input_token_logprobs"].as_array().unwrap();
    assert_eq!(toks.len(), n, "{m}");
    assert!(toks[0][0].is_null() && toks[0][1].is_u64() && toks[0][2].is_string());
    for e in &toks[1..] {
        let lp = e[0].as_f64().unwrap();
        assert!(lp <= 0.0 && lp.is_finite(), "{e}");
        assert!(e[2].is_string(), "{e}");
    }
    let tops = m["input_top_logprobs"].as_array().unwrap();
    assert_eq!(tops.len(), n);
    assert!(tops[0].is_null());
    for t in &tops[1..] {
        let t = t.as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0][0].as_f64().unwrap() >= t[1][0].as_f64().unwrap());
    }
    assert_eq!(m["output_token_logprobs"].as_array().unwrap().len(), 3);
    // From position 5 (served from the cache up to there): the same values, the first null.
    let from5 = generate(
        a,
        json!({"text": PROMPT, "return_logprob": true, "logprob_start_len": 5, "sampling_params": sp}),
    )
    .await;
    let m5 = &from5["meta_info"];
    assert_eq!(m5["cached_tokens"], 5, "{m5}");
    let v5 = values(&m5["input_token_logprobs"]);
    let v0 = values(&m["input_token_logprobs"]);
    assert_eq!(v5.len(), n - 5);
    assert_eq!(v5[0], None);
    for (a, b) in v5[1..].iter().zip(&v0[6..]) {
        assert!((a.unwrap() - b.unwrap()).abs() < 1e-4, "{a:?} vs {b:?}");
    }
    // SGLang's default start (-1): only the last prompt token, with no logprob.
    let dflt = generate(
        a,
        json!({"text": PROMPT, "return_logprob": true, "sampling_params": sp}),
    )
    .await;
    let last = dflt["meta_info"]["input_token_logprobs"]
        .as_array()
        .unwrap();
    assert_eq!(last.len(), 1);
    assert!(last[0][0].is_null());
    assert_eq!(last[0][1], toks[n - 1][1]);
    // Streamed: the last chunk carries the whole list.
    let evs = sse_events(
        a,
        "/generate",
        &json!({"text": PROMPT, "return_logprob": true, "logprob_start_len": 0,
                "stream": true, "sampling_params": sp}),
    )
    .await;
    let lastm = &evs.last().unwrap()["meta_info"];
    assert_eq!(values(&lastm["input_token_logprobs"]), v0);
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_start_positions_are_refused_by_name() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    for body in [
        json!({"text": "hi there", "return_logprob": true, "logprob_start_len": 50}),
        json!({"text": "hi there", "logprob_start_len": 0}),
        json!({"text": "hi there", "return_logprob": true, "logprob_start_len": -3}),
        json!({"text": "hi", "return_logprob": true, "sampling_params": {"logprob_start_len": 0}}),
        json!({"input_ids": [[1, 2, 3], [4]], "return_logprob": true, "logprob_start_len": 2}),
    ] {
        let r = post_json(a, "/generate", &body).await.unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let p = r.json()["error"]["param"].as_str().unwrap().to_string();
        assert!(p.ends_with("logprob_start_len"), "{body}: {p}");
    }
    let r = post_json(
        a,
        "/v1/completions",
        &json!({"prompt": "x", "logprob_start_len": 0}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "logprob_start_len");
    srv.shutdown().await;
}

/// The logprobs object of a completions choice, joined over stream chunks.
fn join(parts: &[&Value]) -> Value {
    let mut out =
        json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for p in parts {
        for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            let add = p[k].as_array().unwrap().clone();
            out[k].as_array_mut().unwrap().extend(add);
        }
    }
    out
}

#[tokio::test]
async fn completions_echo_with_logprobs_scores_the_prompt_first() {
    let srv = start(|c| c.chunked_prefill_size = Some(8)).await;
    let a = srv.addr.as_str();
    let body = json!({"prompt": PROMPT, "echo": true, "logprobs": 2, "max_tokens": 3,
                      "temperature": 0});
    let r = post_json(a, "/v1/completions", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let n = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let c = &v["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with(PROMPT));
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), n + 3, "{lp}");
    assert_eq!(
        tokens
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        c["text"].as_str().unwrap()
    );
    let lps = lp["token_logprobs"].as_array().unwrap();
    assert!(lps[0].is_null() && lps[1..].iter().all(|x| x.as_f64().unwrap() <= 0.0));
    let tops = lp["top_logprobs"].as_array().unwrap();
    assert!(tops[0].is_null());
    assert!(tops[1..].iter().all(|t| t.as_object().unwrap().len() <= 2));
    let offs: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offs[0], 0);
    assert!(offs.windows(2).all(|w| w[0] <= w[1]));
    // The same values as /generate's input_token_logprobs.
    let g = generate(
        a,
        json!({"text": PROMPT, "return_logprob": true, "logprob_start_len": 0,
               "sampling_params": {"max_new_tokens": 1}}),
    )
    .await;
    let gv = values(&g["meta_info"]["input_token_logprobs"]);
    for (x, y) in lps[1..n].iter().zip(&gv[1..]) {
        assert!((x.as_f64().unwrap() - y.unwrap()).abs() < 1e-4);
    }
    // Streamed: the chunks' entries join to the whole answer's.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let evs = sse_events(a, "/v1/completions", &sb).await;
    let parts: Vec<&Value> = evs.iter().map(|e| &e["choices"][0]["logprobs"]).collect();
    let joined = join(&parts);
    assert_eq!(joined["tokens"], lp["tokens"]);
    assert_eq!(joined["token_logprobs"], lp["token_logprobs"]);
    assert_eq!(joined["top_logprobs"], lp["top_logprobs"]);
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}
