//! Building a server: backend, tokenizer, scheduler, the engine thread; serving and shutdown.

use super::config::{BackendKind, ServerConfig, ServerError};
use super::conn::{Acceptor, ConnLimits};
use super::engine::{self, Command, LoopOptions, Shared, Snapshot};
use super::options::{self, LoadFormat};
use super::reasoning::ReasoningFormat;
use super::toolcall::ToolFormat;
use super::{log, AppState, Codec, Info};
use crate::cpu_backend::CpuLoaded;
use crate::tokenizer::{GenerationConfig, Tokenizer};
use doppel_core::{Backend, Engine, SamplingParams, Scheduler, SchedulerConfig};

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A built server: the engine thread is running; call [`Server::serve`].
pub struct Server {
    state: Arc<AppState>,
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown_timeout: Duration,
    conn: ConnLimits,
}

/// The context length `cfg` asks for, checked against the model (`--context-length`).
fn context_len(
    mc: &crate::model::ModelConfig,
    cfg: &ServerConfig,
    dir: &std::path::Path,
) -> Result<usize, ServerError> {
    mc.context_length(cfg.context_length)
        .map_err(|e| ServerError::Config(format!("{}: {e}", dir.display())))
}

fn dir_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn spawn<B: Backend + Send + 'static>(
    sched: SchedulerConfig,
    backend: B,
    overlap: bool,
    rx: std::sync::mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    opts: LoopOptions,
) -> Result<(std::thread::JoinHandle<()>, usize), ServerError> {
    let scheduler =
        Scheduler::new(sched).map_err(|e| ServerError::Config(format!("scheduler: {e}")))?;
    let max_running = scheduler.max_running_requests();
    let eng = Engine::new(scheduler, backend, overlap);
    let h = std::thread::Builder::new()
        .name("doppel-engine".into())
        .spawn(move || {
            let s2 = shared.clone();
            let run = std::panic::AssertUnwindSafe(move || engine::run(eng, rx, s2, opts));
            if std::panic::catch_unwind(run).is_err() {
                // Handlers see their channels close; /health must see it too.
                let mut snap = shared.snapshot();
                snap.alive = false;
                snap.error = Some("the engine thread panicked".into());
                shared.publish(snap);
            }
        })
        .map_err(|e| ServerError::Io(format!("cannot start the engine thread: {e}")))?;
    Ok((h, max_running))
}

/// The parsers named on the command line.
fn parsers(
    cfg: &ServerConfig,
) -> Result<(Option<ToolFormat>, Option<ReasoningFormat>), ServerError> {
    let tool = match &cfg.tool_call_parser {
        None => None,
        Some(n) => Some(ToolFormat::parse(n).ok_or_else(|| {
            ServerError::Config(format!(
                "--tool-call-parser {n}: expected one of {}",
                ToolFormat::NAMES
            ))
        })?),
    };
    let reasoning = match &cfg.reasoning_parser {
        None => None,
        Some(n) => Some(ReasoningFormat::parse(n).ok_or_else(|| {
            ServerError::Config(format!(
                "--reasoning-parser {n}: expected one of {}",
                ReasoningFormat::NAMES
            ))
        })?),
    };
    Ok((tool, reasoning))
}

