//! The sampler's inputs on the GPU and its two entry points with their results brought back,
//! shared by the sampler's tests (cuda_kernels.rs) and the token mask's (cuda_constraint.rs).

use doppel_exec::cuda::ops::{LastTokenStore, SamplingBufs};
use doppel_exec::cuda::{DPtr, Gpu};

/// Per-row sampling parameters, as the backend uploads them.
#[derive(Clone, Debug, Default)]
pub struct RowParams {
    pub temperature: Vec<f32>,
    pub top_k: Vec<i32>,
    pub top_p: Vec<f32>,
    pub min_p: Vec<f32>,
    /// The uniform draw each row's inverse CDF reads.
    pub uniform: Vec<f32>,
}

impl RowParams {
    pub fn push(&mut self, temperature: f32, top_k: i32, top_p: f32, min_p: f32, uniform: f32) {
        self.temperature.push(temperature);
        self.top_k.push(top_k);
        self.top_p.push(top_p);
        self.min_p.push(min_p);
        self.uniform.push(uniform);
    }
    pub fn rows(&self) -> usize {
        self.temperature.len()
    }
}

/// `sample_rows` over `logits` (rows x vocab) with `p` uploaded; the picked tokens.
pub fn sample(gpu: &Gpu, logits: DPtr<f32>, p: &RowParams, vocab: usize) -> Vec<u32> {
    let f = [&p.temperature, &p.top_p, &p.min_p, &p.uniform].map(|v| gpu.upload(v).unwrap());
    let top_k = gpu.upload(&p.top_k).unwrap();
    let bufs = SamplingBufs {
        temperature: gpu.ptr(&f[0]),
        top_k: gpu.ptr(&top_k),
        top_p: gpu.ptr(&f[1]),
        min_p: gpu.ptr(&f[2]),
        uniform: gpu.ptr(&f[3]),
    };
    let out = gpu.zeros::<u32>(p.rows()).unwrap();
    gpu.sample_rows(gpu.ptr(&out), logits, &bufs, p.rows(), vocab)
        .unwrap();
    // downloading waits for the kernel, so the inputs outlive it
    gpu.download(&out).unwrap()
}

/// `argmax_rows` over `logits` (rows x vocab) on `scratch`, into a fresh output filled with
/// u32::MAX first (a row the kernel skips shows); the picked tokens.
pub fn argmax(
    gpu: &Gpu,
    logits: DPtr<f32>,
    scratch: DPtr<u32>,
    rows: usize,
    vocab: usize,
    store: Option<LastTokenStore>,
) -> Vec<u32> {
    let out = gpu.upload(&vec![u32::MAX; rows]).unwrap();
    gpu.argmax_rows(gpu.ptr(&out), logits, scratch, rows, vocab, store)
        .unwrap();
    gpu.download(&out).unwrap()
}
