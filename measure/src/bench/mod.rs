//! `doppel bench serve`: SGLang's bench_serving in Rust. Sends a dataset (random text, random ids,
//! shared prefixes, a local ShareGPT file or a doppel trace) to a server speaking SGLang's
//! /generate or the OpenAI completions or chat API, on a Poisson / gamma / concurrency-capped
//! schedule, streams every response,
//! and reports bench_serving's metrics with the simulator's own summary code (so a benchmark
//! report and a replay report compare field by field).

mod request;
pub mod sharegpt;

pub use request::{Api, ReqResult, RequestSpec};

use doppel_core::{TimeNs, TokenId};
use doppel_exec::server::client;
use doppel_sim::driver::{Outcome, ReqRecord, Status};
use doppel_sim::gaps::Gaps;
use doppel_sim::trace::{Arrival, ArrivalPattern, Trace, Workload};
use doppel_sim::workload::{expand, Start};
use doppel_sim::{summarize, Summary};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What goes wrong in a benchmark run (a failed request is not an error: it is counted).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad option or dataset.
    #[error("{0}")]
    Invalid(String),
    /// The trace file is bad.
    #[error(transparent)]
    Trace(#[from] doppel_sim::SimError),
    /// The server could not be reached or refused a control request.
    #[error("{0}")]
    Server(String),
    /// The time limit was reached.
    #[error("time limit of {limit_s} s reached with {done} of {total} requests finished")]
    TimeLimit {
        /// The limit.
        limit_s: f64,
        /// Requests finished.
        done: usize,
        /// Requests in the run.
        total: usize,
    },
}

/// How prompts are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptForm {
    /// Token ids (`input_ids` / a token-list prompt).
    Ids,
    /// Text decoded from the ids with the model's tokenizer.
    Text,
}

/// A benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Where requests go and how their bodies are built.
    pub spec: RequestSpec,
    /// Workload and arrival, as a trace (datasets are written as traces; a trace file is one).
    pub trace: Trace,
    /// Label of the dataset.
    pub dataset: String,
    /// Vocabulary prompts are drawn from.
    pub vocab: usize,
    /// Ids or text.
    pub form: PromptForm,
    /// Warm-up requests before the timed run.
    pub warmup: usize,
    /// POST /flush_cache after the warm-up.
    pub flush_cache: bool,
    /// Stop after this long.
    pub time_limit: Option<Duration>,
    /// Draw a progress bar.
    pub progress: bool,
}

/// One prepared request.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Prompt ids.
    pub ids: Vec<TokenId>,
    /// Prompt text (text form only).
    pub text: Option<String>,
    /// Prompt length in tokens as generated.
    pub prompt_len: usize,
    /// Tokens to generate.
    pub output_len: usize,
}

/// A finished run.
pub struct BenchRun {
    /// The trace that describes the run (dataset + arrival).
    pub trace: Trace,
    /// Per-request results, by request index.
    pub results: Vec<ReqResult>,
    /// Client-side outcome (records, ITLs, tokens per second).
    pub outcome: Outcome,
    /// bench_serving's figures.
    pub summary: Summary,
}

/// Parse bench_serving's --extra-request-body: a JSON object merged into every request body.
pub fn extra_body(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, BenchError> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(BenchError::Invalid(format!(
            "--extra-request-body {text}: expected a JSON object"
        ))),
        Err(e) => Err(BenchError::Invalid(format!(
            "--extra-request-body {text}: not JSON: {e}"
        ))),
    }
}

/// A trace for a built-in dataset: bench_serving's random rule, or shared prefixes.
pub fn dataset_trace(workload: Workload, arrival: Arrival, seed: u64, name: &str) -> Trace {
    Trace {
        name: Some(name.to_string()),
        description: None,
        profile: "none".into(),
        seed,
        vocab: None,
        engine: Default::default(),
        workload,
        arrival,
    }
}

