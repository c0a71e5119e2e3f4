//! The backend's side of prompt logprobs: which step tokens are prompt rows, scored after the
//! forward pass (cuda/prompt_logprobs.rs) while the workspace still holds their hidden rows.

use super::CudaBackend;
use crate::cuda::Result;
use doppel_core::{Plan, TokenLogprob};

impl CudaBackend {
    /// Prompt logprobs of every entry whose plan asks for them: (entry index, one per row).
    /// Run right after the step's forward pass; waits for the GPU.
    pub(super) fn prompt_logprobs(
        &mut self,
        plan: &Plan,
    ) -> Result<Vec<(usize, Vec<TokenLogprob>)>> {
        let mut out = Vec::new();
        for (i, e) in plan.entries.iter().enumerate() {
            let Some(rows) = &e.prompt_logprobs else {
                continue;
            };
            if rows.first < e.prefix_len || rows.positions().end > e.seq_len() {
                return Err(Self::bad(
                    plan.step,
                    format!(
                        "request {}: prompt logprob rows {:?} outside the entry's positions {:?}",
                        e.id,
                        rows.positions(),
                        e.positions()
                    ),
                ));
            }
            // Step token index of each row's position.
            let tok: Vec<u32> = rows
                .positions()
                .map(|p| (e.offset + p - e.prefix_len) as u32)
                .collect();
            let lps = self.model.prompt_logprobs(
                &self.gpu,
                &self.ws,
                &mut self.prompt_bufs,
                (&tok, &rows.targets),
                e.sampling.top_logprobs,
            )?;
            out.push((i, lps));
        }
        Ok(out)
    }
}
