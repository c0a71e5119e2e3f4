//! Structured outputs on the simulated backend (`exec serve --backend sim --model DIR`): its
//! synthetic tokens are drawn through each constrained request's grammar, so the mock server
//! answers schema-valid JSON and regex matches, while free requests in the same batches are
//! unchanged. Without a tokenizer a constraint is a 400 naming the field.

use doppel_exec::server::client::post_json;
use doppel_exec::server::ServerConfig;
use doppel_measure::sim_server;
use serde_json::{json, Value};
use std::path::PathBuf;

const TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../exec/tests/fixtures/tiny-llama"
);

async fn serve(model: Option<PathBuf>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let cfg = ServerConfig {
        model,
        kv_capacity: Some(50_000),
        log_batches: false,
        ..Default::default()
    };
    let server = sim_server::build(cfg, Some("h100-80g/qwen3-0.6b/sglang")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    let r = post_json(addr, path, &body).await.unwrap();
    (r.status, r.json())
}

fn schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["name", "n", "tags"],
           "properties": {"name": {"type": "string", "maxLength": 6},
                          "n": {"type": "integer", "minimum": 1, "maximum": 99},
                          "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["x", "y"]}}}})
}

fn check(v: &Value) {
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 3, "{v}");
    assert!(o["name"].as_str().unwrap().chars().count() <= 6, "{v}");
    assert!((1..=99).contains(&o["n"].as_i64().unwrap()), "{v}");
    let tags = o["tags"].as_array().unwrap();
    assert!(
        tags.len() <= 3 && tags.iter().all(|t| t == "x" || t == "y"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_server_answers_schema_valid_json() {
    let (addr, stop) = serve(Some(TOKENIZER.into())).await;
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    let rf = json!({"type": "json_schema", "json_schema": {"name": "s", "schema": schema()}});
                    let (st, r) = post(&addr, "/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 300, "seed": i, "response_format": rf})).await;
                    assert_eq!(st, 200, "{r}");
                    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
                    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
                    check(&serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")));
                }
                1 => {
                    let (st, r) = post(&addr, "/generate", json!({"text": "q", "sampling_params": {
                        "regex": "(yes|no)-[0-9]{2}", "max_new_tokens": 32, "sampling_seed": i}})).await;
                    assert_eq!(st, 200, "{r}");
                    let t = r["text"].as_str().unwrap();
                    assert!(t.len() == 5 || t.len() == 6, "{t}");
                    assert!(t.starts_with("yes-") || t.starts_with("no-"), "{t}");
                    assert!(t[t.len() - 2..].chars().all(|c| c.is_ascii_digit()), "{t}");
                }
                _ => {
                    let (st, r) = post(&addr, "/generate", json!({"text": "free", "sampling_params": {
                        "max_new_tokens": 20, "ignore_eos": true}})).await;
                    assert_eq!(st, 200, "{r}");
                    assert_eq!(r["meta_info"]["completion_tokens"], 20, "{r}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (st, r) = post(
        &addr,
        "/generate",
        json!({"text": "q", "sampling_params": {"regex": "(x"}}),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    assert!(r.to_string().contains("sampling_params.regex"), "{r}");
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tokenizer_a_constraint_is_refused_by_name() {
    let (addr, stop) = serve(None).await;
    let (st, r) = post(
        &addr,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 4,
        "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    assert!(r.to_string().contains("response_format.type"), "{r}");
    assert!(r.to_string().contains("tokenizer"), "{r}");
    let _ = stop.send(());
}
