//! The HTTP server end to end over loopback with a tiny random-weight CPU model: /generate
//! (streaming and not), the OpenAI endpoints, prefix-cache hits, stop strings, logprobs, the
//! small endpoints, every error case, the bounded queue, disconnects and shutdown, and no KV leak.

use doppel_exec::server::client::{self, get, post_json};
use doppel_exec::server::engine::Snapshot;
use doppel_exec::server::{BackendKind, Server, ServerConfig};
use doppel_exec::testgen::{write_model, TinySpec};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::oneshot;

struct Running {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Snapshot, doppel_exec::server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn shutdown(mut self) -> Snapshot {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops within 30 s")
            .expect("server task")
            .expect("serve")
    }
}

async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TinySpec::tiny(doppel_exec::model::Arch::Qwen3);
    spec.seed = 11;
    write_model(dir.path(), &spec).unwrap();
    let mut cfg = ServerConfig {
        model: Some(dir.path().to_path_buf()),
        backend: BackendKind::Cpu,
        served_model_name: Some("tiny".into()),
        kv_capacity: Some(4096),
        log_batches: false,
        ..Default::default()
    };
    tweak(&mut cfg);
    let server = Server::build(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

/// Wait until nothing runs or waits, then return /get_server_info.
async fn idle_info(addr: &str) -> Value {
    for _ in 0..500 {
        let info = get(addr, "/get_server_info").await.unwrap().json();
        if info["num_running_reqs"] == 0 && info["num_waiting_reqs"] == 0 {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never became idle");
}

fn assert_no_leak(info: &Value) {
    let m = &info["memory"];
    let (free, evictable, cap) = (
        m["free"].as_u64().unwrap(),
        m["evictable"].as_u64().unwrap(),
        m["capacity"].as_u64().unwrap(),
    );
    assert_eq!(free + evictable, cap, "KV leak: {m}");
    assert_eq!(m["held"], 0, "{m}");
    assert_eq!(m["protected"], 0, "{m}");
}

/// All `data:` payloads of an SSE response, checking that it ends with [DONE].
async fn sse_events(addr: &str, path: &str, body: &Value) -> Vec<Value> {
    let mut s = client::open(addr, "POST", path, Some(body.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    let mut out = Vec::new();
    let mut done = false;
    while let Some(d) = s.event().await.unwrap() {
        assert!(!done, "event after [DONE]: {d}");
        if d == "[DONE]" {
            done = true;
        } else {
            out.push(serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}: {d}")));
        }
    }
    assert!(done, "stream ended without [DONE]");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streaming_matches_non_streaming_and_cache_hits_show() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    let prompt = "The quick brown fox jumps over the lazy dog and keeps on running";
    let req = json!({"text": prompt, "sampling_params": {"max_new_tokens": 12, "temperature": 0, "ignore_eos": true}});
    let r = post_json(a, "/generate", &req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let one = r.json();
    let meta = &one["meta_info"];
    assert_eq!(meta["completion_tokens"], 12);
    assert_eq!(meta["finish_reason"]["type"], "length");
    assert_eq!(one["output_ids"].as_array().unwrap().len(), 12);
    let prompt_tokens = meta["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 5);
    assert_eq!(meta["cached_tokens"], 0);
    assert!(meta["e2e_latency"].as_f64().unwrap() > 0.0);

    // Same prompt again, streamed: the whole prompt but the last token comes from the cache.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let evs = sse_events(a, "/generate", &sreq).await;
    assert!(evs.len() >= 2, "{evs:?}");
    let last = evs.last().unwrap();
    assert_eq!(last["text"], one["text"], "streamed text differs");
    assert_eq!(last["output_ids"], one["output_ids"]);
    assert_eq!(last["meta_info"]["cached_tokens"], prompt_tokens - 1);
    // Cumulative text grows monotonically; only the last chunk has a finish reason.
    for w in evs.windows(2) {
        let (p, n) = (
            w[0]["text"].as_str().unwrap(),
            w[1]["text"].as_str().unwrap(),
        );
        assert!(n.starts_with(p));
        assert!(w[0]["meta_info"]["finish_reason"].is_null());
    }

    // OpenAI usage reports the same cache hit.
    let r = post_json(
        a,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    )
    .await
    .unwrap();
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], one["text"]);
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1
    );

    // Batch of texts and n > 1: one answer per prompt and choice.
    let r = post_json(
        a,
        "/generate",
        &json!({"text": [prompt, "another prompt"], "sampling_params": {"max_new_tokens": 4, "n": 2, "temperature": 0, "ignore_eos": true}}),
    )
    .await
    .unwrap();
    let list = r.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[0]["text"], list[1]["text"], "greedy choices agree");
    let info = idle_info(a).await;
    assert_no_leak(&info);
    assert!(info["counters"]["cached_tokens"].as_u64().unwrap() >= 2 * (prompt_tokens - 1));
    let snap = srv.shutdown().await;
    assert!(!snap.alive);
    assert_eq!(
        snap.memory.free + snap.memory.evictable,
        snap.memory.capacity
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_stop_strings_logprobs_and_small_endpoints() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    let chat = json!({"model": "tiny", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "max_completion_tokens": 10, "temperature": 0, "ignore_eos": true});
    let full = post_json(a, "/v1/chat/completions", &chat).await.unwrap();
    assert_eq!(full.status, 200, "{}", full.text());
    let full = full.json();
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    assert_eq!(full["choices"][0]["finish_reason"], "length");
    assert_eq!(full["usage"]["completion_tokens"], 10);
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    // Streaming: role first, deltas concatenate to the same text, usage at the end.
    let mut sreq = chat.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let evs = sse_events(a, "/v1/chat/completions", &sreq).await;
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    let fin = &evs[evs.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert_eq!(evs.last().unwrap()["usage"]["completion_tokens"], 10);
    assert!(evs.last().unwrap()["choices"]
        .as_array()
        .unwrap()
        .is_empty());

    // A stop string from the middle of a greedy completion cuts it there (an ASCII pair, so the
    // streamed text cannot differ from a whole decode around it).
    let mut found = false;
    for p in [
        "stop strings are cut",
        "hello world",
        "a b c d",
        "The quick brown fox",
    ] {
        let comp = json!({"model": "tiny", "prompt": p, "max_tokens": 16, "temperature": 0, "ignore_eos": true});
        let base = post_json(a, "/v1/completions", &comp).await.unwrap().json();
        let btext = base["choices"][0]["text"].as_str().unwrap().to_string();
        let chars: Vec<(usize, char)> = btext.char_indices().collect();
        let Some((at, stop)) = chars
            .windows(2)
            .skip(1)
            .map(|w| (w[0].0, format!("{}{}", w[0].1, w[1].1)))
            .find(|(i, s)| {
                s.chars().all(|c| c.is_ascii_alphanumeric()) && btext.find(s.as_str()) == Some(*i)
            })
        else {
            continue;
        };
        found = true;
        let mut req = comp.clone();
        req["stop"] = json!([stop]);
        let v = post_json(a, "/v1/completions", &req).await.unwrap().json();
        assert_eq!(v["choices"][0]["text"], &btext[..at], "stop {stop:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["matched_stop"], json!(stop));
        // Native: the stop string is kept with no_stop_trim.
        let v = post_json(
            a,
            "/generate",
            &json!({"text": p, "sampling_params": {"max_new_tokens": 16, "temperature": 0, "ignore_eos": true, "stop": stop, "no_stop_trim": true}}),
        )
        .await
        .unwrap()
        .json();
        assert_eq!(v["text"], &btext[..at + stop.len()]);
        assert_eq!(v["meta_info"]["finish_reason"]["matched"], json!(stop));
        break;
    }
    assert!(
        found,
        "no prompt gave a completion with an ASCII pair to stop on"
    );
    let comp = json!({"model": "tiny", "prompt": "logprobs", "max_tokens": 16, "temperature": 0, "ignore_eos": true});

    // Logprobs: one per token, with the asked number of alternatives.
    let mut req = comp.clone();
    req["logprobs"] = json!(3);
    req["max_tokens"] = json!(5);
    let v = post_json(a, "/v1/completions", &req).await.unwrap().json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
    for t in lp["top_logprobs"].as_array().unwrap() {
        assert_eq!(t.as_object().unwrap().len(), 3, "{t}");
    }
    for x in lp["token_logprobs"].as_array().unwrap() {
        assert!(x.as_f64().unwrap() <= 0.0);
    }
    let mut c = chat.clone();
    c["logprobs"] = json!(true);
    c["top_logprobs"] = json!(2);
    let v = post_json(a, "/v1/chat/completions", &c)
        .await
        .unwrap()
        .json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 10);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let v = post_json(
        a,
        "/generate",
        &json!({"input_ids": [5, 6, 7], "return_logprob": true, "top_logprobs_num": 2, "sampling_params": {"max_new_tokens": 3, "temperature": 0, "ignore_eos": true}}),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(
        v["meta_info"]["output_token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        v["meta_info"]["output_top_logprobs"][0]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Seeded sampling is reproducible.
    let seeded = json!({"model": "tiny", "prompt": "seeded", "max_tokens": 8, "temperature": 1.0, "seed": 42, "ignore_eos": true});
    let x = post_json(a, "/v1/completions", &seeded)
        .await
        .unwrap()
        .json();
    let y = post_json(a, "/v1/completions", &seeded)
        .await
        .unwrap()
        .json();
    assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"]);

    // The small endpoints.
    assert_eq!(get(a, "/health").await.unwrap().status, 200);
    assert_eq!(get(a, "/health_generate").await.unwrap().status, 200);
    let m = get(a, "/v1/models").await.unwrap().json();
    assert_eq!(m["data"][0]["id"], "tiny");
    let mi = get(a, "/get_model_info").await.unwrap().json();
    assert_eq!(mi["is_generation"], true);
    let si = idle_info(a).await;
    assert_eq!(si["max_total_num_tokens"], 4096);
    assert_no_leak(&si);
    let f = client::request(a, "POST", "/flush_cache", None)
        .await
        .unwrap();
    assert_eq!(f.status, 200, "{}", f.text());
    let si = get(a, "/get_server_info").await.unwrap().json();
    assert_eq!(si["memory"]["free"], si["memory"]["capacity"]);
    let metrics = get(a, "/metrics").await.unwrap().text();
    for name in [
        "sglang:num_running_reqs",
        "sglang:num_used_tokens",
        "sglang:token_usage",
        "sglang:gen_throughput",
        "sglang:num_queue_reqs",
        "sglang:cache_hit_rate",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:time_to_first_token_seconds_bucket",
        "sglang:inter_token_latency_seconds_count",
        "sglang:e2e_request_latency_seconds_sum",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    let count = metrics
        .lines()
        .find(|l| l.starts_with("sglang:e2e_request_latency_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(count >= 8, "{count}");
    srv.shutdown().await;
}

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
            json!({"text": "x", "sampling_params": {"regex": "a+"}}),
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
            json!({"model": "nope", "prompt": "x"}),
            404,
            "nope",
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
