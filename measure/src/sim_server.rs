//! `doppel exec serve --backend sim`: the HTTP server over the simulator's virtual GPU on the
//! wall clock. Clients see the profile's latencies; tokens are synthetic, drawn from the
//! tokenizer's ordinary tokens when one is given, so every token has text.

use doppel_core::{
    Backend, Plan, PlanEntry, PromptRows, StepResult, TimeNs, TokenId, TokenLogprob,
};
use doppel_exec::constraint::Synthesized;
use doppel_exec::server::{load_tokenizer, ExternalBackend, Server, ServerConfig, ServerError};
use doppel_sim::backend::{BackendError, SimBackend};
use doppel_sim::{CostModel, Profile, RooflineCost};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The built-in profile served when none is named: calibrated against our engine on an H100.
pub const DEFAULT_PROFILE: &str = "h100-80g/qwen3-0.6b/doppel";

/// Without a tokenizer, ids start here: clear of the special ids at the bottom of real
/// vocabularies (the simulator's own rule, `doppel_sim::workload::synth_token`).
const FIRST_PLAIN_ID: u32 = 1000;

/// splitmix64's finalizer over two words: a stable, well-spread hash.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b ^ 0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which token each request emits at each output index: a function of the request's seed (or,
/// without one, of the server seed and the request id) and the index only, so a seeded request
/// is reproducible.
struct Tokens {
    ids: Vec<TokenId>,
    seed: u64,
}

impl Tokens {
    /// Position in `ids` of the token `e` gets in this step.
    fn pick(&self, e: &PlanEntry) -> usize {
        let key = match e.sampling.seed {
            Some(s) => mix(s, 0x5EED),
            None => mix(self.seed, e.id.0),
        };
        let index = e.seq_len().saturating_sub(e.prompt_len) as u64;
        (mix(key, index) % self.ids.len() as u64) as usize
    }

    /// Numeric logprobs: the sampled token is the most likely, with p in [0.4, 0.9]; the
    /// alternatives share the rest, halving each rank, so the listed mass stays below 1.
    fn logprob(&self, e: &PlanEntry, r: usize) -> TokenLogprob {
        let h = mix(r as u64, e.id.0 ^ e.seq_len() as u64);
        let p = 0.4 + 0.5 * (h % 1000) as f64 / 1000.0;
        let mut top = vec![(self.ids[r], p.ln() as f32)];
        let mut rest = 1.0 - p;
        for j in 1..e.sampling.top_logprobs.min(self.ids.len()) {
            rest /= 2.0;
            top.push((self.ids[(r + j) % self.ids.len()], rest.ln() as f32));
        }
        if e.sampling.top_logprobs == 0 {
            top.clear();
        }
        TokenLogprob {
            logprob: p.ln() as f32,
            top,
        }
    }

    /// Prompt logprobs in the same spirit: the prompt token scored at each row gets p in
    /// [0.05, 0.9] from (position, token) alone, so chunking and cache hits cannot change it;
    /// synthetic alternatives share the rest, halving rank by rank, and the top list is the
    /// most likely of them and the token itself (total mass below 1).
    fn prompt_logprobs(&self, rows: &PromptRows, top_n: usize) -> Vec<TokenLogprob> {
        rows.positions()
            .zip(&rows.targets)
            .map(|(pos, &t)| {
                let h = mix(pos as u64, t as u64);
                let p = 0.05 + 0.85 * (h % 1000) as f64 / 1000.0;
                let n = top_n.min(self.ids.len());
                let base = (h >> 20) as usize;
                let mut mass = 1.0 - p;
                let mut top: Vec<(TokenId, f64)> = (0..self.ids.len())
                    .map(|j| self.ids[(base + j) % self.ids.len()])
                    .filter(|&a| a != t)
                    .take(n)
                    .map(|a| {
                        mass /= 2.0;
                        (a, mass)
                    })
                    .collect();
                top.push((t, p));
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                top.truncate(n);
                TokenLogprob {
                    logprob: p.ln() as f32,
                    top: top
                        .into_iter()
                        .map(|(a, q)| (a, q.max(f64::MIN_POSITIVE).ln() as f32))
                        .collect(),
                }
            })
            .collect()
    }
}

