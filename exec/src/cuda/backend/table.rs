//! Device-side bookkeeping of a step: the request-to-slot table's updates, host-sampled tokens
//! put where the GPU's pick would have, and the download of a step's samples.

use super::CudaBackend;
use crate::cuda::{DriverCtx, Result};
use cudarc::driver::CudaEvent;
use doppel_core::Plan;

impl CudaBackend {
    /// Apply the plan's table writes and the entries' new slots to the device table.
    pub(super) fn write_table(&mut self, plan: &Plan) -> Result<()> {
        let (mut rows, mut cols, mut vals) = (Vec::new(), Vec::new(), Vec::new());
        let mut push = |row: usize, col: usize, slot: u32, step: u64| -> Result<()> {
            if row >= self.cfg.table_rows
                || col >= self.kv.max_ctx
                || slot as usize >= self.kv.num_slots
            {
                return Err(Self::bad(
                    step,
                    format!("table write row {row} pos {col} slot {slot} out of range"),
                ));
            }
            rows.push(row as u32);
            cols.push(col as u32);
            vals.push(slot);
            Ok(())
        };
        for w in &plan.table_writes {
            for (i, s) in plan.write_values(w).iter().enumerate() {
                push(w.row.index(), w.start + i, s.0, plan.step)?;
            }
        }
        for e in &plan.entries {
            for (p, s) in e.positions().zip(plan.entry_slots(e)) {
                push(e.row.index(), p, s.0, plan.step)?;
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        // Only position 0 keys the decode rows' visit order: it is written by a table write
        // from 0 or an entry without a prefix, so this looks at the plan, not at every write.
        for w in plan.table_writes.iter().filter(|w| w.start == 0) {
            if let Some(s) = plan.write_values(w).first() {
                self.visit.note(w.row.index(), 0, s.0);
            }
        }
        for e in plan.entries.iter().filter(|e| e.prefix_len == 0) {
            if let Some(s) = plan.entry_slots(e).first() {
                self.visit.note(e.row.index(), 0, s.0);
            }
        }
        let g = &self.gpu;
        let (r, c, v) = (g.upload(&rows)?, g.upload(&cols)?, g.upload(&vals)?);
        g.table_scatter(
            g.ptr(&self.kv.table),
            g.ptr(&r),
            g.ptr(&c),
            g.ptr(&v),
            rows.len(),
            self.kv.max_ctx,
        )
    }

    /// Put a host-sampled token where the GPU's pick would have: the step's samples and the
    /// request row's last token.
    pub(super) fn upload_host_token(
        &mut self,
        logits_row: usize,
        table_row: usize,
        token: u32,
    ) -> Result<()> {
        let mut one = self.ws.sampled.slice_mut(logits_row..logits_row + 1);
        self.gpu
            .stream
            .memcpy_htod(&[token], &mut one)
            .ctx("uploading a host-sampled token")?;
        let mut lt = self.kv.last_token.slice_mut(table_row..table_row + 1);
        self.gpu
            .stream
            .memcpy_htod(&[token], &mut lt)
            .ctx("uploading a host-sampled token")
    }

    /// Queue the download of a step's `rows` samples into result buffer `result`; the event
    /// completes when they are on the host.
    pub(super) fn download_samples(&mut self, rows: usize, result: usize) -> Result<CudaEvent> {
        if rows > 0 {
            let src = self.ws.sampled.slice(0..rows);
            self.gpu
                .stream
                .memcpy_dtoh(&src, &mut self.results[result])
                .ctx("downloading samples")?;
        }
        self.gpu
            .stream
            .record_event(None)
            .ctx("recording the step's completion")
    }
}
