//! `doppel exec ...` subcommands.

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use doppel_core::{
    Backend, Engine, Event, FinishReason, RequestId, RequestSpec, SamplingParams, Scheduler,
    SchedulerConfig,
};
use doppel_exec::cpu_backend::CpuLoaded;
use doppel_exec::model::{Arch, DType, RopeScaling};
use doppel_exec::testgen::{write_model, TinySpec};
use doppel_exec::tokenizer::{ChatMessage, GenerationConfig, TextStream, Tokenizer};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

// replay and profile live in their own file (the measuring tools), as do bench-one-batch and
// serve.
#[path = "exec_bob_cli.rs"]
mod bob;
#[path = "exec_kernel_flags.rs"]
mod flags;
#[path = "exec_serve_cli.rs"]
mod serve;
#[path = "exec_tools_cli.rs"]
mod tools;

/// `doppel exec` subcommands.
#[derive(Subcommand)]
pub enum ExecCmd {
    /// Generate text from a prompt with a Hugging Face checkpoint directory.
    Generate(Box<GenerateArgs>),
    /// Write a random-weight checkpoint directory (config, safetensors, BPE tokenizer) for tests and benchmarks.
    MakeModel(Box<MakeModelArgs>),
    /// Serve the SGLang-native and OpenAI-compatible HTTP API (see docs/server.md).
    Serve(Box<serve::ServeArgs>),
    /// SGLang's bench_one_batch on the GPU: prefill and decode latency/throughput per batch size.
    BenchOneBatch(Box<bob::BenchOneBatchArgs>),
    /// Run a trace in-process on the real engine with its arrival schedule; print the same report as `doppel sim replay`.
    Replay(Box<tools::ReplayArgs>),
    /// Measure step times over a sweep of batch shapes and write a measurement file for `doppel sim calibrate`.
    Profile(Box<tools::ProfileArgs>),
}

/// `doppel exec generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json, ...).
    #[arg(long, visible_alias = "model-path")]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    system: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Stop strings and EOS are ignored until this many tokens exist.
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Softmax temperature (0 = greedy); default from generation_config.json, else 1.0.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus mass.
    #[arg(long)]
    top_p: Option<f32>,
    /// Top-k (-1 = off).
    #[arg(long, allow_hyphen_values = true)]
    top_k: Option<i32>,
    /// Min-p.
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Frequency penalty.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    frequency_penalty: f32,
    /// Presence penalty.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    presence_penalty: f32,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable); trimmed from the output unless --include-stop.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep the matched stop string in the output.
    #[arg(long)]
    include_stop: bool,
    /// Extra stop token id (repeatable).
    #[arg(long)]
    stop_token_id: Vec<u32>,
    /// Do not stop at EOS or stop token ids.
    #[arg(long)]
    ignore_eos: bool,
    /// Print the logprob of each generated token (and this many alternatives) to stderr.
    #[arg(long)]
    logprobs: Option<usize>,
    /// Ignore generation_config.json's sampling defaults.
    #[arg(long)]
    no_generation_config: bool,
    /// Run this many copies of the request at once (throughput check; only the first is printed).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// KV cache capacity in tokens (default: 8192 on the CPU; on CUDA, sized from
    /// --mem-fraction-static).
    #[arg(long)]
    kv_capacity: Option<usize>,
    /// CUDA: share of device memory for weights + KV cache (default: SGLang's rule).
    #[arg(long)]
    mem_fraction_static: Option<f64>,
    /// CUDA: largest decode batch replayed from a CUDA graph (0 = no graphs).
    #[arg(long, default_value_t = 256)]
    cuda_graph_max_bs: usize,
    /// KV page size in tokens.
    #[arg(long, default_value_t = 1)]
    page_size: usize,
    /// Chunked prefill size (0 = off).
    #[arg(long, default_value_t = 8192)]
    chunked_prefill_size: usize,
    /// Longest prompt + output (SGLang's flag; default: the model's max_position_embeddings;
    /// longer only with YaRN rope scaling).
    #[arg(long)]
    context_length: Option<usize>,
    /// Run the scheduler in SGLang's overlap order.
    #[arg(long)]
    overlap: bool,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Tensor-parallel ranks: the model is split over this many worker threads (--device cpu)
    /// or GPUs from the CUDA device on (NCCL); heads and MLP width must divide by it.
    #[arg(long = "tp-size", visible_alias = "tp", default_value_t = 1)]
    tp_size: usize,
    /// No progress bar while loading.
    #[arg(long)]
    quiet: bool,
}

