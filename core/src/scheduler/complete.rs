//! Applying step results, and moving finished or partial sequences into the radix cache.

use super::req::State;
use super::Scheduler;
use crate::ids::TokenId;
use crate::plan::{Event, Plan, StepResult};
use crate::request::FinishReason;

impl Scheduler {
    /// Append sampled tokens, finish requests, cache prompts of requests that keep decoding.
    pub(super) fn apply(&mut self, plan: &Plan, result: &StepResult, events: &mut Vec<Event>) {
        let at = result.done_at;
        let mut prompt_lps = result.prompt_logprobs.iter().peekable();
        for (i, e) in plan.entries.iter().enumerate() {
            let lps = prompt_lps.next_if(|(at, _)| *at == i).map(|(_, l)| l);
            if self.lookup(e.handle, e.id).is_none() {
                continue; // finished or aborted since the plan was formed
            }
            if let (Some(lps), Some(rows)) = (lps, &e.prompt_logprobs) {
                events.push(Event::PromptLogprobs {
                    id: e.id,
                    first: rows.first + 1,
                    logprobs: lps.clone(),
                });
            }
            if !e.need_logits {
                continue; // a non-final prefill chunk: nothing sampled
            }
            let token = result.tokens[i];
            let logprob = result.logprobs.get(i).cloned().flatten();
            let reason = {
                let eos = &self.cfg.eos_token_ids;
                let r = self.reqs[e.handle as usize].as_mut().expect("live handle");
                r.inflight = r.inflight.saturating_sub(1);
                r.output.push(token);
                events.push(Event::Token {
                    id: e.id,
                    token,
                    index: r.output.len() - 1,
                    at,
                    logprob,
                });
                finish_reason(r.output.len(), r.max_new, token, &r.spec.sampling, eos)
            };
            self.counters.generated_tokens += 1;
            if let Some(reason) = reason {
                self.finish(e.handle, reason, at, events);
            } else if !e.is_decode
                && self.req(e.handle).state == State::Running
                && self.req(e.handle).row == Some(e.row)
            {
                // Share the freshly computed prompt with later requests (SGLang caches every
                // unfinished request after its prefill).
                self.cache_unfinished(e.handle, e.seq_len());
            }
        }
    }

    /// Insert the first `committed` computed positions of a running request into the tree, fold
    /// duplicates into the tree's slots, and move the request's lock to the new deepest node.
    pub(super) fn cache_unfinished(&mut self, h: u32, committed: usize) {
        if self.cfg.disable_radix_cache {
            return;
        }
        let ps = self.cfg.page_size;
        let aligned = committed / ps * ps;
        let (row, old_tree_len, old_node, ns, prio) = {
            let r = self.req(h);
            (
                r.row.expect("running request has a row"),
                r.tree_len,
                r.node,
                r.spec.namespace,
                r.spec.priority,
            )
        };
        if aligned <= old_tree_len {
            return;
        }
        let mut key = std::mem::take(&mut self.scratch.key);
        key.clear();
        self.req(h).fill_into(0, aligned, &mut key);
        // The insert hands back the tree's slots for the whole sequence, so the row can adopt
        // them without a second walk.
        let mut slots = std::mem::take(&mut self.scratch.slots);
        slots.clear();
        let (cached, node) = self.tree.insert_path(
            ns,
            &key,
            &self.table.row(row)[..aligned],
            prio,
            Some(&mut slots),
        );
        debug_assert_eq!(slots.len(), aligned, "the whole sequence is in the tree");
        if cached > old_tree_len {
            // Another request cached these tokens meanwhile: our copies are duplicates.
            self.alloc.free(&self.table.row(row)[old_tree_len..cached]);
        }
        self.table
            .write_logged(row, old_tree_len, &slots[old_tree_len..]);
        self.scratch.slots = slots;
        self.scratch.key = key;
        self.tree.inc_lock_ref(node);
        self.tree.dec_lock_ref(old_node);
        let r = self.req_mut(h);
        r.tree_len = aligned;
        r.node = node;
    }

    /// Release a running request's memory: insert its computed sequence into the cache (or free
    /// it all when the cache is disabled), free duplicates, the unaligned tail and any slot
    /// allocated for a step whose result will be discarded.
    pub(super) fn cache_finished(&mut self, h: u32) {
        let ps = self.cfg.page_size;
        let (row, tree_len, seq_len, node, ns, prio, committed) = {
            let r = self.req(h);
            let committed = r.seq_len.min(r.fill_len().saturating_sub(1));
            (
                r.row.expect("running request has a row"),
                r.tree_len,
                r.seq_len,
                r.node,
                r.spec.namespace,
                r.spec.priority,
                committed,
            )
        };
        if self.cfg.disable_radix_cache {
            self.alloc.free(&self.table.row(row)[..seq_len]);
        } else {
            let aligned = committed / ps * ps;
            let mut keep = tree_len;
            if aligned > tree_len {
                let mut key = std::mem::take(&mut self.scratch.key);
                key.clear();
                self.req(h).fill_into(0, aligned, &mut key);
                let cached = self
                    .tree
                    .insert(ns, &key, &self.table.row(row)[..aligned], prio);
                if cached > tree_len {
                    self.alloc.free(&self.table.row(row)[tree_len..cached]);
                }
                self.scratch.key = key;
                keep = aligned;
            }
            let first = keep.div_ceil(ps) * ps;
            if first < seq_len {
                self.alloc.free(&self.table.row(row)[first..seq_len]);
            }
            self.tree.dec_lock_ref(node);
        }
        self.table.free(row);
        let r = self.req_mut(h);
        r.row = None;
        r.seq_len = 0;
        r.tree_len = 0;
        r.state = State::Waiting;
    }
}

/// The core's own finish rules: max_new_tokens, then EOS / stop token ids (after min_new_tokens,
/// unless ignore_eos).
fn finish_reason(
    out_len: usize,
    max_new: usize,
    token: TokenId,
    sp: &crate::request::SamplingParams,
    eos: &[TokenId],
) -> Option<FinishReason> {
    if !sp.ignore_eos
        && out_len >= sp.min_new_tokens.max(1)
        && (sp.stop_token_ids.contains(&token) || eos.contains(&token))
    {
        return Some(FinishReason::StopToken(token));
    }
    if out_len >= max_new {
        return Some(FinishReason::Length);
    }
    None
}
