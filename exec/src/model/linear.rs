//! The CPU model's kernels: weight matrices in checkpoint precision, RMSNorm, and the
//! batch-invariant linear layer (fixed reduction order, so results never depend on batching).

use super::shard::Split;
use super::weights::{DType, TensorRef};
use rayon::prelude::*;

/// A weight matrix [out, in] kept in the checkpoint's precision when that is bf16 (widening
/// bf16 to f32 is exact, so results are identical to converting at load, with half the memory
/// traffic per decode step); every other dtype is converted to f32 at load.
pub(crate) enum Mat {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Mat {
    pub(crate) fn from_tensor(t: &TensorRef<'_>) -> Mat {
        match t.dtype {
            DType::BF16 => Mat::Bf16(
                t.bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            _ => Mat::F32(t.to_f32()),
        }
    }

    /// This rank's part of `t` (row-major, `in_dim` columns) in the checkpoint's precision.
    pub(crate) fn from_tensor_cut(t: &TensorRef<'_>, split: &Split, in_dim: usize) -> Mat {
        match Mat::from_tensor(t) {
            Mat::F32(v) => Mat::F32(split.cut(&v, in_dim)),
            Mat::Bf16(v) => Mat::Bf16(split.cut(&v, in_dim)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Mat::F32(v) => v.len(),
            Mat::Bf16(v) => v.len(),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            Mat::F32(v) => v.len() * 4,
            Mat::Bf16(v) => v.len() * 2,
        }
    }

    /// Row `o` of width `w` as f32, widened into `buf` when stored as bf16.
    #[inline(always)]
    pub(crate) fn row<'a>(&'a self, o: usize, w: usize, buf: &'a mut [f32]) -> &'a [f32] {
        match self {
            Mat::F32(v) => &v[o * w..(o + 1) * w],
            Mat::Bf16(v) => {
                for (d, &b) in buf[..w].iter_mut().zip(&v[o * w..(o + 1) * w]) {
                    *d = f32::from_bits((b as u32) << 16);
                }
                &buf[..w]
            }
        }
    }
}

pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * r);
    }
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise; the fixed order keeps results
    // independent of batching.
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    finish_dot(&acc, ra, rb)
}

/// The reduction every dot product ends with (shared so that `dot4` matches `dot` bit for bit).
#[inline(always)]
fn finish_dot(acc: &[f32; 8], ra: &[f32], rb: &[f32]) -> f32 {
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Four rows of `x` against one weight row: each result equals `dot(x_r, w)` exactly, but the
/// weight chunk is loaded once for four rows (register blocking for prefill).
#[inline(always)]
fn dot4(x: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let n = w.len() / 8 * 8;
    for c in (0..n).step_by(8) {
        let wc = &w[c..c + 8];
        for r in 0..4 {
            let xc = &x[r][c..c + 8];
            for i in 0..8 {
                acc[r][i] += xc[i] * wc[i];
            }
        }
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = finish_dot(&acc[r], &x[r][n..], &w[n..]);
    }
    out
}

/// y[t, o] = x[t, :] . w[o, :] (+ bias[o]) for `rows` rows; w is [out, in] row-major.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    w: &Mat,
    bias: Option<&[f32]>,
    out_dim: usize,
    y: &mut Vec<f32>,
) {
    let in_dim = w.len() / out_dim;
    y.clear();
    y.resize(rows * out_dim, 0.0);
    if rows == 0 {
        return;
    }
    // Parallel over output features (weights are the big operand); write column-major then transpose.
    let mut yt = vec![0f32; rows * out_dim];
    yt.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(b, chunk)| block(x, rows, w, bias, in_dim, b * BLOCK, chunk));
    for o in 0..out_dim {
        for t in 0..rows {
            y[t * out_dim + o] = yt[o * rows + t];
        }
    }
}

const BLOCK: usize = 16;

/// Outputs first..first+chunk.len()/rows of `linear`, column-major into `chunk`.
fn block(
    x: &[f32],
    rows: usize,
    w: &Mat,
    bias: Option<&[f32]>,
    in_dim: usize,
    first: usize,
    chunk: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { block_avx2(x, rows, w, bias, in_dim, first, chunk) };
        return;
    }
    block_generic(x, rows, w, bias, in_dim, first, chunk)
}

/// The same code compiled with 256-bit vectors. No FMA is enabled, so each lane does the same
/// multiply-then-add as the portable build: results are bit-identical either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(
    x: &[f32],
    rows: usize,
    w: &Mat,
    bias: Option<&[f32]>,
    in_dim: usize,
    first: usize,
    chunk: &mut [f32],
) {
    block_generic(x, rows, w, bias, in_dim, first, chunk)
}

#[inline(always)]
fn block_generic(
    x: &[f32],
    rows: usize,
    w: &Mat,
    bias: Option<&[f32]>,
    in_dim: usize,
    first: usize,
    chunk: &mut [f32],
) {
    let mut buf = vec![0f32; in_dim];
    for (j, col) in chunk.chunks_mut(rows).enumerate() {
        let o = first + j;
        let wr = w.row(o, in_dim, &mut buf);
        let bo = bias.map_or(0.0, |b| b[o]);
        let xr = |t: usize| &x[t * in_dim..(t + 1) * in_dim];
        let mut t = 0;
        while t + 4 <= rows {
            let r = dot4([xr(t), xr(t + 1), xr(t + 2), xr(t + 3)], wr);
            for (i, v) in r.into_iter().enumerate() {
                col[t + i] = v + bo;
            }
            t += 4;
        }
        for (i, c) in col.iter_mut().enumerate().skip(t) {
            *c = dot(xr(i), wr) + bo;
        }
    }
}