/// `doppel exec make-model`.
#[derive(Args)]
pub struct MakeModelArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// qwen3, qwen2 or llama.
    #[arg(long, default_value = "qwen3")]
    arch: String,
    /// Model width (default: the tiny preset's).
    #[arg(long)]
    hidden: Option<usize>,
    /// MLP width.
    #[arg(long)]
    intermediate: Option<usize>,
    /// Layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Query heads.
    #[arg(long)]
    heads: Option<usize>,
    /// KV heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head width.
    #[arg(long)]
    head_dim: Option<usize>,
    /// config vocab_size (at least the tokenizer's size).
    #[arg(long)]
    vocab: Option<usize>,
    /// Trained tokenizer vocabulary.
    #[arg(long, default_value_t = 384)]
    tokenizer_vocab: usize,
    /// f32, f16 or bf16.
    #[arg(long)]
    dtype: Option<String>,
    /// Safetensors shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Tie embedding and LM head (default: the preset's).
    #[arg(long)]
    tie: Option<bool>,
    /// Llama 3 rope scaling (llama only; default on).
    #[arg(long)]
    no_rope_scaling: bool,
    /// YaRN rope scaling FACTOR:ORIGINAL_MAX_POSITIONS (e.g. 4:32768, Qwen2.5's long-context
    /// setting); replaces the preset's scaling.
    #[arg(long)]
    yarn: Option<String>,
    /// max_position_embeddings (default: the preset's 2048).
    #[arg(long)]
    max_position: Option<usize>,
    /// Weight seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// `--yarn FACTOR:ORIGINAL` as transformers would read `{"rope_type": "yarn", ...}`.
fn parse_yarn(s: &str) -> anyhow::Result<RopeScaling> {
    let bad =
        || anyhow::anyhow!("--yarn {s}: expected FACTOR:ORIGINAL_MAX_POSITIONS, e.g. 4:32768");
    let (f, o) = s.split_once(':').ok_or_else(bad)?;
    let factor: f64 = f.parse().map_err(|_| bad())?;
    let original: u64 = o.parse().map_err(|_| bad())?;
    if !(factor >= 1.0 && factor.is_finite()) || original == 0 {
        return Err(bad());
    }
    Ok(RopeScaling::yarn(factor, original as f64))
}

/// Run a `doppel exec` subcommand.
pub fn run(cmd: ExecCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ExecCmd::Generate(a) => generate(*a),
        ExecCmd::MakeModel(a) => make_model(*a),
        ExecCmd::Serve(a) => serve::serve(*a),
        ExecCmd::BenchOneBatch(a) => bob::bench_one_batch(*a),
        ExecCmd::Replay(a) => tools::replay(*a),
        ExecCmd::Profile(a) => tools::profile(*a),
    }
}

