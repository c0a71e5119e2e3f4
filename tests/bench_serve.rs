//! `doppel bench serve` against `doppel exec serve` on loopback (CPU backend, tiny model): every
//! dataset and arrival mode completes with exactly the requested output lengths, per-request JSON
//! lines are written, bench_serving's command lines and backends work, and bad options are
//! refused.

mod common;

use common::{figure, scratch_with_tiny_qwen3, BenchTarget};
use std::process::Command;

/// A server on a fresh tiny Qwen3.
fn start() -> BenchTarget {
    BenchTarget::start(scratch_with_tiny_qwen3("bench"), &[])
}

/// Output tokens the dataset asks for (ignore_eos: the server generates exactly these).
fn expected_output(trace_yaml: &str) -> u64 {
    let t = doppel_sim::Trace::parse(trace_yaml, "t.yaml").unwrap();
    doppel_sim::workload::expand(&t, 2048)
        .requests
        .iter()
        .map(|r| r.output_len as u64)
        .sum()
}

#[test]
fn every_dataset_and_arrival_mode_completes() {
    let s = start();
    let jsonl = s.dir.join("out.jsonl");
    let json = s.dir.join("report.json");
    // random-ids, Poisson with a concurrency cap, per-request lines and a JSON report.
    let (ok, out, err) = s.bench(&[
        "--dataset-name",
        "random-ids",
        "--num-prompts",
        "24",
        "--random-input-len",
        "120",
        "--random-output-len",
        "12",
        "--random-range-ratio",
        "0.5",
        "--request-rate",
        "80",
        "--max-concurrency",
        "4",
        "--flush-cache",
        "--output-file",
        jsonl.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("============ Serving Benchmark Result ============"),
        "{out}"
    );
    assert_eq!(figure(&out, "Successful requests:"), 24.0);
    assert_eq!(figure(&out, "Max request concurrency:"), 4.0);
    assert_eq!(figure(&out, "Failed requests:"), 0.0);
    let want = expected_output(
        "profile: x\nworkload: {kind: random, num_requests: 24, input_len: 120, output_len: 12, range_ratio: 0.5}\n",
    );
    assert_eq!(figure(&out, "Total generated tokens:") as u64, want);
    assert!(figure(&out, "Median TTFT (ms):") > 0.0 && figure(&out, "Median ITL (ms):") > 0.0);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 24);
    for l in &lines {
        assert_eq!(l["success"], true);
        let n = l["output_len"].as_u64().unwrap();
        // bench_serving gives no ITL to the tokens of the first chunk, and a loaded server may
        // stream its first tokens together: one gap per later token, at most n - 1.
        let gaps = l["itl_ms"].as_array().unwrap().len() as u64;
        assert!(gaps < n, "{l}");
        assert!(l["latency_ms"].as_f64().unwrap() >= l["ttft_ms"].as_f64().unwrap());
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["summary"]["completed"], 24);

    // random text through the OpenAI API, gamma arrivals.
    let (ok, out, err) = s.bench(&[
        "--backend",
        "openai",
        "--dataset-name",
        "random",
        "--tokenizer",
        s.dir.join("model").to_str().unwrap(),
        "--num-prompts",
        "8",
        "--random-input-len",
        "64",
        "--random-output-len",
        "6",
        "--random-range-ratio",
        "1",
        "--request-rate",
        "100",
        "--burstiness",
        "0.5",
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Successful requests:"), 8.0);
    assert_eq!(figure(&out, "Total generated tokens:"), 48.0);

    // shared prefixes (SGLang's dataset name): the server reports cache hits.
    let (ok, out, err) = s.bench(&[
        "--dataset-name",
        "generated-shared-prefix",
        "--gsp-num-groups",
        "2",
        "--gsp-prompts-per-group",
        "4",
        "--gsp-system-prompt-len",
        "96",
        "--gsp-question-len",
        "8",
        "--gsp-output-len",
        "4",
        "--max-concurrency",
        "1",
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Successful requests:"), 8.0);
    assert!(
        figure(&out, "Cached tokens (server-reported):") >= 6.0 * 96.0,
        "{out}"
    );

    // A doppel trace: its workload and schedule (multi-turn follow-ups after the reply).
    let trace = s.dir.join("turns.yaml");
    std::fs::write(
        &trace,
        "profile: x\nseed: 2\nworkload: {kind: multi_turn, num_sessions: 2, turns: 3, first_prompt_len: 30, turn_prompt_len: 10, output_len: 5, think_time_ms: 10}\n",
    )
    .unwrap();
    let (ok, out, err) = s.bench(&[
        "--dataset-name",
        "trace",
        "--trace",
        trace.to_str().unwrap(),
        "--warmup-requests",
        "0",
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Successful requests:"), 6.0);
    assert_eq!(figure(&out, "Total generated tokens:"), 30.0);
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let bin = env!("CARGO_BIN_EXE_doppel");
    // Port 1: nothing listens, so no server on the default port can change the answers.
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args([
                "bench",
                "serve",
                "--disable-tqdm",
                "--vocab",
                "100",
                "--port",
                "1",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--request-rate=-3"]).contains("--request-rate -3"));
    assert!(run(&["--dataset-name", "sharegpt"]).contains("--dataset-name sharegpt"));
    assert!(
        run(&["--dataset-name", "sharegpt", "--tokenizer", "/nonexistent"])
            .contains("/nonexistent")
    );
    assert!(run(&["--dataset-name", "alpaca"]).contains("--dataset-name alpaca"));
    assert!(run(&["--backend", "vllm-chat", "--dataset-name", "random-ids"]).contains("chat"));
    assert!(run(&["--backend", "trt"]).contains("--backend trt"));
    let e = run(&[
        "--dataset-name",
        "random-ids",
        "--extra-request-body",
        "[1]",
    ]);
    assert!(
        e.contains("--extra-request-body [1]: expected a JSON object"),
        "{e}"
    );
    assert!(run(&["--extra-request-body", "{top_k"]).contains("not JSON"));
    assert!(run(&["--dataset-name", "trace"]).contains("--trace"));
    assert!(run(&["--backend", "tgi"]).contains("--backend tgi"));
    assert!(run(&["--dataset-name", "random"]).contains("--tokenizer"));
    // Nothing listens on port 1: the warm-up names the address.
    let e = run(&["--dataset-name", "random-ids", "--num-prompts", "2"]);
    assert!(e.contains("127.0.0.1:1"), "{e}");
}

/// A ShareGPT file with `n` two-turn conversations and one too short to use.
fn write_sharegpt(path: &std::path::Path, n: usize) {
    let mut convs: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"id": i, "conversations": [
                {"from": "human", "value": format!("Question {i}: what is the capital of France, and why?")},
                {"from": "gpt", "value": "Paris, because it has been the seat of government for centuries."},
            ]})
        })
        .collect();
    convs.push(serde_json::json!({"conversations": [{"from": "human", "value": "alone"}]}));
    std::fs::write(path, serde_json::Value::Array(convs).to_string()).unwrap();
}

#[test]
fn bench_serving_command_lines_backends_and_datasets_work() {
    let s = start();
    let model = s.dir.join("model");
    let model = model.to_str().unwrap();
    // Prefixes of long options, as argparse takes them; the OpenAI completions backend by
    // SGLang's name; P90 and P95 rows as bench_serving 0.5 prints them.
    let (ok, out, err) = s.bench(&[
        "--backend",
        "sglang-oai",
        "--dataset-name",
        "random-ids",
        "--num-prompts",
        "6",
        "--random-input",
        "40",
        "--random-output",
        "5",
        "--random-range",
        "1",
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Successful requests:"), 6.0);
    assert_eq!(figure(&out, "Total generated tokens:"), 30.0);
    for row in [
        "P90 TTFT (ms):",
        "P95 TTFT (ms):",
        "P90 ITL (ms):",
        "P95 TPOT (ms):",
    ] {
        assert!(figure(&out, row) >= 0.0);
    }
    // --extra-request-body reaches the server: its max_tokens overrides the dataset's.
    let (ok, out, err) = s.bench(&[
        "--backend",
        "vllm",
        "--dataset-name",
        "random-ids",
        "--num-prompts",
        "4",
        "--random-input-len",
        "30",
        "--random-output-len",
        "9",
        "--extra-request-body",
        r#"{"max_tokens": 3}"#,
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Total generated tokens:"), 12.0);
    // Chat completions with text prompts; the tokenizer comes from the server's model info.
    let (ok, out, err) = s.bench(&[
        "--backend",
        "openai-chat",
        "--dataset-name",
        "random",
        "--num-prompts",
        "3",
        "--random-input-len",
        "24",
        "--random-output-len",
        "4",
        "--random-range-ratio",
        "1",
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Successful requests:"), 3.0);
    assert_eq!(figure(&out, "Total generated tokens:"), 12.0);
    // A local ShareGPT file: the short conversation is skipped, every request has the fixed length.
    let file = s.dir.join("sharegpt.json");
    write_sharegpt(&file, 5);
    let (ok, out, err) = s.bench(&[
        "--dataset-name",
        "sharegpt",
        "--dataset-path",
        file.to_str().unwrap(),
        "--tokenizer",
        model,
        "--num-prompts",
        "10",
        "--sharegpt-output-len",
        "4",
        "--disable-ignore-eos",
        "--max-concurrency",
        "2",
    ]);
    assert!(ok, "{err}");
    assert_eq!(figure(&out, "Successful requests:"), 5.0);
    assert!(figure(&out, "Total generated tokens:") <= 20.0, "{out}");
    assert!(figure(&out, "Total input tokens:") >= 5.0 * 10.0, "{out}");
    // ... and without the file, the reason.
    let (ok, _, err) = s.bench(&["--dataset-name", "sharegpt", "--tokenizer", model]);
    assert!(!ok && err.contains("--dataset-path"), "{err}");
}
