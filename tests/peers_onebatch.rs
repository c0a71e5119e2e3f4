//! scripts/peers/onebatch.py turns SGLang's and vLLM's own one-batch benches into the table
//! `doppel sim calibrate --one-batch` reads. The samples are written by hand in each tool's
//! documented output form (SGLang bench_one_batch's `--result-filename` lines, `vllm bench
//! latency --output-json`); the converted table goes through the simulator's own loader.

use doppel_sim::calibrate_peer::{load_one_batch, OneBatchRow};
use std::path::{Path, PathBuf};

mod common;

fn dir(name: &str) -> PathBuf {
    common::scratch(&format!("onebatch-{name}"))
}

/// Runs the converter; (success, stderr).
fn convert(engine: &str, input: &Path, out: &Path) -> (bool, String) {
    let (ok, _, err) = common::peers_script(
        "onebatch.py",
        &[engine, input.to_str().unwrap(), out.to_str().unwrap()],
    );
    (ok, err)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn load(out: &Path) -> Vec<OneBatchRow> {
    load_one_batch(out.to_str().unwrap()).unwrap()
}

#[test]
fn sglang_result_lines_keep_their_rows_and_a_bad_field_is_named() {
    let d = dir("sglang");
    let raw = d.join("raw.jsonl");
    // bench_one_batch writes more fields than the table needs (run_name, throughputs, totals)
    std::fs::write(
        &raw,
        concat!(
            r#"{"run_name": "before", "batch_size": 1, "input_len": 128, "output_len": 64, "prefill_latency": 0.0167, "prefill_throughput": 7656.0, "median_decode_latency": 0.0042, "median_decode_throughput": 238.1, "total_latency": 0.28, "overall_throughput": 685.7}"#,
            "\n\n",
            r#"{"run_name": "before", "batch_size": 64, "input_len": 128, "output_len": 64, "prefill_latency": 0.061, "prefill_throughput": 134295.1, "median_decode_latency": 0.0051, "median_decode_throughput": 12549.0, "total_latency": 0.39, "overall_throughput": 31507.7}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = d.join("sglang-onebatch.jsonl");
    let (ok, err) = convert("sglang", &raw, &out);
    assert!(ok, "{err}");
    let rows = load(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].batch, rows[1].input_len, rows[1].output_len),
        (64, 128, 64)
    );
    assert!(close(rows[0].prefill_s, 0.0167) && close(rows[1].decode_s, 0.0051));

    std::fs::write(
        &raw,
        r#"{"batch_size": 4, "input_len": 128, "output_len": 64, "prefill_latency": 0.02}"#,
    )
    .unwrap();
    let (ok, err) = convert("sglang", &raw, &out);
    assert!(!ok);
    assert!(
        err.contains("raw.jsonl:1") && err.contains("median_decode_latency"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn vllm_run(d: &Path, b: usize, out: usize, latencies: &[f64]) {
    // `vllm bench latency --output-json`: the batch latencies and their percentiles (s)
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    let text = format!(
        r#"{{"avg_latency": {}, "latencies": {:?}, "percentiles": {{"10": {}, "25": {}, "50": {}, "75": {}, "90": {}, "99": {}}}}}"#,
        latencies.iter().sum::<f64>() / latencies.len() as f64,
        latencies,
        sorted[0],
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted[sorted.len() - 1],
        sorted[sorted.len() - 1],
    );
    std::fs::write(d.join(format!("latency-b{b}-in128-out{out}.json")), text).unwrap();
}

#[test]
fn vllm_step_is_the_difference_of_the_two_runs_over_the_decode_tokens() {
    let d = dir("vllm");
    vllm_run(&d, 1, 1, &[0.0090, 0.0100, 0.0300]);
    vllm_run(&d, 1, 64, &[0.2620, 0.2530, 0.2540]);
    vllm_run(&d, 16, 1, &[0.0250, 0.0200, 0.0210]);
    vllm_run(&d, 16, 64, &[0.3400, 0.3360, 0.3500]);
    let out = d.join("vllm-onebatch.jsonl");
    let (ok, err) = convert("vllm", &d, &out);
    assert!(ok, "{err}");
    let rows = load(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].batch, rows[1].batch), (1, 16));
    assert_eq!((rows[0].input_len, rows[0].output_len), (128, 64));
    // medians: b=1 0.010 and 0.254, b=16 0.021 and 0.340; 63 decode steps after the first token
    assert!(close(rows[0].prefill_s, 0.010) && close(rows[0].decode_s, 0.244 / 63.0));
    assert!(close(rows[1].prefill_s, 0.021) && close(rows[1].decode_s, 0.319 / 63.0));

    // a run without its one-token partner cannot be split: named, not guessed
    vllm_run(&d, 64, 64, &[0.5]);
    let (ok, err) = convert("vllm", &d, &out);
    assert!(!ok);
    assert!(err.contains("latency-b64-in128-out1.json"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