fn make_model(a: MakeModelArgs) -> anyhow::Result<ExitCode> {
    let arch = match a.arch.as_str() {
        "qwen3" => Arch::Qwen3,
        "qwen2" => Arch::Qwen2,
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        other => bail!("--arch {other}: expected qwen3, qwen2, llama or mistral"),
    };
    let mut s = TinySpec::tiny(arch);
    s.hidden_size = a.hidden.unwrap_or(s.hidden_size);
    s.intermediate_size = a.intermediate.unwrap_or(s.intermediate_size);
    s.num_layers = a.layers.unwrap_or(s.num_layers);
    s.num_heads = a.heads.unwrap_or(s.num_heads);
    s.num_kv_heads = a.kv_heads.unwrap_or(s.num_kv_heads);
    s.head_dim = a.head_dim.unwrap_or(s.head_dim);
    s.vocab_size = a.vocab;
    s.tokenizer_vocab = a.tokenizer_vocab;
    s.shards = a.shards;
    s.seed = a.seed;
    if let Some(t) = a.tie {
        s.tie_word_embeddings = t;
    }
    if a.no_rope_scaling {
        s.rope_scaling = RopeScaling::None;
    }
    if let Some(m) = a.max_position {
        s.max_position_embeddings = m;
    }
    if let Some(y) = &a.yarn {
        s.rope_scaling = parse_yarn(y)?;
    }
    if let Some(d) = a.dtype {
        s.dtype = match d.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => bail!("--dtype {other}: expected f32, f16 or bf16"),
        };
    }
    let cfg = write_model(&a.out, &s)?;
    eprintln!(
        "wrote {} ({:?}, hidden {}, {} layers, vocab {})",
        a.out.display(),
        cfg.arch,
        cfg.hidden_size,
        cfg.num_layers,
        cfg.vocab_size
    );
    Ok(ExitCode::SUCCESS)
}

/// `path` as a local directory, or an error that says how to get one: doppel reads local
/// checkpoints only (`Qwen/Qwen3-0.6B` is a Hub id, not a directory).
fn local_dir(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let shown = path.display();
    if path.exists() {
        bail!("{flag} {shown}: not a directory; pass the directory holding config.json and tokenizer.json");
    }
    let s = path.to_string_lossy();
    let hub_like = !path.is_absolute() && !s.starts_with('.') && s.matches('/').count() == 1;
    if hub_like {
        bail!(
            "{flag} {shown}: no such local directory; doppel does not download models: fetch it \
             first (e.g. `huggingface-cli download {s} --local-dir DIR`) and pass {flag} DIR"
        );
    }
    bail!("{flag} {shown}: no such directory")
}

/// `--tp-size`: at least 1 (CPU worker threads, or GPUs from the CUDA device).
pub(crate) fn check_tp(tp_size: usize) -> anyhow::Result<()> {
    if tp_size == 0 {
        bail!("--tp-size must be at least 1");
    }
    Ok(())
}

/// `cpu` → None, `cuda` → Some(0), `cuda:N` → Some(N).
fn parse_device(d: &str) -> anyhow::Result<Option<usize>> {
    match d {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        _ => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => bail!("--device {d}: expected cpu, cuda or cuda:N"),
        },
    }
}

fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    local_dir("--model", &a.model)?;
    let cuda = parse_device(&a.device)?;
    check_tp(a.tp_size)?;
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads")?;
    }
    let tok = Tokenizer::load(&a.model)?;
    let gen_cfg = GenerationConfig::load(&a.model)?.unwrap_or_default();
    let (cpu_model, cfg) = if cuda.is_some() {
        (None, doppel_exec::model::ModelConfig::load(&a.model)?)
    } else {
        let (model, report) = CpuLoaded::load(&a.model, a.tp_size, !a.quiet)?;
        let cfg = model.config().clone();
        eprintln!(
            "loaded {:?} from {} in {:.2} s: {:.1} MiB of weights in memory ({:.1} MiB on \
             disk){}",
            cfg.arch,
            a.model.display(),
            report.elapsed.as_secs_f64(),
            report.weight_bytes as f64 / (1 << 20) as f64,
            report.checkpoint_bytes as f64 / (1 << 20) as f64,
            match a.tp_size {
                1 => String::new(),
                n => format!(", split over {n} tensor-parallel ranks"),
            }
        );
        (Some(model), cfg)
    };
    let text = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &a.prompt));
        tok.apply_chat_template(&msgs, true)?
    } else {
        a.prompt.clone()
    };
    // A rendered template already holds its special tokens.
    let prompt = tok.encode(&text, !a.chat)?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let mut sp = SamplingParams::default();
    if !a.no_generation_config {
        gen_cfg.apply_defaults(&mut sp);
    }
    if let Some(t) = a.temperature {
        sp.temperature = t;
    }
    if let Some(t) = a.top_p {
        sp.top_p = t;
    }
    if let Some(k) = a.top_k {
        sp.top_k = k;
    }
    if let Some(m) = a.min_p {
        sp.min_p = m;
    }
    if let Some(r) = a.repetition_penalty {
        sp.repetition_penalty = r;
    }
    sp.max_new_tokens = a.max_new_tokens;
    sp.min_new_tokens = a.min_new_tokens;
    sp.frequency_penalty = a.frequency_penalty;
    sp.presence_penalty = a.presence_penalty;
    sp.seed = a.seed;
    sp.stop_token_ids = a.stop_token_id.clone();
    sp.ignore_eos = a.ignore_eos;
    sp.return_logprob = a.logprobs.is_some();
    sp.top_logprobs = a.logprobs.unwrap_or(0);
    check_sampling(&sp)?;
    let mut eos = gen_cfg.eos_token_ids.clone();
    for e in &cfg.eos_token_ids {
        if !eos.contains(e) {
            eos.push(*e);
        }
    }
    let mut sched = SchedulerConfig {
        kv_capacity_tokens: a.kv_capacity.unwrap_or(8192),
        page_size: a.page_size,
        context_len: cfg
            .context_length(a.context_length)
            .map_err(|e| anyhow!("{}: {e}", a.model.display()))?,
        chunked_prefill_size: (a.chunked_prefill_size > 0).then_some(a.chunked_prefill_size),
        eos_token_ids: eos,
        ..Default::default()
    };
    if a.page_size == 0 {
        bail!("--page-size must be at least 1");
    }
    match (cpu_model, cuda) {
        (Some(model), _) => {
            let backend = model.into_backend(sched.capacity_tokens(), a.seed.unwrap_or(0))?;
            for (r, m) in backend.tp_rank_memory().iter().enumerate() {
                eprintln!(
                    "TP rank {r}: {:.1} MiB of weights, {:.1} MiB of KV cache",
                    m.weights as f64 / (1 << 20) as f64,
                    m.kv as f64 / (1 << 20) as f64
                );
            }
            let engine = Engine::new(Scheduler::new(sched)?, backend, a.overlap);
            run_requests(engine, &a, &tok, &prompt, &sp)
        }
        (None, device) => {
            use doppel_exec::cuda::tp::backend::TpCudaBackend;
            use doppel_exec::cuda::{backend::CudaBackend, startup::CudaOptions};
            let opts = CudaOptions {
                device: device.unwrap_or(0),
                mem_fraction_static: a.mem_fraction_static,
                kv_capacity_tokens: a.kv_capacity,
                cuda_graph_max_bs: a.cuda_graph_max_bs,
                random_weights: false,
                seed: a.seed.unwrap_or(0),

                ..Default::default()
            };
            let what = || format!("--tp-size {} --device {}", a.tp_size, a.device);
            if a.tp_size > 1 {
                let (backend, capacity) =
                    TpCudaBackend::from_checkpoint(&a.model, &opts, &sched, a.tp_size)
                        .with_context(what)?;
                sched.kv_capacity_tokens = capacity;
                let engine = Engine::new(Scheduler::new(sched)?, backend, a.overlap);
                return run_requests(engine, &a, &tok, &prompt, &sp);
            }
            let (backend, capacity) =
                CudaBackend::from_checkpoint(&a.model, &opts, &sched).with_context(what)?;
            sched.kv_capacity_tokens = capacity;
            let engine = Engine::new(Scheduler::new(sched)?, backend, a.overlap);
            run_requests(engine, &a, &tok, &prompt, &sp)
        }
    }
}

