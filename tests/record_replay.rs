//! `doppel exec serve --record FILE` on loopback (CPU backend, tiny model): the recorded trace
//! holds every request with its lengths and its shared prefix as equal page hashes (no token
//! ids), `doppel sim replay` replays it with the prefix cache hitting, and `doppel bench serve
//! --dataset-name trace` sends it again.

mod common;

use common::{figure, scratch_with_tiny_qwen3, BenchTarget};
use doppel_sim::trace::Workload;
use std::process::Command;

#[test]
fn a_recorded_server_trace_replays_in_the_simulator_and_the_bench_client() {
    let dir = scratch_with_tiny_qwen3("record");
    let rec = dir.join("rec.yaml");
    let server = BenchTarget::start(dir.clone(), &["--record", rec.to_str().unwrap()]);
    let bin = env!("CARGO_BIN_EXE_doppel");
    let bench = |args: &[&str]| {
        let (ok, out, err) = server.bench(&[&["--warmup-requests", "0"][..], args].concat());
        assert!(ok, "{err}");
        out
    };
    // Two system prompts of 96 tokens (6 pages of 16), 4 questions each.
    bench(&[
        "--dataset-name",
        "shared-prefix",
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
    let copy = dir.join("copy.yaml");
    std::fs::copy(&rec, &copy).unwrap();
    let text = std::fs::read_to_string(&copy).unwrap();
    let trace = doppel_sim::Trace::load(copy.to_str().unwrap()).unwrap();
    let Workload::Requests { requests, page_len } = &trace.workload else {
        panic!("not a request list: {text}");
    };
    assert_eq!((requests.len(), *page_len), (8, Some(16)), "{text}");
    let mut firsts: Vec<u64> = Vec::new();
    for r in requests {
        assert_eq!((r.prompt_len, r.output_len), (Some(104), 4), "{text}");
        let pages = r.pages.as_ref().unwrap();
        assert_eq!(pages.len(), 6);
        firsts.push(pages[5]);
    }
    firsts.sort_unstable();
    firsts.dedup();
    assert_eq!(firsts.len(), 2, "two system prompts: {text}");
    assert!(!text.contains("prompt:"), "no token ids leave the server");

    // The simulator replays it, and the shared pages hit its prefix cache.
    let out = Command::new(bin)
        .args(["sim", "replay"])
        .arg(&copy)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(figure(&table, "Successful requests:"), 8.0, "{table}");
    assert_eq!(figure(&table, "Total generated tokens:"), 32.0, "{table}");
    assert!(figure(&table, "Cache hit rate (%):") > 50.0, "{table}");

    // The bench client sends it again.
    let out = bench(&["--dataset-name", "trace", "--trace", copy.to_str().unwrap()]);
    assert_eq!(figure(&out, "Successful requests:"), 8.0, "{out}");
    assert_eq!(figure(&out, "Total generated tokens:"), 32.0, "{out}");
}