/// A backend built outside doppel-exec (the simulator's virtual GPU, in doppel-measure) and the
/// facts the server needs about it.
pub struct ExternalBackend<B> {
    /// The backend that runs plans.
    pub backend: B,
    /// Served model name unless `--served-model-name` is given.
    pub name: String,
    /// What /get_server_info reports as the backend (e.g. "sim:<profile>").
    pub backend_name: String,
    /// Vocabulary size (token ids must be below it).
    pub vocab: usize,
    /// Architecture name for /get_model_info.
    pub arch: String,
    /// Context length.
    pub context_len: usize,
    /// KV capacity in tokens when the config gives none.
    pub kv_capacity_tokens: usize,
    /// Whether decode steps count as graph replays in the batch log.
    pub cuda_graph: bool,
    /// The engine clock's zero (a wall-clock backend releases results against it).
    pub origin: Instant,
    /// The tokenizer (see [`load_tokenizer`](super::load_tokenizer)); None: synthetic text.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

/// What the common part of start-up has made before a backend is chosen.
struct Prelude {
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<Command>,
    rx: std::sync::mpsc::Receiver<Command>,
    sched: SchedulerConfig,
    opts: LoopOptions,
    defaults: SamplingParams,
    parsers: (Option<ToolFormat>, Option<ReasoningFormat>),
}

/// The served model's facts once its backend is running.
struct Facts {
    codec: Codec,
    name: String,
    backend_name: String,
    vocab: usize,
    arch: String,
}

impl Prelude {
    fn new(cfg: &ServerConfig, start: Instant) -> Result<Prelude, ServerError> {
        if cfg.page_size == 0 {
            return Err(ServerError::Config("--page-size must be at least 1".into()));
        }
        // Checked before a model loads, so a misspelt name fails at once.
        let parsers = parsers(cfg)?;
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(Snapshot {
                alive: true,
                ..Default::default()
            }),
            start,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sched = SchedulerConfig {
            page_size: cfg.page_size,
            chunked_prefill_size: cfg.chunked_prefill_size,
            max_running_requests: cfg.max_running_requests,
            policy: cfg.policy,
            disable_radix_cache: cfg.disable_radix_cache,
            enable_mixed_chunk: cfg.enable_mixed_chunk,
            mixed_step_tokens: cfg.mixed_step_tokens,
            seed: cfg.seed,
            ..Default::default()
        };
        if let Some(m) = cfg.max_prefill_tokens {
            sched.max_prefill_tokens = m;
        }
        let recorder = match &cfg.record {
            Some(r) => {
                let rec = super::record::Recorder::create(r.clone(), 0)
                    .map_err(|e| ServerError::Config(e.to_string()))?;
                Some(Arc::new(Mutex::new(rec)))
            }
            None => None,
        };
        let opts = LoopOptions {
            max_queued: cfg.max_queued_requests,
            log_batches: cfg.log_batches,
            cuda_graph: false,
            recorder,
        };
        Ok(Prelude {
            shared,
            tx,
            rx,
            sched,
            opts,
            defaults: SamplingParams::default(),
            parsers,
        })
    }

    /// Tokenizer, generation defaults and stop ids of a checkpoint directory.
    fn checkpoint(
        &mut self,
        cfg: &ServerConfig,
        dir: &std::path::Path,
        model_eos: &[u32],
    ) -> Result<Tokenizer, ServerError> {
        let load = |e: &dyn std::fmt::Display| ServerError::Load(e.to_string());
        let tok = options::load_tokenizer(cfg, dir)?;
        let gen_cfg = GenerationConfig::load(dir)
            .map_err(|e| load(&e))?
            .unwrap_or_default();
        gen_cfg.apply_defaults(&mut self.defaults);
        let mut eos = gen_cfg.eos_token_ids.clone();
        for e in model_eos {
            if !eos.contains(e) {
                eos.push(*e);
            }
        }
        self.sched.eos_token_ids = eos;
        Ok(tok)
    }

