//! Which KV tokens of a decode batch are read by more than one of its requests.
//!
//! Requests that hit the same radix-cache prefix (a shared system prompt) point their table rows
//! at the same KV slots, and a decode step's attention reads those slots once per request: after
//! the first read they come from L2, so they cost less than the model's per-KV-token rate. The
//! plans carry what is needed: a request's first KV slot is its row's first table write (a cache
//! hit, with its length) or else its first computed slot, and requests whose rows start at the
//! same slot share the prefix.

use doppel_core::Plan;

/// Tracks each table row's first KV slot and cache-hit length across plans.
#[derive(Clone, Debug, Default)]
pub struct KvSharing {
    // By row: (first KV slot, tokens of it taken from the radix cache).
    rows: Vec<(u32, u32)>,
    // Rows with a cache hit: with none (no shared prefixes) a decode step needs no look-up.
    hit_rows: usize,
    // Scratch: a decode step's rows with a hit, and the slots of rows without one that start
    // where a hit row does.
    hits: Vec<(u32, u32)>,
    owners: Vec<u32>,
}

impl KvSharing {
    /// A tracker that has seen no plan.
    pub fn new() -> KvSharing {
        KvSharing::default()
    }

    fn set(&mut self, row: usize, v: (u32, u32)) {
        if row >= self.rows.len() {
            self.rows.resize(row + 1, (u32::MAX, 0));
        }
        self.hit_rows -= (self.rows[row].1 > 0) as usize;
        self.hit_rows += (v.1 > 0) as usize;
        self.rows[row] = v;
    }

    /// Take in `plan` (every plan, in launch order) and return the KV tokens its decode entries
    /// read that another decode entry of the same plan also reads (0 without shared prefixes).
    pub fn observe(&mut self, plan: &Plan) -> usize {
        for e in plan.entries.iter().filter(|e| !e.is_decode) {
            if e.prefix_len == 0 {
                if let Some(s) = plan.out_slots.get(e.offset) {
                    self.set(e.row.0 as usize, (s.0, 0));
                }
            }
        }
        // Cache hits (and rows folded onto cached duplicates) are written from position 0.
        for w in plan
            .table_writes
            .iter()
            .filter(|w| w.start == 0 && w.len > 0)
        {
            if let Some(s) = plan.write_slots.get(w.offset) {
                self.set(w.row.0 as usize, (s.0, w.len as u32));
            }
        }
        if self.hit_rows == 0 {
            return 0;
        }
        let rows = &self.rows;
        let decode = plan.entries.iter().filter(|e| e.is_decode).map(|e| {
            let (key, hit) = rows.get(e.row.0 as usize).copied().unwrap_or((u32::MAX, 0));
            (key, hit.min(e.seq_len() as u32))
        });
        shared_reads(decode, &mut self.hits, &mut self.owners)
    }
}

