//! `doppel bench ...` subcommands.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use doppel_exec::server::client;
use doppel_exec::tokenizer::Tokenizer;
use doppel_measure::bench::{self, sharegpt, Api, BenchConfig, PromptForm, RequestSpec};
use doppel_sim::trace::{Arrival, ArrivalPattern, Trace, Workload};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `doppel bench` subcommands.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// SGLang's bench_serving against a running server (ours, SGLang, vLLM).
    // Unambiguous prefixes of long options work, as in Python's argparse (`--random-input 128`).
    #[command(infer_long_args = true)]
    Serve(Box<ServeArgs>),
}

/// `doppel bench serve` (options named as bench_serving's).
#[derive(Args)]
pub struct ServeArgs {
    /// bench_serving's backend: sglang / sglang-native (POST /generate); sglang-oai, vllm,
    /// lmdeploy, openai (POST /v1/completions); their -chat forms (POST /v1/chat/completions).
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
    /// random (text), random-ids, generated-shared-prefix (or shared-prefix), sharegpt (a local
    /// file, --dataset-path) or trace.
    #[arg(long, default_value = "random")]
    dataset_name: String,
    /// Dataset file (sharegpt: a local ShareGPT JSON list; nothing is downloaded).
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    /// ShareGPT: output length of every request (default: the reply's length).
    #[arg(long)]
    sharegpt_output_len: Option<usize>,
    /// ShareGPT: drop conversations whose prompt + output exceed this many tokens.
    #[arg(long)]
    sharegpt_context_len: Option<usize>,
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
    /// Tokenizer directory (text prompts; gives the vocabulary; default for text datasets: the
    /// server's /get_model_info tokenizer_path when that directory is on this machine).
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
    /// Let the server stop at EOS (default: ignore_eos, so outputs have the asked lengths).
    #[arg(long)]
    disable_ignore_eos: bool,
    /// A JSON object merged into every request body, e.g. '{"top_k": 20}'.
    #[arg(long)]
    extra_request_body: Option<String>,
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

fn check_numbers(a: &ServeArgs) -> anyhow::Result<()> {
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
    Ok(())
}

/// The server's tokenizer directory, when the server names one that exists here (as
/// bench_serving takes the served model's tokenizer); None when it cannot tell.
fn server_tokenizer_dir(addr: &str) -> Option<PathBuf> {
    let r = client::block_on(client::get(addr, "/get_model_info"))
        .ok()?
        .ok()?;
    let dir = PathBuf::from(r.json()["tokenizer_path"].as_str()?);
    dir.join("tokenizer.json").is_file().then_some(dir)
}

fn tokenizer_of(a: &ServeArgs, addr: &str, needs_text: bool) -> anyhow::Result<Option<Tokenizer>> {
    let dir = match (&a.tokenizer, needs_text) {
        (Some(d), _) => d.clone(),
        (None, true) => match server_tokenizer_dir(addr) {
            Some(d) => d,
            None => bail!(
                "--dataset-name {} sends text: pass --tokenizer DIR (the server at {addr} names \
                 no tokenizer directory on this machine)",
                a.dataset_name
            ),
        },
        (None, false) => return Ok(None),
    };
    Ok(Some(Tokenizer::load(&dir)?))
}

fn random_trace(a: &ServeArgs, arrival: Arrival) -> anyhow::Result<Trace> {
    if a.num_prompts == 0 || a.random_input_len == 0 || a.random_output_len == 0 {
        bail!("--num-prompts, --random-input-len and --random-output-len must be at least 1");
    }
    let w = Workload::Random {
        num_requests: a.num_prompts,
        input_len: a.random_input_len,
        output_len: a.random_output_len,
        range_ratio: a.random_range_ratio,
    };
    Ok(bench::dataset_trace(w, arrival, a.seed, &a.dataset_name))
}

fn shared_prefix_trace(a: &ServeArgs, arrival: Arrival) -> anyhow::Result<Trace> {
    let sizes = [
        a.gsp_num_groups,
        a.gsp_prompts_per_group,
        a.gsp_system_prompt_len + a.gsp_question_len,
        a.gsp_output_len,
    ];
    if sizes.contains(&0) {
        bail!("--gsp-* sizes must be at least 1");
    }
    let w = Workload::SharedPrefix {
        num_groups: a.gsp_num_groups,
        prompts_per_group: a.gsp_prompts_per_group,
        system_prompt_len: a.gsp_system_prompt_len,
        question_len: a.gsp_question_len,
        output_len: a.gsp_output_len,
    };
    Ok(bench::dataset_trace(
        w,
        arrival,
        a.seed,
        "generated-shared-prefix",
    ))
}

fn sharegpt_trace(a: &ServeArgs, arrival: Arrival, tok: &Tokenizer) -> anyhow::Result<Trace> {
    let path = a.dataset_path.as_deref().context(
        "--dataset-name sharegpt needs --dataset-path FILE (a local ShareGPT JSON file; \
         nothing is downloaded)",
    )?;
    let opts = sharegpt::ShareGptOptions {
        num_prompts: a.num_prompts,
        output_len: a.sharegpt_output_len,
        context_len: a.sharegpt_context_len,
        seed: a.seed,
    };
    let mut requests = sharegpt::requests(sharegpt::read_pairs(path)?, tok, opts)?;
    let times = doppel_sim::workload::arrival_times(requests.len(), &arrival, a.seed);
    for (r, t) in requests.iter_mut().zip(times) {
        r.arrival_ms = t as f64 * 1e-6;
    }
    let w = Workload::Requests {
        requests,
        page_len: None,
    };
    Ok(bench::dataset_trace(w, arrival, a.seed, "sharegpt"))
}

fn dataset_of(
    a: &ServeArgs,
    arrival: Arrival,
    tok: Option<&Tokenizer>,
) -> anyhow::Result<(Trace, PromptForm)> {
    Ok(match (a.dataset_name.as_str(), tok) {
        ("random", _) => (random_trace(a, arrival)?, PromptForm::Text),
        ("random-ids", _) => (random_trace(a, arrival)?, PromptForm::Ids),
        ("generated-shared-prefix" | "shared-prefix", _) => {
            (shared_prefix_trace(a, arrival)?, PromptForm::Ids)
        }
        ("sharegpt", Some(tok)) => (sharegpt_trace(a, arrival, tok)?, PromptForm::Text),
        ("sharegpt", None) => bail!("--dataset-name sharegpt needs --tokenizer DIR"),
        ("trace", _) => {
            let path = a
                .trace
                .as_deref()
                .context("--dataset-name trace needs --trace FILE")?;
            // The trace's own workload and arrival schedule; its engine section is the server's
            // business and is ignored.
            (Trace::load(path)?, PromptForm::Ids)
        }
        (other, _) => bail!(
            "--dataset-name {other}: expected random, random-ids, generated-shared-prefix, \
             sharegpt or trace"
        ),
    })
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::parse(&a.backend)
        .with_context(|| format!("--backend {}: expected {}", a.backend, Api::BACKENDS))?;
    let addr = addr_of(&a)?;
    let arrival = arrival_of(&a)?;
    check_numbers(&a)?;
    let extra_body = match &a.extra_request_body {
        Some(text) => bench::extra_body(text)?,
        None => Default::default(),
    };
    let text = matches!(a.dataset_name.as_str(), "random" | "sharegpt");
    if api == Api::OpenAiChat && !text {
        bail!(
            "--backend {} sends chat messages, which are text: use --dataset-name random or \
             sharegpt",
            a.backend
        );
    }
    let tok = tokenizer_of(&a, &addr, text)?;
    let (trace, form) = dataset_of(&a, arrival, tok.as_ref())?;
    let vocab = match (a.vocab, &tok) {
        (Some(v), _) => v,
        (None, Some(t)) => t.vocab_size(),
        (None, None) => server_vocab(&addr)?,
    };
    if vocab == 0 {
        bail!("--vocab must be at least 1");
    }
    let model = match (&a.model, api) {
        (Some(m), _) => m.clone(),
        (None, Api::Sglang) => String::new(),
        (None, _) => served_model(&addr)?,
    };
    let cfg = BenchConfig {
        spec: RequestSpec {
            addr,
            api,
            model,
            ignore_eos: !a.disable_ignore_eos,
            extra_body,
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