    /// Start the engine thread over `backend` and assemble the server.
    fn finish<B: Backend + Send + 'static>(
        self,
        cfg: &ServerConfig,
        backend: B,
        facts: Facts,
    ) -> Result<Server, ServerError> {
        let Prelude {
            shared,
            tx,
            rx,
            sched,
            opts,
            defaults,
            parsers: (tool_call_parser, reasoning_parser),
            ..
        } = self;
        let (thread, max_running) = spawn(
            sched.clone(),
            backend,
            cfg.overlap,
            rx,
            shared.clone(),
            opts,
        )?;
        let grammars = grammars_for(&facts.codec, facts.vocab, &sched.eos_token_ids);
        if let Err(why) = &grammars {
            log::info(&format!("structured outputs off: {why}"));
        }
        let info = Info {
            model_name: cfg.served_model_name.clone().unwrap_or(facts.name),
            model_path: cfg.model.as_ref().map(|p| p.display().to_string()),
            tokenizer_path: cfg
                .tokenizer
                .as_ref()
                .or(cfg.model.as_ref())
                .map(|p| p.display().to_string()),
            backend: facts.backend_name,
            vocab: facts.vocab,
            context_len: sched.context_len,
            capacity: sched.capacity_tokens(),
            page_size: sched.page_size,
            chunked_prefill_size: sched.chunked_prefill_size,
            max_running_requests: max_running,
            max_queued_requests: cfg.max_queued_requests,
            policy: sched.policy.name().to_string(),
            disable_radix_cache: sched.disable_radix_cache,
            enable_mixed_chunk: sched.enable_mixed_chunk,
            mixed_step_tokens: sched.mixed_step_tokens,
            overlap: cfg.overlap,
            tp_size: cfg.tp_size,
            max_body_bytes: cfg.max_body_bytes,
            tool_call_parser: tool_call_parser.or(match facts.arch.as_str() {
                "Llama" => Some(ToolFormat::Llama3),
                "Qwen2" | "Qwen3" => Some(ToolFormat::Hermes),
                _ => None,
            }),
            reasoning_parser,
            arch: facts.arch,
            created: unix_now(),
        };
        Ok(Server {
            state: Arc::new(AppState {
                cmd: tx,
                shared,
                codec: super::prompt::PromptCodec::new(facts.codec, sched.context_len),
                info,
                metrics: Default::default(),
                next_id: AtomicU64::new(0),
                draining: AtomicBool::new(false),
                defaults,
                grammars,
                rids: Default::default(),
                api_key: cfg.api_key.clone(),
            }),
            thread: Some(thread),
            shutdown_timeout: cfg.shutdown_timeout,
            conn: cfg.conn.clone(),
        })
    }
}

impl Server {
    /// Load the model, build the scheduler and start the engine thread on `backend`.
    pub fn build(cfg: ServerConfig, backend: BackendKind) -> Result<Server, ServerError> {
        if cfg.tp_size == 0 {
            return Err(ServerError::Config("--tp-size must be at least 1".into()));
        }
        let p = Prelude::new(&cfg, Instant::now())?;
        match &backend {
            BackendKind::Cpu => Self::build_cpu(p, &cfg),
            BackendKind::Cuda {
                device,
                mem_fraction_static,
                cuda_graph_max_bs,
                kernels,
            } => Self::build_cuda(
                p,
                &cfg,
                *device,
                *mem_fraction_static,
                *cuda_graph_max_bs,
                *kernels,
            ),
        }
    }

