//! The order in which the decode attention visits a step's rows (docs/cuda.md, "Decode
//! attention": visit order).
//!
//! The decode grid runs one row after another (`blockIdx.z` is the entry), so rows next to each
//! other in the entry list run at the same time. Rows that share a radix-cache prefix point to the
//! same KV slots for it; when they are far apart in the list, the prefix leaves L2 before the next
//! of them reads it, and every row reads it from HBM. Sorting the entries by the slot of their
//! position 0 (equal for rows sharing a cached prefix) puts them side by side. Only the entry
//! list moves: each entry keeps its token row (`q_start`), so outputs land where they did.

use super::AttnEntry;

/// The slot at position 0 of every table row, as the host last wrote it: the key that groups
/// decode rows sharing a cached prefix.
#[derive(Clone, Debug)]
pub struct VisitOrder {
    first_slot: Vec<u32>,
}

impl VisitOrder {
    /// A table of `rows` rows, none written yet.
    pub fn new(rows: usize) -> VisitOrder {
        VisitOrder {
            first_slot: vec![0; rows],
        }
    }

    /// Note that `slot` was written at position `pos` of table row `row` (only position 0 is
    /// kept; rows outside the table are ignored: the table write itself is checked elsewhere).
    pub fn note(&mut self, row: usize, pos: usize, slot: u32) {
        if pos == 0 {
            if let Some(s) = self.first_slot.get_mut(row) {
                *s = slot;
            }
        }
    }

    /// Sort decode `entries` by (position-0 slot, table row): rows sharing a cached prefix
    /// become adjacent, and the order is a function of the table alone (rows are distinct, so
    /// the key is unique and the unstable sort is deterministic). Sorts in place, no allocation.
    pub fn sort(&self, entries: &mut [AttnEntry]) {
        let key = |e: &AttnEntry| {
            let slot = self.first_slot.get(e.row).copied().unwrap_or(u32::MAX);
            (slot, e.row)
        };
        entries.sort_unstable_by_key(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(q_start: usize, row: usize) -> AttnEntry {
        AttnEntry {
            q_start,
            q_len: 1,
            kv_len: 100,
            row,
        }
    }

    #[test]
    fn rows_sharing_a_first_slot_become_adjacent_and_keep_their_tokens() {
        let mut order = VisitOrder::new(8);
        // Rows 1, 4, 6 share prefix A (slot 500); rows 2, 5 share B (slot 100); row 3 alone.
        for (row, slot) in [(1, 500), (4, 500), (6, 500), (2, 100), (5, 100), (3, 300)] {
            order.note(row, 0, slot);
            // Later positions do not move the key.
            order.note(row, 7, 9999 - slot);
        }
        let mut e: Vec<AttnEntry> = [6, 2, 3, 1, 5, 4]
            .iter()
            .enumerate()
            .map(|(t, &r)| entry(t, r))
            .collect();
        let before = e.clone();
        order.sort(&mut e);
        let rows: Vec<usize> = e.iter().map(|x| x.row).collect();
        assert_eq!(rows, [2, 5, 3, 1, 4, 6]);
        // A permutation of the same entries: each keeps its token row.
        for x in &e {
            assert!(before.contains(x));
        }
        assert_eq!(e.len(), before.len());
    }

    #[test]
    fn the_order_depends_on_the_table_not_on_the_input_order() {
        let mut order = VisitOrder::new(64);
        for row in 0..64 {
            order.note(row, 0, (row % 5) as u32 * 1000);
        }
        let mut a: Vec<AttnEntry> = (0..64).map(|r| entry(r, r)).collect();
        let mut b: Vec<AttnEntry> = (0..64).rev().map(|r| entry(r, r)).collect();
        order.sort(&mut a);
        order.sort(&mut b);
        assert_eq!(a, b);
        // Rewriting a row's position 0 (the row handed to a new request) moves it.
        order.note(3, 0, 5000);
        order.sort(&mut a);
        assert_eq!(a.last().map(|e| e.row), Some(3));
    }

    #[test]
    fn rows_outside_the_table_are_ignored_and_sort_last() {
        let mut order = VisitOrder::new(2);
        order.note(5, 0, 7);
        let mut e = vec![entry(0, 9), entry(1, 1), entry(2, 0)];
        order.sort(&mut e);
        let rows: Vec<usize> = e.iter().map(|x| x.row).collect();
        assert_eq!(rows, [0, 1, 9]);
    }
}
