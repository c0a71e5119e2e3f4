//! The decode attention's kernel families and the compiled instance each runs per head_dim and
//! GQA group.

use super::AttnShape;

/// Which decode attention kernel runs (the step plan's choice, `model/plan.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// Tensor cores through shared memory (`kernels/attention_decode_mma.cu`).
    TensorCore,
    /// Tensor cores fed from registers (`kernels/attention_decode_rmma.cu`).
    TensorCoreRegs,
    /// CUDA cores (`kernels/attention_decode.cu`): a warp requests 4 keys, waits, then computes.
    CudaCore,
    /// CUDA cores with the next keys requested before the math on the current ones (two
    /// register buffers); GQA groups up to 4 (above, [`DecodeKernel::CudaCore`]'s kernel runs).
    CudaCorePipelined,
}

/// The decode kernel `shape` selects: its family, instanced by head_dim and (tensor cores
/// through shared memory, CUDA cores) the GQA group.
pub(super) fn decode_kernel_name(shape: &AttnShape) -> &'static str {
    use DecodeKernel::*;
    let group = shape.nq / shape.nk;
    let d64 = shape.head_dim == 64;
    match (shape.decode_kernel, group) {
        (TensorCore, 1) if d64 => "attention_decode_mma_d64_g1",
        (TensorCore, 2) if d64 => "attention_decode_mma_d64_g2",
        (TensorCore, 3..=4) if d64 => "attention_decode_mma_d64_g4",
        (TensorCore, _) if d64 => "attention_decode_mma_d64_g8",
        (TensorCore, 1) => "attention_decode_mma_d128_g1",
        (TensorCore, 2) => "attention_decode_mma_d128_g2",
        (TensorCore, 3..=4) => "attention_decode_mma_d128_g4",
        (TensorCore, _) => "attention_decode_mma_d128_g8",
        (TensorCoreRegs, _) if d64 => "attention_decode_rmma_d64",
        (TensorCoreRegs, _) => "attention_decode_rmma_d128",
        (CudaCorePipelined, 1) if d64 => "attention_decode_v3p_d64_g1",
        (CudaCorePipelined, 2) if d64 => "attention_decode_v3p_d64_g2",
        (CudaCorePipelined, 3..=4) if d64 => "attention_decode_v3p_d64_g4",
        (CudaCorePipelined, 1) => "attention_decode_v3p_d128_g1",
        (CudaCorePipelined, 2) => "attention_decode_v3p_d128_g2",
        (CudaCorePipelined, 3..=4) => "attention_decode_v3p_d128_g4",
        (_, ..=4) if d64 => "attention_decode_v3_d64_g4",
        (_, _) if d64 => "attention_decode_v3_d64_g8",
        (_, ..=4) => "attention_decode_v3_d128_g4",
        (_, _) => "attention_decode_v3_d128_g8",
    }
}
