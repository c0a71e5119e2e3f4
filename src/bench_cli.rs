//! `doppel bench ...` subcommands.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use doppel_exec::server::client;
use doppel_measure::bench::{self, Api, BenchConfig, PromptForm};
use doppel_sim::trace::{Arrival, ArrivalPattern, Trace, Workload};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `doppel bench` subcommands.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// SGLang's bench_serving against a running server (ours, SGLang, vLLM).
    Serve(Box<ServeArgs>),
}

/// `doppel bench serve` (options named as bench_serving's).
#[derive(Args)]
pub struct ServeArgs {
    /// sglang (POST /generate) or openai (POST /v1/completions).
    #[arg(long, default_value = "sglang")]
    backend: String,
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Server address as http://host:port (wins over --host/--port).
    #[arg(long)]
    base_url: Option<String>,
    /// Model name sent to the OpenAI API (default: the first of the server's /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// random (text), random-ids, shared-prefix or trace.
    #[arg(long, default_value = "random")]
    dataset_name: String,
    /// A doppel trace file (with --dataset-name trace): its workload and arrival schedule.
    #[arg(long)]
    trace: Option<String>,
    /// Requests (random datasets).
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Maximum prompt length L (random datasets).
    #[arg(long, default_value_t = 1024)]
    random_input_len: usize,
    /// Maximum output length (random datasets).
    #[arg(long, default_value_t = 1024)]
    random_output_len: usize,
    /// Lengths uniform on [max(floor(L * r), 1), L].
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Shared prefix: groups (system prompts).
    #[arg(long, default_value_t = 64)]
    gsp_num_groups: usize,
    /// Shared prefix: questions per group.
    #[arg(long, default_value_t = 16)]
    gsp_prompts_per_group: usize,
    /// Shared prefix: system prompt length.
    #[arg(long, default_value_t = 2048)]
    gsp_system_prompt_len: usize,
    /// Shared prefix: question length.
    #[arg(long, default_value_t = 128)]
    gsp_question_len: usize,
    /// Shared prefix: output length.
    #[arg(long, default_value_t = 256)]
    gsp_output_len: usize,
    /// Requests per second (inf = all at once); Poisson, or gamma with --burstiness.
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// Gamma shape of the gaps (1 = Poisson; below 1 burstier).
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Most requests in flight.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Seed of prompts and arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tokenizer directory (decodes random text prompts; gives the vocabulary).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Vocabulary of random token ids (default: the tokenizer's, else the server's /get_model_info).
    #[arg(long)]
    vocab: Option<usize>,
    /// Warm-up requests before the timed run.
    #[arg(long, default_value_t = 1)]
    warmup_requests: usize,
    /// POST /flush_cache after the warm-up.
    #[arg(long)]
    flush_cache: bool,
    /// Per-request results as JSON lines.
    #[arg(long)]
    output_file: Option<String>,
    /// The summary as a replay-style JSON report (compare with `doppel sim compare`).
    #[arg(long)]
    json: Option<String>,
    /// Give up after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    disable_tqdm: bool,
}

/// Run a `doppel bench` subcommand.
pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Serve(a) => serve(*a),
    }
}

fn addr_of(a: &ServeArgs) -> anyhow::Result<String> {
    match &a.base_url {
        Some(u) => {
            let rest = u.strip_prefix("http://").with_context(|| {
                format!("--base-url {u}: expected http://host:port (no TLS client)")
            })?;
            Ok(rest.trim_end_matches('/').to_string())
        }
        None => Ok(format!("{}:{}", a.host, a.port)),
    }
}

fn arrival_of(a: &ServeArgs) -> anyhow::Result<Arrival> {
    let rate = match a.request_rate.as_str() {
        "inf" => None,
        r => Some(
            r.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .with_context(|| {
                    format!("--request-rate {r}: expected a positive number or inf")
                })?,
        ),
    };
    if !(a.burstiness.is_finite() && a.burstiness > 0.0) {
        bail!("--burstiness {}: must be positive", a.burstiness);
    }
    if a.max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    let pattern = match rate {
        None => ArrivalPattern::Burst,
        Some(_) if a.burstiness == 1.0 => ArrivalPattern::Poisson,
        Some(_) => ArrivalPattern::Gamma,
    };
    Ok(Arrival {
        pattern,
        rate,
        burstiness: (pattern == ArrivalPattern::Gamma).then_some(a.burstiness),
        max_concurrency: a.max_concurrency,
    })
}

