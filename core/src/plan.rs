//! The plain-data contract between the scheduler and a backend: a step plan, its results, and
//! the events that applying them produces.

use crate::ids::{KvSlot, RequestId, RowId, TimeNs, TokenId};
use crate::request::{FinishReason, SamplingParams};
use crate::stats::StepStats;
use std::sync::Arc;

/// What kind of forward pass a plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ForwardMode {
    /// Prefill / extend only.
    #[default]
    Extend,
    /// One token per running request.
    Decode,
    /// Extend entries followed by decode entries in one pass (--enable-mixed-chunk).
    Mixed,
}

/// One request's part of a step.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEntry {
    /// The request.
    pub id: RequestId,
    /// Scheduler-internal index of the request (lets `complete` skip a map lookup).
    pub handle: u32,
    /// Row of the request-to-token table holding this request's KV slots by position.
    pub row: RowId,
    /// Tokens whose KV is already in the pool: the first computed token sits at this position.
    pub prefix_len: usize,
    /// Tokens computed in this step (positions prefix_len .. prefix_len + extend_len).
    pub extend_len: usize,
    /// Offset of this entry's tokens in `Plan::input_ids` and `Plan::out_slots`.
    pub offset: usize,
    /// Length of the original prompt: positions at or beyond it hold generated tokens.
    pub prompt_len: usize,
    /// Whether the last position's logits are needed (false for a non-final prefill chunk).
    pub need_logits: bool,
    /// A decode entry (one token, the previous output) rather than an extend entry.
    pub is_decode: bool,
    /// The request's sampling parameters.
    pub sampling: Arc<SamplingParams>,
    /// Prompt positions whose logits this step scores against the next prompt token (boxed:
    /// rare, and inline it would make every entry a third larger).
    pub prompt_logprobs: Option<Box<PromptRows>>,
}

/// Rows of an extend entry whose logits give prompt logprobs: row `i` is position `first + i`,
/// and its log-softmax is read at `targets[i]`, the prompt token at position `first + i + 1`
/// (given here because the last row's target may belong to the next prefill chunk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRows {
    /// Position of the first row (inside the entry's positions).
    pub first: usize,
    /// The token each row scores.
    pub targets: Vec<TokenId>,
}

impl PromptRows {
    /// Positions of the rows.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.targets.len()
    }
}

impl PlanEntry {
    /// Positions of the tokens computed in this step.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.prefix_len..self.prefix_len + self.extend_len
    }

    /// KV length attended to after this step (prefix + new tokens).
    pub fn seq_len(&self) -> usize {
        self.prefix_len + self.extend_len
    }
}

/// A run of request-table updates: `row[start .. start+len] = write_slots[offset .. offset+len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableWrite {
    /// The row.
    pub row: RowId,
    /// First position written.
    pub start: usize,
    /// Number of positions.
    pub len: usize,
    /// Offset into `Plan::write_slots`.
    pub offset: usize,
}

/// One scheduling step: everything an executor needs to run the forward pass.
///
/// An executor that mirrors the request table applies `table_writes` first (prefix slots found in
/// the radix cache, and rows rewritten when duplicates were folded into the cache), then writes each
/// entry's `out_slots` at its positions; attention for an entry reads `row[0 .. seq_len]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Step number, counting from 0.
    pub step: u64,
    /// Kind of pass.
    pub mode: ForwardMode,
    /// Entries: extend entries first, then decode entries.
    pub entries: Vec<PlanEntry>,
    /// Input token ids of all entries, concatenated; `FUTURE_TOKEN` marks the previous step's output.
    pub input_ids: Vec<TokenId>,
    /// KV slot each input token's K/V is stored into (same length as `input_ids`).
    pub out_slots: Vec<KvSlot>,
    /// Request-table updates to apply before this step.
    pub table_writes: Vec<TableWrite>,
    /// Slot values referenced by `table_writes`.
    pub write_slots: Vec<KvSlot>,
    /// Requests that finished or were aborted since the previous plan: executors drop their state
    /// for them once the plans launched before this one have completed (in the overlap order the
    /// previous plan may still name them).
    pub released: Vec<RequestId>,
    /// Batch statistics (SGLang's batch log figures) at the time the plan was formed.
    pub stats: StepStats,
}

impl Plan {
    /// Reset for reuse, keeping allocations.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.input_ids.clear();
        self.out_slots.clear();
        self.table_writes.clear();
        self.write_slots.clear();
        self.released.clear();
        self.stats = StepStats::default();
    }

    /// Total tokens computed in this step.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Input ids of one entry.
    pub fn entry_tokens(&self, e: &PlanEntry) -> &[TokenId] {
        &self.input_ids[e.offset..e.offset + e.extend_len]
    }

    /// Output KV slots of one entry.
    pub fn entry_slots(&self, e: &PlanEntry) -> &[KvSlot] {
        &self.out_slots[e.offset..e.offset + e.extend_len]
    }

    /// Slots of one table write.
    pub fn write_values(&self, w: &TableWrite) -> &[KvSlot] {
        &self.write_slots[w.offset..w.offset + w.len]
    }
}

/// Log-probability of a sampled token, with optional top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// Log-probability of the sampled token.
    pub logprob: f32,
    /// Top alternatives (token, log-probability), most likely first.
    pub top: Vec<(TokenId, f32)>,
}

/// What a backend returns for one plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepResult {
    /// One sampled token per plan entry, in entry order (ignored where `need_logits` is false).
    pub tokens: Vec<TokenId>,
    /// Empty, or one per entry (Some where the request asked for logprobs).
    pub logprobs: Vec<Option<TokenLogprob>>,
    /// Prompt logprobs of the entries whose `prompt_logprobs` asked for them: (entry index,
    /// one per row), in entry order.
    pub prompt_logprobs: Vec<(usize, Vec<TokenLogprob>)>,
    /// When the step's results became available.
    pub done_at: TimeNs,
    /// Device execution time of the step (ns), where the backend measures it (CUDA events).
    pub device_ns: Option<u64>,
}

impl StepResult {
    /// Reset for reuse.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.logprobs.clear();
        self.prompt_logprobs.clear();
        self.done_at = 0;
        self.device_ns = None;
    }
}

/// Summary of a finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishInfo {
    /// The request.
    pub id: RequestId,
    /// Why it ended.
    pub reason: FinishReason,
    /// When.
    pub at: TimeNs,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Generated tokens delivered.
    pub output_tokens: usize,
    /// Prompt tokens served from the prefix cache (summed over admissions).
    pub cached_tokens: usize,
    /// Times the request was retracted.
    pub retractions: u32,
}

/// Something a client should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token.
    Token {
        /// The request.
        id: RequestId,
        /// The token.
        token: TokenId,
        /// Its index in the output (0 = first token).
        index: usize,
        /// When it became available.
        at: TimeNs,
        /// Its logprob, if asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Logprobs of prompt tokens (asked for with `prompt_logprobs_from`), before the request's
    /// first token; a chunked prefill sends one per chunk, in position order.
    PromptLogprobs {
        /// The request.
        id: RequestId,
        /// Position of the prompt token `logprobs[0]` scores.
        first: usize,
        /// Logprob of each token (and the top alternatives at its position).
        logprobs: Vec<TokenLogprob>,
    },
    /// The request ended; no more events for it.
    Finished(FinishInfo),
}
