//! `TpCudaBackend`: a [`CudaBackend`] per rank, each on its own worker thread, all driven by
//! the engine thread with the same plans; rank 0's results are the group's.
//!
//! Every rank runs the whole step (table writes, FUTURE_TOKEN resolution, graphs, sampling) on
//! its shard: the all-reduced residual stream is the same on every rank, and so are the
//! logits of the whole LM head and the tokens picked from them (as in SGLang, no broadcast of
//! the sampled tokens). Plans are checked the same way on every rank, so a bad plan fails on
//! all of them before any collective is queued; a failure on some ranks only (a device error)
//! stops the group: later steps are refused rather than left waiting in an all-reduce.

use crate::cuda::backend::CudaBackend;
use crate::cuda::{CudaError, Result};
use doppel_core::{Backend, Plan, StepResult, TimeNs};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

enum Job {
    Launch(Arc<Plan>, TimeNs),
    Collect(Arc<Plan>),
    Tuning(bool),
}

type Reply = Result<Option<StepResult>>;

struct Worker {
    jobs: Sender<Job>,
    replies: Receiver<Reply>,
    handle: Option<JoinHandle<()>>,
}

/// Bytes one rank holds on its GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankMemory {
    /// Its weights (shard plus the whole embedding and LM head).
    pub weights: usize,
    /// Its KV pool (its KV heads only).
    pub kv: usize,
}

/// A model split over the GPUs of one host.
pub struct TpCudaBackend {
    workers: Vec<Worker>,
    memory: Vec<RankMemory>,
    max_graph_batch: usize,
    /// Set when some ranks took a job and others failed it: the ranks that went on may wait
    /// in an all-reduce for the others forever, so the group takes no more work and its drop
    /// does not wait for the workers.
    diverged: bool,
}

fn gone(rank: usize) -> CudaError {
    CudaError::Invalid {
        kernel: "tensor-parallel group",
        msg: format!("the worker of rank {rank} stopped"),
    }
}

impl TpCudaBackend {
    /// Start one worker thread per rank (`ranks[r]` is rank r's backend, its model already
    /// joined to the group).
    pub fn start(ranks: Vec<CudaBackend>) -> Result<TpCudaBackend> {
        let max_graph_batch = ranks.first().map_or(0, |b| b.max_graph_batch());
        let memory = ranks
            .iter()
            .map(|b| RankMemory {
                weights: b.model.weight_bytes,
                kv: b.kv.bytes(),
            })
            .collect();
        let mut tp = TpCudaBackend {
            workers: Vec::with_capacity(ranks.len()),
            memory,
            max_graph_batch,
            diverged: false,
        };
        for (rank, b) in ranks.into_iter().enumerate() {
            let (jobs, job_rx) = channel();
            let (reply_tx, replies) = channel();
            let handle = std::thread::Builder::new()
                .name(format!("tp-gpu-rank-{rank}"))
                .spawn(move || work(b, job_rx, reply_tx))
                .map_err(|e| CudaError::Invalid {
                    kernel: "tensor-parallel group",
                    msg: format!("starting the worker of rank {rank}: {e}"),
                })?;
            tp.workers.push(Worker {
                jobs,
                replies,
                handle: Some(handle),
            });
        }
        Ok(tp)
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.workers.len()
    }

    /// What each rank holds, in rank order.
    pub fn rank_memory(&self) -> &[RankMemory] {
        &self.memory
    }

    /// Largest decode batch replayed from a CUDA graph.
    pub fn max_graph_batch(&self) -> usize {
        self.max_graph_batch
    }

    /// Send a job to every rank, then wait for every answer; rank 0's result, or the first
    /// rank's error.
    fn broadcast(&mut self, job: impl Fn() -> Job) -> Result<Option<StepResult>> {
        if self.diverged {
            return Err(CudaError::Invalid {
                kernel: "tensor-parallel group",
                msg: "an earlier step failed on some ranks only; restart to serve again".into(),
            });
        }
        // Every rank that took the job answers it, even when another rank is gone, so the
        // replies stay in step with the jobs.
        let sent: Vec<bool> = self
            .workers
            .iter()
            .map(|w| w.jobs.send(job()).is_ok())
            .collect();
        let mut first = None;
        let mut err = sent.iter().position(|ok| !ok).map(gone);
        let mut oks = 0;
        for (r, w) in self.workers.iter().enumerate().filter(|(r, _)| sent[*r]) {
            match w.replies.recv() {
                Ok(Ok(v)) => {
                    oks += 1;
                    if r == 0 {
                        first = v;
                    }
                }
                Ok(Err(e)) => err = err.or(Some(e)),
                Err(_) => err = err.or(Some(gone(r))),
            }
        }
        // A bad plan fails on every rank before any collective (the same checks on the same
        // plan); anything else leaves the ranks apart.
        self.diverged |= err.is_some() && oks > 0;
        err.map_or(Ok(first), Err)
    }
}

impl Backend for TpCudaBackend {
    type Error = CudaError;

    fn set_tuning(&mut self, on: bool) {
        // A rank that is gone fails the next launch with its own error.
        let _ = self.broadcast(|| Job::Tuning(on));
    }

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<()> {
        let plan = Arc::new(plan.clone());
        self.broadcast(|| Job::Launch(plan.clone(), now))
            .map(|_| ())
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<()> {
        let plan = Arc::new(plan.clone());
        let r = self.broadcast(|| Job::Collect(plan.clone()))?;
        *out = r.ok_or_else(|| gone(0))?;
        Ok(())
    }
}

impl Drop for TpCudaBackend {
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
        if self.diverged {
            // A rank may be stuck in a collective its peers never join: leave it to the
            // process's exit rather than hang here.
            return;
        }
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A rank's loop: run each job on its backend until the engine drops the group.
fn work(mut b: CudaBackend, jobs: Receiver<Job>, replies: Sender<Reply>) {
    for job in jobs {
        let reply = match job {
            Job::Launch(plan, now) => b.launch(&plan, now).map(|()| None),
            Job::Collect(plan) => {
                let mut out = StepResult::default();
                b.collect(&plan, &mut out).map(|()| Some(out))
            }
            Job::Tuning(on) => {
                b.set_tuning(on);
                Ok(None)
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

// The server moves the backend onto its engine thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<TpCudaBackend>();
};
