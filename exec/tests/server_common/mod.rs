//! Shared by the server's loopback tests: an in-process server over a tiny random-weight CPU
//! model, and checks on its state.
#![allow(dead_code)]

use doppel_exec::server::client::{self, get};
use doppel_exec::server::engine::Snapshot;
use doppel_exec::server::{BackendKind, Server, ServerConfig};
use doppel_exec::testgen::{write_model, TinySpec};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct Running {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Snapshot, doppel_exec::server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    pub async fn shutdown(mut self) -> Snapshot {
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

pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Running {
    let mut spec = TinySpec::tiny(doppel_exec::model::Arch::Qwen3);
    spec.seed = 11;
    start_spec(&spec, tweak).await
}

/// [`start`] over a tiny model of `spec`.
pub async fn start_spec(spec: &TinySpec, tweak: impl FnOnce(&mut ServerConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), spec).unwrap();
    start_in(dir, tweak).await
}

/// [`start`] over the model in `dir` (kept until the server is dropped).
pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut ServerConfig)) -> Running {
    let mut cfg = ServerConfig {
        model: Some(dir.path().to_path_buf()),
        served_model_name: Some("tiny".into()),
        kv_capacity: Some(4096),
        log_batches: false,
        ..Default::default()
    };
    tweak(&mut cfg);
    let server = Server::build(cfg, BackendKind::Cpu).unwrap();
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
pub async fn idle_info(addr: &str) -> Value {
    for _ in 0..500 {
        let info = get(addr, "/get_server_info").await.unwrap().json();
        if info["num_running_reqs"] == 0 && info["num_waiting_reqs"] == 0 {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never became idle");
}

pub fn assert_no_leak(info: &Value) {
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
pub async fn sse_events(addr: &str, path: &str, body: &Value) -> Vec<Value> {
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
