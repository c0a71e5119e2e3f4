//! bench_serving's metrics (sglang-semantics.md section 5) and its result table, plus the cache and
//! scheduler figures.

use crate::driver::{Outcome, Status};
use serde::Serialize;
use std::fmt::Write;

/// Percentile with linear interpolation between closest ranks (numpy's default).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Mean, median and tail percentiles of one latency, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Dist {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Dist {
    fn of(mut xs: Vec<f64>) -> Dist {
        xs.sort_by(f64::total_cmp);
        Dist {
            mean: mean(&xs),
            median: percentile(&xs, 50.0),
            p90: percentile(&xs, 90.0),
            p95: percentile(&xs, 95.0),
            p99: percentile(&xs, 99.0),
            max: xs.last().copied().unwrap_or(0.0),
        }
    }
}

/// Every figure of a replay.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Backend label.
    pub backend: String,
    /// "inf" or the rate in req/s.
    pub request_rate: String,
    /// "not set" or the cap.
    pub max_concurrency: String,
    /// Requests that finished.
    pub completed: usize,
    /// Requests refused at submission.
    pub refused: usize,
    /// Requests aborted by the engine.
    pub aborted: usize,
    /// First send to last completion (s).
    pub duration_s: f64,
    /// Prompt tokens of completed requests.
    pub total_input: u64,
    /// Output tokens of completed requests.
    pub total_output: u64,
    /// Requests per second.
    pub request_throughput: f64,
    /// Input tokens per second.
    pub input_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Most output tokens in any 1-second bucket.
    pub peak_output_throughput: f64,
    /// Most requests alive in any 1-second bucket.
    pub peak_concurrent_requests: u64,
    /// Input + output tokens per second.
    pub total_throughput: f64,
    /// Sum of E2E latencies / duration.
    pub concurrency: f64,
    /// End-to-end latency (ms).
    pub e2e_ms: Dist,
    /// Time to first token (ms).
    pub ttft_ms: Dist,
    /// Time per output token after the first (ms).
    pub tpot_ms: Dist,
    /// Inter-token latency (ms).
    pub itl_ms: Dist,
    /// Cached prompt tokens / prompt tokens admitted.
    pub cache_hit_rate: f64,
    /// Prompt tokens served from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens admitted (including re-prefills).
    pub prompt_tokens_admitted: u64,
    /// Tokens evicted from the radix cache.
    pub evicted_tokens: u64,
    /// Retractions.
    pub retractions: u64,
    /// Peak KV tokens in use.
    pub peak_kv_tokens: usize,
    /// KV capacity in tokens.
    pub kv_capacity: usize,
    /// Running-request cap.
    pub max_running_requests: usize,
    /// Steps, prefill steps, decode steps.
    pub steps: u64,
    /// Prefill (extend or mixed) steps.
    pub prefill_steps: u64,
    /// Decode steps.
    pub decode_steps: u64,
    /// Mean requests per step.
    pub mean_batch_size: f64,
    /// Mean requests per decode step.
    pub mean_decode_batch_size: f64,
    /// GPU busy time / simulated time.
    pub gpu_utilization: f64,
}

