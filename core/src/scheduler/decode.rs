//! Decode steps: one token per running request, retraction when memory runs short.

use super::req::State;
use super::Scheduler;
use crate::config::RETRACT_DECODE_STEPS;
use crate::ids::FUTURE_TOKEN;
use crate::plan::{ForwardMode, Plan, PlanEntry};
use crate::request::FinishReason;

impl Scheduler {
    /// Form a decode step over the running batch. Requests whose in-flight tokens already reach
    /// max_new_tokens are left out (they finish when those results are applied).
    pub(super) fn form_decode(&mut self, plan: &mut Plan) -> bool {
        let mut batch = std::mem::take(&mut self.scratch.batch);
        batch.clear();
        batch.extend(
            self.running
                .iter()
                .copied()
                .filter(|&h| self.req(h).remaining() > 0),
        );
        if batch.is_empty() {
            self.scratch.batch = batch;
            return false;
        }
        let need = self.decode_tokens_needed(&batch);
        let evicted_before = self.counters.evicted_tokens;
        if !self.ensure_free(need) {
            let retracted = self.retract(&mut batch);
            plan.stats.retracted = retracted;
        } else {
            self.new_token_ratio =
                (self.new_token_ratio - self.cfg.ratio_decay()).max(self.cfg.min_ratio());
        }
        plan.stats.running_reqs = self.running.len();
        for &h in &batch {
            self.push_decode_entry(h, plan);
        }
        plan.stats.evicted_tokens = (self.counters.evicted_tokens - evicted_before) as usize;
        plan.stats.decode_reqs = batch.len();
        self.scratch.batch = batch;
        if plan.entries.is_empty() {
            return false;
        }
        plan.mode = ForwardMode::Decode;
        self.counters.decode_steps += 1;
        true
    }

    fn decode_tokens_needed(&self, batch: &[u32]) -> usize {
        if self.cfg.page_size == 1 {
            return batch.len(); // one slot each, without visiting the requests
        }
        batch
            .iter()
            .map(|&h| self.alloc.tokens_needed(self.req(h).seq_len, 1))
            .sum()
    }

    /// Retract victims (fewest generated tokens first, ties to the longest prompt) until the rest
    /// fits with 20 decode steps of headroom each, never the last one; then update
    /// new_token_ratio as SGLang does. A lone request that still cannot get a slot is aborted.
    fn retract(&mut self, batch: &mut Vec<u32>) -> usize {
        // Sorted so that the next victim is at the end.
        batch.sort_by_key(|&h| {
            let r = self.req(h);
            (
                std::cmp::Reverse(r.output.len()),
                r.spec.prompt.len(),
                std::cmp::Reverse(r.seq),
            )
        });
        let mut retracted = 0;
        let ps = self.cfg.page_size;
        loop {
            let headroom = batch.len() * RETRACT_DECODE_STEPS;
            let fits = self.alloc.available_size() + self.tree.evictable_size()
                >= headroom.div_ceil(ps) * ps
                && self.ensure_free(self.decode_tokens_needed(batch));
            if batch.len() <= 1 || (retracted > 0 && fits) {
                break;
            }
            let victim = batch.pop().expect("batch has more than one request");
            self.retract_one(victim);
            retracted += 1;
        }
        if !self.ensure_free(self.decode_tokens_needed(batch)) {
            // Only one request left and not even one slot: it can never continue.
            for h in batch.drain(..) {
                let id = self.req(h).spec.id;
                let mut ev = std::mem::take(&mut self.deferred);
                self.finish(
                    h,
                    FinishReason::Abort(format!("request {id}: out of KV cache memory")),
                    self.now,
                    &mut ev,
                );
                self.deferred = ev;
            }
        }
        let (gen, max_new): (usize, usize) = batch
            .iter()
            .map(|&h| {
                let r = self.req(h);
                (r.output.len(), r.max_new)
            })
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        // Decode entries keep running order.
        batch.sort_by_key(|h| self.running.iter().position(|x| x == h));
        if !batch.is_empty() {
            self.new_token_ratio =
                ((gen + RETRACT_DECODE_STEPS * batch.len()) as f64 / (max_new + 1) as f64).min(1.0);
        }
        retracted
    }

