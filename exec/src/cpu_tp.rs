//! Tensor parallelism on the CPU: one worker thread per rank, each holding its shard of the
//! weights and of the KV cache, all fed the same plain-data batch by the engine thread and joined
//! by an in-memory all-reduce in a fixed rank order. It runs the same sharding code
//! ([`crate::model::shard`]) the CUDA path does (`crate::cuda::tp`), so CI checks the sharding
//! math.

use crate::model::{
    CpuModel, ForwardErrorKind, KvCache, LoadError, LoadReport, LogitsWanted, ModelConfig,
    SeqInput, Shard, ThreadGroup, WeightStore,
};
use doppel_core::KvSlot;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// One sequence of a batch, owned so that it can cross to the workers.
#[derive(Clone, Debug)]
pub struct SeqPlan {
    /// New tokens.
    pub tokens: Vec<u32>,
    /// KV slot of every position.
    pub kv_row: Vec<KvSlot>,
    /// Logits to return.
    pub logits: LogitsWanted,
}

enum Job {
    /// Replace the KV cache by a zeroed one of this many slots.
    Kv(usize),
    /// Run one batch.
    Forward(Arc<Vec<SeqPlan>>),
}

/// A worker's answer: logits (rank 0; empty elsewhere), and its KV bytes.
type Reply = Result<(Vec<f32>, usize), ForwardErrorKind>;

struct Worker {
    jobs: Sender<Job>,
    replies: Receiver<Reply>,
    handle: Option<JoinHandle<()>>,
}

/// Failure of the tensor-parallel group itself.
#[derive(Debug, thiserror::Error)]
pub enum TpRunError {
    /// Bad input to the forward pass (the same on every rank).
    #[error(transparent)]
    Forward(#[from] ForwardErrorKind),
    /// A worker thread is gone (it panicked).
    #[error("tensor-parallel worker of rank {0} stopped")]
    WorkerGone(usize),
}

/// Bytes one rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankMemory {
    /// Its shard of the weights.
    pub weights: usize,
    /// Its KV cache (its heads only).
    pub kv: usize,
}

/// A model split over `size` CPU worker threads.
pub struct TpModel {
    cfg: ModelConfig,
    workers: Vec<Worker>,
    memory: Vec<RankMemory>,
}

impl TpModel {
    /// Load `dir` split `size` ways (checked first: heads, KV heads and the MLP width must
    /// divide) and start one worker per rank.
    pub fn load(
        dir: &Path,
        size: usize,
        progress: bool,
    ) -> Result<(TpModel, LoadReport), LoadError> {
        let start = Instant::now();
        let cfg = ModelConfig::load(dir)?;
        let shards = Shard::group(&cfg, size).map_err(|reason| LoadError::Tp {
            dir: dir.to_path_buf(),
            reason,
        })?;
        let store = WeightStore::open(dir)?;
        let mut models = Vec::with_capacity(size);
        let mut memory = Vec::with_capacity(size);
        for s in shards {
            let (m, r) = CpuModel::shard_from_store(cfg.clone(), &store, s, progress)?;
            memory.push(RankMemory {
                weights: r.weight_bytes,
                kv: 0,
            });
            models.push(m);
        }
        let report = LoadReport {
            elapsed: start.elapsed(),
            weight_bytes: memory.iter().map(|m| m.weights).sum(),
            checkpoint_bytes: store.total_bytes(),
        };
        let mut tp = TpModel::start(cfg, models)?;
        tp.memory = memory;
        Ok((tp, report))
    }

