//! SGLang's launch options over loopback on the tiny CPU model: `--api-key` bearer auth (every
//! route but /health), `--context-length`, `--chat-template`, `--load-format dummy` on the CPU,
//! and SGLang's metric names (retractions, aborts, queue time, time per output token).

mod server_common;

use doppel_exec::server::client::{get, post_json};
use doppel_exec::server::{BackendKind, LoadFormat, Server, ServerConfig};
use serde_json::json;
use server_common::start;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status of a request with an optional `Authorization` header (the test client sends none).
async fn status_with_auth(addr: &str, method: &str, path: &str, auth: Option<&str>) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let body = if method == "POST" {
        "{\"text\":\"hi\",\"sampling_params\":{\"max_new_tokens\":2}}"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_every_route_but_health() {
    let srv = start(|c| c.api_key = Some("s3cret".into())).await;
    let a = srv.addr.as_str();
    assert_eq!(status_with_auth(a, "GET", "/health", None).await, 200);
    for (m, p) in [
        ("GET", "/get_model_info"),
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("GET", "/health_generate"),
        ("POST", "/generate"),
        ("GET", "/no_such_route"),
    ] {
        assert_eq!(
            status_with_auth(a, m, p, None).await,
            401,
            "{m} {p} without a key"
        );
        let wrong = status_with_auth(a, m, p, Some("Bearer s3cres")).await;
        assert_eq!(wrong, 401, "{m} {p} with a wrong key");
        let basic = status_with_auth(a, m, p, Some("Basic s3cret")).await;
        assert_eq!(basic, 401, "{m} {p} with another scheme");
    }
    assert_eq!(
        status_with_auth(a, "GET", "/get_model_info", Some("Bearer s3cret")).await,
        200
    );
    assert_eq!(
        status_with_auth(a, "POST", "/generate", Some("Bearer s3cret")).await,
        200
    );
    let r = get(a, "/v1/models").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "invalid_api_key", "{}", r.text());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_shortens_the_models_and_is_enforced() {
    let srv = start(|c| c.context_length = Some(48)).await;
    let a = srv.addr.as_str();
    assert_eq!(
        get(a, "/get_model_info").await.unwrap().json()["context_length"],
        48
    );
    let long = "word ".repeat(60);
    let r = post_json(
        a,
        "/generate",
        &json!({"text": long, "sampling_params": {"max_new_tokens": 2}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    srv.shutdown().await;
}

#[test]
fn context_length_beyond_the_model_and_dummy_weights_on_the_cpu_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = doppel_exec::testgen::TinySpec::tiny(doppel_exec::model::Arch::Qwen3);
    doppel_exec::testgen::write_model(dir.path(), &spec).unwrap();
    let base = ServerConfig {
        model: Some(dir.path().to_path_buf()),
        log_batches: false,
        ..Default::default()
    };
    let too_long = ServerConfig {
        context_length: Some(1 << 30),
        ..base.clone()
    };
    let e = Server::build(too_long, BackendKind::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--context-length 1073741824"), "{e}");
    let dummy = ServerConfig {
        load_format: LoadFormat::Dummy,
        ..base
    };
    let e = Server::build(dummy, BackendKind::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("--load-format dummy") && e.contains("cuda"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_template_file_replaces_the_tokenizers() {
    let t = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(t.path(), "{{ raise_exception('the custom template ran') }}").unwrap();
    let path = t.path().to_path_buf();
    let srv = start(move |c| c.chat_template = Some(path)).await;
    let r = post_json(
        &srv.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("the custom template ran"), "{}", r.text());
    srv.shutdown().await;
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_sglangs_names_for_queue_time_tpot_aborts_and_retractions() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    for n in [1, 6] {
        let req = json!({"text": "count with me", "sampling_params": {"max_new_tokens": n, "ignore_eos": true}});
        assert_eq!(post_json(a, "/generate", &req).await.unwrap().status, 200);
    }
    let m = get(a, "/metrics").await.unwrap().text();
    assert_eq!(metric(&m, "sglang:queue_time_seconds_count"), 2.0);
    // Only the request with two or more tokens has a time per output token.
    assert_eq!(
        metric(&m, "sglang:request_time_per_output_token_seconds_count"),
        1.0
    );
    assert!(metric(&m, "sglang:request_time_per_output_token_seconds_sum") > 0.0);
    assert_eq!(metric(&m, "sglang:num_retracted_requests_total"), 0.0);
    assert_eq!(metric(&m, "sglang:num_aborted_requests_total"), 0.0);
    assert!(!m.contains("num_retractions_total"), "the old name is gone");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_request_is_counted() {
    use doppel_exec::server::client;
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    let body = json!({"text": "abort me", "rid": "job-9", "stream": true,
                      "sampling_params": {"max_new_tokens": 1500, "ignore_eos": true}});
    let mut s = client::open(a, "POST", "/generate", Some(body.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    assert!(s.event().await.unwrap().is_some());
    let r = post_json(a, "/abort_request", &json!({"rid": "job-9"}))
        .await
        .unwrap();
    assert_eq!(r.json()["aborted"], 1, "{}", r.text());
    while s.event().await.unwrap().is_some() {}
    let m = get(a, "/metrics").await.unwrap().text();
    assert_eq!(metric(&m, "sglang:num_aborted_requests_total"), 1.0);
    srv.shutdown().await;
}
