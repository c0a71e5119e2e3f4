//! Prefill admission (SGLang's PrefillAdder) and the prefill / mixed plan.

use super::req::{Req, State};
use super::Scheduler;
use crate::config::{
    Policy, CLIP_MAX_NEW_TOKENS, IN_BATCH_PREFIX_CHECK_THRESHOLD,
    IN_BATCH_PREFIX_DEPRIORITIZE_THRESHOLD, LPM_FALLBACK_QUEUE_LEN,
};
use crate::ids::{KvSlot, NodeId, TokenId};
use crate::plan::{ForwardMode, Plan, PlanEntry, PromptRows};
use crate::policy::{self, Candidate};
use crate::radix::RadixCache;

/// Output tokens a request's buffer is sized for when it is first admitted.
const OUTPUT_RESERVE: usize = 1024;

/// One request chosen for this prefill step.
#[derive(Clone, Copy, Debug)]
pub(super) struct Admit {
    handle: u32,
    prefix_len: usize,
    node: NodeId,
    extend: usize,
    /// Only part of the request is computed: it becomes (or stays) the chunked request.
    truncated: bool,
    /// Continuation of the chunked request (already holds a row and KV).
    cont: bool,
    /// Offset of the prefix's slots in `scratch.prefix_slots`, when the match collected them.
    slots_at: Option<usize>,
}

/// How admission walks the waiting queue.
#[derive(Clone, Copy)]
enum Order {
    /// The queue as it stands (FCFS: it is kept in arrival order).
    Queue,
    /// `scratch.cands`, in policy order; `matched`: their prefixes are matched already.
    Cands { matched: bool },
}

#[derive(PartialEq, Eq)]
enum BudgetState {
    Continue,
    NoToken,
    Other,
}

/// SGLang's prefill budgets, in tokens.
struct Budget {
    page: usize,
    rem_input: i64,
    rem_chunk: Option<i64>,
    total_offset: f64,
    cur_offset: i64,
}

impl Budget {
    fn rem_total(&self, avail: usize) -> f64 {
        avail as f64 - self.total_offset
    }

    fn state(&self, avail: usize) -> BudgetState {
        if self.rem_total(avail) <= 0.0 || avail as i64 - self.cur_offset <= 0 {
            BudgetState::NoToken
        } else if self.rem_input <= 0 || self.rem_chunk.is_some_and(|c| c <= 0) {
            BudgetState::Other
        } else {
            BudgetState::Continue
        }
    }

    fn page_ceil(&self, n: usize) -> usize {
        n.div_ceil(self.page) * self.page
    }

    fn update(&mut self, extend: usize, max_new: usize) {
        let ext = self.page_ceil(extend);
        self.total_offset += (ext + max_new) as f64;
        self.cur_offset += ext as i64;
        self.rem_input -= ext as i64;
        if let Some(c) = self.rem_chunk.as_mut() {
            *c -= ext as i64;
        }
    }
}

/// The key a request matches against the cache: prompt ++ output minus the last token (at least
/// one token is always computed, its logits give the next token). A request that wants prompt
/// logprobs from position `s` and has not had them yet matches at most `s` tokens, so every row
/// they need is computed (SGLang caps the match at `logprob_start_len` the same way).
fn match_key<'a>(r: &'a Req, buf: &'a mut Vec<TokenId>) -> &'a [TokenId] {
    let (prompt, output) = (&r.spec.prompt, &r.output);
    if output.is_empty() {
        let cap = r.spec.sampling.prompt_logprobs_from.unwrap_or(usize::MAX);
        &prompt[..(prompt.len() - 1).min(cap)]
    } else {
        buf.clear();
        buf.extend_from_slice(prompt);
        buf.extend_from_slice(&output[..output.len() - 1]);
        buf
    }
}