    /// Start one worker per shard (`models[r]` is rank r's). A rank that cannot start fails
    /// the whole group: the others would wait for it at the first collective.
    fn start(cfg: ModelConfig, models: Vec<CpuModel>) -> Result<TpModel, LoadError> {
        let comms = ThreadGroup::new(models.len());
        let mut tp = TpModel {
            cfg,
            workers: Vec::with_capacity(models.len()),
            memory: Vec::new(),
        };
        for (model, comm) in models.into_iter().zip(comms) {
            let (jobs, job_rx) = channel();
            let (reply_tx, replies) = channel();
            let handle = std::thread::Builder::new()
                .name(format!("tp-rank-{}", model.shard().rank))
                .spawn(move || work(model, comm, job_rx, reply_tx))
                .map_err(LoadError::Thread)?;
            tp.workers.push(Worker {
                jobs,
                replies,
                handle: Some(handle),
            });
        }
        Ok(tp)
    }

    /// The whole model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.workers.len()
    }

    /// KV bytes held by all ranks together.
    pub fn kv_bytes(&self) -> usize {
        self.memory.iter().map(|m| m.kv).sum()
    }

    /// What each rank holds, in rank order.
    pub fn rank_memory(&self) -> &[RankMemory] {
        &self.memory
    }

    /// Give every rank a zeroed KV cache of `slots` slots (its own heads).
    pub fn alloc_kv(&mut self, slots: usize) -> Result<(), TpRunError> {
        let replies = self.broadcast(|| Job::Kv(slots))?;
        for (m, r) in self.memory.iter_mut().zip(&replies) {
            m.kv = r.1;
        }
        Ok(())
    }

    /// [`CpuModel::forward`] across the ranks: the same batch goes to every worker, rank 0's
    /// gathered logits are appended to `logits`.
    pub fn forward(
        &mut self,
        seqs: &[SeqInput<'_>],
        logits: &mut Vec<f32>,
    ) -> Result<(), TpRunError> {
        let plan: Arc<Vec<SeqPlan>> = Arc::new(
            seqs.iter()
                .map(|s| SeqPlan {
                    tokens: s.tokens.to_vec(),
                    kv_row: s.kv_row.to_vec(),
                    logits: s.logits,
                })
                .collect(),
        );
        let mut replies = self.broadcast(|| Job::Forward(plan.clone()))?;
        logits.append(&mut replies[0].0);
        Ok(())
    }

    /// Send a job to every rank and wait for every answer (in rank order).
    fn broadcast(&self, job: impl Fn() -> Job) -> Result<Vec<(Vec<f32>, usize)>, TpRunError> {
        for (r, w) in self.workers.iter().enumerate() {
            w.jobs.send(job()).map_err(|_| TpRunError::WorkerGone(r))?;
        }
        let mut out = Vec::with_capacity(self.workers.len());
        let mut first_err = None;
        for (r, w) in self.workers.iter().enumerate() {
            match w.replies.recv() {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => first_err = first_err.or(Some(TpRunError::Forward(e))),
                Err(_) => first_err = first_err.or(Some(TpRunError::WorkerGone(r))),
            }
        }
        first_err.map_or(Ok(out), Err)
    }
}

impl Drop for TpModel {
    fn drop(&mut self) {
        // Closing the job channels ends the workers' loops.
        let handles: Vec<_> = self
            .workers
            .drain(..)
            .filter_map(|w| {
                drop(w.jobs);
                w.handle
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A rank's loop: run each job on its shard until the engine drops the group.
fn work(model: CpuModel, comm: ThreadGroup, jobs: Receiver<Job>, replies: Sender<Reply>) {
    let mut kv: KvCache = model.kv_cache(0);
    for job in jobs {
        let reply = match job {
            Job::Kv(slots) => {
                kv = model.kv_cache(slots);
                Ok((Vec::new(), kv.bytes()))
            }
            Job::Forward(plan) => {
                let seqs: Vec<SeqInput<'_>> = plan
                    .iter()
                    .map(|s| SeqInput {
                        tokens: &s.tokens,
                        kv_row: &s.kv_row,
                        logits: s.logits,
                    })
                    .collect();
                let mut out = Vec::new();
                model
                    .forward_with(&mut kv, &seqs, &mut out, &comm)
                    .map(|()| (out, 0))
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}
