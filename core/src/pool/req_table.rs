//! SGLang's ReqToTokenPool: fixed rows, each mapping sequence position -> KV slot.

use crate::ids::{KvSlot, RowId};
use crate::plan::TableWrite;

/// Rows of position -> KV slot tables, with a free list of rows and a log of writes for executors.
///
/// Rows grow on demand (instead of SGLang's dense `[rows, context_len + 4]` tensor) and keep their
/// capacity when reused, so steady state allocates nothing.
#[derive(Clone, Debug)]
pub struct ReqToTokenPool {
    rows: Vec<Vec<KvSlot>>,
    free: Vec<RowId>,
    writes: Vec<TableWrite>,
    write_slots: Vec<KvSlot>,
}

impl ReqToTokenPool {
    /// A pool of `size` rows.
    pub fn new(size: usize) -> Self {
        ReqToTokenPool {
            rows: vec![Vec::new(); size],
            // Pop from the end hands out row 0 first.
            free: (0..size as u32).rev().map(RowId).collect(),
            writes: Vec::new(),
            write_slots: Vec::new(),
        }
    }

    /// Total rows.
    pub fn size(&self) -> usize {
        self.rows.len()
    }

    /// Rows not in use.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Take a row, or None when all are in use.
    pub fn alloc(&mut self) -> Option<RowId> {
        let row = self.free.pop()?;
        self.rows[row.index()].clear();
        Some(row)
    }

    /// Return a row.
    pub fn free(&mut self, row: RowId) {
        debug_assert!(!self.free.contains(&row), "row {row:?} freed twice");
        self.rows[row.index()].clear();
        self.free.push(row);
    }

    /// The row's slots by position.
    pub fn row(&self, row: RowId) -> &[KvSlot] {
        &self.rows[row.index()]
    }

    /// Append slots for new positions (fresh tokens; executors learn them from the plan's out_slots).
    pub fn append(&mut self, row: RowId, slots: &[KvSlot]) {
        self.rows[row.index()].extend_from_slice(slots);
    }

    /// Append one slot (a decode token's).
    pub fn push(&mut self, row: RowId, slot: KvSlot) {
        self.rows[row.index()].push(slot);
    }

    /// Truncate a row to `len` positions.
    pub fn truncate(&mut self, row: RowId, len: usize) {
        self.rows[row.index()].truncate(len);
    }

    /// Overwrite positions `start..` with `slots` (growing the row if needed), logging the changed
    /// part so the next plan tells executors about it.
    pub fn write_logged(&mut self, row: RowId, start: usize, slots: &[KvSlot]) {
        let r = &mut self.rows[row.index()];
        if r.len() < start + slots.len() {
            r.resize(start + slots.len(), KvSlot(0));
        }
        // Log only runs that differ, so rewrites that change nothing cost nothing downstream.
        // Fresh positions hold KvSlot(0), which is never handed out, so they always differ.
        let mut i = 0;
        while i < slots.len() {
            if r[start + i] == slots[i] {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < slots.len() && r[start + i] != slots[i] {
                r[start + i] = slots[i];
                i += 1;
            }
            self.writes.push(TableWrite {
                row,
                start: start + run_start,
                len: i - run_start,
                offset: self.write_slots.len(),
            });
            self.write_slots.extend_from_slice(&slots[run_start..i]);
        }
    }

    /// Move the logged writes into a plan's buffers.
    pub fn drain_writes(&mut self, writes: &mut Vec<TableWrite>, slots: &mut Vec<KvSlot>) {
        let base = slots.len();
        for w in self.writes.drain(..) {
            writes.push(TableWrite {
                offset: w.offset + base,
                ..w
            });
        }
        slots.append(&mut self.write_slots);
    }
}
