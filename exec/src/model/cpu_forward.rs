//! [`CpuModel::forward`]: one batch through the model, or through one tensor-parallel rank's
//! shard of it with the collectives of [`super::super::shard`] between the parts.

use super::{CpuModel, ForwardError, KvCache, Layer, LogitsWanted, SeqInput};
use crate::model::collective::{Collective, Solo};
use crate::model::linear::{dot, linear, rms_norm};
use doppel_core::KvSlot;
use rayon::prelude::*;
use std::ops::Range;

/// Per new token of the batch: (sequence index, position).
type TokSeq = Vec<(usize, usize)>;

/// This shard's widths.
struct Dims {
    h: usize,
    hd: usize,
    heads: usize,
    kv_heads: usize,
    qd: usize,
    kvd: usize,
    inter: usize,
    vocab: Range<usize>,
}

impl CpuModel {
    fn dims(&self) -> Dims {
        let (c, s) = (&self.cfg, &self.shard);
        let (heads, kv_heads) = (s.heads(c).len(), s.kv_heads(c).len());
        Dims {
            h: c.hidden_size,
            hd: c.head_dim,
            heads,
            kv_heads,
            qd: heads * c.head_dim,
            kvd: kv_heads * c.head_dim,
            inter: s.inter(c).len(),
            vocab: s.vocab(c),
        }
    }

    /// Run one batch: write the new tokens' K/V into `kv` and append the requested logits rows
    /// (vocab floats each, in sequence then position order) to `logits`.
    pub fn forward(
        &self,
        kv: &mut KvCache,
        seqs: &[SeqInput<'_>],
        logits: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        self.forward_with(kv, seqs, logits, &Solo)
    }

    /// [`CpuModel::forward`] on one rank of a tensor-parallel group: every rank calls it with the
    /// same `seqs` and `comm` joins their partial results (o and down all-reduced, logits
    /// gathered). Logits are appended on rank 0 only. Input errors are found before the first
    /// collective, identically on every rank, so no rank is left waiting.
    pub fn forward_with(
        &self,
        kv: &mut KvCache,
        seqs: &[SeqInput<'_>],
        logits: &mut Vec<f32>,
        comm: &dyn Collective,
    ) -> Result<(), ForwardError> {
        let d = self.dims();
        if kv.kv_dim != d.kvd || kv.k.len() != self.layers.len() {
            return Err(ForwardError::KvMismatch {
                got: kv.kv_dim,
                want: d.kvd,
            });
        }
        let (tok_seq, ids) = self.validate(kv, seqs)?;
        let eps = self.cfg.rms_norm_eps as f32;
        let n = ids.len();
        let mut x = self.embed_rows(&ids, &d);
        comm.all_reduce(&mut x);
        let mut xn = vec![0f32; n * d.h];
        let mut tmp = Vec::new();
        for (li, l) in self.layers.iter().enumerate() {
            norm_rows(&x, &l.input_norm, eps, d.h, &mut xn);
            self.attention(li, kv, seqs, &tok_seq, &xn, &d, &mut tmp);
            comm.all_reduce(&mut tmp);
            // o's bias is added once, after the partial sums are joined.
            if let Some(b) = &l.o_bias {
                for row in tmp.chunks_exact_mut(d.h) {
                    for (a, bv) in row.iter_mut().zip(b) {
                        *a += bv;
                    }
                }
            }
            for (a, b) in x.iter_mut().zip(&tmp) {
                *a += b;
            }
            norm_rows(&x, &l.post_norm, eps, d.h, &mut xn);
            mlp(l, &xn, n, &d, &mut tmp);
            comm.all_reduce(&mut tmp);
            for (a, b) in x.iter_mut().zip(&tmp) {
                *a += b;
            }
        }
        self.lm_head(&x, seqs, &d, logits, comm);
        Ok(())
    }

    /// Check the batch and list its new tokens.
    fn validate(
        &self,
        kv: &KvCache,
        seqs: &[SeqInput<'_>],
    ) -> Result<(TokSeq, Vec<u32>), ForwardError> {
        let vocab = self.cfg.vocab_size;
        let mut tok_seq = Vec::new();
        let mut ids = Vec::new();
        for (si, s) in seqs.iter().enumerate() {
            if s.kv_row.len() < s.tokens.len() {
                return Err(ForwardError::RowTooShort {
                    index: si,
                    tokens: s.tokens.len(),
                    row: s.kv_row.len(),
                });
            }
            if let Some(bad) = s.kv_row.iter().find(|k| k.index() >= kv.slots) {
                return Err(ForwardError::SlotOutOfRange {
                    slot: bad.0,
                    slots: kv.slots,
                });
            }
            let start = s.kv_row.len() - s.tokens.len();
            for (i, &t) in s.tokens.iter().enumerate() {
                if t as usize >= vocab {
                    return Err(ForwardError::TokenOutOfRange { token: t, vocab });
                }
                tok_seq.push((si, start + i));
                ids.push(t);
            }
        }
        Ok((tok_seq, ids))
    }

    /// Embedding rows of this shard's vocabulary; zeros for the others' tokens (the all-reduce
    /// that follows fills them in).
    fn embed_rows(&self, ids: &[u32], d: &Dims) -> Vec<f32> {
        let mut x = vec![0f32; ids.len() * d.h];
        let mut buf = vec![0f32; d.h];
        for (&t, out) in ids.iter().zip(x.chunks_exact_mut(d.h)) {
            let t = t as usize;
            if d.vocab.contains(&t) {
                out.copy_from_slice(self.embed.row(t - d.vocab.start, d.h, &mut buf));
            }
        }
        x
    }

    /// Attention of this shard's heads; `out` gets o_proj's partial sums (no bias).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        kv: &mut KvCache,
        seqs: &[SeqInput<'_>],
        tok_seq: &TokSeq,
        xn: &[f32],
        d: &Dims,
        out: &mut Vec<f32>,
    ) {
        let l = &self.layers[li];
        let (n, qd, kvd, hd) = (tok_seq.len(), d.qd, d.kvd, d.hd);
        let eps = self.cfg.rms_norm_eps as f32;
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        linear(xn, n, &l.q, l.q_bias.as_deref(), qd, &mut q);
        linear(xn, n, &l.k, l.k_bias.as_deref(), kvd, &mut k);
        linear(xn, n, &l.v, l.v_bias.as_deref(), kvd, &mut v);
        let mut scratch = vec![0f32; hd];
        for (t, &(si, pos)) in tok_seq.iter().enumerate() {
            for head in q[t * qd..(t + 1) * qd].chunks_mut(hd) {
                if let Some(w) = &l.q_norm {
                    scratch.copy_from_slice(head);
                    rms_norm(&scratch, w, eps, head);
                }
                self.rope(head, pos);
            }
            for head in k[t * kvd..(t + 1) * kvd].chunks_mut(hd) {
                if let Some(w) = &l.k_norm {
                    scratch.copy_from_slice(head);
                    rms_norm(&scratch, w, eps, head);
                }
                self.rope(head, pos);
            }
            let slot = seqs[si].kv_row[pos].index();
            kv.k[li][slot * kvd..(slot + 1) * kvd].copy_from_slice(&k[t * kvd..(t + 1) * kvd]);
            kv.v[li][slot * kvd..(slot + 1) * kvd].copy_from_slice(&v[t * kvd..(t + 1) * kvd]);
        }
        let (kc, vc) = (&kv.k[li], &kv.v[li]);
        let scale = 1.0 / (hd as f32).sqrt();
        let (heads, group) = (d.heads, d.heads / d.kv_heads.max(1));
        let mut att = vec![0f32; n * qd];
        att.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
            let (t, head) = (idx / heads, idx % heads);
            let (si, pos) = tok_seq[t];
            let row = &seqs[si].kv_row[..=pos];
            let kvh = head / group;
            let qv = &q[t * qd + head * hd..t * qd + (head + 1) * hd];
            let at = |s: &KvSlot| s.index() * kvd + kvh * hd..s.index() * kvd + (kvh + 1) * hd;
            let mut scores: Vec<f32> = row.iter().map(|s| dot(qv, &kc[at(s)]) * scale).collect();
            let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - m).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (s, w) in row.iter().zip(&scores) {
                let p = w / sum;
                for (ov, &val) in o.iter_mut().zip(&vc[at(s)]) {
                    *ov += p * val;
                }
            }
        });
        linear(&att, n, &l.o, None, d.h, out);
    }