/// The prompt logprob rows among positions `from..to` of a request's (first) prefill.
fn prompt_rows(r: &Req, from: usize, to: usize) -> Option<PromptRows> {
    let start = r.spec.sampling.prompt_logprobs_from?;
    if !r.output.is_empty() {
        return None; // delivered with the first prefill; a re-prefill after retraction skips them
    }
    let p = &r.spec.prompt;
    let (lo, hi) = (start.max(from), to.min(p.len() - 1));
    (lo < hi).then(|| PromptRows {
        first: lo,
        targets: p[lo + 1..hi + 1].to_vec(),
    })
}

impl Scheduler {
    fn avail_evictable(&self) -> usize {
        self.alloc.available_size() + self.tree.evictable_size()
    }

    /// This step's chunk budget (None: no chunking) with `mixed_bs` decode rows joining it:
    /// SGLang's chunk size less the decode rows, or, under `mixed_step_tokens` while the rows
    /// leave a page of room and no queue has built up, only that room. The decode steps'
    /// projections read every weight whatever their rows, so a few hundred prompt tokens ride
    /// along at little cost; spread thinly, a prompt uses more steps' idle compute
    /// (docs/core.md, "Thin mixed steps").
    fn chunk_budget(&self, mixed_bs: usize) -> Option<i64> {
        match self.cfg.mixed_step_tokens {
            Some(t)
                if mixed_bs > 0
                    && mixed_bs + self.cfg.page_size <= t
                    && self.waiting.len() <= 1 =>
            {
                Some((t - mixed_bs) as i64)
            }
            _ => self
                .cfg
                .chunked_prefill_size
                .map(|c| c as i64 - mixed_bs as i64),
        }
    }

    /// Try to form a prefill (or mixed) step. Prefill always wins over decode.
    pub(super) fn form_prefill(&mut self, plan: &mut Plan) -> bool {
        // The chunked request's computed part goes into the cache before its next chunk
        // (SGLang's cache_unfinished_req at batch formation).
        if let Some(h) = self.chunked {
            let committed = self.req(h).seq_len;
            self.cache_unfinished(h, committed);
        }
        if self.waiting.is_empty() && self.chunked.is_none() {
            return false;
        }
        let running_bs = self.running.len();
        if running_bs >= self.max_running {
            return false;
        }
        let mixed_bs = if self.cfg.enable_mixed_chunk {
            self.running
                .iter()
                .filter(|&&h| self.req(h).remaining() > 0)
                .count()
        } else {
            0
        };
        let ratio = self.new_token_ratio;
        let running_reserve: f64 = self
            .running
            .iter()
            .map(|&h| {
                let r = self.req(h);
                (r.max_new.saturating_sub(r.output.len())).min(CLIP_MAX_NEW_TOKENS) as f64 * ratio
            })
            .sum();
        let mut b = Budget {
            page: self.cfg.page_size,
            rem_input: self.cfg.max_prefill_tokens as i64 - mixed_bs as i64,
            rem_chunk: self.chunk_budget(mixed_bs),
            total_offset: mixed_bs as f64 + running_reserve,
            cur_offset: mixed_bs as i64,
        };
        let mut admitted = std::mem::take(&mut self.scratch.admitted);
        admitted.clear();
        if let Some(h) = self.chunked {
            let r = self.req(h);
            let ext = r.fill_len() - r.seq_len;
            let rem = b
                .rem_chunk
                .unwrap_or(i64::MAX)
                .min(b.rem_total(self.avail_evictable()) as i64);
            let ps = self.cfg.page_size as i64;
            let n = if (ext as i64) <= rem {
                ext
            } else {
                (rem.max(0) / ps * ps) as usize
            };
            if n == 0 {
                // No room for the chunk: decode runs instead, the chunk continues later.
                self.scratch.admitted = admitted;
                return false;
            }
            let truncated = n < ext;
            let charge = if truncated {
                0
            } else {
                r.remaining().min(CLIP_MAX_NEW_TOKENS)
            };
            b.update(n, charge);
            admitted.push(Admit {
                handle: h,
                prefix_len: r.seq_len,
                node: r.node,
                extend: n,
                truncated,
                cont: true,
                slots_at: None,
            });
        }
        if !self.waiting.is_empty() && b.state(self.avail_evictable()) == BudgetState::Continue {
            self.admit_waiting(&mut b, &mut admitted, running_bs);
        }
        let formed = self.build_prefill(plan, &mut admitted, running_bs);
        self.scratch.admitted = admitted;
        formed
    }

