//! The structured-output token mask on the GPU: `apply_token_bitmask` against the CPU's
//! `constraint::apply_mask` (bit-exact, shared mask rows, unconstrained rows left alone, a
//! vocabulary that is not a multiple of 32), and the argmax / sampler after it never pick a
//! disallowed token. Skips (printing why) when no GPU is present. On the GPU machine:
//! `scripts/gpu/run-tests.sh` or `scripts/gpu/structured.sh`.

mod cuda_common;

use cuda_common::sampling::{argmax, sample, RowParams};
use cuda_common::{open_gpu, Report, Rng};
use doppel_exec::constraint::{apply_mask, mask_words};
use doppel_exec::cuda::ops::argmax_scratch_len;
use doppel_exec::cuda::Gpu;

fn random_mask(rng: &mut Rng, vocab: usize, allowed: usize) -> Vec<u32> {
    let mut m = vec![0u32; mask_words(vocab)];
    for _ in 0..allowed {
        let t = rng.below(vocab);
        m[t / 32] |= 1 << (t % 32);
    }
    m
}

fn mask_kernel(gpu: &Gpu, rng: &mut Rng, rep: &mut Report, vocab: usize) {
    let n = 9;
    let logits: Vec<f32> = (0..n * vocab).map(|_| rng.normal() * 4.0).collect();
    // Three mask rows; rows 2, 5 and 8 are unconstrained; rows 0 and 6 share a mask.
    let masks: Vec<Vec<u32>> = [5, 300, vocab / 2]
        .iter()
        .map(|&a| random_mask(rng, vocab, a))
        .collect();
    let mask_row: Vec<i32> = vec![0, 1, -1, 2, 1, -1, 0, 2, -1];
    let mut reference = logits.clone();
    for (r, &m) in mask_row.iter().enumerate() {
        if m >= 0 {
            apply_mask(
                &mut reference[r * vocab..(r + 1) * vocab],
                &masks[m as usize],
            );
        }
    }
    let dl = gpu.upload(&logits).unwrap();
    let dm = gpu.upload(&masks.concat()).unwrap();
    let dr = gpu.upload(&mask_row).unwrap();
    gpu.apply_token_bitmask(gpu.ptr(&dl), gpu.ptr(&dm), gpu.ptr(&dr), n, vocab)
        .unwrap();
    let out = gpu.download(&dl).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    rep.exact(
        &format!("apply_token_bitmask == apply_mask V={vocab}"),
        &bits(&out),
        &bits(&reference),
    );

    // After the mask, greedy and sampled picks stay inside it.
    let allowed = |r: usize, t: u32| {
        let m = mask_row[r];
        m < 0 || masks[m as usize][t as usize / 32] >> (t % 32) & 1 == 1
    };
    let scratch = gpu.zeros::<u32>(argmax_scratch_len(n)).unwrap();
    let greedy = argmax(gpu, gpu.ptr(&dl), gpu.ptr(&scratch), n, vocab, None);
    let ok = greedy.iter().enumerate().all(|(r, &t)| allowed(r, t));
    rep.check(
        &format!("argmax after the mask is allowed V={vocab}"),
        0.0,
        ok,
    );
    let mut bad = 0;
    for _ in 0..64 {
        let mut params = RowParams::default();
        for i in 0..n {
            params.push(1.5, [0, 50, 1000][i % 3], 0.95, 0.0, rng.unit());
        }
        let got = sample(gpu, gpu.ptr(&dl), &params, vocab);
        bad += got
            .iter()
            .enumerate()
            .filter(|&(r, &t)| !allowed(r, t))
            .count();
    }
    rep.check(
        &format!("sample_rows after the mask: disallowed picks in 64 draws V={vocab}"),
        bad as f64,
        bad == 0,
    );
}

#[test]
fn token_mask_matches_cpu_and_bounds_the_pick() {
    let Some(gpu) = open_gpu() else { return };
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed_0020);
    mask_kernel(&gpu, &mut rng, &mut rep, 151_936);
    mask_kernel(&gpu, &mut rng, &mut rep, 1_005);
    rep.finish();
}
