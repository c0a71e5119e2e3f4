//! The HTTP server against hostile clients over loopback (tiny CPU model): malformed requests
//! get JSON 4xx answers and never a 5xx, slow clients are timed out without locking others out,
//! huge prompts are refused fast without stalling /health, client rids never clash with
//! generated ones, and shutdown answers 503 while it drains.

mod server_common;

use doppel_exec::server::client::{self, get, post_json};
use doppel_exec::server::ConnLimits;
use serde_json::{json, Value};
use server_common::{assert_no_leak, idle_info, start};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read from a raw socket to its end.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Send raw bytes (then half-close if asked) and read until the server closes.
async fn raw(addr: &str, bytes: &[u8], half_close: bool) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything (431, 414): ignore write errors.
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "no answer within 10 s to {:?}", show(bytes));
    let text = String::from_utf8_lossy(&all).into_owned();
    let Some(split) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!("no response head for {:?}: {text:?}", show(bytes));
    };
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = &all[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Raw { status, head, body }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
    format!("{s}... ({} bytes)", b.len())
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// Malformed HTTP: (bytes, half-close after sending, expected status).
fn broken_http() -> Vec<(Vec<u8>, bool, u16)> {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let huge_header = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(600_000));
    let mut v: Vec<(Vec<u8>, bool, u16)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), false, 400),
        (b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), false, 400),
        (b"GET /health HTTP/1.1\r\nX: a\0b\r\n\r\n".to_vec(), false, 400),
        (b"G\x01T / HTTP/1.1\r\n\r\n".to_vec(), false, 400),
        (long_uri.into_bytes(), false, 414),
        (format!("GET /health HTTP/1.1\r\n{many}\r\n").into_bytes(), false, 431),
        (huge_header.into_bytes(), false, 431),
        (b"POST /generate HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), false, 400),
        (b"POST /generate HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n".to_vec(), true, 400),
        // Truncated: declares 100 bytes, sends 7, closes its side: 400, not 413.
        (b"POST /generate HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"text\"".to_vec(), true, 400),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(), true, 413),
    ];
    for (m, p) in [
        ("GET", "/generate"),
        ("DELETE", "/health"),
        ("PUT", "/v1/completions"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/metrics"),
    ] {
        let req = format!("{m} {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        v.push((req.into_bytes(), false, 405));
    }
    v
}

/// Well-formed HTTP with bad JSON: every field of the three APIs given values of every kind.
fn broken_json() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&str, Vec<u8>)> = Vec::new();
    for path in [
        "/generate",
        "/v1/completions",
        "/v1/chat/completions",
        "/abort_request",
    ] {
        for body in [
            "",
            "{",
            "[1,2]",
            "null",
            "\"x\"",
            "{\"a\":}",
            "{\"text\": \"x\"",
            "\u{0}",
        ] {
            v.push((path, body.as_bytes().to_vec()));
        }
    }
    let odd = [
        json!(true),
        json!(-1),
        json!(1e308),
        json!("x"),
        json!([]),
        json!({}),
        json!([[-1]]),
        json!([1.5]),
        json!("é".repeat(300)),
        json!(0),
        json!({"a": [1]}),
    ];
    let bases = [
        (
            "/generate",
            json!({"text": "hi", "sampling_params": {"max_new_tokens": 1}}),
            vec![
                "text",
                "input_ids",
                "sampling_params",
                "stream",
                "rid",
                "return_logprob",
                "top_logprobs_num",
            ],
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 1}),
            vec![
                "model",
                "prompt",
                "max_tokens",
                "n",
                "temperature",
                "stop",
                "logprobs",
                "echo",
                "seed",
                "logit_bias",
                "stream",
            ],
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
            vec![
                "model",
                "messages",
                "max_tokens",
                "n",
                "top_p",
                "logprobs",
                "top_logprobs",
                "stop",
                "stream",
            ],
        ),
    ];
    for (path, base, fields) in bases {
        for f in fields {
            for val in &odd {
                let mut b = base.clone();
                b[f] = val.clone();
                v.push((path, b.to_string().into_bytes()));
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_4xx_never_5xx_and_health_stays_up() {
    let srv = start(|c| c.max_body_bytes = 1 << 20).await;
    let a = srv.addr.as_str();
    let mut n = 0;
    let check_health = |r: Raw| {
        assert_eq!(r.status, 200, "{}", r.head);
    };
    for (bytes, half, want) in broken_http() {
        let r = raw(a, &bytes, half).await;
        assert_eq!(r.status, want, "{}: {}", show(&bytes), r.head);
        let e: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{}: body {:?}", show(&bytes), show(&r.body)));
        assert_eq!(e["error"]["code"], want, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().len() < 400, "{e}");
        if want == 405 {
            assert!(r.head.contains("\r\nallow: "), "{}", r.head);
        }
        check_health(
            raw(
                a,
                b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
                false,
            )
            .await,
        );
        n += 1;
    }
    for (path, body) in broken_json() {
        let r = raw(a, &post(path, &body), false).await;
        assert!(r.status < 500, "{path} {}: {}", show(&body), r.head);
        if r.status >= 400 {
            let e: Value = serde_json::from_slice(&r.body)
                .unwrap_or_else(|_| panic!("{path} {}: {:?}", show(&body), show(&r.body)));
            assert_eq!(e["error"]["code"], r.status, "{e}");
            let msg = e["error"]["message"].as_str().unwrap();
            assert!(msg.chars().count() < 500, "{path}: echoes too much: {msg}");
        }
        check_health(
            raw(
                a,
                b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
                false,
            )
            .await,
        );
        n += 1;
    }
    assert!(n >= 300, "{n} requests");
    // A huge wrong-typed `model` (any string is served) is echoed cut, with its length.
    let big = "m".repeat(1 << 19);
    let r = post_json(
        a,
        "/v1/completions",
        &json!({"model": [big], "prompt": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.len() < 400 && msg.contains("524292 bytes"), "{msg}");
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

/// Read until the server closes the socket; true if it did within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 4096];
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Legitimate requests during an attack: each must be answered quickly.
async fn legit_requests(a: &str, count: usize) {
    for i in 0..count {
        let t0 = Instant::now();
        let r = if i % 2 == 0 {
            get(a, "/health").await.unwrap()
        } else {
            post_json(
                a,
                "/generate",
                &json!({"text": "hi", "sampling_params": {"max_new_tokens": 2}}),
            )
            .await
            .unwrap()
        };
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_and_silent_bodies_time_out_while_others_are_served() {
    // 300 clients trickling headers at 1 byte/s against a cap of 64 connections.
    let srv = start(|c| {
        c.conn = ConnLimits {
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            max_connections: 64,
        }
    })
    .await;
    let a = srv.addr.clone();
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(TcpStream::connect(&a).await.unwrap());
    }
    let started = Instant::now();
    let trickle = async {
        let head = b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaa";
        for byte in head.iter().take(3) {
            for s in slow.iter_mut() {
                let _ = s.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    };
    let (mut slow, ()) = tokio::join!(trickle, legit_requests(&a, 20));
    // Every slow client was closed by the server (evicted, or at the header timeout).
    for s in slow.iter_mut() {
        let left =
            Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_secs(1);
        assert!(closed_within(s, left).await, "a slow client is still open");
    }
    drop(slow);
    srv.shutdown().await;

    // 300 clients that declare a body and send nothing: each gets a JSON 408 after the body
    // timeout; others are served meanwhile.
    let srv = start(|c| {
        c.conn = ConnLimits {
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(1),
            max_connections: 512,
        }
    })
    .await;
    let a = srv.addr.clone();
    let mut silent = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&a).await.unwrap();
        s.write_all(b"POST /generate HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        silent.push(s);
    }
    legit_requests(&a, 10).await;
    for mut s in silent {
        let mut all = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
        assert!(r.is_ok(), "a silent client was not answered");
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"code\":408"), "{text}");
    }
    assert_no_leak(&idle_info(&a).await);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_prompts_are_refused_fast_without_stalling_health() {
    let srv = start(|c| c.max_body_bytes = 32 << 20).await;
    let a = srv.addr.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                assert_eq!(get(&a, "/health").await.unwrap().status, 200);
                worst = worst.max(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worst
        })
    };
    let words = "lorem ipsum dolor sit amet ".repeat(400_000);
    let ten_mb = &words[..10 << 20];
    let cases = [
        ("/generate", json!({"text": ten_mb}), "text"),
        ("/v1/completions", json!({"prompt": ten_mb}), "prompt"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": ten_mb}]}),
            "messages",
        ),
        // Past the window size but under the byte bound: refused from its first windows.
        ("/generate", json!({"text": &words[..40_000]}), "text"),
        (
            "/v1/completions",
            json!({"prompt": &words[..200_000]}),
            "prompt",
        ),
    ];
    for (path, body, field) in cases {
        let t0 = Instant::now();
        let r = post_json(&a, path, &body).await.unwrap();
        let took = t0.elapsed();
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["param"], field, "{e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains("context length"), "{msg}");
        assert!(took < Duration::from_secs(3), "{path}: {took:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = poller.await.unwrap();
    assert!(worst < Duration::from_millis(750), "/health took {worst:?}");
    assert_no_leak(&idle_info(&a).await);
    srv.shutdown().await;
}

async fn long_stream(a: &str, rid: Option<&str>) -> (client::Stream, String) {
    let mut body = json!({"text": "go", "stream": true,
                          "sampling_params": {"max_new_tokens": 2000, "ignore_eos": true}});
    if let Some(r) = rid {
        body["rid"] = json!(r);
    }
    let mut s = client::open(a, "POST", "/generate", Some(body.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    let first: Value = serde_json::from_str(&s.event().await.unwrap().unwrap()).unwrap();
    let id = first["meta_info"]["id"].as_str().unwrap().to_string();
    (s, id)
}

async fn finish_reason(s: &mut client::Stream) -> Value {
    let mut last = Value::Null;
    while let Some(d) = s.event().await.unwrap() {
        if d != "[DONE]" {
            last = serde_json::from_str(&d).unwrap();
        }
    }
    last["meta_info"]["finish_reason"]["type"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rids_never_clash_with_generated_ones() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    // The client takes the rid the server would generate for its next two requests.
    let (mut mine, id) = long_stream(a, Some("0000000000000001")).await;
    assert_eq!(id, "0000000000000001");
    let (mut other, other_id) = long_stream(a, None).await;
    assert_ne!(other_id, "0000000000000001");
    // A live duplicate is refused, alone or inside one request.
    for body in [
        json!({"text": "x", "rid": "0000000000000001"}),
        json!({"text": ["x", "y"], "rid": ["dup", "dup"]}),
        json!({"text": "x", "rid": other_id}),
    ] {
        let r = post_json(a, "/generate", &body).await.unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], "rid");
        assert!(r.text().contains("already used"), "{}", r.text());
    }
    // Aborting the client's rid ends only the client's request.
    let r = post_json(a, "/abort_request", &json!({"rid": "0000000000000001"}))
        .await
        .unwrap();
    assert_eq!(r.json()["aborted"], 1);
    assert_eq!(finish_reason(&mut mine).await, "abort");
    assert!(
        other.event().await.unwrap().is_some(),
        "the other stream ended"
    );
    let r = post_json(a, "/abort_request", &json!({"rid": other_id}))
        .await
        .unwrap();
    assert_eq!(r.json()["aborted"], 1);
    assert_eq!(finish_reason(&mut other).await, "abort");
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_503_with_json_while_draining_then_closes() {
    let srv = start(|c| c.shutdown_timeout = Duration::from_millis(600)).await;
    let a = srv.addr.clone();
    let (mut live, _) = long_stream(&a, None).await;
    let stopping = tokio::spawn(srv.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (m, p, body) in [
        ("GET", "/health", None),
        ("GET", "/get_server_info", None),
        ("POST", "/generate", Some(json!({"text": "x"}).to_string())),
    ] {
        let r = client::request(&a, m, p, body.as_deref().map(str::as_bytes))
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{p}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], 503, "{}", r.text());
        assert!(r.text().contains("shutting down"), "{}", r.text());
    }
    // The live stream is aborted at the end of the drain and ends well-formed.
    assert_eq!(finish_reason(&mut live).await, "abort");
    let snap = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        snap.memory.free + snap.memory.evictable,
        snap.memory.capacity
    );
    assert!(get(&a, "/health").await.is_err(), "still listening");
}
