//! Warm-up before serving or measuring: run every decode batch size once so the CUDA backend has
//! captured its graphs (SGLang captures them at start-up), and the first real request does not
//! pay for it.

use doppel_core::{
    Backend, Engine, Plan, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig,
    StepResult, TimeNs, TokenId,
};

/// A backend used through a mutable reference (one model serves several engines in turn).
pub struct ByRef<'a, B>(pub &'a mut B);

impl<B: Backend> Backend for ByRef<'_, B> {
    type Error = B::Error;

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), B::Error> {
        self.0.launch(plan, now)
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), B::Error> {
        self.0.collect(plan, out)
    }

    fn set_tuning(&mut self, on: bool) {
        self.0.set_tuning(on)
    }
}

/// Longest prompt the CUDA warm-up runs one prefill per GEMM row bucket for (64 prefills, well
/// under a second on an H100; longer prompts pay cuBLAS's first-call set-up once, a small part
/// of their own time).
pub const PREFILL_BUCKETS: usize = 4096;

/// A few prefills, then a decode batch that shrinks by one request per step, so every decode
/// batch size up to `graph_max` has run once (the CUDA backend captures a graph the first time it
/// meets a padded batch size). Runs on its own scheduler, so the caller starts with an empty
/// cache; the warm-up requests use ids at the top of the id space. With `prefill_buckets > 0`,
/// one prefill per GEMM row bucket up to that many tokens follows (`cuda::blas::bucket_rows`:
/// multiples of 16 to 64, then of 64), so the first prompts of each length bucket do not pay
/// cuBLAS's first-call set-up while serving. The backend may tune kernels for the shapes it
/// meets during the warm-up (`Backend::set_tuning`), and not after it.
pub fn warm_up<B: Backend>(
    backend: &mut B,
    cfg: &SchedulerConfig,
    vocab: usize,
    graph_max: usize,
    prefill_buckets: usize,
) -> Result<(), String> {
    backend.set_tuning(true);
    let r = warm_up_steps(backend, cfg, vocab, graph_max, prefill_buckets);
    backend.set_tuning(false);
    r
}

fn warm_up_steps<B: Backend>(
    backend: &mut B,
    cfg: &SchedulerConfig,
    vocab: usize,
    graph_max: usize,
    prefill_buckets: usize,
) -> Result<(), String> {
    let scheduler = Scheduler::new(cfg.clone()).map_err(|e| e.to_string())?;
    let mut engine = Engine::new(scheduler, ByRef(backend), false);
    let cap = cfg.capacity_tokens();
    let mut n = graph_max.min(cfg.effective_max_running());
    // Each staircase request holds 8 prompt tokens and up to n + 2 outputs.
    while n > 1 && n * (n + 12) > cap / 2 {
        n /= 2;
    }
    let mut specs: Vec<(usize, usize)> = (0..n).map(|k| (8, k + 2)).collect();
    for len in [64usize, 256, 512] {
        if len * 4 < cap && len + 9 < cfg.context_len {
            specs.push((len, 2));
        }
    }
    for (k, (len, out)) in specs.into_iter().enumerate() {
        let prompt: Vec<TokenId> = (0..len).map(|i| ((i * 7 + k) % vocab) as TokenId).collect();
        let mut sp = SamplingParams::greedy(out);
        sp.ignore_eos = true;
        let id = RequestId(u64::MAX - k as u64);
        engine
            .scheduler
            .submit(RequestSpec::new(id, prompt, sp, 0))
            .map_err(|e| format!("warm-up: {e}"))?;
    }
    run_to_idle(&mut engine)?;
    // One request at a time, so each step's token count is the bucket itself.
    let longest = prefill_buckets
        .min(cfg.max_prefill_tokens)
        .min(cap / 4)
        .min(cfg.context_len.saturating_sub(2));
    let lens = (2..=4).map(|k| 16 * k).chain((2..).map(|k| 64 * k));
    for (k, len) in lens.take_while(|&l| l <= longest).enumerate() {
        let prompt: Vec<TokenId> = (0..len)
            .map(|i| ((i * 13 + k) % vocab) as TokenId)
            .collect();
        let mut sp = SamplingParams::greedy(1);
        sp.ignore_eos = true;
        let id = RequestId(u64::MAX - 100_000 - k as u64);
        engine
            .scheduler
            .submit(RequestSpec::new(id, prompt, sp, 0))
            .map_err(|e| format!("warm-up: {e}"))?;
        run_to_idle(&mut engine)?;
    }
    Ok(())
}

fn run_to_idle<B: Backend>(engine: &mut Engine<ByRef<'_, B>>) -> Result<(), String> {
    let mut events = Vec::new();
    for _ in 0..100_000 {
        events.clear();
        let it = engine
            .iterate(0, &mut events)
            .map_err(|e| format!("warm-up: {e}"))?;
        if it.is_idle() && engine.is_idle() {
            return Ok(());
        }
    }
    Err("warm-up did not finish".into())
}
