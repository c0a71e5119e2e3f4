//! `CudaBackend`: runs the core's plans on [`GpuModel`] with the KV pool on the GPU.
//!
//! Per plan: the plan's table writes and each entry's new slots are scattered into a device
//! mirror of the request-to-slot table; FUTURE_TOKEN inputs are resolved on the device from the
//! last token sampled for that request (kept per table row by the sampling kernels), so the
//! overlap loop never waits for the previous step. Decode-only plans of up to
//! `max_graph_batch` entries replay a CUDA graph captured for the padded batch size (exact sizes
//! 1-8, then multiples of 8, then of 16 and 32); other plans run eagerly. Sampling runs on the
//! GPU (greedy, temperature, top-k, top-p, min-p with the request's seeded uniform); requests
//! with logit bias, penalties or logprobs are sampled on the host from downloaded logits.

use crate::constraint::TokenMatcher;
use crate::cuda::attention::{decode_splits, VisitOrder};
use crate::cuda::model::{GpuModel, KvPool, RowSampling, TokenPick, Workspace};
use crate::cuda::timing::StepEvents;
use crate::cuda::{CudaError, DriverCtx, Gpu, Result};
use crate::sampling::RequestSampler;
use cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};
use doppel_core::{Backend, Plan, RequestId, SamplingParams, StepResult, TimeNs, TokenLogprob};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;
use step::StepInputs;

mod constrain;
mod graphs;
mod prompt;
pub mod startup;
mod step;
mod table;
use constrain::Deferred;
pub use graphs::graph_sizes;
use graphs::Captured;

/// Sizes of the backend.
#[derive(Clone, Debug)]
pub struct CudaBackendConfig {
    /// KV slots the scheduler may hand out (slot 0 is the padding dummy; one more is allocated).
    pub kv_capacity_tokens: usize,
    /// Rows of the request table (the scheduler's request pool size).
    pub table_rows: usize,
    /// Longest context (prompt + output) of any request.
    pub context_len: usize,
    /// Most tokens in one plan.
    pub max_tokens: usize,
    /// Most entries in one plan.
    pub max_seqs: usize,
    /// Largest decode batch replayed from a CUDA graph (0 disables graphs).
    pub max_graph_batch: usize,
    /// Seed for requests that bring none.
    pub seed: u64,
}

struct Pending {
    step: u64,
    entries: usize,
    want: Vec<bool>,
    /// Tokens the host sampled for rows the GPU could not (by entry index).
    host: BTreeMap<usize, (u32, Option<TokenLogprob>)>,
    result: usize,
    want_lp: bool,
    started: Instant,
    now: TimeNs,
    /// CUDA events around the step (when step timing is on).
    events: Option<StepEvents>,
    /// Recorded after the step's samples were downloaded (None while the pick is deferred).
    done: Option<CudaEvent>,
    /// The pick, waiting for constraint masks.
    deferred: Option<Deferred>,
    /// Prompt logprobs (entry index, one per row), computed at launch.
    prompt: Vec<(usize, Vec<TokenLogprob>)>,
}

/// The GPU backend.
pub struct CudaBackend {
    /// The device.
    pub gpu: Gpu,
    /// The model.
    pub model: GpuModel,
    /// The KV pool and slot table.
    pub kv: KvPool,
    ws: Workspace,
    cfg: CudaBackendConfig,
    pad_row: usize,
    sms: usize,
    graphs: HashMap<(usize, TokenPick), Captured>,
    // Page-locked host copies of two steps' samples: a step's results are downloaded
    // asynchronously and waited on by their own event, so in the overlap order collecting step N
    // does not also wait for step N+1, which is already queued behind it.
    results: [PinnedHostSlice<u32>; 2],
    samplers: HashMap<RequestId, RequestSampler>,
    /// Grammar state of constrained requests.
    matchers: HashMap<RequestId, TokenMatcher>,
    mask_host: Vec<u32>,
    mask_dev: CudaSlice<u32>,
    mask_row_dev: CudaSlice<i32>,
    last_row: HashMap<RequestId, u32>,
    pending: VecDeque<Pending>,
    next_result: usize,
    /// Record CUDA events around every step and report `StepResult::device_ns`.
    step_timing: bool,
    /// Measure the GEMM shapes of eager steps before running them (warm-up; `set_tuning`).
    tuning: bool,
    /// GPU stall (ns) queued before the next step's work (profiling: see `stall_next_step`).
    stall_next: u64,
    /// End event of the last collected timed step.
    last_end: Option<cudarc::driver::CudaEvent>,
    /// Buffers for prompt logprobs (allocated with the backend, so a request that asks for
    /// them cannot meet a full device mid-serve).
    prompt_bufs: super::prompt_logprobs::PromptLogprobBufs,
    /// Each table row's position-0 slot: decode rows sharing a cached prefix run side by side
    /// (docs/cuda.md, "Decode attention").
    visit: VisitOrder,
}

