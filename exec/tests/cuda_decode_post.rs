//! The decode attention with the q/k pass folded in (`Gpu::attention_decode_variant` given a
//! `QkvPost`) against the two-kernel path it replaces (`qk_norm_rope_store`, then the decode
//! attention): the same outputs and the same K/V cache contents bit for bit, for GQA groups 1-8,
//! head_dim 64 and 128, with and without q/k norms, one split and many, each V3 kernel; and with
//! the input RMSNorm's row scale left to the pass (`RowScale`: the projection of the raw residual
//! stream), against the two-kernel path on the scaled projection, to bf16 rounding. Skips without
//! a GPU.

mod cuda_common;

use cuda_common::kv::{decode_entries, KvSetup};
use cuda_common::{f64s, open_gpu, Report, Rng};
use doppel_exec::cuda::attention::DecodeKernel::{
    CudaCore, CudaCorePipelined, TensorCore, TensorCoreRegs,
};
use doppel_exec::cuda::attention::{AttnShape, DecodeMeta, DecodeOut, DecodeVariant, KvView};
use doppel_exec::cuda::ops::{QkvLayout, QkvPost, RowScale};
use doppel_exec::cuda::rope::{cos_sin_table, plain_inv_freq};
use doppel_exec::cuda::Gpu;
use half::bf16;

