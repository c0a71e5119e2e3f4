//! `doppel exec replay` on the CPU backend against `doppel sim replay`: with identical arrivals the
//! real engine and the simulator run the same batch sequence, and `doppel sim compare` says so.

use doppel_exec::model::Arch;
use doppel_exec::testgen::{write_model, TinySpec};
use doppel_measure::replay::{load_and_replay, Device, ReplayOptions, ReplaySetup};
use doppel_sim::compare::{compare, report_with_steps};
use doppel_sim::{RealTiming, SimOptions, Trace};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `cmd` and asserts it succeeded (its stderr in the message).
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A JSON file, parsed.
fn load_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A scratch directory with the tiny model and a profile of its shape (no HTTP or tokenization
/// cost: the in-process replay has none).
fn fixture(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("doppel-replay-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = TinySpec::tiny(Arch::Qwen3);
    spec.vocab_size = Some(2048);
    let cfg = write_model(&dir.join("model"), &spec).unwrap();
    let base = include_str!("../sim/profiles/h100-80g_qwen3-0.6b_sglang.yaml");
    let mut lines: Vec<String> = Vec::new();
    for line in base.lines() {
        let key = line.trim_start().split(':').next().unwrap_or("");
        let v = match key {
            "name" if !line.starts_with(' ') => Some("test/tiny/cpu".to_string()),
            "layers" => Some(cfg.num_layers.to_string()),
            "hidden" => Some(cfg.hidden_size.to_string()),
            "heads" => Some(cfg.num_heads.to_string()),
            "kv_heads" => Some(cfg.num_kv_heads.to_string()),
            "head_dim" => Some(cfg.head_dim.to_string()),
            "intermediate" => Some(cfg.intermediate_size.to_string()),
            "vocab" => Some(cfg.vocab_size.to_string()),
            "context_len" => Some(cfg.max_position_embeddings.to_string()),
            "http_ns" | "tokenize_ns" | "tokenize_ns_per_token" | "stream_ns" => Some("0".into()),
            _ => None,
        };
        match v {
            Some(v) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                lines.push(format!("{indent}{key}: {v}"));
            }
            None => lines.push(line.to_string()),
        }
    }
    std::fs::write(dir.join("tiny.yaml"), lines.join("\n")).unwrap();
    dir
}

fn write_trace(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nprofile: {}\nseed: 5\n{body}",
        dir.join("tiny.yaml").display()
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const ENGINE: &str = "engine:\n  kv_capacity_tokens: 3000\n  max_running_requests: 6\n  chunked_prefill_size: 128\n  max_prefill_tokens: 256\n";

/// Replay `trace` on both; return (real JSON, simulated JSON).
fn both(dir: &Path, trace: &str) -> (serde_json::Value, serde_json::Value) {
    both_with(dir, trace, false)
}

/// Replay `trace` on both; with `locked`, the simulator takes the real run's loop iteration and
/// step times.
fn both_with(dir: &Path, trace: &str, locked: bool) -> (serde_json::Value, serde_json::Value) {
    let setup = ReplaySetup {
        model: dir.join("model"),
        device: Device::Cpu,
        random_weights: false,
        seed: None,
        profile: None,
        max_cpu_kv_bytes: 1 << 30,
    };
    let opts = ReplayOptions {
        log_batches: true,
        time_limit: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    let real = load_and_replay(trace, &setup, opts).unwrap();
    assert_eq!(real.summary.backend, "doppel-exec-cpu");
    assert_eq!(real.summary.completed, real.outcome.records.len());
    let sim = doppel_sim::replay(
        Trace::load(trace).unwrap(),
        trace,
        SimOptions {
            record_steps: true,
            log_batches: true,
            timing_from: locked.then(|| RealTiming {
                steps: real.outcome.step_records.clone(),
                iterations: Some(real.outcome.iterations.clone()),
            }),
        },
    )
    .unwrap();
    if locked {
        // The simulated loop ran iteration for iteration at the real one's clock: it took in the
        // same arrivals and applied the same results before each scheduling decision.
        assert_eq!(sim.outcome.iterations, real.outcome.iterations);
    }
    let j = |r: &doppel_sim::Replay| {
        serde_json::from_str(&report_with_steps(&r.trace, &r.outcome, &r.summary)).unwrap()
    };
    (j(&real), j(&sim))
}

fn assert_same_batches(real: &serde_json::Value, sim: &serde_json::Value) {
    let c = compare(real, "real", sim, "sim").unwrap();
    assert!(c.real_steps.unwrap() > 10, "{c:?}");
    assert_eq!(c.first_difference, None, "{c:?}");
    assert_eq!(c.real_steps, c.sim_steps);
    assert_eq!(c.same_fraction(), 1.0);
    // Tokens and cache hits match request by request.
    let (a, b) = (
        real["requests"].as_array().unwrap(),
        sim["requests"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for k in ["prompt_len", "output_tokens", "cached_tokens", "status"] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn burst_and_shared_prefix_run_the_same_batches_as_the_simulator() {
    let dir = fixture("same");
    let burst = write_trace(
        &dir,
        "burst",
        &format!("{ENGINE}workload:\n  kind: random\n  num_requests: 16\n  input_len: 160\n  output_len: 24\n  range_ratio: 0.25\narrival:\n  pattern: burst\n"),
    );
    let (real, sim) = both(&dir, &burst);
    assert_same_batches(&real, &sim);

    let shared = write_trace(
        &dir,
        "shared",
        &format!("{}  policy: lpm\nworkload:\n  kind: shared_prefix\n  num_groups: 3\n  prompts_per_group: 5\n  system_prompt_len: 96\n  question_len: 24\n  output_len: 12\narrival:\n  pattern: burst\n", ENGINE),
    );
    let (real, sim) = both(&dir, &shared);
    assert_same_batches(&real, &sim);
    assert!(real["summary"]["cached_tokens"].as_u64().unwrap() > 0);

    // A concurrency cap: the next request is sent when one finishes, in the same order.
    let capped = write_trace(
        &dir,
        "capped",
        &format!("{ENGINE}workload:\n  kind: random\n  num_requests: 10\n  input_len: 64\n  output_len: 8\narrival:\n  pattern: concurrency\n  max_concurrency: 3\n"),
    );
    let (real, sim) = both(&dir, &capped);
    assert_same_batches(&real, &sim);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn poisson_arrivals_run_the_same_batches_when_the_simulator_takes_the_real_step_times() {
    let dir = fixture("locked");
    // Arrivals land between steps, so which step admits a request depends on the clock.
    for (name, workload) in [
        ("poisson", "kind: random\n  num_requests: 24\n  input_len: 96\n  output_len: 16\n  range_ratio: 0.5\narrival:\n  pattern: poisson\n  rate: 150"),
        ("turns", "kind: multi_turn\n  num_sessions: 4\n  turns: 3\n  first_prompt_len: 48\n  turn_prompt_len: 16\n  output_len: 8\n  think_time_ms: 3\narrival:\n  pattern: poisson\n  rate: 200"),
    ] {
        let trace = write_trace(&dir, name, &format!("{ENGINE}workload:\n  {workload}\n"));
        let (real, sim) = both_with(&dir, &trace, true);
        assert_same_batches(&real, &sim);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn multi_turn_resends_the_real_reply_and_hits_the_cache() {
    let dir = fixture("turns");
    let trace = write_trace(
        &dir,
        "turns",
        &format!("{ENGINE}workload:\n  kind: multi_turn\n  num_sessions: 3\n  turns: 3\n  first_prompt_len: 40\n  turn_prompt_len: 16\n  output_len: 10\n  think_time_ms: 5\narrival:\n  pattern: burst\n"),
    );
    let (real, sim) = both(&dir, &trace);
    let (a, b) = (
        real["requests"].as_array().unwrap(),
        sim["requests"].as_array().unwrap(),
    );
    // Later turns find the previous prompt and the reply (the real one) in the radix cache,
    // exactly as many tokens as in the simulator.
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["cached_tokens"], y["cached_tokens"], "{x} vs {y}");
    }
    assert!(real["summary"]["cached_tokens"].as_u64().unwrap() >= 6 * 50);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_replay_json_and_compare() {
    let dir = fixture("cli");
    let trace = write_trace(
        &dir,
        "cli",
        &format!("{ENGINE}workload:\n  kind: random\n  num_requests: 8\n  input_len: 64\n  output_len: 8\narrival:\n  pattern: poisson\n  rate: 200\n"),
    );
    let bin = env!("CARGO_BIN_EXE_doppel");
    let (rj, sj) = (dir.join("real.json"), dir.join("sim.json"));
    let out = run_ok(
        Command::new(bin)
            .args(["exec", "replay", &trace, "--log-batches", "--json"])
            .arg(&rj)
            .arg("--model")
            .arg(dir.join("model")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Prefill batch.") && stdout.contains("Median TTFT (ms)"),
        "{stdout}"
    );
    assert!(stdout.contains("doppel-exec-cpu"), "{stdout}");
    run_ok(
        Command::new(bin)
            .args(["sim", "replay", &trace, "--json"])
            .arg(&sj),
    );
    let out = run_ok(Command::new(bin).args(["sim", "compare"]).arg(&rj).arg(&sj));
    let text = String::from_utf8_lossy(&out.stdout);
    for label in [
        "median TTFT (ms)",
        "p99 ITL (ms)",
        "Output token throughput",
        "batch sequence",
    ] {
        assert!(text.contains(label), "{label} missing:\n{text}");
    }
    // Locked to the real run's timing through its JSON, the simulator runs its batch sequence
    // and its loop iterations.
    let lj = dir.join("locked.json");
    run_ok(
        Command::new(bin)
            .args(["sim", "replay", &trace, "--timing-from"])
            .arg(&rj)
            .arg("--json")
            .arg(&lj),
    );
    let (real, locked) = (load_json(&rj), load_json(&lj));
    assert!(real["iterations_ns"].as_array().unwrap().len() > 1);
    assert_eq!(real["iterations_ns"], locked["iterations_ns"]);
    assert_same_batches(&real, &locked);
    // A report that is not JSON is refused with its name.
    std::fs::write(dir.join("bad.json"), "not json").unwrap();
    let out = Command::new(bin)
        .args(["sim", "compare"])
        .arg(dir.join("bad.json"))
        .arg(&sj)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
    // A trace whose KV pool would not fit in host memory is refused, not allocated.
    let huge = write_trace(
        &dir,
        "huge",
        "engine:\n  kv_capacity_tokens: 900000000\nworkload:\n  kind: random\n  num_requests: 1\n  input_len: 8\n  output_len: 2\n",
    );
    let out = Command::new(bin)
        .args(["exec", "replay", &huge, "--model"])
        .arg(dir.join("model"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kv_capacity_tokens"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_profile_on_cpu_then_calibrate() {
    let dir = fixture("profile");
    let bin = env!("CARGO_BIN_EXE_doppel");
    let meas = dir.join("meas.json");
    run_ok(
        Command::new(bin)
            .args(["exec", "profile", "--device", "cpu", "--repeats", "1"])
            .args(["--prefill-len", "16", "64", "--prefill-batch", "1", "3"])
            .args(["--decode-batch", "1", "4", "--decode-kv", "16", "96"])
            .arg("--model")
            .arg(dir.join("model"))
            .arg("--out")
            .arg(&meas),
    );
    let m = load_json(&meas);
    let steps = m["steps"].as_array().unwrap();
    for mode in ["prefill", "decode", "mixed"] {
        assert!(steps.iter().any(|s| s["mode"] == mode), "no {mode} step");
    }
    // Decode steps of 4 requests at KV ~96 were measured.
    assert!(steps.iter().any(|s| s["mode"] == "decode"
        && s["decode_reqs"] == 4
        && s["kv_read_tokens"].as_u64().unwrap() >= 4 * 97));
    // The shared-prefix decodes (4 requests over a cached 64-token prefix): each request after
    // the first reads the prefix again.
    assert!(steps.iter().any(|s| s["mode"] == "decode"
        && s["decode_reqs"] == 4
        && s["shared_kv_tokens"] == 3 * 64));
    // Every timed step carries its scenario run and its start in the run; the sustained run
    // (8 ragged prompts prefilled back to back in 128-token chunks) is one run of prefills.
    assert!(steps
        .iter()
        .all(|s| s["run"].is_u64() && s["run_ns"].is_u64()));
    let runs: std::collections::BTreeSet<u64> =
        steps.iter().map(|s| s["run"].as_u64().unwrap()).collect();
    let sustained = runs.iter().rev().find_map(|&r| {
        let at: Vec<u64> = steps
            .iter()
            .filter(|s| s["run"] == r && s["mode"] == "prefill" && s["host_ns"] == 0)
            .map(|s| s["run_ns"].as_u64().unwrap())
            .collect();
        (at.len() >= 4).then_some(at)
    });
    let at = sustained.expect("a sustained run of at least 4 prefills");
    assert_eq!(at[0], 0);
    assert!(at.windows(2).all(|w| w[1] > w[0]), "{at:?}");
    // The decode run (4 requests of 32 tokens decoding 16 steps back to back in the overlap
    // order): one run whose decode steps read one more token per request each step.
    let decode_run = runs.iter().find_map(|&r| {
        let mut kv: Vec<(u64, u64)> = steps
            .iter()
            .filter(|s| s["run"] == r && s["mode"] == "decode" && s["host_ns"] == 0)
            .map(|s| {
                (
                    s["run_ns"].as_u64().unwrap(),
                    s["kv_read_tokens"].as_u64().unwrap(),
                )
            })
            .collect();
        kv.sort();
        (kv.len() >= 15).then_some(kv)
    });
    let kv = decode_run.expect("a decode run of at least 15 back-to-back decode steps");
    assert!(kv.windows(2).all(|w| w[1].1 == w[0].1 + 4), "{kv:?}");
    let fitted = dir.join("fitted.yaml");
    run_ok(
        Command::new(bin)
            .args(["sim", "calibrate"])
            .arg(&meas)
            .arg("--base")
            .arg(dir.join("tiny.yaml"))
            .args(["--name", "test/tiny/fitted", "--out"])
            .arg(&fitted),
    );
    let p = doppel_sim::Profile::load(fitted.to_str().unwrap()).unwrap();
    assert!(p.calibrated && p.name == "test/tiny/fitted");
    // The wrong base model is refused, naming the measurement file.
    let out = Command::new(bin)
        .args(["sim", "calibrate"])
        .arg(&meas)
        .args(["--out"])
        .arg(dir.join("x.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("meas.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}
