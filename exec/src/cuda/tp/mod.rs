//! Tensor parallelism on the GPUs of one host over NCCL (docs/cuda.md, "Tensor parallelism"):
//! one worker thread per GPU, each with its own context, stream, weight shard (cut by the
//! shared sharding code, `crate::model::shard`), KV pool of its KV heads, buffers and decode
//! CUDA graphs; the engine thread sends every worker the same plan and takes rank 0's tokens.
//!
//! A rank runs the whole-model forward pass on its own shapes (`Shard::local_config`); the
//! only difference is after the two row-parallel projections of a layer (o and down): rank 0
//! adds its partial sums onto the residual stream, the others write theirs alone, and one
//! in-place all-reduce of the residual buffer leaves residual + every partial on every rank.
//! Embedding and LM head are whole on every rank, so every rank picks the same tokens.

pub mod backend;
pub mod nccl;
pub mod startup;

use super::model::GpuModel;
use super::{DPtr, Result};
use crate::model::Shard;
use half::bf16;
pub use nccl::{ensure_nccl, init_group, RankComm, NVLS_ENV};

/// Why a group of `size` ranks from device `first` cannot start on `count` visible devices.
pub fn check_devices(first: usize, size: usize, count: usize) -> std::result::Result<(), String> {
    if size == 0 {
        return Err("--tp-size must be at least 1".into());
    }
    if first + size > count {
        return Err(format!(
            "--tp-size {size} from cuda:{first} needs devices {first}..{} but {count} {} visible \
             (CUDA_VISIBLE_DEVICES limits them)",
            first + size - 1,
            if count == 1 { "is" } else { "are" }
        ));
    }
    Ok(())
}

impl GpuModel {
    /// Make this model (loaded with `GpuModel::load_shard` for `comm`'s shard) one rank of its
    /// group: from now on its forward passes all-reduce after o and down.
    pub fn join_group(&mut self, comm: RankComm) {
        self.tp = Some(comm);
    }

    /// This model's place in its tensor-parallel group ([`Shard::SOLE`] alone).
    pub fn shard(&self) -> Shard {
        self.tp.as_ref().map_or(Shard::SOLE, |c| c.shard())
    }

    /// Whether the row-parallel projections add onto the residual stream ([`Shard::adds_residual`]).
    pub(in crate::cuda) fn adds_residual(&self) -> bool {
        self.tp.as_ref().is_none_or(|c| c.shard().adds_residual())
    }

    /// Sum `residual` over the ranks, in place (nothing without a group).
    pub fn all_reduce_residual(&self, residual: DPtr<bf16>) -> Result<()> {
        match &self.tp {
            Some(c) => c.all_reduce_bf16(residual),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::buffers::TokenPick;
    use crate::cuda::model::KernelChoice;
    use crate::cuda::plan::{DeviceCaps, GateUp, MlpStage, StepPlan, StepShape};
    use crate::model::ModelConfig;

    /// Qwen3-0.6B, Qwen3-8B and Llama-3.1-8B shapes.
    fn real_models() -> Vec<ModelConfig> {
        let text = include_str!("../../../../scripts/gpu/qwen3-0.6b/config.json");
        let small = ModelConfig::parse(text, std::path::Path::new("config.json")).unwrap();
        let big = |inter| ModelConfig {
            hidden_size: 4096,
            intermediate_size: inter,
            num_heads: 32,
            ..small.clone()
        };
        vec![small.clone(), big(12288), big(14336)]
    }

    /// The plan with the KV prefetch's length (which follows the rank's kv heads) left out,
    /// whether it prefetches kept, and gate/up's tiled GEMM counted as cuBLAS + SiLU: whether
    /// it is tiled follows the width (its column tiles must fit in one wave), and so does its
    /// layout.
    fn kinds(mut p: StepPlan) -> StepPlan {
        if let Some(d) = &mut p.decode {
            d.prefetch_kv_keys = d.prefetch_kv_keys.min(1);
        }
        if let MlpStage::Separate {
            gate_up: gate_up @ GateUp::Tiled(_),
            ..
        } = &mut p.mlp
        {
            // The tiled GEMM takes at most 64 rows, where cuBLAS runs untuned.
            *gate_up = GateUp::CublasThenSilu { tuned: false };
        }
        p
    }

    #[test]
    fn tp_ranks_of_real_models_plan_the_same_kernels_as_the_whole_model() {
        let h100 = DeviceCaps {
            sms: 132,
            smem_per_block: 227 * 1024,
            l2_bytes: 50 << 20,
        };
        let k = KernelChoice::default();
        let decode = |rows| StepShape {
            tokens: rows,
            extend: None,
            decode: Some((rows, 4)),
            logit_rows: rows,
            pick: TokenPick::Argmax,
        };
        let prefill = |tokens, rows| StepShape {
            tokens,
            extend: Some(Some(tokens)),
            decode: None,
            logit_rows: rows,
            pick: TokenPick::Sample,
        };
        let mut shapes: Vec<StepShape> = [1, 4, 16, 32, 64].map(decode).to_vec();
        shapes.extend([prefill(1, 1), prefill(128, 1), prefill(8192, 64)]);
        for cfg in real_models() {
            for size in [2, 4, 8] {
                let local = Shard { rank: 1, size }.local_config(&cfg);
                for &shape in &shapes {
                    assert_eq!(
                        kinds(StepPlan::new(&local, &k, h100, shape)),
                        kinds(StepPlan::new(&cfg, &k, h100, shape)),
                        "hidden {} tp {size} {shape:?}",
                        cfg.hidden_size
                    );
                }
            }
        }
    }

    #[test]
    fn too_few_devices_name_the_ranks_and_the_count() {
        assert!(check_devices(0, 2, 2).is_ok());
        assert!(check_devices(2, 2, 4).is_ok());
        let e = check_devices(0, 4, 2).unwrap_err();
        assert!(
            e.contains("--tp-size 4") && e.contains("0..3") && e.contains("2 are visible"),
            "{e}"
        );
        let e = check_devices(1, 2, 2).unwrap_err();
        assert!(e.contains("1..2") && e.contains("2 are visible"), "{e}");
        assert!(check_devices(0, 0, 8).is_err());
    }

    #[test]
    fn missing_nccl_says_how_to_link_it() {
        let e = nccl::nccl_missing().to_string();
        assert!(
            e.contains("libnccl.so.2") && e.contains("LD_LIBRARY_PATH"),
            "{e}"
        );
    }
}