    /// Send a running request back to the waiting queue: free its KV outside the tree (no
    /// insert), unlock its prefix, keep its generated tokens for the re-prefill.
    fn retract_one(&mut self, h: u32) {
        self.running.retain(|&x| x != h);
        let (row, tree_len, seq_len, node) = {
            let r = self.req(h);
            (
                r.row.expect("running request has a row"),
                r.tree_len,
                r.seq_len,
                r.node,
            )
        };
        let first = tree_len.div_ceil(self.cfg.page_size) * self.cfg.page_size;
        self.alloc
            .free(&self.table.row(row)[first.min(seq_len)..seq_len]);
        if !self.cfg.disable_radix_cache {
            self.tree.dec_lock_ref(node);
        }
        self.table.free(row);
        let root = self.tree.root(self.req(h).spec.namespace);
        let r = self.req_mut(h);
        r.state = State::Waiting;
        r.row = None;
        r.seq_len = 0;
        r.tree_len = 0;
        r.node = root;
        r.retractions += 1;
        self.counters.retractions += 1;
        self.insert_waiting(h);
    }

    /// Insert into the waiting queue keeping (arrival, submission) order.
    pub(super) fn insert_waiting(&mut self, h: u32) {
        let key = {
            let r = self.req(h);
            (r.spec.arrival, r.seq)
        };
        let pos = self.waiting.partition_point(|&x| {
            let r = self.req(x);
            (r.spec.arrival, r.seq) < key
        });
        self.waiting.insert(pos, h);
    }

    /// Allocate one slot for a running request and write its decode entry.
    fn push_decode_entry(&mut self, h: u32, plan: &mut Plan) -> bool {
        let (row, seq_len) = {
            let r = self.req(h);
            (r.row.expect("running request has a row"), r.seq_len)
        };
        // The last slot matters only inside a partial page.
        let last = (seq_len % self.cfg.page_size != 0).then(|| self.table.row(row)[seq_len - 1]);
        let offset = plan.out_slots.len();
        if !self
            .alloc
            .alloc_extend(seq_len, last, 1, &mut plan.out_slots)
        {
            return false;
        }
        self.table.push(row, plan.out_slots[offset]);
        let r = self.req_mut(h);
        let input = if r.inflight > 0 {
            FUTURE_TOKEN
        } else {
            r.fill_token(r.fill_len() - 1)
        };
        plan.input_ids.push(input);
        r.seq_len += 1;
        r.inflight += 1;
        plan.entries.push(PlanEntry {
            id: r.spec.id,
            handle: h,
            row,
            prefix_len: seq_len,
            extend_len: 1,
            offset,
            prompt_len: r.spec.prompt.len(),
            need_logits: true,
            is_decode: true,
            sampling: r.spec.sampling.clone(),
            prompt_logprobs: None,
        });
        true
    }

    /// Mixed mode: add one decode token for each request that was running before this prefill.
    /// If memory is short the prefill runs alone (no retraction inside a mixed step).
    pub(super) fn add_mixed_decode(&mut self, plan: &mut Plan, running_bs: usize) {
        let mut batch = std::mem::take(&mut self.scratch.batch);
        batch.clear();
        batch.extend(
            self.running[..running_bs]
                .iter()
                .copied()
                .filter(|&h| self.req(h).remaining() > 0),
        );
        if !batch.is_empty() && self.ensure_free(self.decode_tokens_needed(&batch)) {
            for &h in &batch {
                let ok = self.push_decode_entry(h, plan);
                debug_assert!(ok, "slots were ensured");
            }
            plan.mode = ForwardMode::Mixed;
            plan.stats.decode_reqs = batch.len();
            self.counters.mixed_steps += 1;
        }
        self.scratch.batch = batch;
    }
}
