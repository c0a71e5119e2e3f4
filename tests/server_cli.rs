//! `doppel exec serve` as a process: greedy output through the server equals `doppel exec
//! generate` (and the transformers-verified reference) on the committed tiny Llama; the official
//! `openai` Python client works against it, structured outputs included; SIGTERM drains and
//! exits cleanly. SGLang's launch
//! flags work on the simulated backend, and bad launches say how to fix them.

mod common;

use common::{Served, MODEL};
use doppel_exec::server::client::{self, block_on};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const PROMPT: &str = "What is the capital of France? Paris is";

fn generate(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "exec",
            "generate",
            "--model",
            MODEL,
            "--quiet",
            "--temperature",
            "0",
        ])
        .args(["--max-new-tokens", "12", "--ignore-eos"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    s.strip_suffix('\n').unwrap_or(&s).to_string()
}

fn reference_text() -> String {
    let refj: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/reference.json")).unwrap())
            .unwrap();
    let p = refj["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["text"] == PROMPT)
        .unwrap();
    let ids: Vec<u32> = p["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let tok = doppel_exec::tokenizer::Tokenizer::load(std::path::Path::new(MODEL)).unwrap();
    tok.decode(&ids, true).unwrap()
}

#[test]
fn greedy_output_through_the_server_equals_exec_generate() {
    let plain = generate(&["--prompt", PROMPT]);
    assert_eq!(plain, reference_text());
    let chat = generate(&["--prompt", PROMPT, "--chat", "--system", "Be brief."]);
    let srv = Served::start(&[]);
    let v = srv.post(
        "/generate",
        &json!({"text": PROMPT, "sampling_params": {"max_new_tokens": 12, "temperature": 0, "ignore_eos": true}}),
    );
    assert_eq!(v["text"], json!(plain));
    let v = srv.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(v["choices"][0]["text"], json!(plain));
    let v = srv.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
                "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(v["choices"][0]["message"]["content"], json!(chat));
    // Batch log lines in SGLang's format.
    assert!(srv
        .log
        .lock()
        .unwrap()
        .contains("Prefill batch. #new-seq: 1, #new-token:"));
}

#[test]
fn the_openai_python_client_works() {
    let srv = Served::start(&["--served-model-name", "tiny-llama"]);
    let thinking = Served::start(&[
        "--served-model-name",
        "tiny-llama",
        "--reasoning-parser",
        "deepseek-r1",
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server_openai.py");
    let out = Command::new("python3")
        .args([
            script,
            &format!("http://{}/v1", srv.addr),
            "tiny-llama",
            &format!("http://{}/v1", thinking.addr),
        ])
        .output()
        .expect("python3 is needed for this test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the openai package is missing: scripts/test installs it from tests/requirements.txt"
    );
    assert!(
        out.status.success(),
        "{}\n{stderr}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        srv.log.lock().unwrap()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai client: ok"));
}

#[test]
fn structured_outputs_follow_their_schema_regex_and_grammar() {
    let srv = Served::start(&["--served-model-name", "tiny-llama"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server_structured.py");
    let out = Command::new("python3")
        .args([script, &format!("http://{}", srv.addr), "tiny-llama"])
        .output()
        .expect("python3 is needed for this test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "a Python package is missing: scripts/test installs tests/requirements.txt\n{stderr}"
    );
    assert!(
        out.status.success(),
        "{}\n{stderr}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        srv.log.lock().unwrap()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("structured outputs: ok"));
}

#[test]
fn sigterm_drains_live_requests_and_exits_cleanly() {
    let mut srv = Served::start(&["--shutdown-timeout", "0.3"]);
    let addr = srv.addr.clone();
    let pid = srv.child.id().to_string();
    let (last, done) = block_on(async {
        let body = json!({"text": PROMPT, "stream": true, "sampling_params": {"max_new_tokens": 1900, "ignore_eos": true}});
        let mut s = client::open(&addr, "POST", "/generate", Some(body.to_string().as_bytes()))
            .await
            .unwrap();
        assert_eq!(s.status, 200);
        assert!(s.event().await.unwrap().is_some());
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let mut last = Value::Null;
        let mut done = false;
        while let Some(d) = s.event().await.unwrap() {
            if d == "[DONE]" {
                done = true;
            } else {
                last = serde_json::from_str(&d).unwrap();
            }
        }
        (last, done)
    })
    .unwrap();
    assert!(done, "the stream ended without [DONE]");
    let reason = &last["meta_info"]["finish_reason"]["type"];
    assert!(reason == "abort" || reason == "length", "{last}");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let log = srv.log.lock().unwrap().clone();
    assert!(log.contains("shutting down"), "{log}");
    // Everything was freed: nothing held or locked by a request at exit.
    let line = log.lines().find(|l| l.contains("engine stopped")).unwrap();
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    let n = nums.len();
    assert_eq!(nums[n - 3] + nums[n - 2], nums[n - 1], "{line}");
}

/// A raw HTTP/1.1 exchange (the test client sends no `Authorization`): status and body.
fn raw(addr: &str, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = auth
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn sim_backend_takes_sglangs_launch_flags() {
    let srv = Served::serve(&[
        "--backend",
        "sim",
        "--port",
        "0",
        "--model-path",
        MODEL,
        "--api-key",
        "k3y",
        "--random-seed",
        "7",
        "--context-length",
        "1024",
        "--max-total-tokens",
        "20000",
        "--tp-size",
        "1",
        "--dtype",
        "bfloat16",
        "--load-format",
        "dummy",
        "--enable-metrics",
        "--trust-remote-code",
        "--skip-server-warmup",
        "--log-level",
        "info",
    ]);
    let a = srv.addr.as_str();
    assert_eq!(raw(a, "GET", "/health", None, "").0, 200);
    assert_eq!(raw(a, "GET", "/get_model_info", None, "").0, 401);
    let (st, info) = raw(a, "GET", "/get_model_info", Some("k3y"), "");
    assert_eq!(st, 200, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["context_length"], 1024);
    assert_eq!(info["served_model_name"], "Qwen/Qwen3-0.6B");
    let (_, si) = raw(a, "GET", "/get_server_info", Some("k3y"), "");
    let si: Value = serde_json::from_str(&si).unwrap();
    assert_eq!(si["max_total_num_tokens"], 20000);
    assert_eq!(si["backend"], "sim:h100-80g/qwen3-0.6b/doppel");
    let req =
        json!({"text": PROMPT, "sampling_params": {"max_new_tokens": 16, "ignore_eos": true}});
    let (st, out) = raw(a, "POST", "/generate", Some("k3y"), &req.to_string());
    assert_eq!(st, 200, "{out}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert!(out["text"].as_str().unwrap().trim().len() >= 8, "{out}");
}

#[test]
fn sim_backend_starts_with_no_other_flag() {
    let srv = Served::serve(&["--backend", "sim", "--port", "0"]);
    let si = block_on(client::get(&srv.addr, "/get_server_info"))
        .unwrap()
        .unwrap()
        .json();
    assert_eq!(si["backend"], "sim:h100-80g/qwen3-0.6b/doppel");
}

#[test]
fn bad_launches_say_how_to_fix_them() {
    let fails = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
            .args(["exec", "serve", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = fails(&["--model", "Qwen/Qwen3-0.6B"]);
    assert!(
        e.contains("no such local directory") && e.contains("does not download"),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--tp", "2", "--device", "cuda"]);
    let named = [
        "NCCL could not be loaded",
        "no CUDA driver",
        "no CUDA device",
        "head_dim",
    ];
    assert!(
        e.contains("--tp-size 2") && named.iter().any(|n| e.contains(n)),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--tp", "3"]);
    assert!(e.contains("num_attention_heads (4)"), "{e}");
    let e = fails(&["--backend", "sim", "--tp", "2"]);
    assert!(e.contains("only --backend engine"), "{e}");
    let e = fails(&["--backend", "sim", "--device", "cuda"]);
    assert!(
        e.contains("--device cuda has no effect with --backend sim"),
        "{e}"
    );
    let e = fails(&["--backend", "sim", "--disable-cuda-graph"]);
    assert!(
        e.contains("--disable-cuda-graph has no effect with --backend sim"),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--disable-cuda-graph"]);
    assert!(
        e.contains("--disable-cuda-graph has no effect with --device cpu"),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--decode-mma-max-rows", "256"]);
    assert!(
        e.contains("--decode-mma-max-rows has no effect with --device cpu"),
        "{e}"
    );
    let e = fails(&["--backend", "sim", "--no-gemm-tuning"]);
    assert!(
        e.contains("--no-gemm-tuning has no effect with --backend sim"),
        "{e}"
    );
    let e = fails(&["--backend", "sim", "--profile", "h100/nope"]);
    assert!(
        e.contains("h100-80g/qwen3-0.6b/doppel") && e.contains("h100/nope"),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--dtype", "bfloat16"]);
    assert!(e.contains("CPU backend computes in float32"), "{e}");
    let e = fails(&["--backend", "sim", "--dtype", "float16"]);
    assert!(
        e.contains("--dtype float16: expected auto or bfloat16"),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--load-format", "dummy"]);
    assert!(e.contains("--load-format dummy needs --device cuda"), "{e}");
    let e = fails(&["--backend", "sim", "--load-format", "gguf"]);
    assert!(
        e.contains("--load-format gguf: expected auto or dummy"),
        "{e}"
    );
    let e = fails(&["--model", MODEL, "--profile", "h100-80g/qwen3-0.6b/doppel"]);
    assert!(e.contains("needs --backend sim"), "{e}");
}
