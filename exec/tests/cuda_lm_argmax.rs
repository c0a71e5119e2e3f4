//! The LM head with the argmax folded in (`kernels/lm_head_argmax.cu`) against f64 references
//! from the same bf16 inputs: every 16-row tile count, vocabularies that leave CTAs without
//! tiles or end in a partial 8-row tile, both compiled widths (1024, 2048), grids of few CTAs
//! (many tiles each), ties across tiles and CTAs (lowest index wins), NaN weights (never
//! win), repeated launches on one scratch (the counter re-arms) and the last-token store.
//! Skips without a GPU.

mod cuda_common;

use cuda_common::{f64s, open_gpu, Report, Rng};
use doppel_exec::cuda::lm_argmax::lm_argmax_scratch_len;
use doppel_exec::cuda::ops::LastTokenStore;
use half::bf16;

/// f64 logits of `m` rows: x [m, k] · w [v, k]ᵀ, NaN as -inf (the kernel's rule).
fn logits(x: &[f64], w: &[f64], m: usize, v: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * v];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..v {
            let d: f64 = xr
                .iter()
                .zip(&w[c * k..(c + 1) * k])
                .map(|(a, b)| a * b)
                .sum();
            out[r * v + c] = if d.is_nan() { f64::NEG_INFINITY } else { d };
        }
    }
    out
}

/// Lowest index of the row's maximum, and the gap to the best other value.
fn argmax_gap(row: &[f64]) -> (usize, f64) {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    (best, row[best] - second)
}

#[test]
fn lm_head_argmax_matches_cpu_reference() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_00a7);
    // (rows, vocab, width, CTAs the scratch holds, duplicate-max rows, NaN weight row)
    let cases: &[(usize, usize, usize, usize, bool, bool)] = &[
        (64, 40000, 1024, usize::MAX, true, true),
        (8, 151936, 1024, usize::MAX, true, false),
        (1, 151936, 1024, usize::MAX, false, true),
        (17, 5003, 2048, usize::MAX, true, false),
        (33, 1001, 1024, 3, true, true),
        (48, 64, 1024, usize::MAX, false, false),
        (64, 20000, 1024, 5, true, false),
        (2, 9, 2048, usize::MAX, false, false),
        (32, 3000, 2048, 7, true, true),
    ];
    for (ci, &(m, v, k, ctas, dup, nan)) in cases.iter().enumerate() {
        let x = rng.bf16s(m * k, 1.0);
        let mut w = rng.bf16s(v * k, 0.08);
        // Two identical weight rows far apart (other warps and CTAs) that win row 0: equal
        // logits, so the lower index must be chosen.
        let (lo, hi) = (v / 7, v - 2);
        if dup {
            for j in 0..k {
                let val = bf16::from_f32(x[j].to_f32() * 0.5);
                w[lo * k + j] = val;
                w[hi * k + j] = val;
            }
        }
        // A weight row with a NaN gives NaN logits in every row: it never wins.
        let nan_row = v / 3;
        if nan {
            w[nan_row * k + k / 2] = bf16::from_f32(f32::NAN);
        }
        let (xf, wf) = (f64s(&x), f64s(&w));
        let reference = logits(&xf, &wf, m, v, k);
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let n_ctas = ctas.min(gpu.sms);
        let scratch = gpu.zeros::<u32>(lm_argmax_scratch_len(n_ctas)).unwrap();
        let out = gpu.zeros::<u32>(m).unwrap();
        // Each row's token also goes to last_token[rows[r]] (rows reversed into a larger table).
        let table_rows: Vec<u32> = (0..m as u32).map(|r| 2 * (m as u32 - 1 - r) + 1).collect();
        let drows = gpu.upload(&table_rows).unwrap();
        let last = gpu.zeros::<u32>(2 * m + 1).unwrap();
        let mut toks = Vec::new();
        for launch in 0..3 {
            let store = (launch == 2).then(|| LastTokenStore {
                last_token: gpu.ptr(&last),
                rows: gpu.ptr(&drows),
            });
            gpu.lm_head_argmax(
                gpu.ptr(&out),
                gpu.ptr(&dx),
                gpu.ptr(&dw),
                gpu.ptr(&scratch),
                (m, v, k),
                store,
            )
            .unwrap();
            toks.push(gpu.stream.clone_dtoh(&out).unwrap());
        }
        let name = format!("case {ci}: {m} rows, vocab {v}, width {k}, {n_ctas} CTAs");
        let got = &toks[0];
        // Every row's token has the row's largest logit (within f32 accumulation error), and is
        // the reference's token wherever the top two are apart.
        let mut worst = 0.0f64;
        let mut clear_mismatch = 0usize;
        for r in 0..m {
            let row = &reference[r * v..(r + 1) * v];
            let (want, gap) = argmax_gap(row);
            let t = got[r] as usize;
            let short = if t < v {
                row[want] - row[t]
            } else {
                f64::INFINITY
            };
            worst = worst.max(short);
            if gap > 1e-3 && t != want {
                clear_mismatch += 1;
            }
        }
        rep.check(
            &format!("{name}: largest logit shortfall"),
            worst,
            worst <= 1e-3,
        );
        rep.check(
            &format!("{name}: rows with a clear winner missed"),
            clear_mismatch as f64,
            clear_mismatch == 0,
        );
        if dup {
            rep.exact(
                &format!("{name}: tie goes to the lower index"),
                &got[..1],
                &[lo as u32],
            );
        }
        if nan {
            let nan_won = got.iter().filter(|&&t| t as usize == nan_row).count();
            rep.check(
                &format!("{name}: NaN never wins"),
                nan_won as f64,
                nan_won == 0,
            );
        }
        rep.exact(&format!("{name}: second launch agrees"), &toks[1], got);
        rep.exact(&format!("{name}: third launch agrees"), &toks[2], got);
        let last_h = gpu.stream.clone_dtoh(&last).unwrap();
        let stored: Vec<u32> = table_rows.iter().map(|&r| last_h[r as usize]).collect();
        rep.exact(&format!("{name}: last-token store"), &stored, got);
        // The counter is re-armed after every launch.
        let s = gpu.stream.clone_dtoh(&scratch).unwrap();
        rep.exact(&format!("{name}: counter re-armed"), &s[..1], &[0u32]);
    }
    // Shapes without an instance are refused with an error, not launched.
    let (x, w) = (
        gpu.zeros::<bf16>(4 * 512).unwrap(),
        gpu.zeros::<bf16>(64 * 512).unwrap(),
    );
    let scratch = gpu.zeros::<u32>(lm_argmax_scratch_len(gpu.sms)).unwrap();
    let out = gpu.zeros::<u32>(4).unwrap();
    let err = gpu.lm_head_argmax(
        gpu.ptr(&out),
        gpu.ptr(&x),
        gpu.ptr(&w),
        gpu.ptr(&scratch),
        (4, 64, 512),
        None,
    );
    rep.check(
        "width 512 refused with an error",
        0.0,
        !gpu.lm_argmax_fits(4, 512) && err.is_err(),
    );
    rep.finish();
}