/// Submit `a.n` copies of the prompt, stream request 0's text to stdout, print the totals.
fn run_requests<B: Backend>(
    mut engine: Engine<B>,
    a: &GenerateArgs,
    tok: &Tokenizer,
    prompt: &[u32],
    sp: &SamplingParams,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let mut streams = BTreeMap::new();
    for i in 0..a.n as u64 {
        let spec = RequestSpec::new(RequestId(i), prompt.to_vec(), sp.clone(), now());
        let adm = engine.scheduler.submit(spec)?;
        if adm.clipped && i == 0 {
            eprintln!(
                "note: max_new_tokens clipped to {} by the context length",
                adm.max_new_tokens
            );
        }
        streams.insert(
            i,
            TextStream::new(&a.stop, a.include_stop, a.min_new_tokens, true),
        );
    }
    let mut out = std::io::stdout().lock();
    let mut events = Vec::new();
    let mut aborts = Vec::new();
    let mut first_token_at = None;
    let mut finished = Vec::new();
    let mut generated = 0usize;
    loop {
        engine
            .iterate(now(), &mut events)
            .map_err(|e| anyhow!("{e}"))?;
        for ev in events.drain(..).chain(std::mem::take(&mut aborts)) {
            match ev {
                Event::Token {
                    id, token, logprob, ..
                } => {
                    let Some(stream) = streams.get_mut(&id.0) else {
                        continue;
                    };
                    generated += 1;
                    first_token_at.get_or_insert_with(&now);
                    let step = stream.push(tok, token)?;
                    if id.0 == 0 {
                        out.write_all(step.emit.as_bytes())?;
                        out.flush()?;
                        if let Some(lp) = logprob {
                            let piece = tok.decode(&[token], false)?;
                            let top: Vec<String> = lp
                                .top
                                .iter()
                                .map(|(t, l)| {
                                    format!(
                                        "{:?}:{l:.3}",
                                        tok.decode(&[*t], false).unwrap_or_default()
                                    )
                                })
                                .collect();
                            eprintln!(
                                "[logprob {token} {piece:?} {:.4} | {}]",
                                lp.logprob,
                                top.join(" ")
                            );
                        }
                    }
                    if let Some(s) = step.stopped {
                        let mut evs = Vec::new();
                        engine
                            .scheduler
                            .abort(id, FinishReason::StopString(s), now(), &mut evs);
                        aborts.extend(evs);
                    }
                }
                Event::Finished(info) => {
                    if let Some(mut stream) = streams.remove(&info.id.0) {
                        let tail = stream.finish(tok)?;
                        if info.id.0 == 0 {
                            out.write_all(tail.as_bytes())?;
                            out.flush()?;
                        }
                    }
                    finished.push(info);
                }
                // `exec generate` asks for no prompt logprobs.
                Event::PromptLogprobs { .. } => {}
            }
        }
        if aborts.is_empty() && engine.is_idle() {
            break;
        }
    }
    writeln!(out)?;
    let total = start.elapsed().as_secs_f64();
    let ttft = first_token_at.map_or(0.0, |t| t as f64 / 1e9);
    let decode_tokens = generated.saturating_sub(finished.len());
    finished.sort_by_key(|f| f.id);
    if let Some(f) = finished.first() {
        eprintln!(
            "request 0: {:?}; prompt tokens {}, generated tokens {}, cached tokens {}",
            f.reason, f.prompt_tokens, f.output_tokens, f.cached_tokens
        );
    }
    let cached: usize = finished.iter().map(|f| f.cached_tokens).sum();
    eprintln!(
        "{} request(s): prompt tokens {}, generated tokens {generated}, cached tokens {cached}; time {total:.3} s (first token {:.1} ms), decode {:.1} tok/s, overall {:.1} tok/s",
        finished.len(),
        prompt.len() * a.n,
        ttft * 1e3,
        decode_tokens as f64 / (total - ttft).max(1e-9),
        generated as f64 / total.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

fn check_sampling(p: &SamplingParams) -> anyhow::Result<()> {
    if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
        bail!(
            "--temperature {}: must be a finite number >= 0",
            p.temperature
        );
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        bail!("--top-p {}: must be in (0, 1]", p.top_p);
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        bail!("--min-p {}: must be in [0, 1]", p.min_p);
    }
    if !(p.repetition_penalty > 0.0 && p.repetition_penalty.is_finite()) {
        bail!(
            "--repetition-penalty {}: must be positive",
            p.repetition_penalty
        );
    }
    if p.top_k == 0 || p.top_k < -1 {
        bail!("--top-k {}: must be -1 (off) or at least 1", p.top_k);
    }
    Ok(())
}
