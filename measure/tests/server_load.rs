//! Loopback load test on the real-time simulator backend (no weights): a few hundred concurrent
//! streaming requests over the three generation endpoints, one in five cancelled midway. Every
//! request that is not cancelled gets a complete, well-formed answer; nothing is lost; the KV pool
//! is whole afterwards. Bounded in count and time; prints its figures.

use doppel_exec::server::client::{self, get};
use doppel_exec::server::ServerConfig;
use doppel_measure::sim_server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Requests in CI; DOPPEL_LOAD_REQUESTS overrides it for a heavier manual run.
const REQUESTS: usize = 300;
const MAX_TOKENS: usize = 48;

#[derive(Debug)]
enum Outcome {
    Complete {
        tokens: usize,
        ttft: f64,
    },
    Cancelled,
    /// Meant to be cancelled, but the whole answer came in fewer events than the cancel point
    /// (the server merges tokens that wait for a slow reader into one event).
    EndedBeforeCancel {
        tokens: usize,
        ttft: f64,
    },
}

/// One streaming request; `cancel_after` events, then drop the connection.
async fn one(addr: String, i: usize, cancel_after: Option<usize>) -> Result<Outcome, String> {
    let shared = "You are a helpful assistant. Answer briefly and precisely. ".repeat(4);
    let (path, body) = match i % 3 {
        0 => (
            "/generate",
            json!({"text": format!("{shared} question {i}"), "stream": true,
                   "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0.7}}),
        ),
        1 => (
            "/v1/completions",
            json!({"prompt": format!("{shared} question {i}"), "stream": true, "max_tokens": MAX_TOKENS,
                   "stream_options": {"include_usage": true}}),
        ),
        _ => (
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": shared}, {"role": "user", "content": format!("question {i}")}],
                   "stream": true, "max_tokens": MAX_TOKENS, "stream_options": {"include_usage": true}}),
        ),
    };
    let t0 = Instant::now();
    let mut s = client::open(&addr, "POST", path, Some(body.to_string().as_bytes()))
        .await
        .map_err(|e| format!("request {i}: {e}"))?;
    if s.status != 200 {
        let b = s.body().await.unwrap_or_default();
        return Err(format!(
            "request {i}: status {} {}",
            s.status,
            String::from_utf8_lossy(&b)
        ));
    }
    let mut events = Vec::new();
    let mut ttft = None;
    let mut done = false;
    while let Some(d) = s.event().await.map_err(|e| format!("request {i}: {e}"))? {
        if done {
            return Err(format!("request {i}: event after [DONE]: {d}"));
        }
        if d == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value =
            serde_json::from_str(&d).map_err(|e| format!("request {i}: bad JSON {e}: {d}"))?;
        if v.get("error").is_some() {
            return Err(format!("request {i}: error event {d}"));
        }
        ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        events.push(v);
        if cancel_after == Some(events.len()) {
            return Ok(Outcome::Cancelled);
        }
    }
    if !done {
        return Err(format!("request {i}: no [DONE]"));
    }
    // The answer is complete: a finish reason, and the advertised token count.
    let tokens = match i % 3 {
        0 => {
            let last = events.last().ok_or("no events")?;
            let meta = &last["meta_info"];
            if meta["finish_reason"]["type"] != "length" {
                return Err(format!("request {i}: finish {}", meta["finish_reason"]));
            }
            let ids = last["output_ids"].as_array().map_or(0, Vec::len);
            if ids != MAX_TOKENS || meta["completion_tokens"] != MAX_TOKENS {
                return Err(format!("request {i}: {ids} ids, meta {meta}"));
            }
            ids
        }
        _ => {
            let usage = &events.last().ok_or("no events")?["usage"];
            let fin = events
                .iter()
                .filter(|e| !e["choices"][0]["finish_reason"].is_null())
                .count();
            if fin != 1 || usage["completion_tokens"] != MAX_TOKENS {
                return Err(format!("request {i}: {fin} finish chunks, usage {usage}"));
            }
            MAX_TOKENS
        }
    };
    let ttft = ttft.unwrap_or(0.0);
    Ok(match cancel_after {
        Some(c) if events.len() < c => Outcome::EndedBeforeCancel { tokens, ttft },
        Some(c) => return Err(format!("request {i}: not cancelled after {c} events")),
        None => Outcome::Complete { tokens, ttft },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_streams_some_cancelled() {
    let n: usize = std::env::var("DOPPEL_LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REQUESTS);
    let cfg = ServerConfig {
        kv_capacity: Some(200_000),
        log_batches: false,
        ..Default::default()
    };
    let server = sim_server::build(cfg, Some("h100-80g/qwen3-0.6b/sglang")).unwrap();
    // A deep accept queue: hundreds of connects arrive at once (a full queue drops SYNs, which
    // clients retry only after a second).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stop_rx.await;
    }));

    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..n {
        let cancel = (i % 5 == 4).then_some(1 + i % 7);
        handles.push(tokio::spawn(one(addr.clone(), i, cancel)));
    }
    let all = async {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("client task"));
        }
        out
    };
    let results = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("all requests answered within 120 s");
    let wall = t0.elapsed().as_secs_f64();
    let mut complete = 0;
    let mut cancelled = 0;
    let mut ended_early = 0;
    let mut tokens = 0;
    let mut ttfts = Vec::new();
    for r in results {
        match r {
            Ok(Outcome::Complete { tokens: t, ttft }) => {
                complete += 1;
                tokens += t;
                ttfts.push(ttft);
            }
            Ok(Outcome::EndedBeforeCancel { tokens: t, ttft }) => {
                ended_early += 1;
                tokens += t;
                ttfts.push(ttft);
            }
            Ok(Outcome::Cancelled) => cancelled += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(complete + cancelled + ended_early, n);
    // Under load a slow reader may get a whole answer in a few merged events, but most of the
    // streams meant to cancel do reach their cancel point.
    assert!(
        cancelled > ended_early,
        "{cancelled} cancelled, {ended_early} ended first"
    );

    // Nothing is left running and the KV pool is whole.
    let mut info = Value::Null;
    for _ in 0..500 {
        info = get(&addr, "/get_server_info").await.unwrap().json();
        if info["num_running_reqs"] == 0 && info["num_waiting_reqs"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = &info["memory"];
    assert_eq!(
        m["free"].as_u64().unwrap() + m["evictable"].as_u64().unwrap(),
        m["capacity"].as_u64().unwrap(),
        "KV leak: {m}"
    );
    assert_eq!(info["counters"]["finished"], n as u64);
    // Cancelled streams stopped early: fewer tokens than every request running to the end.
    let generated = info["counters"]["generated_tokens"].as_u64().unwrap();
    assert!(generated < (n * MAX_TOKENS) as u64, "{generated}");
    // The shared system prompt was served from the prefix cache.
    assert!(info["counters"]["cached_tokens"].as_u64().unwrap() > 0);

    ttfts.sort_by(f64::total_cmp);
    let p50 = ttfts[ttfts.len() / 2];
    let p99 = ttfts[ttfts.len() * 99 / 100];
    println!(
        "load: {n} streams ({complete} complete, {cancelled} cancelled, {ended_early} ended before \
         their cancel point) in {wall:.2} s; \
         {:.0} req/s, {:.0} streamed tok/s; TTFT p50 {:.1} ms, p99 {:.1} ms; engine generated {generated} tokens",
        n as f64 / wall,
        tokens as f64 / wall,
        p50 * 1e3,
        p99 * 1e3
    );
    let _ = stop_tx.send(());
    let snap = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("serve");
    assert_eq!(
        snap.memory.free + snap.memory.evictable,
        snap.memory.capacity
    );
}