impl CudaBackend {
    /// A backend over `model` on `gpu`.
    pub fn new(gpu: Gpu, model: GpuModel, cfg: CudaBackendConfig) -> Result<CudaBackend> {
        if cfg.context_len > model.max_pos {
            return Err(CudaError::Invalid {
                kernel: "backend",
                msg: format!(
                    "context length {} exceeds the RoPE table ({})",
                    cfg.context_len, model.max_pos
                ),
            });
        }
        // The model's workspace has room for cuBLAS's row buckets: few GEMM shapes, so the
        // warm-up meets them all (see `blas::bucket_rows`).
        gpu.blas.set_row_buckets(true);
        // One extra table row: the padding row for graph batches (never handed out by the core).
        let kv = KvPool::new(
            &gpu,
            &model,
            cfg.kv_capacity_tokens + 1,
            cfg.table_rows + 1,
            cfg.context_len,
        )?;
        let sms = gpu
            .ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .ctx("reading the SM count")? as usize;
        let max_seqs = cfg.max_seqs.max(cfg.max_graph_batch).max(1);
        let max_splits = decode_splits(1, model.cfg.num_kv_heads, cfg.context_len, sms).max(1);
        let ws = Workspace::new(
            &gpu,
            &model,
            cfg.max_tokens.max(max_seqs),
            max_seqs,
            max_splits,
        )?;
        // The download copies the whole buffer from `ws.sampled` (cudarc copies the destination's
        // length), so both must hold exactly the same number of rows.
        let rows = ws.sampled.len();
        let pinned = || {
            // SAFETY: every element is written by a download before it is read (rows <= len).
            unsafe { gpu.ctx.alloc_pinned_with_flags::<u32>(rows, 0) }
                .ctx("allocating page-locked result buffers")
        };
        let results = [pinned()?, pinned()?];
        let (mask_dev, mask_row_dev) = (gpu.zeros(1)?, gpu.zeros(1)?);
        let prompt_bufs = super::prompt_logprobs::PromptLogprobBufs::new(&gpu, &model)?;
        Ok(CudaBackend {
            visit: VisitOrder::new(kv.rows),
            pad_row: cfg.table_rows,
            gpu,
            model,
            kv,
            ws,
            cfg,
            sms,
            graphs: HashMap::new(),
            results,
            samplers: HashMap::new(),
            matchers: HashMap::new(),
            mask_host: Vec::new(),
            mask_dev,
            mask_row_dev,
            last_row: HashMap::new(),
            pending: VecDeque::new(),
            next_result: 0,
            step_timing: false,
            tuning: false,
            stall_next: 0,
            last_end: None,
            prompt_bufs,
        })
    }

    /// Time every step with CUDA events (reported as `StepResult::device_ns`); costs two event
    /// records per step.
    pub fn set_step_timing(&mut self, on: bool) {
        self.step_timing = on;
        self.last_end = None;
    }

    /// Keep the GPU busy for `ns` before the next step's first work, so the whole step is
    /// launched before the GPU reaches it and its device time excludes host launch gaps.
    pub fn stall_next_step(&mut self, ns: u64) {
        self.stall_next = ns;
    }

