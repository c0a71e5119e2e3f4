//! Greedy and sampled picks against CPU references: argmax over a Qwen3-sized vocabulary (ties,
//! NaN, re-armed scratch, the folded last-token store) and the sampler's filters (a part of
//! cuda_kernels.rs's `kernels_match_cpu_references`).

use crate::cuda_common::sampling::{argmax, sample, RowParams};
use crate::cuda_common::{Report, Rng};
use doppel_exec::cuda::ops::{argmax_scratch_len, LastTokenStore};
use doppel_exec::cuda::Gpu;

/// CPU sampling reference (SGLang's sort-based filters, in f64): the kept set and the token the
/// inverse CDF in vocabulary order picks for `u`.
fn sample_ref(
    logits: &[f32],
    temp: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    u: f32,
) -> (Vec<bool>, usize, Vec<f64>) {
    let v = logits.len();
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - m) / temp as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|x| x / z).collect();
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let mut thr = 0f64;
    if min_p > 0.0 {
        thr = thr.max(min_p as f64 * sorted[0]);
    }
    if top_k > 0 && (top_k as usize) < v {
        thr = thr.max(sorted[top_k as usize - 1]);
    }
    if top_p < 1.0 {
        let mut cum = 0.0;
        let mut cut = sorted[0];
        for &s in &sorted {
            if cum > top_p as f64 {
                break;
            }
            cut = s;
            cum += s;
        }
        thr = thr.max(cut);
    }
    let kept: Vec<bool> = p.iter().map(|&x| x >= thr).collect();
    let total: f64 = p
        .iter()
        .zip(&kept)
        .filter(|(_, k)| **k)
        .map(|(x, _)| x)
        .sum();
    let target = u as f64 * total;
    let mut c = 0.0;
    let mut pick = v - 1;
    for i in 0..v {
        if kept[i] {
            c += p[i];
            if c > target {
                pick = i;
                break;
            }
        }
    }
    (kept, pick, p)
}

fn argmax_ref(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best
}

/// The argmax and the sampler, in that order on one RNG.
pub fn sampling(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    greedy(gpu, rng, rep);
    sampled(gpu, rng, rep);
}

fn greedy(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    // Greedy argmax over a Qwen3-sized vocabulary, with ties and a NaN.
    let (n, vocab) = (7, 151936);
    let mut logits: Vec<f32> = (0..n * vocab).map(|_| rng.normal() * 3.0).collect();
    logits[vocab + 500] = 100.0;
    logits[vocab + 90000] = 100.0; // tie: lowest index wins
    logits[2 * vocab + 7] = f32::NAN;
    // A row of only NaN and -inf gives token 0.
    for (i, v) in logits[3 * vocab..4 * vocab].iter_mut().enumerate() {
        *v = if i % 3 == 0 {
            f32::NAN
        } else {
            f32::NEG_INFINITY
        };
    }
    // The maximum in the very last column (the last block's tail).
    logits[5 * vocab - 1] = 200.0;
    let dl = gpu.upload(&logits).unwrap();
    let reference: Vec<u32> = logits
        .chunks(vocab)
        .map(|r| {
            if r.iter().all(|v| v.is_nan() || *v == f32::NEG_INFINITY) {
                0
            } else {
                argmax_ref(r) as u32
            }
        })
        .collect();
    // Three launches on one scratch (the counters must re-arm), then
    // small and odd vocabularies.
    let scratch = gpu.zeros::<u32>(argmax_scratch_len(n)).unwrap();
    for rep_i in 0..3 {
        rep.exact(
            &format!("argmax_rows multi-block V=151936 (ties, NaN, all -inf), launch {rep_i}"),
            &argmax(gpu, gpu.ptr(&dl), gpu.ptr(&scratch), n, vocab, None),
            &reference,
        );
    }
    // With the last-token store folded in: out as before, and last_token[rows[r]] = out[r]
    // (rows distinct: 3 is coprime with 2n).
    {
        let store_rows: Vec<u32> = (0..n as u32)
            .map(|r| (r * 3 + 1) % (2 * n as u32))
            .collect();
        let d_rows = gpu.upload(&store_rows).unwrap();
        let d_last = gpu.upload(&vec![u32::MAX; 2 * n]).unwrap();
        let store = LastTokenStore {
            last_token: gpu.ptr(&d_last),
            rows: gpu.ptr(&d_rows),
        };
        rep.exact(
            "argmax_rows multi-block with the last-token store: tokens",
            &argmax(gpu, gpu.ptr(&dl), gpu.ptr(&scratch), n, vocab, Some(store)),
            &reference,
        );
        let mut want = vec![u32::MAX; 2 * n];
        for (r, t) in store_rows.iter().zip(&reference) {
            want[*r as usize] = *t;
        }
        rep.exact(
            "argmax_rows multi-block with the last-token store: last_token",
            &gpu.download(&d_last).unwrap(),
            &want,
        );
    }
    // Launches with different row counts on one scratch (as the backend does: prefill rows,
    // then decode batches): every row right each time.
    for rows in [2usize, 7, 5, 1, 7] {
        rep.exact(
            &format!("argmax_rows multi-block, {rows} rows after other row counts"),
            &argmax(gpu, gpu.ptr(&dl), gpu.ptr(&scratch), rows, vocab, None),
            &reference[..rows],
        );
    }
    for v in [1usize, 1000, 50_001] {
        let l: Vec<f32> = (0..n * v).map(|_| rng.normal()).collect();
        let want: Vec<u32> = l.chunks(v).map(|r| argmax_ref(r) as u32).collect();
        let d = gpu.upload(&l).unwrap();
        rep.exact(
            &format!("argmax_rows multi-block V={v}"),
            &argmax(gpu, gpu.ptr(&d), gpu.ptr(&scratch), n, v, None),
            &want,
        );
    }
}

