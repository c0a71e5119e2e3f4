//! Every kernel's argument struct: its parameters in the order and with the names of its
//! `extern "C"` signature in `kernels/*.cu` (checked by `signature.rs`'s unit test), and the
//! entry points that take it. A wrapper builds one with named fields and calls `launch`.
//!
//! Adding a kernel: its entry point in `compile.rs`, a struct here, a wrapper that checks
//! extents and launches it.

#[cfg(test)]
use crate::cuda::launch::Declared;
use crate::cuda::launch::{declared, kernel_args, launch_raw, KernelArg, Mode};
use crate::cuda::{DPtr, Gpu, Result};
use cudarc::driver::LaunchConfig;
use half::bf16;

kernel_args! {
    /// `kernels/embedding.cu`: token embeddings, FUTURE_TOKEN ids resolved from `last_token`.
    EmbeddingGather for ["embedding_gather"] {
        out: DPtr<bf16>,
        table: DPtr<bf16>,
        ids: DPtr<u32>,
        tok_row: DPtr<u32>,
        last_token: DPtr<u32>,
        num_tokens: i32,
        hidden: i32,
        vocab: i32,
    }

    /// `kernels/embedding.cu`: `out[i] = x[rows[i]]`.
    GatherRows for ["gather_rows"] {
        out: DPtr<bf16>,
        x: DPtr<bf16>,
        rows: DPtr<u32>,
        n: i32,
        width: i32,
    }

    /// `kernels/embedding.cu`: `last_token[rows[i]] = tokens[i]`.
    StoreLastToken for ["store_last_token"] {
        last_token: DPtr<u32>,
        rows: DPtr<u32>,
        tokens: DPtr<u32>,
        n: i32,
    }

    /// `kernels/norm.cu`: RMSNorm of each row, or of the rows `rows` picks.
    RmsNorm for ["rmsnorm"] {
        out: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        num_tokens: i32,
        hidden: i32,
        eps: f32,
        rows: Option<DPtr<u32>>,
    }

    /// `kernels/norm.cu`: residual add, then RMSNorm, in place.
    FusedAddRmsNorm for ["fused_add_rmsnorm"] {
        x: DPtr<bf16>,
        residual: DPtr<bf16>,
        w: DPtr<bf16>,
        num_tokens: i32,
        hidden: i32,
        eps: f32,
    }

    /// `kernels/norm.cu`: per-head RMSNorm of q and k in the fused qkv buffer.
    QkRmsNorm for ["qk_rmsnorm"] {
        qkv: DPtr<bf16>,
        wq: DPtr<bf16>,
        wk: DPtr<bf16>,
        num_tokens: i32,
        nq: i32,
        nk: i32,
        head_dim: i32,
        row_stride: i32,
        eps: f32,
    }

    /// `kernels/norm.cu`: a norm weight folded into a projection's columns.
    ScaleCols for ["scale_cols"] {
        out: DPtr<bf16>,
        w: DPtr<bf16>,
        nw: DPtr<bf16>,
        rows: i32,
        cols: i32,
    }

    /// `kernels/rope.cu`: NeoX RoPE on q and k in place.
    RopeNeox for ["rope_neox"] {
        qkv: DPtr<bf16>,
        positions: DPtr<i32>,
        cos_sin: DPtr<f32>,
        num_tokens: i32,
        nq: i32,
        nk: i32,
        head_dim: i32,
        row_stride: i32,
    }

    /// `kernels/rope.cu`: q/k norm, RoPE and the KV store in one pass.
    QkNormRopeStore for ["qk_norm_rope_store_d64", "qk_norm_rope_store_d128"] {
        qkv: DPtr<bf16>,
        wq: Option<DPtr<bf16>>,
        wk: Option<DPtr<bf16>>,
        positions: DPtr<i32>,
        cos_sin: DPtr<f32>,
        k_cache: DPtr<bf16>,
        v_cache: DPtr<bf16>,
        slots: DPtr<u32>,
        num_tokens: i32,
        nq: i32,
        nk: i32,
        row_stride: i32,
        eps: f32,
    }

    /// `kernels/kv_cache.cu`: k and v heads into their cache slots.
    KvStore for ["kv_store"] {
        k_cache: DPtr<bf16>,
        v_cache: DPtr<bf16>,
        qkv: DPtr<bf16>,
        slots: DPtr<u32>,
        num_tokens: i32,
        nq: i32,
        nk: i32,
        head_dim: i32,
        row_stride: i32,
    }

    /// `kernels/kv_cache.cu`: request-table writes.
    TableScatter for ["table_scatter"] {
        table: DPtr<u32>,
        rows: DPtr<u32>,
        cols: DPtr<u32>,
        vals: DPtr<u32>,
        n: i32,
        stride: i32,
    }

    /// `kernels/activation.cu`: `silu(gate) * up`.
    SiluAndMul for ["silu_and_mul"] {
        out: DPtr<bf16>,
        gate_up: DPtr<bf16>,
        num_tokens: i32,
        inter: i32,
    }

    /// `kernels/bias.cu`: a bias added to each row.
    AddBiasRows for ["add_bias_rows"] {
        x: DPtr<bf16>,
        bias: DPtr<bf16>,
        rows: i32,
        width: i32,
        ld: i32,
    }

    /// `kernels/gemv.cu`: the small-batch GEMV, bf16 out.
    Gemv for ["gemv_bf16"] {
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        n: i32,
        k: i32,
        ldy: i32,
        pf: i32,
    }

    /// `kernels/gemv.cu`: the small-batch GEMV, f32 out (the LM head).
    GemvF32Out for ["gemv_f32out"] {
        y: DPtr<f32>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        n: i32,
        k: i32,
        ldy: i32,
        pf: i32,
    }

    /// `kernels/gemv.cu`: the GEMV added into the residual stream.
    GemvResAdd for ["gemv_resadd"] {
        r: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        n: i32,
        k: i32,
        ldr: i32,
        pf: i32,
    }

    /// `kernels/gemv.cu`: the GEMV with the RMSNorm before it folded in.
    GemvNorm for ["gemv_norm"] {
        y: DPtr<bf16>,
        r: DPtr<bf16>,
        nw: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        n: i32,
        k: i32,
        ldy: i32,
        eps: f32,
        pf: i32,
    }

    /// `kernels/gemv.cu`: the gate/up GEMV with SiLU-and-mul.
    GemvGateUpSilu for ["gemv_gate_up_silu"] {
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        i: i32,
        k: i32,
        pf: i32,
    }

    /// `kernels/gemv.cu`: the gate/up GEMV with the norm before it and SiLU-and-mul.
    GemvGateUpSiluNorm for ["gemv_gate_up_silu_norm"] {
        y: DPtr<bf16>,
        r: DPtr<bf16>,
        nw: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        i: i32,
        k: i32,
        eps: f32,
        pf: i32,
    }

    /// `kernels/gemv.cu`: the qkv GEMV with the norm before it and the q/k pass after it.
    GemvNormQkv for ["gemv_norm_qkv_d64", "gemv_norm_qkv_d128"] {
        qkv: DPtr<bf16>,
        r: DPtr<bf16>,
        nw: DPtr<bf16>,
        w: DPtr<bf16>,
        b: i32,
        k: i32,
        eps: f32,
        wq: Option<DPtr<bf16>>,
        wk: Option<DPtr<bf16>>,
        positions: DPtr<i32>,
        cos_sin: DPtr<f32>,
        k_cache: DPtr<bf16>,
        v_cache: DPtr<bf16>,
        slots: DPtr<u32>,
        nq: i32,
        nk: i32,
        counters: DPtr<u32>,
        pf: i32,
    }

    /// `kernels/gemm_skinny.cu`: the skinny tensor-core GEMM (every epilogue and tile shape).
    GemmSkinny for [
        "gemm_skinny_plain_m1_w1", "gemm_skinny_plain_m1_w2", "gemm_skinny_plain_m1_w4",
        "gemm_skinny_plain_m2_w1", "gemm_skinny_plain_m2_w2", "gemm_skinny_plain_m2_w4",
        "gemm_skinny_plain_m3_w1", "gemm_skinny_plain_m3_w2", "gemm_skinny_plain_m3_w4",
        "gemm_skinny_plain_m4_w1", "gemm_skinny_plain_m4_w2", "gemm_skinny_plain_m4_w4",
        "gemm_skinny_resadd_m1_w1", "gemm_skinny_resadd_m1_w2", "gemm_skinny_resadd_m1_w4",
        "gemm_skinny_resadd_m2_w1", "gemm_skinny_resadd_m2_w2", "gemm_skinny_resadd_m2_w4",
        "gemm_skinny_resadd_m3_w1", "gemm_skinny_resadd_m3_w2", "gemm_skinny_resadd_m3_w4",
        "gemm_skinny_resadd_m4_w1", "gemm_skinny_resadd_m4_w2", "gemm_skinny_resadd_m4_w4",
        "gemm_skinny_silu_m1_w1", "gemm_skinny_silu_m1_w2", "gemm_skinny_silu_m1_w4",
        "gemm_skinny_silu_m2_w1", "gemm_skinny_silu_m2_w2", "gemm_skinny_silu_m2_w4",
        "gemm_skinny_silu_m3_w1", "gemm_skinny_silu_m3_w2", "gemm_skinny_silu_m3_w4",
        "gemm_skinny_silu_m4_w1", "gemm_skinny_silu_m4_w2", "gemm_skinny_silu_m4_w4",
    ] {
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        part: DPtr<f32>,
        counters: DPtr<u32>,
        m: i32,
        n: i32,
        k: i32,
        ldy: i32,
        s: i32,
        pf: i32,
    }

    /// `kernels/gemm_tile.cu`: the tiled tensor-core GEMM (every epilogue, width and depth).
    GemmTile for [
        "gemm_tile_resadd_n4_s4", "gemm_tile_resadd_n4_s6",
        "gemm_tile_resadd_n8_s4", "gemm_tile_resadd_n8_s6",
        "gemm_tile_norm_n4_s4", "gemm_tile_norm_n4_s6",
        "gemm_tile_norm_n8_s4", "gemm_tile_norm_n8_s6",
        "gemm_tile_silu_n4_s4", "gemm_tile_silu_n4_s6",
        "gemm_tile_silu_n6_s4", "gemm_tile_silu_n6_s6",
        "gemm_tile_silu_n8_s4", "gemm_tile_silu_n8_s6",
    ] {
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        nw: Option<DPtr<bf16>>,
        part: DPtr<f32>,
        counters: DPtr<u32>,
        m: i32,
        n: i32,
        k: i32,
        ldy: i32,
        s: i32,
        eps: f32,
        flags: i32,
    }

    /// `kernels/attention_decode*.cu`: one split-KV decode attention pass (every kernel
    /// family shares `DECODE_ENTRY`'s parameters).
    AttentionDecode for [
        "attention_decode_v3_d64_g4", "attention_decode_v3_d64_g8",
        "attention_decode_v3_d128_g4", "attention_decode_v3_d128_g8",
        "attention_decode_v3p_d64_g1", "attention_decode_v3p_d64_g2",
        "attention_decode_v3p_d64_g4", "attention_decode_v3p_d128_g1",
        "attention_decode_v3p_d128_g2", "attention_decode_v3p_d128_g4",
        "attention_decode_mma_d64_g1", "attention_decode_mma_d64_g2",
        "attention_decode_mma_d64_g4", "attention_decode_mma_d64_g8",
        "attention_decode_mma_d128_g1", "attention_decode_mma_d128_g2",
        "attention_decode_mma_d128_g4", "attention_decode_mma_d128_g8",
        "attention_decode_rmma_d64", "attention_decode_rmma_d128",
    ] {
        part_o: DPtr<f32>,
        part_ml: DPtr<f32>,
        q: DPtr<bf16>,
        k_cache: DPtr<bf16>,
        v_cache: DPtr<bf16>,
        table: DPtr<u32>,
        q_tok: DPtr<i32>,
        kv_len: DPtr<i32>,
        row: DPtr<i32>,
        nq: i32,
        nk: i32,
        q_stride: i32,
        table_stride: i32,
        scale: f32,
        out: DPtr<bf16>,
        counters: Option<DPtr<u32>>,
        min_keys: i32,
        wq: Option<DPtr<bf16>>,
        wk: Option<DPtr<bf16>>,
        positions: Option<DPtr<i32>>,
        cos_sin: Option<DPtr<f32>>,
        slots: Option<DPtr<u32>>,
        eps: f32,
        flags: i32,
        xres: Option<DPtr<bf16>>,
        hidden: i32,
        xeps: f32,
        pf_next: Option<DPtr<u8>>,
        pf_bytes: u32,
        pf_keys: i32,
    }

    /// `kernels/attention_decode.cu`: the merge of a decode attention's splits.
    AttentionDecodeCombine for ["attention_decode_combine_d64", "attention_decode_combine_d128"] {
        out: DPtr<bf16>,
        part_o: DPtr<f32>,
        part_ml: DPtr<f32>,
        q_tok: DPtr<i32>,
        nq: i32,
        splits: i32,
    }

    /// `kernels/attention_extend_gqa.cu`: prefill attention.
    AttentionExtend for ["attention_extend_gqa_d64", "attention_extend_gqa_d128"] {
        out: DPtr<bf16>,
        q: DPtr<bf16>,
        k_cache: DPtr<bf16>,
        v_cache: DPtr<bf16>,
        table: DPtr<u32>,
        tile_entry: DPtr<i32>,
        tile_f0: DPtr<i32>,
        q_start: DPtr<i32>,
        q_len: DPtr<i32>,
        kv_len: DPtr<i32>,
        row: DPtr<i32>,
        nq: i32,
        nk: i32,
        q_stride: i32,
        table_stride: i32,
        scale: f32,
        q_rope: i32,
        q_norm_w: Option<DPtr<bf16>>,
        positions: Option<DPtr<i32>>,
        cos_sin: Option<DPtr<f32>>,
        eps: f32,
    }

    /// `kernels/sampling.cu`: greedy pick per row (and the next step's last token).
    ArgmaxRowsSplit for ["argmax_rows_split"] {
        out: DPtr<u32>,
        logits: DPtr<f32>,
        scratch: DPtr<u32>,
        n: i32,
        vocab: i32,
        last_token: Option<DPtr<u32>>,
        rows: Option<DPtr<u32>>,
    }

    /// `kernels/sampling.cu`: temperature, top-k, top-p and min-p sampling per row.
    SampleRows for ["sample_rows"] {
        out: DPtr<u32>,
        logits: DPtr<f32>,
        temperature: DPtr<f32>,
        top_k: DPtr<i32>,
        top_p: DPtr<f32>,
        min_p: DPtr<f32>,
        uniform: DPtr<f32>,
        n: i32,
        vocab: i32,
    }

    /// `kernels/sampling.cu`: each row's log-softmax at a target token and its top k.
    TokenLogprobsRows for ["token_logprobs_rows"] {
        logits: DPtr<f32>,
        targets: DPtr<u32>,
        out_lp: DPtr<f32>,
        top_lp: DPtr<f32>,
        top_id: DPtr<u32>,
        n: i32,
        vocab: i32,
        k: i32,
    }

    /// `kernels/sampling.cu`: grammar masks applied to logits.
    ApplyTokenBitmask for ["apply_token_bitmask"] {
        logits: DPtr<f32>,
        mask: DPtr<u32>,
        mask_row: DPtr<i32>,
        n: i32,
        vocab: i32,
        words: i32,
    }

    /// `kernels/timing.cu`: a GPU-side stall.
    SpinNs for ["spin_ns"] {
        ns: u64,
    }
}
