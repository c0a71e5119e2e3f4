//! Attention kernels against an f64 CPU reference: extend (prefill over a cached prefix) and
//! split-KV decode, on ragged batches whose positions sit in random KV slots (so prefixes cross
//! pages arbitrarily), GQA groups 1 to 8, head_dim 64 and 128, KV up to 8191 tokens, and a decode
//! CUDA graph replayed with new lengths; decode also with its entries in a permuted visit order
//! (each entry keeps its token row: the same bits in the same rows). Skips without a GPU; see
//! docs/cuda.md.

mod cuda_common;

use cuda_common::kv::{decode_entries, KvSetup};
use cuda_common::{f64s, open_gpu, Report, Rng};
use doppel_exec::cuda::attention::DecodeKernel::{
    CudaCore, CudaCorePipelined, TensorCore, TensorCoreRegs,
};
use doppel_exec::cuda::attention::{
    AttnEntry, AttnShape, DecodeMeta, DecodeOut, DecodeVariant, ExtendMeta, QRope,
};
use doppel_exec::cuda::ops::QkvLayout;
use doppel_exec::cuda::Gpu;
use half::bf16;

#[test]
fn attention_matches_cpu_reference() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0003);
    for (nq, nk, d) in [(16, 8, 128), (32, 8, 64), (8, 1, 128)] {
        attention_extend(&gpu, &mut rng, &mut rep, nq, nk, d);
        attention_decode(&gpu, &mut rng, &mut rep, nq, nk, d, Which::Fused);
    }
    // The GQA-packed extend kernel's row packing with groups 1 and 3 (tiles that split a
    // token's heads) and 4 at D=128.
    for (nq, nk, d) in [(8, 8, 64), (12, 4, 128), (16, 4, 128)] {
        attention_extend(&gpu, &mut rng, &mut rep, nq, nk, d);
    }
    // q norm + RoPE applied by the extend kernel as it loads q.
    for (nq, nk, d, norm) in [(16, 8, 128, true), (12, 4, 128, false), (32, 8, 64, true)] {
        attention_extend_q_rope(&gpu, &mut rng, &mut rep, nq, nk, d, norm);
    }
    // Every register-array size of the decode kernel (groups 1, 2, 3 of 4, 4, 8 at D 64 and
    // 128), with and without the combine folded in.
    for (nq, nk, d) in [
        (8, 8, 64),
        (16, 8, 64),
        (12, 4, 128),
        (16, 4, 128),
        (64, 8, 64),
        (16, 16, 128),
    ] {
        attention_decode(&gpu, &mut rng, &mut rep, nq, nk, d, Which::Fused);
    }
    for (nq, nk, d) in [(16, 8, 128), (16, 8, 64)] {
        attention_decode(&gpu, &mut rng, &mut rep, nq, nk, d, Which::Combine);
    }
    decode_graph_replay(&gpu, &mut rng, &mut rep);
    rep.finish();
}

