//! One step's host side before and after its launches: the per-entry inputs gathered from the
//! plan, the eager (non-graph) forward pass, and the rows sampled on the host.

use super::CudaBackend;
use crate::cuda::attention::{decode_splits, AttnEntry, DecodeMeta, ExtendMeta};
use crate::cuda::model::{StepBatch, StepInput, TokenPick};
use crate::cuda::{DriverCtx, Result};
use crate::sampling::RequestSampler;
use doppel_core::{Plan, TokenLogprob, FUTURE_TOKEN};
use std::collections::BTreeMap;

/// A step's inputs as gathered from its plan.
pub(super) struct StepInputs {
    /// The device inputs.
    pub s: StepInput,
    /// Whether each entry wants its sampled token.
    pub want: Vec<bool>,
    /// Rows sampled on the host: (entry, logits row, output index).
    pub host_rows: Vec<(usize, usize, usize)>,
    /// Whether any entry wants logprobs.
    pub want_lp: bool,
}

impl CudaBackend {
    /// The step's inputs from `plan` (tokens, FUTURE_TOKEN rows, positions, slots, attention
    /// entries, logits rows and their sampling), recording re-fed tokens in the samplers.
    pub(super) fn gather_inputs(&mut self, plan: &Plan) -> Result<StepInputs> {
        let mut s = StepInput::default();
        let mut want = Vec::with_capacity(plan.entries.len());
        let mut host_rows = Vec::new();
        let mut want_lp = false;
        for (i, e) in plan.entries.iter().enumerate() {
            if e.seq_len() > self.kv.max_ctx {
                return Err(Self::bad(
                    plan.step,
                    format!(
                        "request {} reaches {} tokens, beyond the context {}",
                        e.id,
                        e.seq_len(),
                        self.kv.max_ctx
                    ),
                ));
            }
            for (p, &t) in e.positions().zip(plan.entry_tokens(e)) {
                let row = if t == FUTURE_TOKEN {
                    *self.last_row.get(&e.id).ok_or_else(|| {
                        Self::bad(
                            plan.step,
                            format!("request {}: FUTURE_TOKEN before any sample", e.id),
                        )
                    })?
                } else {
                    e.row.0
                };
                s.ids.push(t);
                s.tok_row.push(row);
                s.positions.push(p as i32);
            }
            s.out_slots.extend(plan.entry_slots(e).iter().map(|x| x.0));
            let a = AttnEntry {
                q_start: e.offset,
                q_len: e.extend_len,
                kv_len: e.seq_len(),
                row: e.row.index(),
            };
            if e.is_decode {
                s.decode.push(a)
            } else {
                s.extend.push(a)
            }
            // Generated tokens re-fed after a retraction keep the host sampler's history in step.
            let sampler = self.samplers.entry(e.id).or_insert_with(|| {
                RequestSampler::new(RequestSampler::seed_for(&e.sampling, self.cfg.seed, e.id.0))
            });
            for (p, &t) in e.positions().zip(plan.entry_tokens(e)) {
                if p >= e.prompt_len && t != FUTURE_TOKEN {
                    sampler.record(p - e.prompt_len, t);
                }
            }
            want.push(e.need_logits);
            want_lp |= e.sampling.return_logprob;
            if e.need_logits {
                let index = e.seq_len() - e.prompt_len.min(e.seq_len());
                s.logit_tok.push((e.offset + e.extend_len - 1) as u32);
                s.logit_row.push(e.row.0);
                s.sampling.push(self.row_sampling(&e.sampling, e.id, index));
                if Self::needs_host_sampling(&e.sampling) {
                    host_rows.push((i, s.logit_tok.len() - 1, index));
                }
                self.last_row.insert(e.id, e.row.0);
            }
        }
        // Rows sharing a cached prefix side by side in the decode grid, for L2 reuse (the
        // entries keep their token rows, so nothing else moves).
        self.visit.sort(&mut s.decode);
        Ok(StepInputs {
            s,
            want,
            host_rows,
            want_lp,
        })
    }

    /// The forward pass launched eagerly (not from a captured graph): mixed and prefill steps,
    /// and decode steps above the largest graph.
    pub(super) fn run_eager(
        &mut self,
        s: &mut StepInput,
        rows: usize,
        pick: TokenPick,
    ) -> Result<()> {
        s.validate(&self.model, &self.kv, &self.ws)?;
        self.model.upload_step(&self.gpu, &mut self.ws, s)?;
        let t = s.ids.len();
        let ext = if s.extend.is_empty() {
            None
        } else {
            Some(ExtendMeta::new(
                &self.gpu,
                &s.extend,
                t,
                self.kv.rows,
                self.kv.max_ctx,
                self.model.cfg.num_heads / self.model.cfg.num_kv_heads,
            )?)
        };
        let dec = if s.decode.is_empty() {
            None
        } else {
            Some(DecodeMeta::new(
                &self.gpu,
                &s.decode,
                t,
                self.kv.rows,
                self.kv.max_ctx,
            )?)
        };
        let splits = decode_splits(
            s.decode.len(),
            self.model.cfg.num_kv_heads,
            self.kv.max_ctx,
            self.sms,
        )
        .min(self.ws.max_splits);
        if self.tuning {
            self.model
                .tune_gemms_or_default(&self.gpu, &self.ws, t, rows);
        }
        self.model.forward(
            &self.gpu,
            &self.kv,
            &self.ws,
            StepBatch {
                tokens: t,
                extend: ext.as_ref(),
                decode: dec.as_ref().map(|d| (d, splits)),
                rows,
                pick,
            },
        )
    }

    /// Sample `host_rows` on the host from their downloaded logits (this waits for the step):
    /// the entry index's token and logprob.
    pub(super) fn sample_on_host(
        &mut self,
        plan: &Plan,
        rows: usize,
        host_rows: &[(usize, usize, usize)],
    ) -> Result<BTreeMap<usize, (u32, Option<TokenLogprob>)>> {
        let mut host = BTreeMap::new();
        if !host_rows.is_empty() {
            let vocab = self.model.cfg.vocab_size;
            let all = self
                .gpu
                .stream
                .clone_dtoh(&self.ws.logits.slice(0..rows * vocab))
                .ctx("downloading logits")?;
            // FUTURE_TOKEN inputs were resolved on the device (and written back into ids): the
            // penalty history needs them before sampling.
            let ids = self
                .gpu
                .stream
                .clone_dtoh(&self.ws.ids.slice(0..plan.num_tokens()))
                .ctx("downloading ids")?;
            for &(entry, r, index) in host_rows {
                let e = &plan.entries[entry];
                if let Some(sm) = self.samplers.get_mut(&e.id) {
                    for (p, &t) in e.positions().zip(&ids[e.offset..e.offset + e.extend_len]) {
                        if p >= e.prompt_len {
                            sm.record(p - e.prompt_len, t);
                        }
                    }
                }
                let mut row = all[r * vocab..(r + 1) * vocab].to_vec();
                let sampler = self
                    .samplers
                    .get_mut(&e.id)
                    .ok_or_else(|| Self::bad(plan.step, "sampler missing".into()))?;
                let sm = sampler.sample(&mut row, &e.sampling, index);
                self.upload_host_token(r, e.row.index(), sm.token)?;
                host.insert(entry, (sm.token, sm.logprob));
            }
        }
        Ok(host)
    }
}
