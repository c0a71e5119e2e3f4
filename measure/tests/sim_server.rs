//! The simulated server (`doppel exec serve --backend sim`): the default profile and model name,
//! and with a tokenizer real text drawn from its ordinary vocabulary, reported in
//! /get_model_info, numeric logprobs and reproducible seeds.

use doppel_exec::server::client::{get, post_json};
use doppel_exec::server::{Server, ServerConfig};
use doppel_exec::tokenizer::Tokenizer;
use doppel_measure::sim_server;
use serde_json::{json, Value};
use std::path::PathBuf;

fn tokenizer_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../exec/tests/fixtures/tiny-llama"
    ))
}

/// Serve `server` on loopback while `body` runs against its address.
async fn with_server<F, Fut>(server: Server, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    body(addr).await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

fn quiet(tweak: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
    let mut c = ServerConfig {
        log_batches: false,
        ..Default::default()
    };
    tweak(&mut c);
    c
}

async fn generate(addr: &str, seed: Option<u64>) -> Value {
    let mut sp = json!({"max_new_tokens": 24, "ignore_eos": true});
    if let Some(s) = seed {
        sp["sampling_seed"] = json!(s);
    }
    let req = json!({"text": "Tell me a story", "sampling_params": sp,
                     "return_logprob": true, "top_logprobs_num": 3});
    let r = post_json(addr, "/generate", &req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_profile_and_a_model_name_with_one_slash() {
    let server = sim_server::build(quiet(|_| {}), None).unwrap();
    assert_eq!(server.info().backend, "sim:h100-80g/qwen3-0.6b/doppel");
    with_server(server, |a| async move {
        let m = get(&a, "/v1/models").await.unwrap().json();
        let name = m["data"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(name, "Qwen/Qwen3-0.6B");
        assert!(name.matches('/').count() <= 1);
        // Without a tokenizer, seeds reproduce too.
        let (x, y) = (generate(&a, Some(9)).await, generate(&a, Some(9)).await);
        assert_eq!(x["output_ids"], y["output_ids"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tokenizer_every_token_has_text_and_seeds_reproduce() {
    let tok = Tokenizer::load(&tokenizer_dir()).unwrap();
    let cfg = quiet(|c| c.model = Some(tokenizer_dir()));
    let server = sim_server::build(cfg, Some("h100-80g/qwen3-0.6b/sglang")).unwrap();
    with_server(server, |a| async move {
        let info = get(&a, "/get_model_info").await.unwrap().json();
        assert_eq!(info["vocab_size"], tok.vocab_size());
        let one = generate(&a, Some(42)).await;
        let ids: Vec<u32> = one["output_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids.len(), 24);
        for &id in &ids {
            let t = tok.decode(&[id], true).unwrap();
            assert!(
                !t.is_empty() && !t.contains('\u{FFFD}'),
                "token {id}: {t:?}"
            );
        }
        let text = one["text"].as_str().unwrap();
        assert!(text.trim().len() >= 12, "{text:?}");
        // Logprobs are numbers, the sampled token first among the alternatives.
        let lps = one["meta_info"]["output_token_logprobs"]
            .as_array()
            .unwrap();
        let tops = one["meta_info"]["output_top_logprobs"].as_array().unwrap();
        assert_eq!(lps.len(), 24);
        for (lp, top) in lps.iter().zip(tops) {
            let v = lp[0].as_f64().unwrap();
            assert!(v < 0.0 && v > -1.0, "{lp}");
            assert_eq!(top.as_array().unwrap().len(), 3);
            assert_eq!(top[0][1], lp[1]);
            assert!(top[1][0].as_f64().unwrap() < v);
        }
        // The same seed gives the same tokens; another seed others.
        assert_eq!(
            generate(&a, Some(42)).await["output_ids"],
            one["output_ids"]
        );
        assert_ne!(
            generate(&a, Some(43)).await["output_ids"],
            one["output_ids"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenizer_path_alone_gives_real_text() {
    let cfg = quiet(|c| c.tokenizer = Some(tokenizer_dir()));
    let server = sim_server::build(cfg, None).unwrap();
    with_server(server, |a| async move {
        let r = generate(&a, None).await;
        assert!(!r["text"].as_str().unwrap().trim().is_empty(), "{r}");
        let info = get(&a, "/get_model_info").await.unwrap().json();
        assert!(info["tokenizer_path"]
            .as_str()
            .unwrap()
            .ends_with("tiny-llama"));
    })
    .await;
}

#[test]
fn a_chat_template_without_a_tokenizer_is_an_error() {
    let cfg = quiet(|c| c.chat_template = Some(PathBuf::from("/nonexistent.jinja")));
    let e = sim_server::build(cfg, None).err().unwrap().to_string();
    assert!(e.contains("--chat-template needs a tokenizer"), "{e}");
}

/// /generate's prompt logprobs from the simulated server with chunked prefill of `chunk`.
async fn prompt_logprobs(chunk: usize) -> Value {
    let cfg = quiet(|c| {
        c.model = Some(tokenizer_dir());
        c.chunked_prefill_size = Some(chunk);
    });
    let server = sim_server::build(cfg, None).unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let o2 = out.clone();
    with_server(server, |a| async move {
        let req = json!({"text": "Tell me a story about a fox, a dog and a very long road",
                         "return_logprob": true, "logprob_start_len": 0, "top_logprobs_num": 3,
                         "sampling_params": {"max_new_tokens": 2}});
        let r = post_json(&a, "/generate", &req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *o2.lock().unwrap() = r.json()["meta_info"].clone();
    })
    .await;
    let v = out.lock().unwrap().clone();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_are_numeric_deterministic_and_independent_of_chunking() {
    let (a, b) = (prompt_logprobs(4).await, prompt_logprobs(4096).await);
    assert_eq!(a["input_token_logprobs"], b["input_token_logprobs"]);
    assert_eq!(a["input_top_logprobs"], b["input_top_logprobs"]);
    let toks = a["input_token_logprobs"].as_array().unwrap();
    assert_eq!(toks.len() as u64, a["prompt_tokens"].as_u64().unwrap());
    assert!(toks[0][0].is_null());
    let tops = a["input_top_logprobs"].as_array().unwrap();
    for (t, top) in toks[1..].iter().zip(&tops[1..]) {
        let v = t[0].as_f64().unwrap();
        assert!(v < 0.0, "{t}");
        let top = top.as_array().unwrap();
        assert_eq!(top.len(), 3);
        let vals: Vec<f64> = top.iter().map(|e| e[0].as_f64().unwrap()).collect();
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{top:?}");
        // The scored token is listed exactly when it is among the three most likely.
        let listed = top.iter().any(|e| e[1] == t[1]);
        assert_eq!(listed, v >= vals[2], "{t} {top:?}");
    }
}