    /// Walk the waiting queue in policy order, adding requests until a budget runs out.
    fn admit_waiting(&mut self, b: &mut Budget, admitted: &mut Vec<Admit>, running_bs: usize) {
        let order = self.order_waiting();
        let mut cands = std::mem::take(&mut self.scratch.cands);
        let mut key_buf = Vec::new();
        let mut prefix_slots = std::mem::take(&mut self.scratch.prefix_slots);
        prefix_slots.clear();
        let rows_free = self.table.available();
        // Admission leaves the queue as it is: lent out here so that it can be walked in place.
        let waiting = std::mem::take(&mut self.waiting);
        let picks = (0..).map_while(|i| match order {
            Order::Queue => waiting.get(i).map(|&h| (h, None)),
            Order::Cands { matched } => cands
                .get(i)
                .map(|c| (c.handle, matched.then_some((c.prefix_len, c.node)))),
        });
        // Every candidate before a break was admitted, so the index counts new admissions.
        for (new_count, (h, matched)) in picks.enumerate() {
            if running_bs + admitted.len() >= self.max_running || new_count >= rows_free {
                break;
            }
            let slots_start = prefix_slots.len();
            let (prefix_len, node, slots_at) = if let Some((prefix_len, node)) = matched {
                (prefix_len, node, None)
            } else if self.cfg.disable_radix_cache {
                (0, self.req(h).node, None)
            } else {
                // Collect the prefix's slots now: admission needs them if it succeeds.
                let r = self.reqs[h as usize]
                    .as_ref()
                    .expect("waiting handle is live");
                let key = match_key(r, &mut key_buf);
                let m = self
                    .tree
                    .match_prefix(r.spec.namespace, key, Some(&mut prefix_slots));
                (m.len, m.node, Some(slots_start))
            };
            let r = self.req(h);
            let ext = r.fill_len() - prefix_len;
            let max_new = r.remaining().min(CLIP_MAX_NEW_TOKENS);
            let total = (ext + max_new) as f64;
            let real_input = b.page_ceil(ext) as i64;
            if total >= b.rem_total(self.avail_evictable()) {
                break;
            }
            if real_input >= b.rem_input && !admitted.is_empty() {
                break;
            }
            self.tree.inc_lock_ref(node);
            if total >= b.rem_total(self.avail_evictable()) {
                self.tree.dec_lock_ref(node);
                break;
            }
            let input_tokens = b.page_ceil(ext);
            let fits = b.rem_chunk.is_none_or(|c| input_tokens as i64 <= c);
            let (extend, truncated) = if fits {
                b.update(ext, max_new);
                (ext, false)
            } else {
                let ps = self.cfg.page_size as i64;
                let trunc = b.rem_chunk.expect("not fits implies chunking") / ps * ps;
                if trunc <= 0 {
                    self.tree.dec_lock_ref(node);
                    break;
                }
                b.update(trunc as usize, 0);
                (trunc as usize, true)
            };
            admitted.push(Admit {
                handle: h,
                prefix_len,
                node,
                extend,
                truncated,
                cont: false,
                slots_at,
            });
            if truncated || b.state(self.avail_evictable()) != BudgetState::Continue {
                break;
            }
        }
        self.waiting = waiting;
        cands.clear();
        self.scratch.cands = cands;
        self.scratch.prefix_slots = prefix_slots;
    }