    /// Serve over a backend built elsewhere (the simulator's, from doppel-measure), with its
    /// tokenizer if it has one (else token ids are their own text).
    pub fn build_with<B: Backend + Send + 'static>(
        cfg: ServerConfig,
        ext: ExternalBackend<B>,
    ) -> Result<Server, ServerError> {
        let mut p = Prelude::new(&cfg, ext.origin)?;
        let codec = match ext.tokenizer {
            Some(t) => Codec::Hf(t),
            None => Codec::Synthetic,
        };
        p.sched.context_len = cfg.context_length.unwrap_or(ext.context_len);
        if p.sched.context_len == 0 {
            return Err(ServerError::Config(
                "--context-length 0: must be positive".into(),
            ));
        }
        p.sched.kv_capacity_tokens = cfg.kv_capacity.unwrap_or(ext.kv_capacity_tokens);
        p.opts.cuda_graph = ext.cuda_graph;
        let facts = Facts {
            codec,
            name: ext.name,
            backend_name: ext.backend_name,
            vocab: ext.vocab,
            arch: ext.arch,
        };
        p.finish(&cfg, ext.backend, facts)
    }

    fn build_cpu(mut p: Prelude, cfg: &ServerConfig) -> Result<Server, ServerError> {
        let dir = cfg
            .model
            .clone()
            .ok_or_else(|| ServerError::Config("--model is required with --device cpu".into()))?;
        if cfg.load_format == LoadFormat::Dummy {
            return Err(ServerError::Config(
                "--load-format dummy needs --device cuda (the CPU backend loads the checkpoint's weights)"
                    .into(),
            ));
        }
        let (model, report) = CpuLoaded::load(&dir, cfg.tp_size, false)
            .map_err(|e| ServerError::Load(e.to_string()))?;
        let mc = model.config().clone();
        log::info(&format!(
            "loaded {:?} from {} in {:.2} s ({:.1} MiB of weights{})",
            mc.arch,
            dir.display(),
            report.elapsed.as_secs_f64(),
            report.weight_bytes as f64 / (1 << 20) as f64,
            match model.tp_size() {
                1 => String::new(),
                n => format!(", over {n} tensor-parallel ranks"),
            }
        ));
        let tok = p.checkpoint(cfg, &dir, &mc.eos_token_ids)?;
        p.sched.kv_capacity_tokens = cfg.kv_capacity.unwrap_or(8192);
        p.sched.context_len = context_len(&mc, cfg, &dir)?;
        let backend = model
            .into_backend(p.sched.capacity_tokens(), cfg.seed)
            .map_err(|e| ServerError::Load(e.to_string()))?;
        for (r, m) in backend.tp_rank_memory().iter().enumerate() {
            log::info(&format!(
                "TP rank {r}: {:.1} MiB of weights, {:.1} MiB of KV cache",
                m.weights as f64 / (1 << 20) as f64,
                m.kv as f64 / (1 << 20) as f64
            ));
        }
        let facts = Facts {
            codec: Codec::Hf(Arc::new(tok)),
            name: dir_name(&dir),
            backend_name: "cpu".to_string(),
            vocab: mc.vocab_size,
            arch: format!("{:?}", mc.arch),
        };
        p.finish(cfg, backend, facts)
    }

    fn build_cuda(
        mut p: Prelude,
        cfg: &ServerConfig,
        device: usize,
        mem_fraction_static: Option<f64>,
        cuda_graph_max_bs: usize,
        kernels: crate::cuda::model::KernelChoice,
    ) -> Result<Server, ServerError> {
        use crate::cuda::{backend::CudaBackend, startup::CudaOptions, tp::backend::TpCudaBackend};
        let dir = cfg
            .model
            .clone()
            .ok_or_else(|| ServerError::Config("--model is required with --device cuda".into()))?;
        let mc =
            crate::model::ModelConfig::load(&dir).map_err(|e| ServerError::Load(e.to_string()))?;
        let tok = p.checkpoint(cfg, &dir, &mc.eos_token_ids)?;
        p.sched.context_len = context_len(&mc, cfg, &dir)?;
        let opts_cuda = CudaOptions {
            device,
            mem_fraction_static,
            kv_capacity_tokens: cfg.kv_capacity,
            cuda_graph_max_bs,
            random_weights: cfg.load_format == LoadFormat::Dummy,
            seed: cfg.seed,
            kernels,
        };
        let tp = cfg.tp_size;
        let fail = |e: &dyn std::fmt::Display| match tp {
            1 => ServerError::Load(format!("--device cuda:{device}: {e}")),
            _ => ServerError::Load(format!("--tp-size {tp} --device cuda:{device}: {e}")),
        };
        p.opts.cuda_graph = cuda_graph_max_bs > 0;
        let facts = Facts {
            codec: Codec::Hf(Arc::new(tok)),
            name: dir_name(&dir),
            backend_name: match tp {
                1 => format!("cuda:{device}"),
                _ => format!("cuda:{device}..{} (tp {tp})", device + tp - 1),
            },
            vocab: mc.vocab_size,
            arch: format!("{:?}", mc.arch),
        };
        // Capture every decode graph before the first request, as SGLang does at start-up.
        if tp == 1 {
            let (mut backend, capacity) =
                CudaBackend::from_checkpoint(&dir, &opts_cuda, &p.sched).map_err(|e| fail(&e))?;
            p.sched.kv_capacity_tokens = capacity;
            warm_up_cuda(&mut backend, &p.sched, mc.vocab_size, cuda_graph_max_bs)
                .map_err(|e| fail(&e))?;
            return p.finish(cfg, backend, facts);
        }
        let (mut backend, capacity) =
            TpCudaBackend::from_checkpoint(&dir, &opts_cuda, &p.sched, tp).map_err(|e| fail(&e))?;
        p.sched.kv_capacity_tokens = capacity;
        for (r, m) in backend.rank_memory().iter().enumerate() {
            log::info(&format!(
                "TP rank {r} (cuda:{}): {:.1} MiB of weights, {:.1} MiB of KV cache",
                device + r,
                m.weights as f64 / (1 << 20) as f64,
                m.kv as f64 / (1 << 20) as f64
            ));
        }
        warm_up_cuda(&mut backend, &p.sched, mc.vocab_size, cuda_graph_max_bs)
            .map_err(|e| fail(&e))?;
        p.finish(cfg, backend, facts)
    }

    /// The served model's facts.
    pub fn info(&self) -> &Info {
        &self.state.info
    }

    /// Serve on `listener` until `shutdown` resolves; then answer new requests 503 while live
    /// ones run for the shutdown timeout, abort the rest, stop the engine thread, and close the
    /// listener and the connections (those whose client stopped reading are dropped 5 s later).
    /// Returns the final engine snapshot (tests check it for KV leaks).
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Snapshot, ServerError> {
        let app = super::routes::router(self.state.clone());
        let acceptor = Acceptor::start(listener, app, self.state.clone(), &self.conn);
        shutdown.await;
        log::info("shutting down: answering 503 to new requests, draining live ones");
        // Still accepting: new requests get a 503 (docs/server.md#shutdown) until the engine stops.
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.state.cmd.send(Command::Shutdown {
            drain: self.shutdown_timeout,
        });
        if let Some(h) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        // Every stream has its last events: let them reach their clients, then close.
        acceptor.close(Duration::from_secs(5)).await;
        let snap = self.state.shared.snapshot();
        let m = &snap.memory;
        log::info(&format!(
            "engine stopped: KV free {} + evictable {} of capacity {}",
            m.free, m.evictable, m.capacity
        ));
        Ok(snap)
    }
}

