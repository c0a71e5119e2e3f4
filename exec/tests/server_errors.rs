//! The HTTP server's refusals and lifecycle over loopback (tiny CPU model): every bad request is
//! a 4xx naming the field, the bounded queue answers 503, flush is refused while busy, clients
//! that leave are aborted at once, shutdown aborts live streams cleanly, and nothing leaks.

mod server_common;

use doppel_exec::server::client::{self, get, post_json};
use serde_json::{json, Value};
use server_common::{assert_no_leak, idle_info, start, start_in};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_naming_the_field() {
    let srv = start(|c| c.max_body_bytes = 64 << 10).await;
    let a = srv.addr.as_str();
    let long: Vec<u32> = (0..2100).map(|i| 3 + i % 300).collect();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/generate", json!({"sampling_params": {}}), 400, "text"),
        (
            "/generate",
            json!({"text": "x", "input_ids": [1]}),
            400,
            "input_ids",
        ),
        ("/generate", json!({"text": 5}), 400, "text"),
        ("/generate", json!({"text": ""}), 400, "empty"),
        ("/generate", json!({"input_ids": []}), 400, "input_ids"),
        (
            "/generate",
            json!({"input_ids": [1, 99999]}),
            400,
            "input_ids[1]",
        ),
        (
            "/generate",
            json!({"input_ids": long}),
            400,
            "context length",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"temperature": "hot"}}),
            400,
            "sampling_params.temperature",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"temperature": -1}}),
            400,
            "temperature",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"max_new_tokens": -3}}),
            400,
            "max_new_tokens",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"max_new_tokens": 0}}),
            400,
            "max_new_tokens",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"max_new_tokens": 1_000_000_000_000u64}}),
            400,
            "max_new_tokens",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"max_new_tokens": 2048}}),
            400,
            "context length",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"top_p": 1.5}}),
            400,
            "top_p",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"top_k": -7}}),
            400,
            "top_k",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"n": 0}}),
            400,
            "n",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"stop": [1]}}),
            400,
            "stop[0]",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"stop_token_ids": [-1]}}),
            400,
            "stop_token_ids",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": {"regex": "a("}}),
            400,
            "regex",
        ),
        (
            "/generate",
            json!({"text": "x", "sampling_params": "hot"}),
            400,
            "sampling_params",
        ),
        (
            "/generate",
            json!({"text": "x", "top_logprobs_num": 1000}),
            400,
            "top_logprobs_num",
        ),
        (
            "/generate",
            json!({"text": ["a", "b"], "rid": "one"}),
            400,
            "rid",
        ),
        ("/generate", json!([1, 2]), 400, "JSON object"),
        (
            "/generate",
            json!({"text": vec!["a"; 9], "sampling_params": {"n": 128}}),
            400,
            "generations",
        ),
        (
            "/v1/completions",
            json!({"model": 5, "prompt": "x"}),
            400,
            "model",
        ),
        ("/v1/completions", json!({"model": "tiny"}), 400, "prompt"),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": "many"}),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 50}),
            400,
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "presence_penalty": 9}),
            400,
            "presence_penalty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "best_of": 3}),
            400,
            "best_of",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logit_bias": {"abc": 1}}),
            400,
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"prompt": [[1, 2], [3, 999999]]}),
            400,
            "prompt[1]",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny"}),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 3}]}),
            400,
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            400,
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 500}),
            400,
            "n",
        ),
    ];
    for (path, body, status, needle) in cases {
        let r = post_json(a, path, &body).await.unwrap();
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        let e = r.json();
        let msg = e["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", r.text()));
        assert!(
            msg.contains(needle) || e["error"]["param"].as_str() == Some(needle),
            "{path} {body}: {msg:?} does not name {needle:?}"
        );
        assert_eq!(e["error"]["code"], status);
    }
    // Malformed JSON, an oversized body, an unknown path.
    let r = client::request(a, "POST", "/v1/completions", Some(b"{\"prompt\": "))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(100 << 10));
    let r = client::request(a, "POST", "/v1/completions", Some(big.as_bytes()))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(get(a, "/nope").await.unwrap().status, 404);
    // The engine is still fine and nothing leaked.
    let r = post_json(
        a,
        "/generate",
        &json!({"text": "still alive", "sampling_params": {"max_new_tokens": 2}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bound_flush_refusal_disconnects_and_shutdown_leave_no_leak() {
    let srv = start(|c| {
        c.max_running_requests = Some(1);
        c.max_queued_requests = Some(1);
        c.shutdown_timeout = Duration::from_millis(200);
    })
    .await;
    let a = srv.addr.as_str();
    let long = |text: &str| json!({"text": text, "stream": true, "sampling_params": {"max_new_tokens": 1500, "ignore_eos": true}});
    // One running, one waiting, the third is refused with 503.
    let mut s1 = client::open(
        a,
        "POST",
        "/generate",
        Some(long("first").to_string().as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(s1.status, 200);
    assert!(s1.event().await.unwrap().is_some());
    let s2 = client::open(
        a,
        "POST",
        "/generate",
        Some(long("second").to_string().as_bytes()),
    )
    .await
    .unwrap();
    for _ in 0..500 {
        if get(a, "/get_server_info").await.unwrap().json()["num_waiting_reqs"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = post_json(a, "/generate", &json!({"text": "third"}))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queue"));
    // Flushing while busy is refused.
    let f = client::request(a, "POST", "/flush_cache", None)
        .await
        .unwrap();
    assert_eq!(f.status, 400);
    // Both clients leave: the running one mid-stream, the waiting one before its first token.
    drop(s1);
    drop(s2);
    let info = idle_info(a).await;
    assert_no_leak(&info);
    assert_eq!(info["counters"]["finished"], 2);
    assert!(info["counters"]["generated_tokens"].as_u64().unwrap() < 1500);

    // Non-streamed clients that leave are aborted too.
    let before = info["counters"]["generated_tokens"].as_u64().unwrap();
    let body = json!({"text": "non streamed", "sampling_params": {"max_new_tokens": 1500, "ignore_eos": true}}).to_string();
    let s3 = client::open(a, "POST", "/generate", Some(body.as_bytes()));
    let _ = tokio::time::timeout(Duration::from_millis(50), s3).await;
    let info = idle_info(a).await;
    assert_no_leak(&info);
    let made = info["counters"]["generated_tokens"].as_u64().unwrap() - before;
    assert!(
        made > 0 && made < 1500,
        "{made} tokens generated for a client that left"
    );

    // Shutdown with a live stream: it is aborted after the drain timeout and ends well-formed.
    let mut s4 = client::open(
        a,
        "POST",
        "/generate",
        Some(long("at shutdown").to_string().as_bytes()),
    )
    .await
    .unwrap();
    assert!(s4.event().await.unwrap().is_some());
    let addr = srv.addr.clone();
    let snap = srv.shutdown();
    let reader = async {
        let mut last = Value::Null;
        let mut done = false;
        while let Some(d) = s4.event().await.unwrap() {
            if d == "[DONE]" {
                done = true;
            } else {
                last = serde_json::from_str(&d).unwrap();
            }
        }
        (last, done)
    };
    let (snap, (last, done)) = tokio::join!(snap, reader);
    assert!(done);
    assert_eq!(
        last["meta_info"]["finish_reason"]["type"], "abort",
        "{last}"
    );
    assert_eq!(
        snap.memory.free + snap.memory.evictable,
        snap.memory.capacity
    );
    assert!(
        client::get(&addr, "/health").await.is_err(),
        "still listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_client_that_stopped_reading() {
    let srv = start(|c| c.shutdown_timeout = Duration::from_millis(100)).await;
    let a = srv.addr.clone();
    // Cumulative /generate frames with 20 alternatives per token grow quadratically: far more
    // than the socket buffers hold, and the client never reads them.
    let body = json!({"text": "a reader that stalls", "stream": true, "return_logprob": true,
                      "top_logprobs_num": 20,
                      "sampling_params": {"max_new_tokens": 1900, "ignore_eos": true}});
    let stalled = client::open(&a, "POST", "/generate", Some(body.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(stalled.status, 200);
    // Wait until far more has been sent than the socket buffers hold (a busy machine generates
    // slowly, and a fixed wait could leave the whole stream in the buffers).
    for _ in 0..2000 {
        let info = get(&a, "/get_server_info").await.unwrap().json();
        if info["memory"]["used"].as_u64().unwrap_or(0) >= 600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = std::time::Instant::now();
    let snap = srv.shutdown().await;
    // The stalled connection is dropped 5 s after the drain timeout, not waited for.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert_eq!(
        snap.memory.free + snap.memory.evictable,
        snap.memory.capacity
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_request_ends_a_live_request_by_rid() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    let body = json!({"text": "abort me", "rid": "job-1", "stream": true,
                      "sampling_params": {"max_new_tokens": 1500, "ignore_eos": true}});
    let mut s = client::open(a, "POST", "/generate", Some(body.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    let first: Value = serde_json::from_str(&s.event().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["meta_info"]["id"], "job-1");
    // The rid is taken while the request lives.
    let dup = post_json(a, "/generate", &json!({"text": "x", "rid": "job-1"}))
        .await
        .unwrap();
    assert_eq!(dup.status, 400, "{}", dup.text());
    assert_eq!(dup.json()["error"]["param"], "rid");
    let r = post_json(a, "/abort_request", &json!({})).await.unwrap();
    assert_eq!(r.status, 400);
    let r = post_json(a, "/abort_request", &json!({"rid": "job-1"}))
        .await
        .unwrap();
    assert_eq!(r.json()["aborted"], 1);
    let mut last = Value::Null;
    let mut done = false;
    while let Some(d) = s.event().await.unwrap() {
        if d == "[DONE]" {
            done = true;
        } else {
            last = serde_json::from_str(&d).unwrap();
        }
    }
    assert!(done);
    assert_eq!(
        last["meta_info"]["finish_reason"]["type"], "abort",
        "{last}"
    );
    assert!(last["meta_info"]["completion_tokens"].as_u64().unwrap() < 1500);
    // Gone from the table: the rid is free again and unknown rids abort nothing.
    let r = post_json(a, "/abort_request", &json!({"rid": "job-1"}))
        .await
        .unwrap();
    assert_eq!(r.json()["aborted"], 0);
    let r = post_json(
        a,
        "/generate",
        &json!({"text": "x", "rid": "job-1", "sampling_params": {"max_new_tokens": 2}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_below_the_config_takes_effect_and_above_is_refused() {
    let srv = start(|c| c.context_length = Some(40)).await;
    let a = &srv.addr;
    let info = get(a, "/get_server_info").await.unwrap().json();
    assert_eq!(info["context_length"], 40, "{info}");
    let ids: Vec<u32> = (0..30).map(|i| 5 + i).collect();
    // 30 + 10 fits exactly; one more output token does not.
    let ok =
        json!({"input_ids": ids, "sampling_params": {"max_new_tokens": 10, "ignore_eos": true}});
    let r = post_json(a, "/generate", &ok).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let over = json!({"input_ids": ids, "sampling_params": {"max_new_tokens": 11}});
    let r = post_json(a, "/generate", &over).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("context length of 40"), "{}", r.text());
    srv.shutdown().await;
    // The tiny model's config holds 2048 positions and plain RoPE: 4096 is refused at build.
    let dir = tempfile::tempdir().unwrap();
    let spec = doppel_exec::testgen::TinySpec::tiny(doppel_exec::model::Arch::Qwen3);
    doppel_exec::testgen::write_model(dir.path(), &spec).unwrap();
    let cfg = doppel_exec::server::ServerConfig {
        model: Some(dir.path().to_path_buf()),
        context_length: Some(4096),
        log_batches: false,
        ..Default::default()
    };
    let e = doppel_exec::server::Server::build(cfg, doppel_exec::server::BackendKind::Cpu)
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("--context-length 4096") && msg.contains("max_position_embeddings (2048)"),
        "{msg}"
    );
}

/// A tokenizer that knows more tokens than the model embeds (here its chat template's special
/// tokens) gets a 400 naming the prompt, and the engine keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_ids_past_the_model_vocabulary_get_a_400_and_the_engine_lives() {
    use doppel_exec::testgen::{write_model, TinySpec};
    let (dir, big) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut spec = TinySpec::tiny(doppel_exec::model::Arch::Qwen3);
    spec.tokenizer_vocab = 260;
    write_model(dir.path(), &spec).unwrap();
    spec.tokenizer_vocab = 400;
    write_model(big.path(), &spec).unwrap();
    std::fs::copy(
        big.path().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let vocab = doppel_exec::model::ModelConfig::load(dir.path())
        .unwrap()
        .vocab_size;
    let srv = start_in(dir, |_| {}).await;
    let a = srv.addr.as_str();
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let r = post_json(a, "/v1/chat/completions", &chat).await.unwrap();
    let body = r.json();
    assert_eq!(r.status, 400, "{body}");
    let err = &body["error"];
    assert_eq!(err["param"], "prompt", "{body}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&format!("vocabulary of {vocab}")),
        "{body}"
    );
    let gen = json!({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 4}});
    let r = post_json(a, "/generate", &gen).await.unwrap();
    let body = r.json();
    assert_eq!(r.status, 200, "{body}");
    assert_eq!(body["meta_info"]["completion_tokens"], 4, "{body}");
    srv.shutdown().await;
}