fn server_vocab(addr: &str) -> anyhow::Result<usize> {
    let r = client::block_on(client::get(addr, "/get_model_info"))?
        .with_context(|| format!("GET http://{addr}/get_model_info"))?;
    r.json()["vocab_size"]
        .as_u64()
        .map(|v| v as usize)
        .with_context(|| {
            format!(
                "http://{addr}/get_model_info has no vocab_size (HTTP {}); pass --vocab or --tokenizer",
                r.status
            )
        })
}

fn served_model(addr: &str) -> anyhow::Result<String> {
    let r = client::block_on(client::get(addr, "/v1/models"))?
        .with_context(|| format!("GET http://{addr}/v1/models"))?;
    r.json()["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| {
            format!(
                "http://{addr}/v1/models lists no model (HTTP {}); pass --model",
                r.status
            )
        })
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::parse(&a.backend)
        .with_context(|| format!("--backend {}: expected sglang or openai", a.backend))?;
    let addr = addr_of(&a)?;
    let arrival = arrival_of(&a)?;
    if !(0.0..=1.0).contains(&a.random_range_ratio) {
        bail!(
            "--random-range-ratio {}: must be in [0, 1]",
            a.random_range_ratio
        );
    }
    if let Some(t) = a.time_limit {
        if !(t.is_finite() && t > 0.0) {
            bail!("--time-limit {t}: must be a positive number of seconds");
        }
    }
    let (trace, form) = match a.dataset_name.as_str() {
        "random" | "random-ids" => {
            if a.num_prompts == 0 || a.random_input_len == 0 || a.random_output_len == 0 {
                bail!(
                    "--num-prompts, --random-input-len and --random-output-len must be at least 1"
                );
            }
            let w = Workload::Random {
                num_requests: a.num_prompts,
                input_len: a.random_input_len,
                output_len: a.random_output_len,
                range_ratio: a.random_range_ratio,
            };
            let form = if a.dataset_name == "random" {
                PromptForm::Text
            } else {
                PromptForm::Ids
            };
            (
                bench::dataset_trace(w, arrival, a.seed, &a.dataset_name),
                form,
            )
        }
        "shared-prefix" => {
            let w = Workload::SharedPrefix {
                num_groups: a.gsp_num_groups,
                prompts_per_group: a.gsp_prompts_per_group,
                system_prompt_len: a.gsp_system_prompt_len,
                question_len: a.gsp_question_len,
                output_len: a.gsp_output_len,
            };
            if [
                a.gsp_num_groups,
                a.gsp_prompts_per_group,
                a.gsp_system_prompt_len + a.gsp_question_len,
                a.gsp_output_len,
            ]
            .contains(&0)
            {
                bail!("--gsp-* sizes must be at least 1");
            }
            (
                bench::dataset_trace(w, arrival, a.seed, "shared-prefix"),
                PromptForm::Ids,
            )
        }
        "trace" => {
            let path = a
                .trace
                .as_deref()
                .context("--dataset-name trace needs --trace FILE")?;
            // The trace's own workload and arrival schedule; its engine section is the server's
            // business and is ignored.
            let t = Trace::load(path)?;
            (t, PromptForm::Ids)
        }
        other => {
            bail!("--dataset-name {other}: expected random, random-ids, shared-prefix or trace")
        }
    };
    let tok = match &a.tokenizer {
        Some(dir) => Some(doppel_exec::tokenizer::Tokenizer::load(dir)?),
        None => None,
    };
    let vocab = match (a.vocab, &tok) {
        (Some(v), _) => v,
        (None, Some(t)) => t.vocab_size(),
        (None, None) => server_vocab(&addr)?,
    };
    if vocab == 0 {
        bail!("--vocab must be at least 1");
    }
    let cfg = BenchConfig {
        addr: addr.clone(),
        api,
        model_name: match (&a.model, api) {
            (Some(m), _) => m.clone(),
            (None, Api::OpenAi) => served_model(&addr)?,
            (None, Api::Sglang) => String::new(),
        },
        dataset: a.dataset_name.clone(),
        trace,
        vocab,
        form,
        warmup: a.warmup_requests,
        flush_cache: a.flush_cache,
        time_limit: a.time_limit.map(Duration::from_secs_f64),
        progress: !a.disable_tqdm,
    };
    let (prepared, starts) = bench::prepare(&cfg, tok.as_ref())?;
    let run = bench::run(&cfg, prepared, starts)?;
    print!("{}", bench::format_report(&run));
    if let Some(path) = &a.output_file {
        std::fs::write(path, bench::to_jsonl(&run)).with_context(|| format!("writing {path}"))?;
    }
    if let Some(path) = &a.json {
        let text = doppel_sim::compare::report_with_steps(&run.trace, &run.outcome, &run.summary);
        std::fs::write(path, text).with_context(|| format!("writing {path}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