/// Bind `host:port` and serve until SIGTERM or Ctrl-C (what `doppel exec serve` runs).
pub fn run_blocking(server: Server, host: &str, port: u16) -> Result<Snapshot, ServerError> {
    if let Some(n) = super::wire::raise_fd_limit() {
        log::info(&format!("open-file limit {n}"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let listener = listen(host, port)
            .await
            .map_err(|e| ServerError::Io(format!("cannot listen on {host}:{port}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Io(e.to_string()))?;
        log::info(&format!(
            "serving {} ({}) on http://{addr}",
            server.info().model_name,
            server.info().backend
        ));
        server.serve(listener, termination()).await
    })
}

/// Bind with a deep accept queue: a burst of connects beyond it loses SYNs, which clients retry
/// only after a second.
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(addr).and_then(|_| sock.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The constraint compiler over the served tokenizer (every backend applies constraints), or
/// why there is none.
fn grammars_for(
    codec: &Codec,
    vocab: usize,
    eos: &[u32],
) -> Result<crate::constraint::Grammars, String> {
    match codec {
        Codec::Hf(tok) => {
            crate::constraint::Grammars::new(tok, vocab, eos).map_err(|e| e.to_string())
        }
        Codec::Synthetic => Err("no tokenizer (--model DIR gives the sim one)".into()),
    }
}

/// Capture every decode graph and meet the prefill shapes before the first request.
fn warm_up_cuda<B: Backend>(
    backend: &mut B,
    sched: &SchedulerConfig,
    vocab: usize,
    cuda_graph_max_bs: usize,
) -> Result<(), String> {
    crate::warmup::warm_up(
        backend,
        sched,
        vocab,
        cuda_graph_max_bs,
        crate::warmup::PREFILL_BUCKETS,
    )
}