/// KV tokens read more than once among decode rows given as (first KV slot, cache-hit tokens).
/// Per group of rows starting at the same slot: every hit is read again, except that without
/// the prefix's owner (a row that computed it, hit 0) in the batch the longest hit is the first
/// read. Only groups with a hit count, so only hit rows are sorted (few, where a whole batch
/// sorted every step cost 6 % of a replay); rows without a hit are looked up among them.
fn shared_reads(
    rows: impl Iterator<Item = (u32, u32)> + Clone,
    hits: &mut Vec<(u32, u32)>,
    owners: &mut Vec<u32>,
) -> usize {
    hits.clear();
    hits.extend(
        rows.clone()
            .filter(|&(key, hit)| hit > 0 && key != u32::MAX),
    );
    if hits.is_empty() {
        return 0;
    }
    hits.sort_unstable();
    owners.clear();
    owners.extend(
        rows.filter(|&(key, hit)| hit == 0 && hits.binary_search_by_key(&key, |h| h.0).is_ok())
            .map(|(key, _)| key),
    );
    owners.sort_unstable();
    let mut shared = 0usize;
    for g in hits.chunk_by(|a, b| a.0 == b.0) {
        let owner = owners.binary_search(&g[0].0).is_ok();
        if g.len() < 2 && !owner {
            continue;
        }
        let sum: usize = g.iter().map(|m| m.1 as usize).sum();
        let longest = g.iter().map(|m| m.1 as usize).max().unwrap_or(0);
        shared += if owner { sum } else { sum - longest };
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_core::{
        ForwardMode, KvSlot, PlanEntry, RequestId, RowId, SamplingParams, TableWrite,
    };
    use std::sync::Arc;

    fn entry(row: u32, prefix_len: usize, extend_len: usize, offset: usize) -> PlanEntry {
        PlanEntry {
            id: RequestId(row as u64),
            handle: row,
            row: RowId(row),
            prefix_len,
            extend_len,
            offset,
            prompt_len: 8,
            need_logits: true,
            is_decode: extend_len == 1 && prefix_len >= 8,
            sampling: Arc::new(SamplingParams::greedy(4)),
            prompt_logprobs: None,
        }
    }

    /// The rule as first written: sort every row, then walk the groups.
    fn shared_reads_by_sorting_all(mut rows: Vec<(u32, u32)>) -> usize {
        rows.sort_unstable();
        let mut shared = 0usize;
        for g in rows.chunk_by(|a, b| a.0 == b.0) {
            if g.len() < 2 || g[0].0 == u32::MAX {
                continue;
            }
            let sum: usize = g.iter().map(|m| m.1 as usize).sum();
            let owner = g.iter().any(|m| m.1 == 0);
            let longest = g.iter().map(|m| m.1 as usize).max().unwrap_or(0);
            shared += if owner { sum } else { sum - longest };
        }
        shared
    }

    #[test]
    fn sorting_only_hit_rows_gives_what_sorting_all_rows_gives() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (mut hits, mut owners) = (Vec::new(), Vec::new());
        for _ in 0..2000 {
            let n = rng.gen_range(0..40);
            let rows: Vec<(u32, u32)> = (0..n)
                .map(|_| {
                    let key = [rng.gen_range(0..6), u32::MAX][rng.gen_range(0..5) / 4];
                    let hit = [0, rng.gen_range(1..50)][rng.gen_range(0..2)];
                    (key, if key == u32::MAX { 0 } else { hit })
                })
                .collect();
            assert_eq!(
                shared_reads(rows.iter().copied(), &mut hits, &mut owners),
                shared_reads_by_sorting_all(rows.clone()),
                "{rows:?}"
            );
        }
    }

    #[test]
    fn rows_over_the_same_cached_prefix_share_it() {
        let mut k = KvSharing::new();
        // Row 0 computes an 8-token prompt in slots 100..108.
        let mut p = Plan {
            mode: ForwardMode::Extend,
            entries: vec![entry(0, 0, 8, 0)],
            out_slots: (100..108).map(KvSlot).collect(),
            ..Default::default()
        };
        assert_eq!(k.observe(&p), 0);
        // Rows 1 and 2 hit its first 6 tokens and compute 2 of their own; row 3 is unrelated.
        p.entries = vec![entry(1, 6, 2, 0), entry(2, 6, 2, 2), entry(3, 0, 8, 4)];
        p.out_slots = (200..212).map(KvSlot).collect();
        p.write_slots = (100..106).chain(100..106).map(KvSlot).collect();
        p.table_writes = vec![
            TableWrite {
                row: RowId(1),
                start: 0,
                len: 6,
                offset: 0,
            },
            TableWrite {
                row: RowId(2),
                start: 0,
                len: 6,
                offset: 6,
            },
        ];
        assert_eq!(k.observe(&p), 0);
        let decode = |rows: &[u32]| Plan {
            mode: ForwardMode::Decode,
            entries: rows
                .iter()
                .enumerate()
                .map(|(i, &r)| entry(r, 8, 1, i))
                .collect(),
            out_slots: (300..300 + rows.len() as u32).map(KvSlot).collect(),
            ..Default::default()
        };
        // Without the owner one hit is the first read; with it every hit is read again.
        assert_eq!(k.observe(&decode(&[1, 2, 3])), 6);
        assert_eq!(k.observe(&decode(&[0, 1, 2, 3])), 12);
        assert_eq!(k.observe(&decode(&[0, 3])), 0);
    }
}
