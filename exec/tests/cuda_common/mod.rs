//! Helpers shared by the GPU tests: a seeded RNG, bf16 conversions, error metrics, and opening
//! the GPU (or explaining why the test is skipped).
#![allow(dead_code)]

pub mod kv;
pub mod sampling;

use doppel_exec::cuda::Gpu;
use doppel_exec::model::{Arch, DType, RopeScaling};
use doppel_exec::testgen::{write_model, TinySpec};
use half::bf16;

/// SplitMix64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * a
    }
    /// Roughly standard normal (sum of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        s * 1.732
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Random bf16 values uniform in [-a, a).
    pub fn bf16s(&mut self, n: usize, a: f32) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.sym(a))).collect()
    }
    /// `n` distinct values from 1..pool (0 is the padding slot).
    pub fn distinct(&mut self, n: usize, pool: usize) -> Vec<u32> {
        let mut all: Vec<u32> = (1..pool as u32).collect();
        for i in 0..n {
            let j = i + self.below(all.len() - i);
            all.swap(i, j);
        }
        all.truncate(n);
        all
    }
}

pub fn f64s(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// ||out - ref|| / ||ref||; infinite if anything is NaN.
pub fn rel_err(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    if out.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn max_abs(out: &[f64], reference: &[f64]) -> f64 {
    out.iter()
        .zip(reference)
        .map(|(a, b)| {
            if a.is_finite() {
                (a - b).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
}

/// The GPU, or None (with the reason printed) when there is no driver or device.
pub fn open_gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => {
            eprintln!(
                "GPU: {} (sm_{}{}), kernels loaded in {:.2}s ({} of {} modules from the cache)",
                g.name,
                g.cc.0,
                g.cc.1,
                g.kernels.load_seconds,
                g.kernels.cache_hits,
                doppel_exec::cuda::KERNEL_SOURCES.len()
            );
            Some(g)
        }
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// Collected comparison results, printed as a table.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, f64, f64, f64, bool)>,
}

impl Report {
    /// Record a relative-error check.
    pub fn rel(&mut self, name: &str, out: &[f64], reference: &[f64], tol: f64) {
        let r = rel_err(out, reference);
        let m = max_abs(out, reference);
        self.rows.push((name.to_string(), r, m, tol, r <= tol));
    }
    /// Record an exact check (error = number of mismatches).
    pub fn exact<T: PartialEq>(&mut self, name: &str, out: &[T], reference: &[T]) {
        let bad = if out.len() != reference.len() {
            usize::MAX
        } else {
            out.iter().zip(reference).filter(|(a, b)| a != b).count()
        };
        self.rows.push((
            format!("{name} (exact; err = mismatches)"),
            bad as f64,
            bad as f64,
            0.0,
            bad == 0,
        ));
    }
    /// Record a boolean check with a figure.
    pub fn check(&mut self, name: &str, figure: f64, ok: bool) {
        self.rows
            .push((name.to_string(), figure, figure, f64::NAN, ok));
    }
    /// Print the table and fail if any row failed.
    pub fn finish(self) {
        eprintln!(
            "{:<64} {:>11} {:>11} {:>9}  result",
            "check", "rel err", "max abs", "tol"
        );
        let mut failed = Vec::new();
        for (n, r, m, t, ok) in &self.rows {
            eprintln!(
                "{n:<64} {r:>11.3e} {m:>11.3e} {t:>9.1e}  {}",
                if *ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failed.push(n.clone());
            }
        }
        eprintln!(
            "{} checks ok, {} checks failed",
            self.rows.len() - failed.len(),
            failed.len()
        );
        assert!(failed.is_empty(), "failed checks: {failed:?}");
    }
}

/// A tiny random Qwen3 checkpoint in bf16 with head_dim 64 (what the GPU kernels take), in a
/// temporary directory: the model the backend-against-CPU tests run.
pub fn tiny_qwen3_bf16() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut spec = TinySpec::tiny(Arch::Qwen3);
    spec.hidden_size = 256;
    spec.intermediate_size = 512;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    spec.head_dim = 64;
    spec.dtype = DType::BF16;
    spec.rope_scaling = RopeScaling::None;
    write_model(d.path(), &spec).unwrap();
    d
}