/// Build the prompts (and their send schedule) of `cfg.trace`.
pub fn prepare(
    cfg: &BenchConfig,
    tok: Option<&doppel_exec::tokenizer::Tokenizer>,
) -> Result<(Vec<Prepared>, Vec<Start>), BenchError> {
    let mut work = expand(&cfg.trace, cfg.vocab);
    let prompts = work.build_all();
    let mut out = Vec::with_capacity(prompts.len());
    for (i, ids) in prompts.into_iter().enumerate() {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(BenchError::Invalid(format!(
                "request {i}: prompt token {t} is outside the vocabulary of {}",
                cfg.vocab
            )));
        }
        let text = match cfg.form {
            PromptForm::Ids => None,
            PromptForm::Text => {
                let tok = tok.ok_or_else(|| {
                    BenchError::Invalid(
                        "text prompts (dataset random) need --tokenizer to decode them".into(),
                    )
                })?;
                Some(
                    tok.decode(&ids, false)
                        .map_err(|e| BenchError::Invalid(format!("request {i}: {e}")))?,
                )
            }
        };
        let r = &work.requests[i];
        out.push(Prepared {
            prompt_len: ids.len(),
            ids,
            text,
            output_len: r.output_len,
        });
    }
    let starts = work.requests.iter().map(|r| r.start).collect();
    Ok((out, starts))
}

/// Run the benchmark (blocking: builds its own runtime).
pub fn run(
    cfg: &BenchConfig,
    prepared: Vec<Prepared>,
    starts: Vec<Start>,
) -> Result<BenchRun, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Server(format!("starting the client runtime: {e}")))?;
    rt.block_on(run_async(cfg, prepared, starts))
}

async fn warm_up_and_flush(cfg: &BenchConfig, first: &Prepared) -> Result<(), BenchError> {
    for k in 0..cfg.warmup {
        let mut p = first.clone();
        p.output_len = p.output_len.min(16);
        let r = request::send(&cfg.spec, &p, Instant::now()).await;
        if let Some(e) = r.error {
            return Err(BenchError::Server(format!(
                "warm-up request {k} to {} failed: {e}",
                cfg.spec.addr
            )));
        }
    }
    if cfg.flush_cache {
        let addr = &cfg.spec.addr;
        let r = client::request(addr, "POST", "/flush_cache", None)
            .await
            .map_err(|e| BenchError::Server(format!("POST /flush_cache to {addr}: {e}")))?;
        if r.status != 200 {
            return Err(BenchError::Server(format!(
                "POST /flush_cache: HTTP {} {}",
                r.status,
                r.text()
            )));
        }
    }
    Ok(())
}

async fn run_async(
    cfg: &BenchConfig,
    prepared: Vec<Prepared>,
    starts: Vec<Start>,
) -> Result<BenchRun, BenchError> {
    let n = prepared.len();
    if n == 0 {
        return Err(BenchError::Invalid("the dataset has no requests".into()));
    }
    warm_up_and_flush(cfg, &prepared[0]).await?;
    let prepared: Arc<Vec<Prepared>> = Arc::new(prepared);
    let spec = Arc::new(cfg.spec.clone());
    let mut followers: Vec<Vec<(usize, TimeNs)>> = vec![Vec::new(); n];
    let mut ready: BinaryHeap<Reverse<(TimeNs, usize)>> = BinaryHeap::new();
    for (i, s) in starts.iter().enumerate() {
        match *s {
            Start::At(t) => ready.push(Reverse((t, i))),
            Start::After { prev, think_ns } => followers[prev].push((i, think_ns)),
        }
    }
    let cap = cfg.trace.arrival.max_concurrency.unwrap_or(usize::MAX);
    let bar = if cfg.progress {
        indicatif::ProgressBar::new(n as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, ReqResult)>();
    let t0 = Instant::now();
    let deadline = cfg
        .time_limit
        .map(|d| tokio::time::Instant::from_std(t0 + d));
    let mut results: Vec<Option<ReqResult>> = vec![None; n];
    let mut tasks = tokio::task::JoinSet::new();
    let (mut in_flight, mut done) = (0usize, 0usize);
    loop {
        let now = t0.elapsed().as_nanos() as TimeNs;
        while in_flight < cap {
            match ready.peek() {
                Some(&Reverse((t, i))) if t <= now => {
                    ready.pop();
                    in_flight += 1;
                    let (p, tx, spec) = (prepared.clone(), tx.clone(), spec.clone());
                    tasks.spawn(async move {
                        let r = request::send(&spec, &p[i], t0).await;
                        let _ = tx.send((i, r));
                    });
                }
                _ => break,
            }
        }
        if in_flight == 0 && ready.is_empty() {
            break;
        }
        let next = ready
            .peek()
            .filter(|_| in_flight < cap)
            .map(|&Reverse((t, _))| tokio::time::Instant::from_std(t0 + Duration::from_nanos(t)));
        let limit =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            got = rx.recv() => {
                let Some((i, r)) = got else { break };
                in_flight -= 1;
                done += 1;
                bar.inc(1);
                let finish = r.send_ns + r.latency_ns;
                for &(f, think) in &followers[i] {
                    ready.push(Reverse((finish + think, f)));
                }
                results[i] = Some(r);
            }
            _ = tokio::time::sleep_until(next.unwrap_or(limit)), if next.is_some() => {}
            _ = tokio::time::sleep_until(limit), if deadline.is_some() => {
                tasks.abort_all();
                bar.finish_and_clear();
                return Err(BenchError::TimeLimit {
                    limit_s: cfg.time_limit.map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    done,
                    total: n,
                });
            }
        }
    }
    bar.finish_and_clear();
    let results: Vec<ReqResult> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| ReqResult::failed(0, "never sent".into())))
        .collect();
    let outcome = outcome_of(&results, &prepared);
    let rate = match cfg.trace.arrival.pattern {
        ArrivalPattern::Poisson | ArrivalPattern::Gamma => cfg.trace.arrival.rate,
        _ => None,
    };
    let mut summary = summarize(&outcome, rate, cfg.trace.arrival.max_concurrency);
    summary.backend = format!("{} ({})", cfg.spec.api.label(), cfg.spec.addr);
    Ok(BenchRun {
        trace: cfg.trace.clone(),
        results,
        outcome,
        summary,
    })
}

