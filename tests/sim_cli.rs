//! The `doppel sim` command line: the README's main command, determinism of its output, and the
//! errors a user sees for bad input.

use doppel_sim::serde_json;
use std::process::Command;

fn doppel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run doppel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("doppel-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn replay_burst_prints_the_table_and_is_byte_identical() {
    let j1 = tmp("a.json");
    let j2 = tmp("b.json");
    let tl = tmp("t.json");
    let (ok1, out1, err1) = doppel(&[
        "sim",
        "replay",
        "traces/burst.yaml",
        "--json",
        j1.to_str().unwrap(),
        "--timeline",
        tl.to_str().unwrap(),
    ]);
    assert!(ok1, "{err1}");
    assert!(out1.contains("============ Serving Benchmark Result ============"));
    assert!(out1.contains("Successful requests:                     500"));
    let (ok2, out2, _) = doppel(&[
        "sim",
        "replay",
        "traces/burst.yaml",
        "--json",
        j2.to_str().unwrap(),
    ]);
    assert!(ok2);
    assert_eq!(out1, out2);
    assert_eq!(std::fs::read(&j1).unwrap(), std::fs::read(&j2).unwrap());
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&tl).unwrap()).unwrap();
    assert!(t["traceEvents"].as_array().unwrap().len() > 500);
}

#[test]
fn log_batches_prints_sglang_lines() {
    let (ok, out, _) = doppel(&["sim", "replay", "traces/burst.yaml", "--log-batches"]);
    assert!(ok);
    assert!(out.contains("Prefill batch. #new-seq: "));
    assert!(out.contains("Decode batch. #running-req: "));
}