/// The simulator's virtual GPU on the wall clock: results are released when the cost model says
/// the step ends, so clients see real latencies.
struct Realtime<C: CostModel> {
    inner: SimBackend<C>,
    start: Instant,
    tokens: Tokens,
}

impl<C: CostModel> Backend for Realtime<C> {
    type Error = BackendError;

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), Self::Error> {
        self.inner.launch(plan, now)
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), Self::Error> {
        let first = out.tokens.len();
        self.inner.collect(plan, out)?;
        out.tokens.truncate(first);
        let picks: Vec<usize> = plan.entries.iter().map(|e| self.tokens.pick(e)).collect();
        out.tokens.extend(picks.iter().map(|&r| self.tokens.ids[r]));
        if plan.entries.iter().any(|e| e.sampling.return_logprob) {
            out.logprobs.extend(
                plan.entries
                    .iter()
                    .zip(&picks)
                    .map(|(e, &r)| e.sampling.return_logprob.then(|| self.tokens.logprob(e, r))),
            );
        }
        out.prompt_logprobs.clear();
        for (i, e) in plan.entries.iter().enumerate() {
            if let Some(rows) = &e.prompt_logprobs {
                let lps = self.tokens.prompt_logprobs(rows, e.sampling.top_logprobs);
                out.prompt_logprobs.push((i, lps));
            }
        }
        let due = self.start + Duration::from_nanos(out.done_at);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        Ok(())
    }
}

/// Build a server whose backend is `profile` (a built-in name or a .yaml file; None: the
/// default) in real time. With a tokenizer (`cfg.tokenizer`, else `cfg.model`) the text is real.
pub fn build(cfg: ServerConfig, profile: Option<&str>) -> Result<Server, ServerError> {
    let p = Profile::load(profile.unwrap_or(DEFAULT_PROFILE))
        .map_err(|e| ServerError::Load(e.to_string()))?;
    let kv = p.kv_capacity_from_fraction(p.default_mem_fraction(cfg.chunked_prefill_size, 1), 1);
    let tokenizer = match cfg.tokenizer.as_ref().or(cfg.model.as_ref()) {
        Some(dir) => Some(Arc::new(load_tokenizer(&cfg, dir)?)),
        None if cfg.chat_template.is_some() => {
            return Err(ServerError::Config(
                "--chat-template needs a tokenizer (--model or --tokenizer-path)".into(),
            ))
        }
        None => None,
    };
    let (ids, vocab) = match &tokenizer {
        Some(t) => (t.ordinary_ids(), t.vocab_size()),
        None => (
            (FIRST_PLAIN_ID..p.model.vocab as u32).collect(),
            p.model.vocab,
        ),
    };
    if ids.is_empty() {
        return Err(ServerError::Load(
            "the tokenizer has no ordinary (non-special) tokens to generate".into(),
        ));
    }
    let origin = Instant::now();
    let ext = ExternalBackend {
        // Constrained requests draw their synthetic tokens through their grammar, so the
        // simulated server answers schema-valid JSON (docs/structured.md).
        backend: Synthesized::new(
            Realtime {
                inner: SimBackend::new(RooflineCost::new(&p, 1), p.model.vocab, false),
                start: origin,
                tokens: Tokens {
                    ids,
                    seed: cfg.seed,
                },
            },
            vocab,
        ),
        name: p.model.name.clone(),
        backend_name: format!("sim:{}", p.name),
        vocab,
        arch: "sim".to_string(),
        context_len: p.model.context_len,
        kv_capacity_tokens: kv,
        cuda_graph: true,
        origin,
        tokenizer,
    };
    Server::build_with(cfg, ext)
}