    /// KV tokens that fit in `fraction` of the device memory after the weights (SGLang's
    /// mem_fraction_static rule: what is left of total * fraction once weights are loaded,
    /// less a reserve for activations, divided by the bytes per token).
    pub fn kv_capacity_for(
        gpu: &Gpu,
        model: &GpuModel,
        fraction: f64,
        activation_reserve: usize,
    ) -> Result<usize> {
        let (free, total) = gpu.ctx.mem_get_info().ctx("reading memory info")?;
        let budget =
            (total as f64 * fraction) as i64 - (total - free) as i64 - activation_reserve as i64;
        Ok((budget.max(0) as usize) / model.kv_bytes_per_slot())
    }

    /// Largest decode batch replayed from a CUDA graph.
    pub fn max_graph_batch(&self) -> usize {
        self.cfg.max_graph_batch
    }

    /// A one-paragraph start-up summary (as SGLang logs it).
    pub fn summary(&self) -> String {
        let sizes = graph_sizes(self.cfg.max_graph_batch);
        format!(
            "GPU {} (sm_{}{}): {}; KV cache {} tokens ({:.2} GB); kernels loaded in {:.2}s ({} cached); CUDA graph batch sizes {:?}",
            self.gpu.name,
            self.gpu.cc.0,
            self.gpu.cc.1,
            self.model.weights_summary(),
            self.cfg.kv_capacity_tokens,
            self.kv.bytes() as f64 / 1e9,
            self.gpu.kernels.load_seconds,
            self.gpu.kernels.cache_hits,
            sizes
        )
    }

    fn row_sampling(&self, p: &SamplingParams, id: RequestId, index: usize) -> RowSampling {
        if p.is_greedy() {
            return RowSampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                uniform: 0.0,
            };
        }
        // The same uniform the CPU sampler draws for this request and output index.
        let seed = RequestSampler::seed_for(p, self.cfg.seed, id.0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        let u: f32 = rng.gen();
        RowSampling {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            uniform: u,
        }
    }

    fn needs_host_sampling(p: &SamplingParams) -> bool {
        !p.logit_bias.is_empty()
            || p.repetition_penalty != 1.0
            || p.frequency_penalty != 0.0
            || p.presence_penalty != 0.0
            || p.return_logprob
    }

    fn bad(step: u64, msg: String) -> CudaError {
        CudaError::Invalid {
            kernel: "plan",
            msg: format!("step {step}: {msg}"),
        }
    }

    /// Forget the requests `plan` releases, and refuse a plan larger than the workspace.
    fn admit(&mut self, plan: &Plan) -> Result<()> {
        for id in &plan.released {
            self.samplers.remove(id);
            self.matchers.remove(id);
            self.last_row.remove(id);
        }
        if plan.entries.len() > self.ws.max_seqs || plan.num_tokens() > self.ws.max_tokens {
            return Err(Self::bad(
                plan.step,
                format!(
                    "{} entries / {} tokens exceed the backend's sizes",
                    plan.entries.len(),
                    plan.num_tokens()
                ),
            ));
        }
        Ok(())
    }

    fn run(&mut self, plan: &Plan, now: TimeNs) -> Result<Pending> {
        let started = Instant::now();
        self.admit(plan)?;
        if self.stall_next > 0 {
            self.gpu.spin_ns(std::mem::take(&mut self.stall_next))?;
        }
        let start_ev = if self.step_timing {
            Some(self.gpu.timing_event()?)
        } else {
            None
        };
        self.write_table(plan)?;
        let StepInputs {
            mut s,
            want,
            host_rows,
            want_lp,
        } = self.gather_inputs(plan)?;
        let rows = s.logit_tok.len();
        let constrained = self.open_matchers(plan)?;
        // Host sampling reads its rows' logits after the step: greedy steps keep them anyway.
        let sample = !s.sampling.iter().all(|r| r.temperature <= 0.0);
        let pick = match (constrained, sample) {
            (true, _) => TokenPick::Logits,
            (false, true) => TokenPick::Sample,
            (false, false) => TokenPick::Argmax,
        };
        let decode_only = s.extend.is_empty() && !s.decode.is_empty() && rows == s.decode.len();
        let gb = graph_sizes(self.cfg.max_graph_batch)
            .into_iter()
            .find(|&b| b >= s.decode.len());
        match (decode_only, gb) {
            (true, Some(gb)) => self.run_graph(&mut s, gb, pick)?,
            _ => self.run_eager(&mut s, rows, pick)?,
        }
        let prompt = self.prompt_logprobs(plan)?;
        // Keep this step's samples apart from the next step's (overlap order collects late).
        // Alternate buffers: the engine has at most two steps launched and not collected. (A
        // launch that failed after this flip would leave the toggle out of step with `pending`;
        // launch errors are fatal to the engine today.)
        let result = self.next_result;
        self.next_result ^= 1;
        let (host, done, events, deferred) = if constrained {
            let deferred = Deferred::new(plan, rows, sample, &host_rows, start_ev);
            (BTreeMap::new(), None, None, Some(deferred))
        } else {
            // Rows that need host sampling: download their logits now (this waits for the step).
            let host = self.sample_on_host(plan, rows, &host_rows)?;
            let done = self.download_samples(rows, result)?;
            let events = match start_ev {
                Some(start) => Some(StepEvents {
                    start,
                    end: self.gpu.timing_event()?,
                }),
                None => None,
            };
            (host, Some(done), events, None)
        };
        Ok(Pending {
            step: plan.step,
            entries: plan.entries.len(),
            want,
            host,
            result,
            want_lp,
            started,
            now,
            events,
            done,
            deferred,
            prompt,
        })
    }
}