/// The client-side outcome: the simulator's record per request, so its summary code applies.
fn outcome_of(results: &[ReqResult], prepared: &[Prepared]) -> Outcome {
    let mut o = Outcome {
        itls: Gaps::new(),
        ..Default::default()
    };
    for (r, p) in results.iter().zip(prepared) {
        let ok = r.error.is_none();
        o.records.push(ReqRecord {
            send: r.send_ns,
            first: r.send_ns + r.ttft_ns,
            finish: r.send_ns + r.latency_ns,
            prompt_len: p.prompt_len as u32,
            output_tokens: r.output_tokens as u32,
            cached_tokens: r.cached_tokens as u32,
            retractions: 0,
            status: if ok { Status::Done } else { Status::Aborted },
        });
        if ok {
            let mut at = r.send_ns + r.ttft_ns;
            let first = r.output_tokens.saturating_sub(r.itl_ns.len()) as u32;
            let mut count = |at: TimeNs, k: u32| {
                let sec = (at / 1_000_000_000) as usize;
                if o.tokens_per_sec.len() <= sec {
                    o.tokens_per_sec.resize(sec + 1, 0);
                }
                o.tokens_per_sec[sec] += k;
            };
            count(at, first);
            for &g in &r.itl_ns {
                at += g;
                count(at, 1);
            }
            for &g in &r.itl_ns {
                o.itls.push(g);
            }
        }
        o.end_ns = o.end_ns.max(r.send_ns + r.latency_ns);
    }
    o.counters.cached_tokens = results
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.cached_tokens as u64)
        .sum();
    o.counters.prompt_tokens = prepared.iter().map(|p| p.prompt_len as u64).sum();
    o
}

/// bench_serving's table (client-side figures only: the server's scheduler section is cut).
pub fn format_report(run: &BenchRun) -> String {
    let full = doppel_sim::format_table(&run.summary);
    let mut s = String::new();
    for line in full.lines() {
        if line.contains("Cache and Scheduler") {
            break;
        }
        s.push_str(line);
        s.push('\n');
    }
    let failed = run.results.iter().filter(|r| r.error.is_some()).count();
    s.push_str(&format!("{:<40} {:<10}\n", "Failed requests:", failed));
    s.push_str(&format!(
        "{:<40} {:<10}\n",
        "Cached tokens (server-reported):", run.outcome.counters.cached_tokens
    ));
    s.push_str(&"=".repeat(50));
    s.push('\n');
    s
}

/// One JSON line per request.
pub fn to_jsonl(run: &BenchRun) -> String {
    let mut s = String::new();
    for (i, (r, rec)) in run.results.iter().zip(&run.outcome.records).enumerate() {
        let v = serde_json::json!({
            "id": i,
            "success": r.error.is_none(),
            "error": r.error,
            "prompt_len": rec.prompt_len,
            "output_len": r.output_tokens,
            "send_s": r.send_ns as f64 * 1e-9,
            "ttft_ms": r.ttft_ns as f64 * 1e-6,
            "latency_ms": r.latency_ns as f64 * 1e-6,
            "itl_ms": r.itl_ns.iter().map(|&g| g as f64 * 1e-6).collect::<Vec<_>>(),
            "cached_tokens": r.cached_tokens,
        });
        s.push_str(&v.to_string());
        s.push('\n');
    }
    s
}