fn sampled(gpu: &Gpu, rng: &mut Rng, rep: &mut Report) {
    // Mixed sampling parameters, many rows.
    let (n, vocab) = (256usize, 32000usize);
    let logits: Vec<f32> = (0..n * vocab).map(|_| rng.normal() * 2.5).collect();
    let mut params = RowParams::default();
    for i in 0..n {
        let (t, k, p, m) = match i % 8 {
            0 => (0.0, 0, 1.0, 0.0),
            1 => (1.0, 0, 1.0, 0.0),
            2 => (0.7, 50, 1.0, 0.0),
            3 => (1.0, 0, 0.9, 0.0),
            4 => (0.8, 0, 1.0, 0.05),
            5 => (0.6, 40, 0.8, 0.02),
            6 => (1.3, 1, 1.0, 0.0),
            _ => (0.5, 20, 0.95, 0.1),
        };
        params.push(t, k, p, m, rng.unit());
    }
    let dl = gpu.upload(&logits).unwrap();
    let out = sample(gpu, gpu.ptr(&dl), &params, vocab);
    rep.exact(
        "sample_rows deterministic (same inputs twice)",
        &sample(gpu, gpu.ptr(&dl), &params, vocab),
        &out,
    );
    let RowParams {
        temperature: temp,
        top_k: tk,
        top_p: tp,
        min_p: mp,
        uniform: un,
    } = params;

    let (mut in_set, mut same, mut greedy_ok) = (0, 0, true);
    for i in 0..n {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let tok = out[i] as usize;
        if temp[i] == 0.0 || tk[i] == 1 {
            greedy_ok &= tok == argmax_ref(row);
            continue;
        }
        let (kept, pick, p) = sample_ref(row, temp[i], tk[i], tp[i], mp[i], un[i]);
        // In the kept set, allowing f32-vs-f64 rounding at the threshold.
        let thr = p
            .iter()
            .zip(&kept)
            .filter(|(_, k)| **k)
            .map(|(x, _)| *x)
            .fold(f64::INFINITY, f64::min);
        in_set += (tok < vocab && (kept[tok] || p[tok] >= thr * (1.0 - 1e-3))) as usize;
        same += (tok == pick) as usize;
    }
    let sampled = n - n / 8 * 2;
    rep.check(
        "sample_rows greedy / top_k=1 rows equal argmax",
        0.0,
        greedy_ok,
    );
    rep.check(
        &format!("sample_rows token inside the filtered set ({in_set}/{sampled})"),
        (sampled - in_set) as f64,
        in_set == sampled,
    );
    rep.check(
        &format!("sample_rows same token as f64 inverse-CDF reference ({same}/{sampled})"),
        (sampled - same) as f64,
        same * 100 >= sampled * 95,
    );
}