/// f64 attention over the cache for every new token of every entry; rows of `out` not covered
/// by an entry are left as NaN (and not compared).
fn attn_ref(
    q: &[bf16],
    s: &AttnShape,
    kv: &KvSetup,
    entries: &[AttnEntry],
    tokens: usize,
) -> Vec<f64> {
    let (nq, nk, d) = (s.nq, s.nk, s.head_dim);
    let mut out = vec![f64::NAN; tokens * nq * d];
    for e in entries {
        for i in 0..e.q_len {
            let tok = e.q_start + i;
            let pos = e.kv_len - e.q_len + i;
            for h in 0..nq {
                let kvh = h / (nq / nk);
                let qv = f64s(&q[tok * s.q_stride + h * d..tok * s.q_stride + (h + 1) * d]);
                let slots: Vec<usize> = (0..=pos)
                    .map(|j| kv.table[e.row * kv.stride + j] as usize)
                    .collect();
                let sc: Vec<f64> = slots
                    .iter()
                    .map(|&sl| {
                        let kr = &kv.k[sl * nk * d + kvh * d..sl * nk * d + (kvh + 1) * d];
                        qv.iter().zip(kr).map(|(a, b)| a * b.to_f64()).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = p.iter().sum();
                for dd in 0..d {
                    out[tok * nq * d + h * d + dd] = slots
                        .iter()
                        .zip(&p)
                        .map(|(&sl, pp)| pp * kv.v[sl * nk * d + kvh * d + dd].to_f64())
                        .sum::<f64>()
                        / z;
                }
            }
        }
    }
    out
}

/// Compare only the rows the reference defines.
fn compare_rows(rep: &mut Report, name: &str, out: &[bf16], reference: &[f64], tol: f64) {
    let (mut o, mut r) = (Vec::new(), Vec::new());
    for (a, b) in out.iter().zip(reference) {
        if !b.is_nan() {
            o.push(a.to_f64());
            r.push(*b);
        }
    }
    rep.rel(name, &o, &r, tol);
}

fn attention_extend(gpu: &Gpu, rng: &mut Rng, rep: &mut Report, nq: usize, nk: usize, d: usize) {
    // (cached prefix, new tokens): ragged, single-token, tile-crossing, prefix not a multiple of 64.
    let shapes = [
        (0usize, 37usize),
        (100, 1),
        (69, 130),
        (300, 64),
        (17, 200),
        (0, 1),
        (1000, 65),
    ];
    let lens: Vec<usize> = shapes.iter().map(|(p, n)| p + n).collect();
    let kv = KvSetup::new(gpu, rng, nk, d, &lens, 2048);
    let mut entries = Vec::new();
    let mut t = 0;
    for (i, (p, n)) in shapes.iter().enumerate() {
        entries.push(AttnEntry {
            q_start: t,
            q_len: *n,
            kv_len: p + n,
            row: i + 1,
        });
        t += n;
    }
    let q_stride = (nq + 2 * nk) * d;
    let q = rng.bf16s(t * q_stride, 1.0);
    let dq = gpu.upload(&q).unwrap();
    let shape = kv.shape(nq, nk, d, q_stride);
    let meta = ExtendMeta::new(gpu, &entries, t, kv.rows, kv.stride, nq / nk).unwrap();
    let reference = attn_ref(&q, &shape, &kv, &entries, t);
    let dout = gpu
        .upload(&vec![bf16::from_f32(f32::NAN); t * nq * d])
        .unwrap();
    gpu.attention_extend(
        gpu.ptr(&dout),
        gpu.ptr(&dq),
        kv.view(gpu),
        &meta,
        &shape,
        None,
    )
    .unwrap();
    let out = gpu.download(&dout).unwrap();
    compare_rows(
        rep,
        &format!("attention_extend nq={nq} nk={nk} D={d} T={t}"),
        &out,
        &reference,
        1e-2,
    );
}

/// The GQA extend kernel on raw q with q norm (optional) + RoPE applied on load, against the
/// f64 reference over q processed by the fused q/k pass (the kernel the model uses otherwise).
fn attention_extend_q_rope(
    gpu: &Gpu,
    rng: &mut Rng,
    rep: &mut Report,
    nq: usize,
    nk: usize,
    d: usize,
    norm: bool,
) {
    let shapes = [(0usize, 37usize), (100, 1), (69, 130), (1000, 65)];
    let lens: Vec<usize> = shapes.iter().map(|(p, n)| p + n).collect();
    let kv = KvSetup::new(gpu, rng, nk, d, &lens, 2048);
    let (mut entries, mut positions, mut t) = (Vec::new(), Vec::new(), 0);
    for (i, (p, n)) in shapes.iter().enumerate() {
        entries.push(AttnEntry {
            q_start: t,
            q_len: *n,
            kv_len: p + n,
            row: i + 1,
        });
        positions.extend((0..*n).map(|j| (p + j) as i32));
        t += n;
    }
    let q_stride = (nq + 2 * nk) * d;
    let raw = rng.bf16s(t * q_stride, 1.0);
    let inv_freq: Vec<f64> = (0..d / 2)
        .map(|i| 1e6f64.powf(-((2 * i) as f64) / d as f64))
        .collect();
    let cos = gpu
        .upload(&doppel_exec::cuda::rope::cos_sin_table(&inv_freq, 2048))
        .unwrap();
    let w: Vec<bf16> = (0..d).map(|_| bf16::from_f32(1.0 + rng.sym(0.5))).collect();
    let (dw, dpos) = (gpu.upload(&w).unwrap(), gpu.upload(&positions).unwrap());
    let dslots = gpu.upload(&vec![0u32; t]).unwrap();
    // q processed by the q/k pass (q heads only), as the reference's input.
    let dproc = gpu.upload(&raw).unwrap();
    let post = doppel_exec::cuda::ops::QkvPost {
        qk_norm: norm.then(|| (gpu.ptr(&dw), gpu.ptr(&dw))),
        positions: gpu.ptr(&dpos),
        cos_sin: gpu.ptr(&cos),
        k_cache: gpu.ptr(&kv.dk),
        v_cache: gpu.ptr(&kv.dv),
        slots: gpu.ptr(&dslots),
        row_scale: None,
    };
    gpu.qk_norm_rope_store(
        gpu.ptr(&dproc),
        QkvLayout {
            tokens: t,
            nq,
            nk: 0,
            head_dim: d,
            row_stride: q_stride,
        },
        &post,
        1e-6,
    )
    .unwrap();
    let processed = gpu.download(&dproc).unwrap();
    let shape = kv.shape(nq, nk, d, q_stride);
    let meta = ExtendMeta::new(gpu, &entries, t, kv.rows, kv.stride, nq / nk).unwrap();
    let reference = attn_ref(&processed, &shape, &kv, &entries, t);
    let draw = gpu.upload(&raw).unwrap();
    let rope = QRope {
        q_norm: norm.then(|| gpu.ptr(&dw)),
        positions: gpu.ptr(&dpos),
        cos_sin: gpu.ptr(&cos),
        eps: 1e-6,
    };
    let dout = gpu
        .upload(&vec![bf16::from_f32(f32::NAN); t * nq * d])
        .unwrap();
    let view = kv.view(gpu);
    gpu.attention_extend(
        gpu.ptr(&dout),
        gpu.ptr(&draw),
        view,
        &meta,
        &shape,
        Some(&rope),
    )
    .unwrap();
    let out = gpu.download(&dout).unwrap();
    compare_rows(
        rep,
        &format!("attention_extend + q norm={norm}/RoPE nq={nq} nk={nk} D={d}"),
        &out,
        &reference,
        1e-2,
    );
    // The raw q is left as it was (the kernel transforms its shared-memory copy).
    rep.exact(
        "attention_extend q rope leaves q untouched",
        &gpu.download(&draw).unwrap(),
        &raw,
    );
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Combine,
    Fused,
}

fn attention_decode(
    gpu: &Gpu,
    rng: &mut Rng,
    rep: &mut Report,
    nq: usize,
    nk: usize,
    d: usize,
    which: Which,
) {
    let lens = [1usize, 33, 257, 1000, 4096, 8191, 64];
    let kv = KvSetup::new(gpu, rng, nk, d, &lens, 8192);
    // Decode tokens after 5 other tokens, as in a mixed batch.
    let off = 5;
    let entries = decode_entries(&lens, off);
    let t = off + lens.len();
    let q_stride = (nq + 2 * nk) * d;
    let q = rng.bf16s(t * q_stride, 1.0);
    let dq = gpu.upload(&q).unwrap();
    let shape = kv.shape(nq, nk, d, q_stride);
    let meta = DecodeMeta::new(gpu, &entries, t, kv.rows, kv.stride).unwrap();
    // The same entries visited in another order (as `VisitOrder` sorts them): each keeps its
    // token row, so every output must land in the same row with the same bits.
    let permuted = visit_permuted(&entries);
    let meta_p = DecodeMeta::new(gpu, &permuted, t, kv.rows, kv.stride).unwrap();
    let reference = attn_ref(&q, &shape, &kv, &entries, t);
    // One counter buffer for all launches: the fused kernel must leave it zeroed.
    let counters = gpu.zeros::<u32>(entries.len() * nk).unwrap();
    let variant = match which {
        Which::Combine => DecodeVariant::Combine,
        Which::Fused => DecodeVariant::Fused(gpu.ptr(&counters)),
    };
    // split_min_keys 40 (the model's default) leaves some launched splits empty on the short
    // sequences (1, 33, 64 keys) and uses fewer on the others.
    // Early: the first keys requested before the wait (the newest one after it).
    // Kernel: each family; the pipelined CUDA-core one past group 4 runs the other's kernel.
    // Pf: the whole-row KV prefetch (a hint: the outputs must not move).
    for (splits, min_keys, early, kernel, pf) in [
        (1usize, 1usize, false, CudaCorePipelined, true),
        (7, 1, true, CudaCore, false),
        (32, 1, false, CudaCorePipelined, true),
        (7, 40, true, CudaCore, true),
        (32, 40, true, CudaCorePipelined, true),
        (1, 1, true, CudaCore, true),
        (7, 40, false, CudaCorePipelined, true),
        (32, 1, true, CudaCore, true),
        (1, 1, false, TensorCore, true),
        (1, 40, true, TensorCore, true),
        (7, 1, true, TensorCore, true),
        (7, 40, false, TensorCore, true),
        (32, 1, true, TensorCore, true),
        (32, 40, false, TensorCore, false),
        (1, 1, false, TensorCoreRegs, true),
        (1, 40, true, TensorCoreRegs, true),
        (7, 1, false, TensorCoreRegs, true),
        (7, 40, true, TensorCoreRegs, false),
        (32, 1, false, TensorCoreRegs, true),
        (32, 40, true, TensorCoreRegs, true),
    ] {
        let shape = AttnShape {
            split_min_keys: min_keys,
            decode_early_kv: early,
            decode_kernel: kernel,
            // The prefetch whole, cut short (5 keys) or off: a hint, the same outputs.
            decode_prefetch_kv_keys: match (pf, early) {
                (false, _) => 0,
                (true, false) => usize::MAX,
                (true, true) => 5,
            },
            ..shape
        };
        let n = entries.len();
        let po = gpu.zeros::<f32>(n * nq * splits * d).unwrap();
        let pm = gpu.zeros::<f32>(n * nq * splits * 2).unwrap();
        let run = |meta: &DecodeMeta| {
            let dout = gpu
                .upload(&vec![bf16::from_f32(f32::NAN); t * nq * d])
                .unwrap();
            gpu.attention_decode(
                gpu.ptr(&dq),
                kv.view(gpu),
                meta,
                &shape,
                DecodeOut {
                    out: gpu.ptr(&dout),
                    part_o: gpu.ptr(&po),
                    part_ml: gpu.ptr(&pm),
                    splits,
                    variant,
                },
                None,
            )
            .unwrap();
            gpu.download(&dout).unwrap()
        };
        let (out, out_p) = (run(&meta), run(&meta_p));
        let name = format!(
            "attention_decode {which:?} nq={nq} nk={nk} D={d} kv<=8191 splits={splits} \
             min keys {min_keys} early {early} kernel {kernel:?} KV prefetch {pf}"
        );
        compare_rows(rep, &name, &out, &reference, 1e-2);
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        rep.exact(
            &format!("{name}, permuted visit order"),
            &bits(&out_p),
            &bits(&out),
        );
    }
}

/// `entries` in a visit order unlike the token order: rotated by half their count, so no entry
/// keeps its index (at least 2 entries).
fn visit_permuted(entries: &[AttnEntry]) -> Vec<AttnEntry> {
    let mut p = entries.to_vec();
    p.rotate_left(entries.len().div_ceil(2));
    assert!(p.iter().zip(entries).all(|(a, b)| a != b));
    p
}

/// A decode attention captured once in a CUDA graph and replayed with new lengths written into
/// the same metadata buffers: the graph must read them from the device, not bake them in.
fn decode_graph_replay(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    let (nq, nk, d, splits) = (16, 8, 128, 8);
    let max_lens = [3000usize, 2000, 1024];
    let kv = KvSetup::new(gpu, rng, nk, d, &max_lens, 4096);
    let q_stride = (nq + 2 * nk) * d;
    let t = max_lens.len();
    let q = rng.bf16s(t * q_stride, 1.0);
    let dq = gpu.upload(&q).unwrap();
    let shape = kv.shape(nq, nk, d, q_stride);
    // B in a permuted visit order: the replay must follow each entry's token row too.
    let (a, b) = (
        decode_entries(&[100, 2000, 5], 0),
        visit_permuted(&decode_entries(&[3000, 7, 1024], 0)),
    );
    let mut meta = DecodeMeta::new(gpu, &a, t, kv.rows, kv.stride).unwrap();
    let po = gpu.zeros::<f32>(t * nq * splits * d).unwrap();
    let pm = gpu.zeros::<f32>(t * nq * splits * 2).unwrap();
    let dout = gpu.zeros::<bf16>(t * nq * d).unwrap();
    let graph = gpu
        .capture("decode attention graph", || {
            gpu.attention_decode(
                gpu.ptr(&dq),
                kv.view(gpu),
                &meta,
                &shape,
                DecodeOut {
                    out: gpu.ptr(&dout),
                    part_o: gpu.ptr(&po),
                    part_ml: gpu.ptr(&pm),
                    splits,
                    variant: DecodeVariant::Combine,
                },
                None,
            )
        })
        .unwrap();
    graph.launch().unwrap();
    let out_a = gpu.download(&dout).unwrap();
    compare_rows(
        rep,
        "CUDA graph replay: decode attention, lengths A",
        &out_a,
        &attn_ref(&q, &shape, &kv, &a, t),
        1e-2,
    );
    meta.update(gpu, &b, kv.rows, kv.stride).unwrap();
    graph.launch().unwrap();
    let out_b = gpu.download(&dout).unwrap();
    compare_rows(
        rep,
        "CUDA graph replay: decode attention, lengths B",
        &out_b,
        &attn_ref(&q, &shape, &kv, &b, t),
        1e-2,
    );
}
