//! /metrics in the Prometheus text format with SGLang's metric names.

use super::engine::Snapshot;
use std::fmt::Write;
use std::sync::Mutex;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    15.0, 20.0, 25.0, 30.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2,
    0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0,
];
// SGLang's queue-time buckets.
const QUEUE_BUCKETS: &[f64] = &[
    0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0,
    80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0,
    1400.0, 1600.0, 1800.0, 2000.0, 2500.0, 3000.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 90.0, 120.0,
    150.0, 180.0, 240.0, 300.0,
];

struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Hist {
        Hist {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// One finished request's figures.
pub struct Finished {
    /// Seconds from arrival to the end.
    pub e2e: f64,
    /// Seconds per output token after the first (None with fewer than two tokens).
    pub tpot: Option<f64>,
    /// Prompt tokens.
    pub prompt: usize,
    /// Generated tokens.
    pub generated: usize,
}

struct Inner {
    ttft: Hist,
    itl: Hist,
    e2e: Hist,
    queue: Hist,
    tpot: Hist,
    prompt_tokens: u64,
    generation_tokens: u64,
    requests: u64,
}

/// Request-side metrics (the engine's gauges come from its snapshot).
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                ttft: Hist::new(TTFT_BUCKETS),
                itl: Hist::new(ITL_BUCKETS),
                e2e: Hist::new(E2E_BUCKETS),
                queue: Hist::new(QUEUE_BUCKETS),
                tpot: Hist::new(ITL_BUCKETS),
                prompt_tokens: 0,
                generation_tokens: 0,
                requests: 0,
            }),
        }
    }
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A first token arrived after `s` seconds.
    pub fn ttft(&self, s: f64) {
        self.with(|m| m.ttft.observe(s));
    }

    /// A later token arrived `s` seconds after the previous one.
    pub fn itl(&self, s: f64) {
        self.with(|m| m.itl.observe(s));
    }

    /// A request's first step was formed after `s` seconds in the waiting queue.
    pub fn queue_time(&self, s: f64) {
        self.with(|m| m.queue.observe(s));
    }

    /// A request ended.
    pub fn finished(&self, f: Finished) {
        self.with(|m| {
            m.e2e.observe(f.e2e);
            if let Some(t) = f.tpot {
                m.tpot.observe(t);
            }
            m.prompt_tokens += f.prompt as u64;
            m.generation_tokens += f.generated as u64;
            m.requests += 1;
        });
    }

    /// The exposition text.
    pub fn render(&self, snap: &Snapshot, model: &str) -> String {
        let labels = format!("model_name=\"{}\"", model.replace(['"', '\\', '\n'], "_"));
        let mut out = String::new();
        let mem = &snap.memory;
        let used = mem.used();
        let usage = if mem.capacity == 0 {
            0.0
        } else {
            used as f64 / mem.capacity as f64
        };
        let c = &snap.counters;
        let hit = if c.prompt_tokens == 0 {
            0.0
        } else {
            c.cached_tokens as f64 / c.prompt_tokens as f64
        };
        for (name, help, v) in [
            (
                "sglang:num_running_reqs",
                "The number of running requests.",
                snap.running as f64,
            ),
            (
                "sglang:num_used_tokens",
                "The number of used KV tokens.",
                used as f64,
            ),
            (
                "sglang:token_usage",
                "The token usage of the KV pool.",
                usage,
            ),
            (
                "sglang:gen_throughput",
                "The generation throughput (token/s).",
                snap.gen_throughput,
            ),
            (
                "sglang:num_queue_reqs",
                "The number of requests in the waiting queue.",
                snap.waiting as f64,
            ),
            ("sglang:cache_hit_rate", "The prefix cache hit rate.", hit),
            (
                "sglang:max_total_num_tokens",
                "KV pool capacity in tokens.",
                mem.capacity as f64,
            ),
            ("sglang:num_free_tokens", "Free KV tokens.", mem.free as f64),
            (
                "sglang:num_evictable_tokens",
                "Cached, evictable KV tokens.",
                mem.evictable as f64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
        self.with(|m| {
            for (name, help, v) in [
                (
                    "sglang:prompt_tokens_total",
                    "Number of prefill tokens processed.",
                    m.prompt_tokens,
                ),
                (
                    "sglang:generation_tokens_total",
                    "Number of generation tokens processed.",
                    m.generation_tokens,
                ),
                (
                    "sglang:num_requests_total",
                    "Number of requests finished.",
                    m.requests,
                ),
                (
                    "sglang:cached_tokens_total",
                    "Prompt tokens served from the prefix cache.",
                    c.cached_tokens,
                ),
                (
                    "sglang:evicted_tokens_total",
                    "Tokens evicted from the prefix cache.",
                    c.evicted_tokens,
                ),
                (
                    "sglang:num_retracted_requests_total",
                    "Retractions of running requests for lack of KV memory.",
                    c.retractions,
                ),
                (
                    "sglang:num_aborted_requests_total",
                    "Requests aborted (client gone, /abort_request, shutdown).",
                    snap.aborted,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
            m.ttft.render(
                &mut out,
                "sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &labels,
            );
            m.itl.render(
                &mut out,
                "sglang:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &labels,
            );
            m.e2e.render(
                &mut out,
                "sglang:e2e_request_latency_seconds",
                "Histogram of end-to-end request latency in seconds.",
                &labels,
            );
            m.queue.render(
                &mut out,
                "sglang:queue_time_seconds",
                "Histogram of time spent in the waiting queue in seconds.",
                &labels,
            );
            m.tpot.render(
                &mut out,
                "sglang:request_time_per_output_token_seconds",
                "Histogram of a request's time per output token after the first, in seconds.",
                &labels,
            );
        });
        out
    }
}
