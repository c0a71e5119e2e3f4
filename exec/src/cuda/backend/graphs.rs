//! Decode steps replayed from CUDA graphs: the padded batch sizes and the capture-or-replay of
//! one step (split out of backend.rs).

use super::CudaBackend;
use crate::cuda::attention::{decode_splits, AttnEntry, DecodeMeta};
use crate::cuda::model::{RowSampling, StepInput, TokenPick};
use crate::cuda::{DriverCtx, Result};
use cudarc::driver::CudaGraph;

/// Padded batch sizes that get a CUDA graph: 1..=8, then steps of 8 to 64, 16 to 128, 32 after.
pub fn graph_sizes(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=8.min(max)).collect();
    let mut b = 16;
    while b <= max {
        v.push(b);
        b += if b < 64 {
            8
        } else if b < 128 {
            16
        } else {
            32
        };
    }
    v
}

/// A captured decode graph and the attention metadata its kernels read.
pub(super) struct Captured {
    graph: CudaGraph,
    meta: DecodeMeta,
}

// SAFETY: a CUDA graph and its executable are driver handles valid in any thread that has their
// context current; the backend binds its context before every step, and a `Captured` is only
// touched through `&mut CudaBackend`, so moving it to the engine thread is sound.
unsafe impl Send for Captured {}

impl CudaBackend {
    /// Pad a decode-only step to `gb` entries and replay (capturing on first use) its graph.
    pub(super) fn run_graph(
        &mut self,
        s: &mut StepInput,
        gb: usize,
        pick: TokenPick,
    ) -> Result<()> {
        let n = s.decode.len();
        let pad = self.pad_row as u32;
        for i in n..gb {
            s.ids.push(0);
            s.tok_row.push(pad);
            s.positions.push(0);
            s.out_slots.push(0);
            s.decode.push(AttnEntry {
                q_start: i,
                q_len: 1,
                kv_len: 1,
                row: self.pad_row,
            });
            s.logit_tok.push(i as u32);
            s.logit_row.push(pad);
            s.sampling.push(RowSampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                uniform: 0.0,
            });
        }
        s.validate(&self.model, &self.kv, &self.ws)?;
        self.model.upload_step(&self.gpu, &mut self.ws, s)?;
        let splits = decode_splits(gb, self.model.cfg.num_kv_heads, self.kv.max_ctx, self.sms)
            .min(self.ws.max_splits);
        if let Some(c) = self.graphs.get_mut(&(gb, pick)) {
            c.meta
                .update(&self.gpu, &s.decode, self.kv.rows, self.kv.max_ctx)?;
            return c.graph.launch().ctx("replaying a decode graph");
        }
        let meta = DecodeMeta::new(&self.gpu, &s.decode, gb, self.kv.rows, self.kv.max_ctx)?;
        // The graph's GEMM algorithms are fixed at capture: measure them now, in the warm-up only
        // (a graph first met while serving takes the default GEMMs rather than stall a step).
        if self.tuning {
            self.model
                .tune_gemms_or_default(&self.gpu, &self.ws, gb, gb);
        }
        let graph =
            self.model
                .capture_decode(&self.gpu, &self.kv, &self.ws, (&meta, splits), gb, pick)?;
        graph.launch().ctx("launching a decode graph")?;
        self.graphs.insert((gb, pick), Captured { graph, meta });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_sizes_are_exact_to_8_then_stepped() {
        assert_eq!(graph_sizes(0), Vec::<usize>::new());
        assert_eq!(graph_sizes(5), vec![1, 2, 3, 4, 5]);
        assert_eq!(graph_sizes(16), vec![1, 2, 3, 4, 5, 6, 7, 8, 16]);
        let g = graph_sizes(256);
        assert_eq!(
            &g[8..],
            &[16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256]
        );
        // Every batch up to the maximum has a graph at least as large.
        for b in 1..=256 {
            assert!(g.iter().any(|&s| s >= b));
        }
    }
}
