//! A paged KV cache for the attention tests: random K/V, entries' positions in distinct random
//! slots.

use super::Rng;
use doppel_exec::cuda::attention::{AttnEntry, AttnShape, DecodeKernel, KvView};
use doppel_exec::cuda::Gpu;
use half::bf16;

/// KV caches filled with random values, and a slot table giving each entry's positions distinct
/// random slots (so a prefix is spread over the pool the way the radix cache leaves it).
pub struct KvSetup {
    pub k: Vec<bf16>,
    pub v: Vec<bf16>,
    pub table: Vec<u32>,
    pub dk: cudarc::driver::CudaSlice<bf16>,
    pub dv: cudarc::driver::CudaSlice<bf16>,
    pub dt: cudarc::driver::CudaSlice<u32>,
    pub num_slots: usize,
    pub stride: usize,
    pub rows: usize,
}

impl KvSetup {
    /// Row i + 1 of the table serves entry i (row 0 stays unused, as the core's padding row).
    pub fn new(
        gpu: &Gpu,
        rng: &mut Rng,
        nk: usize,
        d: usize,
        lens: &[usize],
        stride: usize,
    ) -> KvSetup {
        let total: usize = lens.iter().sum();
        let num_slots = total + 257;
        let rows = lens.len() + 2;
        let slots = rng.distinct(total, num_slots);
        let mut table = vec![0u32; rows * stride];
        let mut it = slots.into_iter();
        for (i, &l) in lens.iter().enumerate() {
            for p in 0..l {
                table[(i + 1) * stride + p] = it.next().unwrap();
            }
        }
        let k = rng.bf16s(num_slots * nk * d, 1.0);
        let v = rng.bf16s(num_slots * nk * d, 1.0);
        let (dk, dv, dt) = (
            gpu.upload(&k).unwrap(),
            gpu.upload(&v).unwrap(),
            gpu.upload(&table).unwrap(),
        );
        KvSetup {
            k,
            v,
            table,
            dk,
            dv,
            dt,
            num_slots,
            stride,
            rows,
        }
    }

    pub fn view(&self, gpu: &Gpu) -> KvView {
        KvView {
            k_cache: gpu.ptr(&self.dk),
            v_cache: gpu.ptr(&self.dv),
            table: gpu.ptr(&self.dt),
        }
    }

    pub fn shape(&self, nq: usize, nk: usize, d: usize, q_stride: usize) -> AttnShape {
        AttnShape {
            nq,
            nk,
            head_dim: d,
            q_stride,
            table_stride: self.stride,
            table_rows: self.rows,
            num_slots: self.num_slots,
            scale: 1.0 / (d as f32).sqrt(),
            split_min_keys: 1,
            decode_early_kv: false,
            decode_prefetch_kv_keys: usize::MAX,
            decode_prefetch_next: None,
            decode_kernel: DecodeKernel::CudaCore,
        }
    }
}

/// Decode entries of KV lengths `lens`, entry i's token at row `first_token + i` of q and its
/// positions in table row i + 1 (as [`KvSetup::new`] lays them out).
pub fn decode_entries(lens: &[usize], first_token: usize) -> Vec<AttnEntry> {
    lens.iter()
        .enumerate()
        .map(|(i, &l)| AttnEntry {
            q_start: first_token + i,
            q_len: 1,
            kv_len: l,
            row: i + 1,
        })
        .collect()
}