/// Compute the figures of an outcome.
pub fn summarize(
    o: &Outcome,
    request_rate: Option<f64>,
    max_concurrency: Option<usize>,
) -> Summary {
    let ms = |ns: u64| ns as f64 * 1e-6;
    let done: Vec<_> = o
        .records
        .iter()
        .filter(|r| r.status == Status::Done)
        .collect();
    let first_send = o
        .records
        .iter()
        .filter(|r| r.status != Status::Pending)
        .map(|r| r.send)
        .min()
        .unwrap_or(0);
    let last_finish = done.iter().map(|r| r.finish).max().unwrap_or(first_send);
    let duration_s = (last_finish.saturating_sub(first_send)) as f64 * 1e-9;
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let total_input: u64 = done.iter().map(|r| r.prompt_len as u64).sum();
    let total_output: u64 = done.iter().map(|r| r.output_tokens as u64).sum();
    let e2e: Vec<f64> = done.iter().map(|r| ms(r.finish - r.send)).collect();
    let ttft: Vec<f64> = done
        .iter()
        .filter(|r| r.output_tokens > 0)
        .map(|r| ms(r.first - r.send))
        .collect();
    let tpot: Vec<f64> = done
        .iter()
        .filter(|r| r.output_tokens > 1)
        .map(|r| ms(r.finish - r.first) / (r.output_tokens - 1) as f64)
        .collect();
    let mut gaps = o.itls.clone();
    // Requests alive per 1-second bucket: a difference array over the buckets each one spans.
    let buckets = (last_finish / 1_000_000_000 + 2) as usize;
    let mut diff = vec![0i64; buckets + 1];
    for r in &done {
        diff[(r.send / 1_000_000_000) as usize] += 1;
        diff[(r.finish / 1_000_000_000) as usize + 1] -= 1;
    }
    let mut alive = 0i64;
    let mut peak_alive = 0i64;
    for d in diff {
        alive += d;
        peak_alive = peak_alive.max(alive);
    }
    let c = &o.counters;
    Summary {
        backend: "doppel-sim".into(),
        request_rate: request_rate
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "inf".into()),
        max_concurrency: max_concurrency
            .map(|c| c.to_string())
            .unwrap_or_else(|| "not set".into()),
        completed: done.len(),
        refused: o
            .records
            .iter()
            .filter(|r| r.status == Status::Refused)
            .count(),
        aborted: o
            .records
            .iter()
            .filter(|r| r.status == Status::Aborted)
            .count(),
        duration_s,
        total_input,
        total_output,
        request_throughput: per_s(done.len() as f64),
        input_throughput: per_s(total_input as f64),
        output_throughput: per_s(total_output as f64),
        peak_output_throughput: o.tokens_per_sec.iter().copied().max().unwrap_or(0) as f64,
        peak_concurrent_requests: peak_alive as u64,
        total_throughput: per_s((total_input + total_output) as f64),
        concurrency: per_s(e2e.iter().sum::<f64>() * 1e-3),
        e2e_ms: Dist::of(e2e),
        ttft_ms: Dist::of(ttft),
        tpot_ms: Dist::of(tpot),
        itl_ms: Dist {
            mean: gaps.mean() * 1e-6,
            median: gaps.percentile(50.0) * 1e-6,
            p90: gaps.percentile(90.0) * 1e-6,
            p95: gaps.percentile(95.0) * 1e-6,
            p99: gaps.percentile(99.0) * 1e-6,
            max: ms(gaps.max()),
        },
        cache_hit_rate: if c.prompt_tokens > 0 {
            c.cached_tokens as f64 / c.prompt_tokens as f64
        } else {
            0.0
        },
        cached_tokens: c.cached_tokens,
        prompt_tokens_admitted: c.prompt_tokens,
        evicted_tokens: c.evicted_tokens,
        retractions: c.retractions,
        peak_kv_tokens: c.peak_used_tokens,
        kv_capacity: o.kv_capacity,
        max_running_requests: o.max_running,
        steps: o.steps,
        prefill_steps: c.prefill_steps,
        decode_steps: c.decode_steps,
        mean_batch_size: if o.steps > 0 {
            o.batch_sum as f64 / o.steps as f64
        } else {
            0.0
        },
        mean_decode_batch_size: if o.decode_steps > 0 {
            o.decode_batch_sum as f64 / o.decode_steps as f64
        } else {
            0.0
        },
        gpu_utilization: if o.end_ns > 0 {
            o.gpu_busy_ns as f64 / o.end_ns as f64
        } else {
            0.0
        },
    }
}

fn line(s: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(s, "{:<40} {:<10}", label, value);
}

fn linef(s: &mut String, label: &str, value: f64) {
    let _ = writeln!(s, "{:<40} {:<10.2}", label, value);
}

fn header(s: &mut String, title: &str) {
    let _ = writeln!(s, "{:-^50}", title);
}

fn dist_rows(s: &mut String, name: &str, d: &Dist, with_max: bool) {
    linef(s, &format!("Mean {name} (ms):"), d.mean);
    linef(s, &format!("Median {name} (ms):"), d.median);
    linef(s, &format!("P90 {name} (ms):"), d.p90);
    linef(s, &format!("P95 {name} (ms):"), d.p95);
    linef(s, &format!("P99 {name} (ms):"), d.p99);
    if with_max {
        linef(s, &format!("Max {name} (ms):"), d.max);
    }
}

