//! The figures of a batch that its cost depends on.

use doppel_core::{ForwardMode, Plan};

/// The figures of a batch that decide its cost (built from a plan, or synthetically by one-batch).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchShape {
    /// Tokens computed (extend tokens + one per decode entry).
    pub tokens: usize,
    /// Extend (prefill) entries.
    pub extend_reqs: usize,
    /// Decode entries.
    pub decode_reqs: usize,
    /// Rows that need logits (LM head).
    pub logits: usize,
    /// Causal attention work of extend entries: sum of extend x (prefix + (extend + 1) / 2).
    pub attn_pairs: f64,
    /// KV tokens read by attention: decode seq lengths plus the cached prefixes of extend entries.
    pub kv_read_tokens: usize,
    /// Whether the whole step is decode.
    pub is_decode: bool,
    /// Longest extend entry's context (cached prefix + extend tokens): the serial work of the
    /// attention block that finishes last when the batch is too small to fill the GPU.
    pub max_seq: usize,
    /// Extend tokens of that longest extend entry (its query rows): the extend kernel gives an
    /// entry few blocks, and each works through the whole context for its rows.
    pub max_seq_extend: usize,
    /// Longest decode entry's sequence: with ragged lengths the longest request's attention
    /// finishes last.
    pub max_kv: usize,
    /// KV tokens the decode entries read that another decode entry of the batch also reads (a
    /// shared cached prefix; [`crate::kv_sharing::KvSharing`] counts them across plans, so
    /// `of_plan` leaves 0).
    pub shared_kv_tokens: usize,
}

impl BatchShape {
    /// The shape of a scheduler plan.
    pub fn of_plan(plan: &Plan) -> BatchShape {
        let mut s = BatchShape {
            is_decode: plan.mode == ForwardMode::Decode,
            ..Default::default()
        };
        for e in &plan.entries {
            s.tokens += e.extend_len;
            if e.need_logits {
                s.logits += 1;
            }
            if e.is_decode {
                s.decode_reqs += 1;
                s.kv_read_tokens += e.seq_len();
                s.max_kv = s.max_kv.max(e.seq_len());
            } else {
                s.extend_reqs += 1;
                s.kv_read_tokens += e.prefix_len;
                s.attn_pairs +=
                    e.extend_len as f64 * (e.prefix_len as f64 + (e.extend_len as f64 + 1.0) / 2.0);
                let ctx = e.prefix_len + e.extend_len;
                if (ctx, e.extend_len) > (s.max_seq, s.max_seq_extend) {
                    (s.max_seq, s.max_seq_extend) = (ctx, e.extend_len);
                }
            }
        }
        s
    }

    /// A prefill of `batch` fresh prompts of `input_len` tokens.
    pub fn prefill(batch: usize, input_len: usize) -> BatchShape {
        BatchShape {
            tokens: batch * input_len,
            extend_reqs: batch,
            decode_reqs: 0,
            logits: batch,
            attn_pairs: batch as f64 * input_len as f64 * (input_len as f64 + 1.0) / 2.0,
            kv_read_tokens: 0,
            is_decode: false,
            max_seq: input_len,
            max_seq_extend: input_len,
            max_kv: 0,
            shared_kv_tokens: 0,
        }
    }

    /// A decode step of `batch` requests attending to `kv_len` tokens each.
    pub fn decode(batch: usize, kv_len: usize) -> BatchShape {
        BatchShape {
            tokens: batch,
            extend_reqs: 0,
            decode_reqs: batch,
            logits: batch,
            attn_pairs: 0.0,
            kv_read_tokens: batch * kv_len,
            is_decode: true,
            max_seq: 0,
            max_seq_extend: 0,
            max_kv: kv_len,
            shared_kv_tokens: 0,
        }
    }
}