#[test]
fn malformed_trace_names_file_line_column_and_field() {
    let p = tmp("bad.yaml");
    std::fs::write(
        &p,
        "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: random\n  num_requests: 10\n  input_len: 64\n  output_lenn: 8\n",
    )
    .unwrap();
    let (ok, _, err) = doppel(&["sim", "replay", p.to_str().unwrap()]);
    assert!(!ok);
    let want = format!("{}:", p.display());
    assert!(err.contains(&want) && err.contains("output_lenn"), "{err}");
    // line:column follow the file name.
    let rest = &err[err.find(&want).unwrap() + want.len()..];
    let mut parts = rest.split(':');
    assert!(parts.next().unwrap().parse::<usize>().unwrap() > 0, "{err}");
    assert!(parts.next().unwrap().parse::<usize>().unwrap() > 0, "{err}");
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let p = tmp("prof.yaml");
    std::fs::write(&p, "profile: b200/qwen3\nworkload: {kind: random, num_requests: 1, input_len: 8, output_len: 8}\n").unwrap();
    let (ok, _, err) = doppel(&["sim", "replay", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("unknown profile `b200/qwen3`") && err.contains("h100-80g/llama-3-8b/sglang"),
        "{err}"
    );
}

#[test]
fn impossible_pool_says_so() {
    let p = tmp("pool.yaml");
    std::fs::write(
        &p,
        "profile: a100-80g/qwen3-0.6b/sglang\nengine: {kv_capacity_tokens: 1}\nworkload: {kind: random, num_requests: 1, input_len: 8, output_len: 8}\n",
    )
    .unwrap();
    let (ok, _, err) = doppel(&["sim", "replay", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("smaller than one request"), "{err}");
}

#[test]
fn missing_trace_file_is_a_clear_error() {
    let (ok, _, err) = doppel(&["sim", "replay", "traces/nope.yaml"]);
    assert!(!ok);
    assert!(err.contains("traces/nope.yaml"), "{err}");
    // The OS error once, not once from the message and again from its source.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn one_batch_prints_bench_one_batch_table() {
    let (ok, out, err) = doppel(&[
        "sim",
        "one-batch",
        "--profile",
        "a100-80g/qwen3-0.6b/sglang",
        "--batch-size",
        "1",
        "4",
        "16",
        "64",
        "--input-len",
        "128",
        "--output-len",
        "64",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Prefill. latency: "));
    assert!(out.contains("Decode.  median latency: "));
    assert!(out.contains("Total. latency: "));
    assert_eq!(out.matches("\n| ").count(), 5, "{out}");
}

#[test]
fn sweep_writes_table_and_svg() {
    let svg = tmp("sweep.svg");
    let (ok, out, err) = doppel(&[
        "sim",
        "sweep",
        "traces/shared_prefix.yaml",
        "--param",
        "policy",
        "--values",
        "fcfs",
        "lpm",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("sweep of shared_prefix over policy"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg")
            && text.contains("polyline")
            && text.trim_end().ends_with("</svg>")
    );
    let (ok, _, err) = doppel(&[
        "sim",
        "sweep",
        "traces/burst.yaml",
        "--param",
        "colour",
        "--values",
        "1",
    ]);
    assert!(!ok && err.contains("unknown parameter"), "{err}");
}

#[test]
fn profiles_lists_every_builtin_and_overrides_apply() {
    let (ok, out, _) = doppel(&["sim", "profiles"]);
    assert!(ok);
    assert!(out.contains("a100-80g/qwen3-0.6b/sglang") && out.contains("[calibrated]"));
    assert_eq!(out.matches("[uncalibrated]").count(), 5, "{out}");
    let (ok, out, err) = doppel(&[
        "sim",
        "replay",
        "traces/poisson.yaml",
        "--seed",
        "7",
        "--profile",
        "h200/qwen3-0.6b/sglang",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("trace: poisson  profile: h200/qwen3-0.6b/sglang  seed: 7"),
        "{out}"
    );
}

#[test]
fn plan_prints_the_frontier_and_writes_an_svg_and_refuses_a_bad_slo() {
    let svg = tmp("plan.svg");
    let args = [
        "sim",
        "plan",
        "traces/poisson.yaml",
        "--slo",
        "ttft_p99<200ms,itl_p99<60ms",
        "--max-replicas",
        "3",
        "--svg",
        svg.to_str().unwrap(),
    ];
    let (ok, out, err) = doppel(&args);
    assert!(ok, "{err}");
    assert!(out.contains("frontier"), "{out}");
    assert!(out.contains("cheapest setup meeting every target"), "{out}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    // Same inputs, byte-identical output.
    assert_eq!(doppel(&args).1, out);
    let (ok, _, err) = doppel(&[
        "sim",
        "plan",
        "traces/poisson.yaml",
        "--slo",
        "ttft_p99>5ms",
    ]);
    assert!(!ok && err.contains("metric<limit"), "{err}");
    let (ok, _, err) = doppel(&[
        "sim",
        "plan",
        "traces/poisson.yaml",
        "--slo",
        "ttft_p99<5ms",
        "--router",
        "random",
    ]);
    assert!(!ok && err.contains("--router random"), "{err}");
}

#[test]
fn sends_from_a_report_replaces_a_burst_s_schedule_and_refuses_a_capped_trace() {
    // A replay's own report as the "real" run: its requests were sent at 0.
    let at0 = tmp("sends-at0.json");
    let (ok, _, err) = doppel(&[
        "sim",
        "replay",
        "traces/peers/doppel/w5.yaml",
        "--json",
        at0.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&at0).unwrap()).unwrap();
    for r in v["requests"].as_array_mut().unwrap() {
        let id = r["id"].as_u64().unwrap();
        r["send"] = (id * 100_000).into();
    }
    let spread = tmp("sends-spread.json");
    std::fs::write(&spread, v.to_string()).unwrap();
    let out = tmp("sends-out.json");
    let (ok, _, err) = doppel(&[
        "sim",
        "replay",
        "traces/peers/doppel/w5.yaml",
        "--sends-from",
        spread.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let reqs = o["requests"].as_array().unwrap();
    assert_eq!(reqs[10]["send"].as_u64(), Some(1_000_000));
    assert_eq!(reqs[1023]["send"].as_u64(), Some(102_300_000));
    let (ok, _, err) = doppel(&[
        "sim",
        "replay",
        "traces/peers/doppel/w3-c64.yaml",
        "--sends-from",
        spread.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("arrival.max_concurrency"), "{err}");
}
