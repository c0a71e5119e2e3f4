//! The CUDA kernel thresholds as command-line flags, shared by `exec bench-one-batch` and
//! `exec serve`: one binary A/B-tests a kernel choice in a bench and in serving alike
//! (`KernelChoice` documents each threshold and the measurement behind its default).

use clap::Args;
use doppel_exec::cuda::model::KernelChoice;

/// Overrides of the engine's kernel thresholds (each unset flag keeps the default).
#[derive(Args, Clone, Debug, Default)]
pub struct KernelFlags {
    /// Run every cuBLAS-sized GEMM with cublasGemmEx's default algorithm instead of the one
    /// measured fastest for its shape (cuBLASLt candidates included).
    #[arg(long)]
    pub no_gemm_tuning: bool,
    /// Steps of at most this many tokens (above the GEMVs' one) run the skinny tensor-core GEMM,
    /// larger ones cuBLAS (see `KernelChoice::skinny_max_tokens`).
    #[arg(long)]
    pub skinny_max_rows: Option<usize>,
    /// Decode steps of at most this many rows run the tensor-core decode attention, larger ones
    /// the CUDA-core kernels (0: never; see `KernelChoice::decode_mma_max_tokens`).
    #[arg(long)]
    pub decode_mma_max_rows: Option<usize>,
    /// Decode steps above the tensor-core kernel's rows and up to this many run the tensor-core
    /// decode attention fed from registers (0: never; see
    /// `KernelChoice::decode_reg_mma_max_tokens`).
    #[arg(long)]
    pub decode_reg_mma_max_rows: Option<usize>,
    /// Decode steps of at least this many rows ask the o projection's weights into L2 from the
    /// decode attention (see `KernelChoice::decode_prefetch_o_min_rows`).
    #[arg(long)]
    pub decode_prefetch_o_min_rows: Option<usize>,
    /// No o-weights prefetch from the decode attention at any batch size.
    #[arg(long, conflicts_with = "decode_prefetch_o_min_rows")]
    pub no_decode_prefetch_o: bool,
    /// GQA groups up to this many (at most 4) run the pipelined CUDA-core decode attention,
    /// larger ones the kernel that waits for each iteration's keys (see
    /// `KernelChoice::decode_pipelined_max_group`).
    #[arg(long)]
    pub decode_pipelined_max_group: Option<usize>,
}

impl KernelFlags {
    /// The engine's thresholds with these flags applied.
    pub fn choice(&self) -> KernelChoice {
        let mut k = KernelChoice::default();
        let set = |v: Option<usize>, field: &mut usize| {
            if let Some(n) = v {
                *field = n;
            }
        };
        set(self.skinny_max_rows, &mut k.skinny_max_tokens);
        set(self.decode_mma_max_rows, &mut k.decode_mma_max_tokens);
        set(
            self.decode_reg_mma_max_rows,
            &mut k.decode_reg_mma_max_tokens,
        );
        set(
            self.decode_prefetch_o_min_rows,
            &mut k.decode_prefetch_o_min_rows,
        );
        set(
            self.decode_pipelined_max_group,
            &mut k.decode_pipelined_max_group,
        );
        if self.no_gemm_tuning {
            k.gemm_lt_min_tokens = usize::MAX;
        }
        if self.no_decode_prefetch_o {
            k.decode_prefetch_o_min_rows = usize::MAX;
        }
        k
    }

    /// The first flag given, for an error where no CUDA kernel runs.
    pub fn first_set(&self) -> Option<&'static str> {
        [
            (self.no_gemm_tuning, "--no-gemm-tuning"),
            (self.skinny_max_rows.is_some(), "--skinny-max-rows"),
            (self.decode_mma_max_rows.is_some(), "--decode-mma-max-rows"),
            (
                self.decode_reg_mma_max_rows.is_some(),
                "--decode-reg-mma-max-rows",
            ),
            (
                self.decode_prefetch_o_min_rows.is_some(),
                "--decode-prefetch-o-min-rows",
            ),
            (self.no_decode_prefetch_o, "--no-decode-prefetch-o"),
            (
                self.decode_pipelined_max_group.is_some(),
                "--decode-pipelined-max-group",
            ),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_keep_the_engine_defaults() {
        assert_eq!(KernelFlags::default().choice(), KernelChoice::default());
        assert_eq!(KernelFlags::default().first_set(), None);
    }

    #[test]
    fn each_flag_sets_its_threshold() {
        let f = KernelFlags {
            decode_mma_max_rows: Some(256),
            decode_pipelined_max_group: Some(4),
            no_decode_prefetch_o: true,
            ..Default::default()
        };
        let k = f.choice();
        assert_eq!(k.decode_mma_max_tokens, 256);
        assert_eq!(k.decode_pipelined_max_group, 4);
        assert_eq!(k.decode_prefetch_o_min_rows, usize::MAX);
        assert_eq!(
            k.skinny_max_tokens,
            KernelChoice::default().skinny_max_tokens
        );
        assert_eq!(f.first_set(), Some("--decode-mma-max-rows"));
    }
}