    /// Final norm and this shard's LM head rows for the tokens that want logits, gathered
    /// across ranks into `logits` (rank 0).
    fn lm_head(
        &self,
        x: &[f32],
        seqs: &[SeqInput<'_>],
        d: &Dims,
        logits: &mut Vec<f32>,
        comm: &dyn Collective,
    ) {
        let mut rows = Vec::new();
        let mut t0 = 0;
        for s in seqs {
            let len = s.tokens.len();
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last if len > 0 => rows.push(t0 + len - 1),
                LogitsWanted::Last => {}
                LogitsWanted::All => rows.extend(t0..t0 + len),
                LogitsWanted::Tail(n) => rows.extend(t0 + len - n.min(len)..t0 + len),
            }
            t0 += len;
        }
        let (h, eps) = (d.h, self.cfg.rms_norm_eps as f32);
        let mut hn = vec![0f32; rows.len() * h];
        for (i, &t) in rows.iter().enumerate() {
            rms_norm(
                &x[t * h..(t + 1) * h],
                &self.final_norm,
                eps,
                &mut hn[i * h..(i + 1) * h],
            );
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut out = Vec::new();
        if !d.vocab.is_empty() {
            linear(&hn, rows.len(), head, None, d.vocab.len(), &mut out);
        }
        comm.gather_cols(&out, rows.len(), logits);
    }
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, h: usize, out: &mut [f32]) {
    for (xr, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        rms_norm(xr, w, eps, o);
    }
}

/// The MLP of this shard's intermediate features; `out` gets down's partial sums.
fn mlp(l: &Layer, xn: &[f32], n: usize, d: &Dims, out: &mut Vec<f32>) {
    let (mut g, mut u) = (Vec::new(), Vec::new());
    linear(xn, n, &l.gate, None, d.inter, &mut g);
    linear(xn, n, &l.up, None, d.inter, &mut u);
    for (a, b) in g.iter_mut().zip(&u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
    linear(&g, n, &l.down, None, d.h, out);
}
