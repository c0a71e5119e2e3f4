//! One request's scheduler-side state.

use crate::ids::{NodeId, RowId, TokenId};
use crate::request::RequestSpec;

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// In the waiting queue (new, or retracted).
    Waiting,
    /// Holding a row and KV: being prefilled (possibly in chunks) or decoding.
    Running,
}

#[derive(Clone, Debug)]
pub(super) struct Req {
    pub spec: RequestSpec,
    /// Submission order (FCFS tie-break).
    pub seq: u64,
    /// max_new_tokens after clipping to the context.
    pub max_new: usize,
    pub output: Vec<TokenId>,
    pub state: State,
    pub row: Option<RowId>,
    /// Positions with KV slots allocated and scheduled (the row's length).
    pub seq_len: usize,
    /// Leading positions whose slots belong to the radix tree (locked through `node`).
    pub tree_len: usize,
    /// Locked tree node (a root when nothing is locked).
    pub node: NodeId,
    /// Sampled tokens scheduled but not yet applied (overlap order).
    pub inflight: u32,
    pub cached_tokens: usize,
    pub retractions: u32,
}

impl Req {
    pub fn new(spec: RequestSpec, seq: u64, max_new: usize, root: NodeId) -> Req {
        Req {
            spec,
            seq,
            max_new,
            output: Vec::new(),
            state: State::Waiting,
            row: None,
            seq_len: 0,
            tree_len: 0,
            node: root,
            inflight: 0,
            cached_tokens: 0,
            retractions: 0,
        }
    }

    /// Prompt plus generated tokens: what a (re-)prefill computes.
    pub fn fill_len(&self) -> usize {
        self.spec.prompt.len() + self.output.len()
    }

    /// Token at position `i` of prompt ++ output.
    pub fn fill_token(&self, i: usize) -> TokenId {
        let p = self.spec.prompt.len();
        if i < p {
            self.spec.prompt[i]
        } else {
            self.output[i - p]
        }
    }

    /// Append fill tokens `from..to` to `out`.
    pub fn fill_into(&self, from: usize, to: usize, out: &mut Vec<TokenId>) {
        let p = self.spec.prompt.len();
        if from < p {
            out.extend_from_slice(&self.spec.prompt[from..to.min(p)]);
        }
        if to > p {
            out.extend_from_slice(&self.output[from.max(p) - p..to - p]);
        }
    }

    /// Tokens still to generate, counting those in flight.
    pub fn remaining(&self) -> usize {
        self.max_new
            .saturating_sub(self.output.len() + self.inflight as usize)
    }
}
