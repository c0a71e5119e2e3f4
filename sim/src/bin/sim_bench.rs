//! Simulator speed benchmark: `cargo run --release -p doppel-sim --bin sim-bench [N] [burst|poisson|plan]`.
//! Prints simulated requests per second (wall clock) and peak memory for traces of N/4, N/2 and N
//! requests (default N = 10,000; both arrival patterns unless one is named), then the wall time
//! of a `sim plan` over 100 setups of a 1,000-request Poisson trace (rayon, every core).

use doppel_sim::{replay, SimOptions, Trace};
use std::time::Instant;

fn trace(n: usize, arrival: &str) -> Trace {
    let text = format!(
        "name: bench\nprofile: a100-80g/qwen3-0.6b/sglang\nseed: 1\nworkload:\n  kind: random\n  num_requests: {n}\n  input_len: 1024\n  output_len: 256\n  range_ratio: 0.0\narrival:\n{arrival}\n"
    );
    match Trace::parse(&text, "bench.yaml") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// 100 setups: replicas 1-13 (two routers from 2 up) x chunk 2048/8192 x fcfs/lpm.
fn plan_bench() {
    use doppel_sim::plan::{self, slo, Space};
    let t = trace(1000, "  pattern: poisson\n  rate: 40");
    let space = Space {
        profiles: vec![t.profile.clone()],
        max_replicas: 13,
        tps: vec![1],
        chunks: vec![Some(2048), Some(8192)],
        policies: vec!["fcfs".into(), "lpm".into()],
        routers: doppel_sim::router::Router::ALL.to_vec(),
    };
    let targets = match slo::parse("ttft_p99<500ms,itl_p99<50ms") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let r = plan::plan(&t, "bench.yaml", &space, &targets);
    println!(
        "plan: {} setups of a 1000-request Poisson trace in {:.2} s on {} threads",
        r.runs.len(),
        start.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
}

fn main() {
    let big: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let only = std::env::args().nth(2);
    println!(
        "{:>8} {:>10} {:>10} {:>12} {:>14} {:>16} {:>12}",
        "requests",
        "arrival",
        "wall (s)",
        "sim req/s",
        "sim tokens/s",
        "simulated (s)",
        "peak RSS MiB"
    );
    for (label, arrival) in [
        ("burst", "  pattern: burst".to_string()),
        ("poisson", "  pattern: poisson\n  rate: 40".to_string()),
    ] {
        if only.as_deref().is_some_and(|o| o != label) {
            continue;
        }
        for n in [big / 4, big / 2, big] {
            let t = trace(n.max(1), &arrival);
            let start = Instant::now();
            let r = match replay(t, "bench.yaml", SimOptions::default()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            let wall = start.elapsed().as_secs_f64();
            let tokens = r.summary.total_input + r.summary.total_output;
            println!(
                "{:>8} {:>10} {:>10.3} {:>12.0} {:>14.0} {:>16.1} {:>12.1}",
                n,
                label,
                wall,
                r.summary.completed as f64 / wall,
                tokens as f64 / wall,
                r.summary.duration_s,
                peak_rss_mib().unwrap_or(f64::NAN)
            );
        }
    }
    if only.as_deref().is_none_or(|o| o == "plan") {
        plan_bench();
    }
}
