//! Constrained requests on the GPU: a step with any constrained row runs its forward pass up to
//! the logits only ([`TokenPick::Logits`]); its pick is *deferred* until the host has the token
//! masks. In the overlap order that happens in `collect` of the step before, right after that
//! step's tokens advanced the matchers, while the GPU still runs this step's forward pass (the
//! order SGLang's overlap scheduler uses). Then the masks are uploaded, the bitmask kernel sets
//! disallowed logits to -inf, and the usual argmax / sampler (and host sampling) follow.

use super::{CudaBackend, Pending};
use crate::constraint::{mask_words, TokenMatcher};
use crate::cuda::model::TokenPick;
use crate::cuda::timing::StepEvents;
use crate::cuda::{DriverCtx, Result};
use doppel_core::{Plan, RequestId, SamplingParams, StepResult};
use rayon::prelude::*;
use std::sync::Arc;

/// A host-sampled row of a deferred step.
pub(super) struct HostRow {
    pub entry: usize,
    pub logits_row: usize,
    pub id: RequestId,
    pub index: usize,
    pub table_row: usize,
    pub params: Arc<SamplingParams>,
}

/// What a deferred pick needs once the masks can be computed.
pub(super) struct Deferred {
    /// Logits rows of the step.
    pub rows: usize,
    /// Whether any row samples (else every row takes the argmax).
    pub sample: bool,
    /// Constrained rows: (logits row, request, output index).
    pub constrained: Vec<(usize, RequestId, usize)>,
    /// Rows sampled on the host after the mask.
    pub host: Vec<HostRow>,
    /// Start event of the step (step timing on).
    pub start_ev: Option<cudarc::driver::CudaEvent>,
}

impl Deferred {
    /// The deferred pick of `plan`'s `rows` logits rows; `host_rows` are (entry, logits row,
    /// output index) of the rows sampled on the host.
    pub fn new(
        plan: &Plan,
        rows: usize,
        sample: bool,
        host_rows: &[(usize, usize, usize)],
        start_ev: Option<cudarc::driver::CudaEvent>,
    ) -> Deferred {
        let index = |e: &doppel_core::PlanEntry| e.seq_len() - e.prompt_len.min(e.seq_len());
        Deferred {
            rows,
            sample,
            constrained: plan
                .entries
                .iter()
                .filter(|e| e.need_logits)
                .enumerate()
                .filter(|(_, e)| e.sampling.constraint.is_some())
                .map(|(r, e)| (r, e.id, index(e)))
                .collect(),
            host: host_rows
                .iter()
                .map(|&(entry, r, index)| {
                    let e = &plan.entries[entry];
                    HostRow {
                        entry,
                        logits_row: r,
                        id: e.id,
                        index,
                        table_row: e.row.index(),
                        params: e.sampling.clone(),
                    }
                })
                .collect(),
            start_ev,
        }
    }
}

impl CudaBackend {
    /// Open the matcher of every constrained entry of `plan` not yet seen; whether any has one.
    pub(super) fn open_matchers(&mut self, plan: &Plan) -> Result<bool> {
        let mut any = false;
        for e in plan.entries.iter().filter(|e| e.need_logits) {
            let Some(h) = &e.sampling.constraint else {
                continue;
            };
            any = true;
            if let std::collections::hash_map::Entry::Vacant(v) = self.matchers.entry(e.id) {
                let m = TokenMatcher::open(h).ok_or_else(|| {
                    Self::bad(
                        plan.step,
                        format!("request {}: constraint not compiled for this backend", e.id),
                    )
                })?;
                v.insert(m);
            }
        }
        Ok(any)
    }

    /// Advance the matchers of `plan`'s constrained entries on the tokens in `out`. A matcher
    /// that refuses a token allows only EOS from then on, which ends the request.
    pub(super) fn advance_matchers(&mut self, plan: &Plan, out: &StepResult) {
        for (e, &tok) in plan.entries.iter().zip(&out.tokens) {
            if !e.need_logits || e.sampling.constraint.is_none() {
                continue;
            }
            if let Some(m) = self.matchers.get_mut(&e.id) {
                let index = e.seq_len() - e.prompt_len.min(e.seq_len());
                let _ = m.advance(index, tok);
            }
        }
    }

