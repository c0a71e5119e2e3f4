//! The step plan's choices per row count, model shape and device (plan.rs).

use super::*;
use std::path::Path;

const H100: DeviceCaps = DeviceCaps {
    sms: 132,
    smem_per_block: 227 * 1024,
    l2_bytes: 50 << 20,
};

fn qwen3_06b() -> ModelConfig {
    let text = include_str!("../../../../scripts/gpu/qwen3-0.6b/config.json");
    ModelConfig::parse(text, Path::new("config.json")).expect("the shipped config parses")
}

fn decode(rows: usize, splits: usize) -> StepShape {
    StepShape {
        tokens: rows,
        extend: None,
        decode: Some((rows, splits)),
        logit_rows: rows,
        pick: TokenPick::Argmax,
    }
}

fn plan(shape: StepShape) -> StepPlan {
    StepPlan::new(&qwen3_06b(), &KernelChoice::default(), H100, shape)
}

#[test]
fn one_decode_row_on_qwen3_06b_runs_the_folded_gemvs_and_the_tensor_core_attention() {
    let p = plan(decode(1, 4));
    assert_eq!((p.qkv, p.qk), (QkvStage::GemvFused, QkPass::InQkv));
    assert_eq!(p.mlp, MlpStage::GemvFolded);
    let d = p.decode.expect("decode attention");
    assert_eq!(d.kernel, DecodeKernel::TensorCore);
    assert!(!d.combine_fused && d.early_kv && !d.prefetch_o);
    assert_eq!(p.head.map(|h| h.lm), Some(Gemm::Gemv));
}

#[test]
fn sixteen_decode_rows_on_qwen3_06b_run_skinny_gemms_and_the_register_fed_attention() {
    let p = plan(decode(16, 1));
    assert_eq!(p.qkv, QkvStage::RawResidual(Gemm::Skinny));
    assert_eq!(p.qk, QkPass::InDecodeAttention);
    let d = p.decode.expect("decode attention");
    assert_eq!(d.kernel, DecodeKernel::TensorCoreRegs);
    assert!(d.combine_fused && !d.early_kv && !d.prefetch_o);
    let gate_up = GateUp::SkinnySilu;
    let (o, down) = (Gemm::Skinny, Gemm::Skinny);
    assert_eq!(p.mlp, MlpStage::Separate { o, gate_up, down });
    assert_eq!(p.head.map(|h| h.lm), Some(Gemm::Cublas { tuned: false }));
}

#[test]
fn sixty_four_decode_rows_on_qwen3_06b_run_tiled_gate_up_and_cuda_core_attention() {
    let p = plan(decode(64, 1));
    let cublas = Gemm::Cublas { tuned: false };
    assert_eq!(p.qkv, QkvStage::RawResidual(cublas));
    let d = p.decode.expect("decode attention");
    // GQA group 2: the pipelined CUDA-core kernel.
    assert_eq!(d.kernel, DecodeKernel::CudaCorePipelined);
    assert!(d.prefetch_o, "64 rows prefetch the o weights");
    match p.mlp {
        MlpStage::Separate {
            o,
            gate_up: GateUp::Tiled(t),
            down,
        } => {
            assert_eq!((o, down), (cublas, cublas));
            assert_ne!(
                t.flags & TILE_PRESCALED,
                0,
                "gate/up reads the folded weights"
            );
        }
        other => panic!("64 rows: {other:?}"),
    }
    assert_eq!(
        plan(decode(32, 1)).decode.map(|d| d.kernel),
        Some(DecodeKernel::TensorCoreRegs)
    );
    assert_eq!(
        plan(decode(33, 1)).decode.map(|d| d.kernel),
        Some(DecodeKernel::CudaCorePipelined)
    );
}

fn llama_8b() -> ModelConfig {
    let text = include_str!("../../../../scripts/gpu/llama3.1-8b/config.json");
    ModelConfig::parse(text, Path::new("config.json")).expect("config parses")
}

#[test]
fn sixty_four_decode_rows_on_llama_8b_run_gate_up_on_cublas_past_one_wave_of_tiles() {
    let p = StepPlan::new(&llama_8b(), &KernelChoice::default(), H100, decode(64, 1));
    match p.mlp {
        MlpStage::Separate { gate_up, .. } => {
            assert_eq!(gate_up, GateUp::CublasThenSilu { tuned: false })
        }
        other => panic!("64 rows: {other:?}"),
    }
}

#[test]
fn cuda_core_decode_is_pipelined_up_to_its_group_bound_and_never_past_group_4() {
    let kernel = |cfg: &ModelConfig, max_group| {
        let k = KernelChoice {
            decode_pipelined_max_group: max_group,
            ..KernelChoice::default()
        };
        let p = StepPlan::new(cfg, &k, H100, decode(64, 1));
        p.decode.map(|d| d.kernel)
    };
    let (pipe, wait) = (
        Some(DecodeKernel::CudaCorePipelined),
        Some(DecodeKernel::CudaCore),
    );
    // Llama-3.1-8B: group 4.
    let llama = llama_8b();
    assert_eq!(kernel(&llama, 2), wait);
    assert_eq!(kernel(&llama, 4), pipe);
    assert_eq!(kernel(&qwen3_06b(), 0), wait);
    // Group 8 has no pipelined instance, whatever the bound.
    let g8 = ModelConfig {
        num_heads: 64,
        ..llama
    };
    assert_eq!(kernel(&g8, usize::MAX), wait);
}