/// bench_serving's result table, then the cache and scheduler section.
pub fn format_table(m: &Summary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:=^50}", " Serving Benchmark Result ");
    line(&mut s, "Backend:", &m.backend);
    line(&mut s, "Traffic request rate:", &m.request_rate);
    line(&mut s, "Max request concurrency:", &m.max_concurrency);
    line(&mut s, "Successful requests:", m.completed);
    linef(&mut s, "Benchmark duration (s):", m.duration_s);
    line(&mut s, "Total input tokens:", m.total_input);
    line(&mut s, "Total generated tokens:", m.total_output);
    linef(&mut s, "Request throughput (req/s):", m.request_throughput);
    linef(
        &mut s,
        "Input token throughput (tok/s):",
        m.input_throughput,
    );
    linef(
        &mut s,
        "Output token throughput (tok/s):",
        m.output_throughput,
    );
    linef(
        &mut s,
        "Peak output token throughput (tok/s):",
        m.peak_output_throughput,
    );
    line(
        &mut s,
        "Peak concurrent requests:",
        m.peak_concurrent_requests,
    );
    linef(
        &mut s,
        "Total token throughput (tok/s):",
        m.total_throughput,
    );
    linef(&mut s, "Concurrency:", m.concurrency);
    // The rows of SGLang 0.5's bench_serving: P90 and P95 next to P99 in every section.
    header(&mut s, "End-to-End Latency");
    dist_rows(&mut s, "E2E Latency", &m.e2e_ms, false);
    header(&mut s, "Time to First Token");
    dist_rows(&mut s, "TTFT", &m.ttft_ms, false);
    header(&mut s, "Time per Output Token (excl. 1st token)");
    dist_rows(&mut s, "TPOT", &m.tpot_ms, false);
    header(&mut s, "Inter-Token Latency");
    dist_rows(&mut s, "ITL", &m.itl_ms, true);
    header(&mut s, "Cache and Scheduler");
    linef(&mut s, "Cache hit rate (%):", m.cache_hit_rate * 100.0);
    line(&mut s, "Cached tokens:", m.cached_tokens);
    line(&mut s, "Evicted tokens:", m.evicted_tokens);
    line(&mut s, "Retractions:", m.retractions);
    line(&mut s, "Peak KV usage (tokens):", m.peak_kv_tokens);
    linef(
        &mut s,
        "Peak KV usage (%):",
        if m.kv_capacity > 0 {
            m.peak_kv_tokens as f64 * 100.0 / m.kv_capacity as f64
        } else {
            0.0
        },
    );
    line(&mut s, "KV capacity (tokens):", m.kv_capacity);
    line(&mut s, "Max running requests:", m.max_running_requests);
    linef(&mut s, "Mean batch size:", m.mean_batch_size);
    linef(&mut s, "Mean decode batch size:", m.mean_decode_batch_size);
    line(
        &mut s,
        "Steps (prefill / decode):",
        format!("{} / {}", m.prefill_steps, m.decode_steps),
    );
    linef(&mut s, "GPU busy (%):", m.gpu_utilization * 100.0);
    line(
        &mut s,
        "Refused / aborted requests:",
        format!("{} / {}", m.refused, m.aborted),
    );
    let _ = writeln!(s, "{}", "=".repeat(50));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&xs, 50.0), 2.5);
        assert!((percentile(&xs, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn table_has_bench_serving_layout() {
        let t = format_table(&Summary::default());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "============ Serving Benchmark Result ============"
        );
        assert_eq!(lines[1], format!("{:<40} {:<10}", "Backend:", ""));
        assert!(t.contains("----------------End-to-End Latency----------------"));
        assert!(t.contains(&format!("{:<40} {:<10}", "Mean TTFT (ms):", "0.00")));
        for row in [
            "P90 TTFT (ms):",
            "P95 TTFT (ms):",
            "P90 ITL (ms):",
            "P95 E2E Latency (ms):",
        ] {
            assert!(t.contains(row), "{row} missing from\n{t}");
        }
    }
}
