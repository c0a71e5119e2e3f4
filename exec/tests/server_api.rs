//! The HTTP server end to end over loopback with a tiny random-weight CPU model: /generate
//! (streaming and not), the OpenAI endpoints, prefix-cache hits, stop strings, logprobs and the
//! small endpoints, with no KV leak afterwards.

mod server_common;

use doppel_exec::server::client::{self, get, post_json};
use serde_json::json;
use server_common::{assert_no_leak, idle_info, sse_events, start};

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

/// `--enable-mixed-chunk`: decode tokens ride in prefill chunks (mixed steps counted) and the
/// answers stay the plain server's (greedy), with the setting reported by /get_server_info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_chunk_server_answers_as_the_plain_one_and_says_so() {
    let long = "one two three four five six seven eight nine ten ".repeat(6);
    let mut answers = Vec::new();
    for mixed in [false, true] {
        let srv = start(|c| {
            c.enable_mixed_chunk = mixed;
            c.chunked_prefill_size = Some(16);
        })
        .await;
        let a = srv.addr.clone();
        // A long-running request decodes while a long prompt arrives and is prefilled in
        // chunks of 16: sent once the first has its first token.
        let short = json!({"text": "hello there", "sampling_params": {"max_new_tokens": 400, "temperature": 0, "ignore_eos": true}});
        let first = tokio::spawn({
            let a = a.clone();
            async move { post_json(&a, "/generate", &short).await.unwrap().json() }
        });
        let mut decoding = false;
        for _ in 0..500 {
            let info = get(&a, "/get_server_info").await.unwrap().json();
            if info["num_running_reqs"] == 1
                && info["counters"]["generated_tokens"].as_u64() >= Some(1)
            {
                decoding = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(decoding, "the first request never started decoding");
        let req = json!({"text": long, "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": true}});
        let second = post_json(&a, "/generate", &req).await.unwrap().json();
        let first = first.await.unwrap();
        answers.push((first["output_ids"].clone(), second["output_ids"].clone()));
        let info = idle_info(&a).await;
        assert_eq!(info["enable_mixed_chunk"], mixed);
        let mixed_steps = info["counters"]["mixed_steps"].as_u64().unwrap();
        if mixed {
            assert!(mixed_steps > 0, "no mixed step: {}", info["counters"]);
        } else {
            assert_eq!(mixed_steps, 0);
        }
        assert_no_leak(&info);
        srv.shutdown().await;
    }
    assert_eq!(
        answers[0], answers[1],
        "mixed steps changed the greedy tokens"
    );
}