impl Backend for CudaBackend {
    type Error = CudaError;

    fn set_tuning(&mut self, on: bool) {
        self.tuning = on;
    }

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<()> {
        // The backend may be built on one thread and driven from another (the server's engine).
        self.gpu
            .ctx
            .bind_to_thread()
            .ctx("binding the CUDA context")?;
        // This step reads the tokens of every step launched before it.
        self.finish_all_deferred()?;
        let p = self.run(plan, now)?;
        self.pending.push_back(p);
        Ok(())
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<()> {
        self.gpu
            .ctx
            .bind_to_thread()
            .ctx("binding the CUDA context")?;
        let mut p = match self.pending.front() {
            Some(p) if p.step == plan.step => self.pending.pop_front(),
            _ => None,
        }
        .ok_or(CudaError::Invalid {
            kernel: "backend",
            msg: format!("collect for step {} without a launched plan", plan.step),
        })?;
        let rows = p.want.iter().filter(|w| **w).count();
        // Wait for this step only (spinning on its event; the buffer's own event has then
        // completed too, so reading it does not block again).
        self.finish_deferred(&mut p)?;
        p.done
            .as_ref()
            .ok_or_else(|| Self::bad(p.step, "no completion event".into()))?
            .synchronize()
            .ctx("waiting for the step")?;
        let all = self.results[p.result]
            .as_slice()
            .ctx("reading the samples")?;
        let sampled = &all[..rows];
        out.tokens.clear();
        out.logprobs.clear();
        let mut r = 0;
        for i in 0..p.entries {
            if !p.want[i] {
                out.tokens.push(0);
                if p.want_lp {
                    out.logprobs.push(None);
                }
                continue;
            }
            let (tok, lp) = match p.host.get(&i) {
                Some((t, lp)) => (*t, lp.clone()),
                None => (sampled[r], None),
            };
            r += 1;
            out.tokens.push(tok);
            if p.want_lp {
                out.logprobs.push(lp);
            }
            if let Some(id) = plan.entries.get(i).map(|e| e.id) {
                if let Some(s) = self.samplers.get_mut(&id) {
                    let e = &plan.entries[i];
                    s.record(e.seq_len() - e.prompt_len.min(e.seq_len()), tok);
                }
            }
        }
        out.done_at = p.now + p.started.elapsed().as_nanos() as u64;
        out.prompt_logprobs = std::mem::take(&mut p.prompt);
        self.advance_matchers(plan, out);
        // The next step's masks can be computed now, while the GPU runs its forward pass.
        if let Some(mut next) = self.pending.pop_front() {
            let r = self.finish_deferred(&mut next);
            self.pending.push_front(next);
            r?;
        }
        if let Some(ev) = p.events {
            // The step's completion was waited for above, so both events have completed.
            out.device_ns = Some(ev.device_ns(self.last_end.as_ref())?);
            self.last_end = Some(ev.end);
        }
        Ok(())
    }
}
