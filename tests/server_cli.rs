//! `doppel exec serve` as a process: greedy output through the server equals `doppel exec
//! generate` (and the transformers-verified reference) on the committed tiny Llama; the official
//! `openai` Python client works against it; SIGTERM drains and exits cleanly.

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
        "the openai package is missing: python3 -m pip install openai (.ci/run does)"
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