#[test]
fn folded_qk_pass_matches_the_two_kernel_path() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0011);
    for (nq, nk, d, norm) in [
        (16usize, 8usize, 128usize, true),
        (32, 8, 64, false),
        (8, 8, 128, true),
        (12, 4, 128, true),
        (64, 8, 64, true),
    ] {
        compare(&gpu, &mut rng, &mut rep, (nq, nk, d), norm);
    }
    rep.finish();
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn compare(
    gpu: &Gpu,
    rng: &mut Rng,
    rep: &mut Report,
    (nq, nk, d): (usize, usize, usize),
    norm: bool,
) {
    let eps = 1e-6f32;
    let lens = [1usize, 33, 257, 1000, 64, 160, 2049];
    // Two copies of the same cache: one per path (each writes the new tokens' K/V).
    let kv = KvSetup::new(gpu, rng, nk, d, &lens, 4096);
    let (mut dk2, mut dv2) = (gpu.upload(&kv.k).unwrap(), gpu.upload(&kv.v).unwrap());
    let entries = decode_entries(&lens, 0);
    let t = entries.len();
    let width = (nq + 2 * nk) * d;
    let qkv = rng.bf16s(t * width, 2.0);
    // The new token sits at the last position, in the slot the table gives it.
    let pos: Vec<i32> = lens.iter().map(|&l| (l - 1) as i32).collect();
    let slots: Vec<u32> = entries
        .iter()
        .map(|e| kv.table[e.row * kv.stride + e.kv_len - 1])
        .collect();
    let (wq, wk) = (rng.bf16s(d, 1.5), rng.bf16s(d, 1.5));
    let (dwq, dwk) = (gpu.upload(&wq).unwrap(), gpu.upload(&wk).unwrap());
    let (dp, ds) = (gpu.upload(&pos).unwrap(), gpu.upload(&slots).unwrap());
    let dcs = gpu
        .upload(&cos_sin_table(&plain_inv_freq(1e6, d), 4096))
        .unwrap();
    let meta = DecodeMeta::new(gpu, &entries, t, kv.rows, kv.stride).unwrap();
    let counters = gpu.zeros::<u32>(t * nk).unwrap();
    let post_for =
        |k: &cudarc::driver::CudaSlice<bf16>, v: &cudarc::driver::CudaSlice<bf16>| QkvPost {
            qk_norm: norm.then(|| (gpu.ptr(&dwq), gpu.ptr(&dwk))),
            positions: gpu.ptr(&dp),
            cos_sin: gpu.ptr(&dcs),
            k_cache: gpu.ptr(k),
            v_cache: gpu.ptr(v),
            slots: gpu.ptr(&ds),
            row_scale: None,
        };
    let view2 = KvView {
        k_cache: gpu.ptr(&dk2),
        v_cache: gpu.ptr(&dv2),
        table: gpu.ptr(&kv.dt),
    };
    let variant_of = |fused: bool| {
        if fused {
            DecodeVariant::Fused(gpu.ptr(&counters))
        } else {
            DecodeVariant::Combine
        }
    };
    // A launch's partials for `splits` and two outputs filled with NaN (one per path).
    // An odd number of 16-byte units, so the blocks' shares do not divide it evenly.
    let pf_buf = gpu.zeros::<bf16>(8 * 4099).unwrap();
    let buffers = |splits: usize| {
        let nan = vec![bf16::from_f32(f32::NAN); t * nq * d];
        (
            gpu.zeros::<f32>(t * nq * splits * d).unwrap(),
            gpu.zeros::<f32>(t * nq * splits * 2).unwrap(),
            gpu.upload(&nan).unwrap(),
            gpu.upload(&nan).unwrap(),
        )
    };
    // (splits, min keys per split, combine fused, first keys requested before the wait, the
    // kernel family, the next weights prefetched into L2 at the blocks' end; with and without
    // the pass). The pipelined CUDA-core family past group 4 runs the other's kernel.
    for (splits, min_keys, fused, early, kernel, prefetch) in [
        (1usize, 1usize, true, false, CudaCorePipelined, false),
        (1, 1, true, true, CudaCore, false),
        (1, 1, false, false, CudaCorePipelined, false),
        (7, 40, false, true, CudaCore, false),
        (7, 40, true, true, CudaCorePipelined, false),
        (32, 1, false, true, CudaCore, false),
        (1, 1, true, false, TensorCore, false),
        (1, 1, true, true, TensorCore, false),
        (7, 40, true, true, TensorCore, false),
        (7, 40, false, false, TensorCore, false),
        (32, 1, false, true, TensorCore, false),
        (1, 1, true, false, TensorCoreRegs, false),
        (1, 1, false, false, TensorCoreRegs, false),
        (7, 40, true, false, TensorCoreRegs, false),
        (32, 1, false, true, TensorCoreRegs, false),
        (1, 1, true, false, CudaCorePipelined, true),
        (7, 40, true, false, CudaCore, true),
        (32, 1, false, false, CudaCorePipelined, true),
        (1, 1, true, false, TensorCoreRegs, true),
        (7, 40, false, false, TensorCoreRegs, true),
        (32, 1, false, false, TensorCoreRegs, true),
    ] {
        let shape = AttnShape {
            split_min_keys: min_keys,
            decode_early_kv: early,
            decode_kernel: kernel,
            // A hint: the outputs must not move.
            decode_prefetch_next: prefetch.then(|| gpu.ptr(&pf_buf)),
            ..kv.shape(nq, nk, d, width)
        };
        let variant = variant_of(fused);
        let (po, pm, out1, out2) = buffers(splits);
        // Two kernels: the q/k pass in place on a copy of qkv, then the attention.
        let dq1 = gpu.upload(&qkv).unwrap();
        let post1 = post_for(&kv.dk, &kv.dv);
        gpu.qk_norm_rope_store(
            gpu.ptr(&dq1),
            QkvLayout {
                tokens: t,
                nq,
                nk,
                head_dim: d,
                row_stride: width,
            },
            &post1,
            eps,
        )
        .unwrap();
        let (o1, q1, v1) = (gpu.ptr(&out1), gpu.ptr(&dq1), kv.view(gpu));
        let (p1, m1) = (gpu.ptr(&po), gpu.ptr(&pm));
        gpu.attention_decode(
            q1,
            v1,
            &meta,
            &shape,
            DecodeOut {
                out: o1,
                part_o: p1,
                part_ml: m1,
                splits,
                variant,
            },
            None,
        )
        .unwrap();
        // Folded: the raw projection in, on a cache reset to its state before any new token was
        // stored, so a kernel that reads a new token's key before its q/k pass wrote it (and does
        // not read it again) sees stale values and fails.
        gpu.stream.memcpy_htod(&kv.k, &mut dk2).unwrap();
        gpu.stream.memcpy_htod(&kv.v, &mut dv2).unwrap();
        let dq2 = gpu.upload(&qkv).unwrap();
        let post2 = post_for(&dk2, &dv2);
        let (o2, q2) = (gpu.ptr(&out2), gpu.ptr(&dq2));
        let qk_pass = Some((&post2, eps));
        gpu.attention_decode(
            q2,
            view2,
            &meta,
            &shape,
            DecodeOut {
                out: o2,
                part_o: p1,
                part_ml: m1,
                splits,
                variant,
            },
            qk_pass,
        )
        .unwrap();
        let name = format!(
            "decode + q/k pass nq={nq} nk={nk} D={d} norm={norm} splits={splits} \
             min keys {min_keys} fused {fused} early {early} kernel {kernel:?} \
             prefetch {prefetch}"
        );
        let (a, b) = (gpu.download(&out1).unwrap(), gpu.download(&out2).unwrap());
        rep.check(
            &format!("{name}: every output written"),
            0.0,
            b.iter().all(|x| !x.to_f32().is_nan()),
        );
        rep.exact(&format!("{name}: output"), &bits(&b), &bits(&a));
        let (k1, k2) = (gpu.download(&kv.dk).unwrap(), gpu.download(&dk2).unwrap());
        rep.exact(&format!("{name}: K cache"), &bits(&k2), &bits(&k1));
        let (v1, v2) = (gpu.download(&kv.dv).unwrap(), gpu.download(&dv2).unwrap());
        rep.exact(&format!("{name}: V cache"), &bits(&v2), &bits(&v1));
        // qkv's k/v columns are inputs only; the folded path leaves all of qkv as it was.
        rep.exact(
            &format!("{name}: qkv untouched"),
            &bits(&gpu.download(&dq2).unwrap()),
            &bits(&qkv),
        );
    }
    // The row scale: qkv is the projection of the raw residual rows x; the pass scales it by
    // 1 / rms(x row) before the norms. Reference: the two-kernel path on bf16(qkv / rms(x)).
    let hidden = 1024usize;
    let x = rng.bf16s(t * hidden, 6.0);
    let xf = f64s(&x);
    let scaled: Vec<bf16> = qkv
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let row = &xf[(i / width) * hidden..(i / width + 1) * hidden];
            let ms = row.iter().map(|a| a * a).sum::<f64>() / hidden as f64;
            bf16::from_f64(v.to_f64() / (ms + eps as f64).sqrt())
        })
        .collect();
    let dx = gpu.upload(&x).unwrap();
    for (splits, fused, kernel) in [
        (1usize, true, CudaCorePipelined),
        (7, false, CudaCore),
        (1, true, TensorCore),
        (1, true, TensorCoreRegs),
        (7, false, TensorCoreRegs),
    ] {
        let shape = AttnShape {
            split_min_keys: 40,
            decode_kernel: kernel,
            ..kv.shape(nq, nk, d, width)
        };
        let variant = variant_of(fused);
        let (po, pm, out1, out2) = buffers(splits);
        let (p1, m1) = (gpu.ptr(&po), gpu.ptr(&pm));
        let (k1, v1) = (gpu.upload(&kv.k).unwrap(), gpu.upload(&kv.v).unwrap());
        let (k2, v2) = (gpu.upload(&kv.k).unwrap(), gpu.upload(&kv.v).unwrap());
        let view =
            |k: &cudarc::driver::CudaSlice<bf16>, v: &cudarc::driver::CudaSlice<bf16>| KvView {
                k_cache: gpu.ptr(k),
                v_cache: gpu.ptr(v),
                table: gpu.ptr(&kv.dt),
            };
        let dq1 = gpu.upload(&scaled).unwrap();
        let post1 = post_for(&k1, &v1);
        gpu.qk_norm_rope_store(
            gpu.ptr(&dq1),
            QkvLayout {
                tokens: t,
                nq,
                nk,
                head_dim: d,
                row_stride: width,
            },
            &post1,
            eps,
        )
        .unwrap();
        let (o1, q1) = (gpu.ptr(&out1), gpu.ptr(&dq1));
        gpu.attention_decode(
            q1,
            view(&k1, &v1),
            &meta,
            &shape,
            DecodeOut {
                out: o1,
                part_o: p1,
                part_ml: m1,
                splits,
                variant,
            },
            None,
        )
        .unwrap();
        let dq2 = gpu.upload(&qkv).unwrap();
        let post2 = QkvPost {
            row_scale: Some(RowScale {
                x: gpu.ptr(&dx),
                hidden,
                eps,
            }),
            ..post_for(&k2, &v2)
        };
        let (o2, q2) = (gpu.ptr(&out2), gpu.ptr(&dq2));
        gpu.attention_decode(
            q2,
            view(&k2, &v2),
            &meta,
            &shape,
            DecodeOut {
                out: o2,
                part_o: p1,
                part_ml: m1,
                splits,
                variant,
            },
            Some((&post2, eps)),
        )
        .unwrap();
        let name = format!(
            "decode + q/k pass with the row scale nq={nq} nk={nk} D={d} norm={norm} splits={splits} \
             fused {fused} kernel {kernel:?}"
        );
        let dl = |b: &cudarc::driver::CudaSlice<bf16>| f64s(&gpu.download(b).unwrap());
        rep.rel(&format!("{name}: output"), &dl(&out2), &dl(&out1), 2e-2);
        rep.rel(&format!("{name}: K cache"), &dl(&k2), &dl(&k1), 1e-2);
        rep.rel(&format!("{name}: V cache"), &dl(&v2), &dl(&v1), 1e-2);
    }
    // Refused where it would be ignored: the separate q/k pass does not apply a row scale.
    let bad = QkvPost {
        row_scale: Some(RowScale {
            x: gpu.ptr(&dx),
            hidden,
            eps,
        }),
        ..post_for(&kv.dk, &kv.dv)
    };
    let dq = gpu.upload(&qkv).unwrap();
    rep.check(
        "qk_norm_rope_store refuses a row scale",
        0.0,
        gpu.qk_norm_rope_store(
            gpu.ptr(&dq),
            QkvLayout {
                tokens: t,
                nq,
                nk,
                head_dim: d,
                row_stride: width,
            },
            &bad,
            eps,
        )
        .is_err(),
    );
    let left = gpu.download(&counters).unwrap();
    rep.check(
        "decode + q/k pass: counters re-armed to 0",
        0.0,
        left.iter().all(|&c| c == 0),
    );
}