    /// Choose the order admission walks the waiting queue in: the queue itself under FCFS (it
    /// is kept in arrival order, and admission stops after a few requests, so a long queue is
    /// not copied), else `scratch.cands` filled in policy order.
    fn order_waiting(&mut self) -> Order {
        let mut policy = self.cfg.policy;
        if policy.is_cache_aware()
            && (self.cfg.disable_radix_cache
                || self.waiting.len() > LPM_FALLBACK_QUEUE_LEN && policy == Policy::Lpm)
        {
            policy = Policy::Fcfs;
        }
        if policy == Policy::Fcfs {
            return Order::Queue;
        }
        let mut cands = std::mem::take(&mut self.scratch.cands);
        cands.clear();
        for &h in &self.waiting {
            let r = self.req(h);
            cands.push(Candidate {
                handle: h,
                arrival: r.spec.arrival,
                seq: r.seq,
                priority: r.spec.priority,
                max_new_tokens: r.max_new,
                prefix_len: 0,
                node: r.node,
            });
        }
        let aware = policy.is_cache_aware();
        let mut deferred = Vec::new();
        if aware {
            let mut scratch_tree = self
                .scratch
                .in_batch
                .take()
                .unwrap_or_else(|| RadixCache::new(self.cfg.page_size, self.cfg.eviction));
            scratch_tree.reset(None);
            let mut key_buf = Vec::new();
            let mut kept = 0;
            for i in 0..cands.len() {
                let h = cands[i].handle;
                let r = self.reqs[h as usize]
                    .as_ref()
                    .expect("waiting handle is live");
                let key = match_key(r, &mut key_buf);
                let m = self.tree.match_prefix(r.spec.namespace, key, None);
                cands[i].prefix_len = m.len;
                cands[i].node = m.node;
                // In-batch prefix caching: a request whose prefix another queued request is about to
                // create waits a round, so the prefix is computed once.
                let mut defer = false;
                if m.len <= IN_BATCH_PREFIX_CHECK_THRESHOLD {
                    let sm = scratch_tree.match_prefix(r.spec.namespace, key, None);
                    if sm.len >= IN_BATCH_PREFIX_DEPRIORITIZE_THRESHOLD {
                        defer = true;
                    } else {
                        if self.scratch.zeros.len() < key.len() {
                            self.scratch.zeros.resize(key.len(), KvSlot(0));
                        }
                        scratch_tree.insert(
                            r.spec.namespace,
                            key,
                            &self.scratch.zeros[..key.len()],
                            0,
                        );
                    }
                }
                if defer {
                    deferred.push(cands[i]);
                } else {
                    cands[kept] = cands[i];
                    kept += 1;
                }
            }
            cands.truncate(kept);
            self.scratch.in_batch = Some(scratch_tree);
        }
        policy::order(policy, &mut cands, &self.tree, &mut self.rng);
        cands.extend(deferred);
        self.scratch.cands = cands;
        Order::Cands { matched: aware }
    }

    /// Allocate rows and KV for the admitted requests and write the plan.
    fn build_prefill(
        &mut self,
        plan: &mut Plan,
        admitted: &mut Vec<Admit>,
        running_bs: usize,
    ) -> bool {
        let mut ok = 0;
        for a in admitted.iter() {
            if !self.alloc_admit(a, plan) {
                break;
            }
            ok += 1;
        }
        // Anything that could not get memory goes back to waiting (rare: budgets said it fits).
        for a in admitted.drain(ok..) {
            if !a.cont {
                self.tree.dec_lock_ref(a.node);
            }
        }
        if plan.entries.is_empty() {
            return false;
        }
        let mut stats = plan.stats;
        stats.running_reqs = running_bs;
        for a in admitted.iter() {
            let h = a.handle;
            stats.new_seqs += 1;
            stats.new_tokens += a.extend;
            if !a.cont {
                stats.cached_tokens += a.prefix_len;
            }
            let (fill_len, seq_len) = {
                let r = self.req(h);
                (r.fill_len(), r.seq_len)
            };
            if a.truncated {
                self.chunked = Some(h);
            } else {
                if a.cont {
                    self.chunked = None;
                }
                debug_assert_eq!(seq_len, fill_len);
                self.running.push(h);
            }
        }
        let admitted_new = admitted.iter().filter(|a| !a.cont).count();
        self.remove_from_waiting(admitted_new);
        plan.mode = ForwardMode::Extend;
        plan.stats = stats;
        self.counters.prefill_steps += 1;
        if self.cfg.enable_mixed_chunk && running_bs > 0 {
            self.add_mixed_decode(plan, running_bs);
        }
        true
    }