#[test]
fn tensor_core_decode_falls_back_to_registers_where_its_shared_memory_does_not_fit() {
    let sm89 = DeviceCaps {
        sms: 128,
        smem_per_block: 99 * 1024,
        l2_bytes: 72 << 20,
    };
    let p = StepPlan::new(&qwen3_06b(), &KernelChoice::default(), sm89, decode(4, 2));
    assert_eq!(
        p.decode.map(|d| d.kernel),
        Some(DecodeKernel::TensorCoreRegs)
    );
}

#[test]
fn the_kv_prefetch_stops_above_its_row_threshold() {
    let on = |rows, max| {
        let k = KernelChoice {
            decode_prefetch_kv_max_rows: max,
            ..KernelChoice::default()
        };
        let p = StepPlan::new(&qwen3_06b(), &k, H100, decode(rows, 1));
        p.decode.map(|d| d.prefetch_kv_keys > 0)
    };
    assert_eq!(on(1024, usize::MAX), Some(true));
    assert_eq!(on(256, 256), Some(true));
    assert_eq!(on(257, 256), Some(false));
    assert_eq!(on(1, 0), Some(false));
}

#[test]
fn the_kv_prefetch_of_the_resident_blocks_fits_the_l2() {
    let keys = |rows| {
        let p = StepPlan::new(
            &qwen3_06b(),
            &KernelChoice::default(),
            H100,
            decode(rows, 1),
        );
        p.decode.map_or(0, |d| d.prefetch_kv_keys)
    };
    // 64 rows x 8 kv heads = 512 blocks, all resident: 50 MiB / (512 x 512 B) = 200 keys,
    // bench-one-batch's whole context at b = 64 (where the whole-row prefetch was measured).
    assert_eq!(keys(64), 200);
    // From 66 rows, 528 blocks (4 per SM) are resident: 193 keys whatever the batch, up to
    // the default's 256 rows; above them no prefetch.
    assert_eq!(keys(256), 193);
    assert_eq!(keys(1024), 0);
    for rows in [1, 8, 64, 256, 1024] {
        let resident = (rows * 8).min(132 * 4);
        assert!(resident * keys(rows) * 128 * 4 <= 50 << 20, "{rows} rows");
    }
}

#[test]
fn a_prefill_runs_cublas_with_the_extend_kernel_roping_q() {
    let p = plan(StepShape {
        tokens: 8192,
        extend: Some(Some(8192)),
        decode: None,
        logit_rows: 64,
        pick: TokenPick::Sample,
    });
    let tuned = Gemm::Cublas { tuned: true };
    assert_eq!(
        (p.qkv, p.qk),
        (QkvStage::Normed(tuned), QkPass::AfterExtendQ(8192))
    );
    assert!(p.extend_q_rope && p.decode.is_none());
    let gate_up = GateUp::CublasThenSilu { tuned: true };
    assert_eq!(
        p.mlp,
        MlpStage::Separate {
            o: tuned,
            gate_up,
            down: tuned
        }
    );
    let head = p.head.expect("head");
    assert_eq!(
        (head.lm, head.pick),
        (Gemm::Cublas { tuned: false }, TokenPick::Sample)
    );
}

#[test]
fn qkv_biases_keep_every_step_off_the_stages_that_scale_rows_after_the_gemm() {
    let mut cfg = qwen3_06b();
    cfg.qkv_bias = true;
    let k = KernelChoice::default();
    let biased = |shape| StepPlan::new(&cfg, &k, H100, shape);
    let one = biased(decode(1, 4));
    assert_eq!((one.qkv, one.qk), (QkvStage::GemvNorm, QkPass::Separate));
    assert_eq!(one.mlp, MlpStage::GemvFolded);
    assert!(one.decode.is_some_and(|d| d.early_kv));
    for (rows, path) in [(16, Gemm::Skinny), (64, Gemm::Cublas { tuned: false })] {
        let p = biased(decode(rows, 1));
        assert_eq!(
            (p.qkv, p.qk),
            (QkvStage::Normed(path), QkPass::InDecodeAttention),
            "{rows} decode rows"
        );
        assert!(p.decode.is_some_and(|d| !d.early_kv));
    }
    for tokens in 1..=300 {
        for shape in [
            decode(tokens, 1),
            StepShape {
                extend: Some(Some(tokens)),
                decode: None,
                ..decode(tokens, 1)
            },
            StepShape {
                extend: Some(None),
                ..decode(tokens, 1)
            },
        ] {
            let p = biased(shape);
            assert!(
                !matches!(p.qkv, QkvStage::GemvFused | QkvStage::RawResidual(_)),
                "{shape:?}: {:?}",
                p.qkv
            );
        }
    }
    assert_eq!(
        plan(decode(16, 1)).qkv,
        QkvStage::RawResidual(Gemm::Skinny),
        "without biases"
    );
}

#[test]
fn a_mixed_step_keeps_the_q_k_pass_out_of_the_decode_attention() {
    let p = plan(StepShape {
        tokens: 40,
        extend: Some(Some(30)),
        decode: Some((10, 1)),
        logit_rows: 11,
        pick: TokenPick::Argmax,
    });
    assert_eq!(p.qk, QkPass::AfterExtendQ(30));
    let d = p.decode.expect("decode attention");
    assert!(d.early_kv && !d.prefetch_o);
    let one = plan(StepShape {
        tokens: 1,
        extend: Some(Some(1)),
        decode: None,
        logit_rows: 1,
        pick: TokenPick::Argmax,
    });
    assert_eq!(
        (one.qkv, one.qk),
        (QkvStage::GemvNorm, QkPass::AfterExtendQ(1))
    );
    assert!(plan(StepShape {
        logit_rows: 0,
        ..decode(2, 1)
    })
    .head
    .is_none());
}