    /// Finish the pick of every launched step still waiting for its masks (a step launched
    /// behind it reads the tokens it records).
    pub(super) fn finish_all_deferred(&mut self) -> Result<()> {
        for i in 0..self.pending.len() {
            if self.pending[i].deferred.is_some() {
                let mut p = self.pending.remove(i).expect("index in range");
                let r = self.finish_deferred(&mut p);
                self.pending.insert(i, p);
                r?;
            }
        }
        Ok(())
    }

    /// Compute the masks of a deferred step's constrained rows (in parallel over requests),
    /// apply them on the GPU, pick its tokens, and queue the download of its samples.
    pub(super) fn finish_deferred(&mut self, p: &mut Pending) -> Result<()> {
        let Some(d) = p.deferred.take() else {
            return Ok(());
        };
        let vocab = self.model.cfg.vocab_size;
        let words = mask_words(vocab);
        let mut jobs: Vec<(RequestId, TokenMatcher)> = Vec::with_capacity(d.constrained.len());
        let mut mask_row = vec![-1i32; d.rows];
        for (k, &(r, id, index)) in d.constrained.iter().enumerate() {
            let mut m = self.matchers.remove(&id).ok_or_else(|| {
                Self::bad(p.step, format!("request {id}: constraint matcher missing"))
            })?;
            let known = self.samplers.get(&id).map_or(&[][..], |s| s.generated());
            if known.len() < index {
                self.matchers.insert(id, m);
                return Err(Self::bad(
                    p.step,
                    format!(
                        "request {id}: token mask for output {index} before its previous token"
                    ),
                ));
            }
            let _ = m.catch_up(&known[..index]);
            mask_row[r] = k as i32;
            jobs.push((id, m));
        }
        self.mask_host.resize(jobs.len() * words, 0);
        self.mask_host
            .par_chunks_mut(words)
            .zip(jobs.par_iter_mut())
            .for_each(|(mask, (_, m))| m.fill_mask(mask));
        self.matchers.extend(jobs);
        let (gpu, ws) = (&self.gpu, &self.ws);
        if self.mask_dev.len() < self.mask_host.len() {
            self.mask_dev = gpu.zeros(self.ws.max_seqs.max(d.rows) * words)?;
        }
        if self.mask_row_dev.len() < d.rows {
            self.mask_row_dev = gpu.zeros(self.ws.max_seqs.max(d.rows))?;
        }
        if !self.mask_host.is_empty() {
            let mut dst = self.mask_dev.slice_mut(0..self.mask_host.len());
            gpu.stream
                .memcpy_htod(&self.mask_host, &mut dst)
                .ctx("uploading token masks")?;
        }
        let mut dst = self.mask_row_dev.slice_mut(0..d.rows);
        gpu.stream
            .memcpy_htod(&mask_row, &mut dst)
            .ctx("uploading token mask rows")?;
        gpu.apply_token_bitmask(
            gpu.ptr(&ws.logits),
            gpu.ptr(&self.mask_dev),
            gpu.ptr(&self.mask_row_dev),
            d.rows,
            vocab,
        )?;
        let pick = if d.sample {
            TokenPick::Sample
        } else {
            TokenPick::Argmax
        };
        self.model.pick(gpu, &self.kv, ws, d.rows, pick)?;
        self.host_sample_deferred(p, &d)?;
        p.done = Some(self.download_samples(d.rows, p.result)?);
        if let Some(start) = d.start_ev {
            p.events = Some(StepEvents {
                start,
                end: self.gpu.timing_event()?,
            });
        }
        Ok(())
    }

    /// Sample a deferred step's host rows from its masked logits (penalties, bias, logprobs).
    fn host_sample_deferred(&mut self, p: &mut Pending, d: &Deferred) -> Result<()> {
        if d.host.is_empty() {
            return Ok(());
        }
        let vocab = self.model.cfg.vocab_size;
        let all = self
            .gpu
            .stream
            .clone_dtoh(&self.ws.logits.slice(0..d.rows * vocab))
            .ctx("downloading logits")?;
        for h in &d.host {
            let mut row = all[h.logits_row * vocab..(h.logits_row + 1) * vocab].to_vec();
            let sampler = self
                .samplers
                .get_mut(&h.id)
                .ok_or_else(|| Self::bad(p.step, "sampler missing".into()))?;
            let sm = sampler.sample(&mut row, &h.params, h.index);
            self.upload_host_token(h.logits_row, h.table_row, sm.token)?;
            p.host.insert(h.entry, (sm.token, sm.logprob));
        }
        Ok(())
    }
}