    /// Drop the `n` requests that just left the waiting queue (they are Running now). They sit
    /// at its head under FCFS, so the scan stops when the last is found and the rest of a long
    /// queue moves in one copy instead of being visited request by request.
    fn remove_from_waiting(&mut self, n: usize) {
        let (mut left, mut kept, mut i) = (n, 0, 0);
        while left > 0 && i < self.waiting.len() {
            let h = self.waiting[i];
            if self.req(h).state == State::Waiting {
                self.waiting[kept] = h;
                kept += 1;
            } else {
                left -= 1;
            }
            i += 1;
        }
        debug_assert_eq!(left, 0, "every admitted request was in the waiting queue");
        self.waiting.copy_within(i.., kept);
        self.waiting.truncate(self.waiting.len() - (i - kept));
    }

    /// Give one admitted request its row and KV slots and write its plan entry.
    fn alloc_admit(&mut self, a: &Admit, plan: &mut Plan) -> bool {
        let h = a.handle;
        let offset = plan.input_ids.len();
        let row = if a.cont {
            self.req(h).row.expect("a chunked request holds a row")
        } else {
            let Some(row) = self.table.alloc() else {
                return false;
            };
            match a.slots_at {
                Some(at) => {
                    let slots = &self.scratch.prefix_slots[at..at + a.prefix_len];
                    self.table.write_logged(row, 0, slots);
                }
                None => {
                    let mut slots = std::mem::take(&mut self.scratch.slots);
                    slots.clear();
                    self.tree.path_slots(a.node, &mut slots);
                    debug_assert_eq!(slots.len(), a.prefix_len);
                    self.table.write_logged(row, 0, &slots);
                    self.scratch.slots = slots;
                }
            }
            row
        };
        let last = (a.prefix_len > 0).then(|| self.table.row(row)[a.prefix_len - 1]);
        let need = self.alloc.tokens_needed(a.prefix_len, a.extend);
        if !self.ensure_free(need)
            || !self
                .alloc
                .alloc_extend(a.prefix_len, last, a.extend, &mut plan.out_slots)
        {
            if !a.cont {
                self.table.free(row);
            }
            return false;
        }
        self.table.append(row, &plan.out_slots[offset..]);
        let r = self.req_mut(h);
        r.fill_into(a.prefix_len, a.prefix_len + a.extend, &mut plan.input_ids);
        if !a.cont {
            // Room for the output up front: growing it token by token reallocates it ~8 times
            // (bounded, so a huge max_new_tokens does not reserve memory it may never use).
            let want = r.max_new.min(OUTPUT_RESERVE);
            r.output.reserve_exact(want.saturating_sub(r.output.len()));
            r.state = State::Running;
            r.row = Some(row);
            r.tree_len = a.prefix_len;
            r.node = a.node;
            r.cached_tokens += a.prefix_len;
        }
        r.seq_len = a.prefix_len + a.extend;
        let need_logits = r.seq_len == r.fill_len();
        if need_logits {
            r.inflight += 1;
        }
        let fill_len = r.fill_len() as u64;
        let prompt_logprobs = prompt_rows(r, a.prefix_len, a.prefix_len + a.extend).map(Box::new);
        plan.entries.push(PlanEntry {
            id: r.spec.id,
            handle: h,
            row,
            prefix_len: a.prefix_len,
            extend_len: a.extend,
            offset,
            prompt_len: r.spec.prompt.len(),
            need_logits,
            is_decode: false,
            sampling: r.spec.sampling.clone(),
            prompt_logprobs,
        });
        if !a.cont {
            self.counters.prompt_tokens += fill_len;
            self.counters.cached_tokens += a.prefix_len as u64;
            self.tree.record_hit(a.node);
        }
        true
    }
}
