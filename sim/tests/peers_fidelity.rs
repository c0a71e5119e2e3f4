//! The simulator against the side-by-side runs of doppel, SGLang and vLLM on one H100
//! (docs/fidelity.md, "The side-by-side workloads"): the traces reproduce what the bench client
//! sent, and the replays stay within the errors measured when the runs were compared. A guard
//! against regressions of the simulator: the measured reports are fixed files.

use doppel_sim::compare::{compare, report_with_steps};
use doppel_sim::sends::load_sends;
use doppel_sim::serde_json::Value;
use doppel_sim::workload::{expand, SimRequest, Start};
use doppel_sim::{replay, replay_sent, SimOptions, Trace};
use std::io::Read;

const WORKLOADS: [&str; 6] = ["w1", "w2", "w3-c64", "w3-c256", "w4", "w5"];

fn root(rel: &str) -> String {
    format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// The kept 0.6B runs' folder; the 8B runs (W2 and W3 only) are in `EIGHT_B`.
const SMALL: &str = "sim/fidelity/h100-qwen3-0.6b-peers";
const EIGHT_B: &str = "sim/fidelity/h100-llama-3.1-8b-peers";

fn measured(engine: &str, w: &str) -> Value {
    measured_in(SMALL, engine, w)
}

fn measured_in(dir: &str, engine: &str, w: &str) -> Value {
    let path = root(&format!("{dir}/{engine}-{w}.json.gz"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    doppel_sim::serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn trace(engine: &str, w: &str) -> Trace {
    Trace::load(&root(&format!("traces/peers/{engine}/{w}.yaml"))).unwrap()
}

/// Each report's request `i` has id `i` and the workload's prompt and output lengths.
fn assert_same_requests(reqs: &[Value], want: &[SimRequest], what: &str) {
    assert_eq!(reqs.len(), want.len(), "{what}");
    for (i, (r, s)) in reqs.iter().zip(want).enumerate() {
        assert_eq!(r["id"].as_u64(), Some(i as u64), "{what}");
        let lens = (r["prompt_len"].as_u64(), r["output_tokens"].as_u64());
        let wanted = (Some(s.prompt_len as u64), Some(s.output_len as u64));
        assert_eq!(lens, wanted, "{what} request {i}");
    }
}

#[test]
fn llama_8b_runs_sent_the_peer_traces_requests() {
    // sim/fidelity/h100-llama-3.1-8b-peers/compare.sh replays these traces against them.
    for w in ["w2", "w3-c64", "w3-c256"] {
        let t = trace("doppel", w);
        let work = expand(&t, t.prompt_vocab(128_256));
        for engine in ["doppel", "sglang", "vllm"] {
            let real = measured_in(EIGHT_B, engine, w);
            let reqs = real["requests"].as_array().unwrap();
            assert_same_requests(reqs, &work.requests, &format!("8B {engine} {w}"));
        }
    }
}

#[test]
fn peer_traces_expand_to_the_requests_the_bench_client_sent() {
    for w in WORKLOADS {
        let t = trace("doppel", w);
        let work = expand(&t, t.prompt_vocab(151_936));
        for engine in ["doppel", "sglang", "vllm"] {
            // Each engine's trace is the same workload; only the engine section differs.
            let own = trace(engine, w);
            let same = (&own.workload, &own.arrival, own.seed, own.vocab);
            assert_eq!(
                same,
                (&t.workload, &t.arrival, t.seed, t.vocab),
                "{engine} {w}"
            );
            let real = measured(engine, w);
            let reqs = real["requests"].as_array().unwrap();
            assert_same_requests(reqs, &work.requests, &format!("{engine} {w}"));
            if w == "w1" {
                // Poisson sends: never early, late by its timer's granularity (0.1-2.4 ms).
                for (r, s) in reqs.iter().zip(&work.requests) {
                    let Start::At(at) = s.start else {
                        panic!("{w}: a follow-up request")
                    };
                    let sent = r["send"].as_u64().unwrap();
                    let late = sent.checked_sub(at);
                    assert!(
                        late.is_some_and(|l| l < 5_000_000),
                        "{engine} {w}: sent at {sent} ns, scheduled at {at}"
                    );
                }
            }
        }
    }
    // The shared-prefix workload's group order depends on the vocabulary the prompts came
    // from: without `vocab: 32000` the trace would send the groups in another order.
    let t = trace("doppel", "w5");
    let (a, b) = (expand(&t, 32_000), expand(&t, 151_936));
    assert_ne!(a.requests, b.requests);
}

/// |error| bounds in percent: median TTFT, median ITL, output tok/s. Issue 22's targets (10, 5,
/// 5) where the measured error met them, else the measured error rounded up plus 2 points
/// (docs/fidelity.md has the errors). The doppel profile was fitted before the decode-attention
/// fix of docs/cuda.md ("Visit order"), so it is slower than the engine of these runs.
const DOPPEL: [(&str, [f64; 3]); 6] = [
    ("w1", [20.0, 5.0, 5.0]),
    ("w2", [17.0, 5.0, 5.0]),
    ("w3-c64", [29.0, 23.0, 15.0]),
    ("w3-c256", [23.0, 33.0, 21.0]),
    ("w4", [25.0, 39.0, 24.0]),
    ("w5", [10.0, 47.0, 32.0]),
];

/// `h100-80g/qwen3-0.6b/sglang`, fitted to this run's W2 and W3-c64 (the rest held out; W2's
/// median TTFT sets the request path), same rule.
const SGLANG: [(&str, [f64; 3]); 6] = [
    ("w1", [10.0, 5.0, 5.0]),
    ("w2", [10.0, 5.0, 5.0]),
    ("w3-c64", [10.0, 20.0, 5.0]),
    ("w3-c256", [98.0, 24.0, 15.0]),
    ("w4", [55.0, 48.0, 92.0]),
    ("w5", [64.0, 37.0, 12.0]),
];

/// `h100-80g/qwen3-0.6b/vllm`, fitted the same way, same rule.
const VLLM: [(&str, [f64; 3]); 6] = [
    ("w1", [25.0, 10.0, 5.0]),
    ("w2", [10.0, 33.0, 21.0]),
    ("w3-c64", [70.0, 25.0, 5.0]),
    ("w3-c256", [91.0, 69.0, 13.0]),
    ("w4", [47.0, 16.0, 38.0]),
    ("w5", [55.0, 31.0, 18.0]),
];

fn errors(engine: &str, w: &str) -> [f64; 3] {
    let real = measured(engine, w);
    let t = trace(engine, w);
    // Open-loop workloads at the client's real send times (a burst leaves over 0.1-0.2 s).
    let r = if t.arrival.max_concurrency.is_none() {
        let sends = load_sends(&real, w).unwrap();
        replay_sent(t, w, SimOptions::default(), &sends, w).unwrap()
    } else {
        replay(t, w, SimOptions::default()).unwrap()
    };
    let sim: Value =
        doppel_sim::serde_json::from_str(&report_with_steps(&r.trace, &r.outcome, &r.summary))
            .unwrap();
    let c = compare(&real, "real", &sim, "sim").unwrap();
    let err = |name: &str| {
        c.rows
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no row {name}"))
            .error_pct()
    };
    [
        err("median TTFT (ms)"),
        err("median ITL (ms)"),
        err("Output token throughput (tok/s)"),
    ]
}

fn check(engine: &str, bounds: &[(&str, [f64; 3])]) {
    let mut misses = Vec::new();
    for (w, bound) in bounds {
        let e = errors(engine, w);
        for (k, label) in ["median TTFT", "median ITL", "output tok/s"]
            .iter()
            .enumerate()
        {
            if e[k].abs() > bound[k] {
                misses.push(format!(
                    "{w} {label}: {:+.2} % (bound {} %)",
                    e[k], bound[k]
                ));
            }
        }
    }
    assert!(misses.is_empty(), "{engine}: {misses:#?}");
}

#[test]
fn doppel_profile_replays_the_side_by_side_runs_within_the_measured_errors() {
    check("doppel", &DOPPEL);
}

#[test]
fn sglang_profile_meets_the_targets_or_its_measured_errors_on_held_out_runs() {
    check("sglang", &SGLANG);
}

#[test]
fn vllm_profile_meets_the_targets_or_its_measured_errors_on_held_out_runs() {
    check("vllm", &VLLM);
}
