//! Attention launch wrappers and their per-batch metadata.
//!
//! Both kernels read K/V through the request-to-slot table (`table[row * table_stride + pos]` is
//! the KV slot of position `pos` of the request in that row), so a batch's metadata is only
//! (token offset, new tokens, total KV length, table row) per entry.

use crate::cuda::args::{AttentionDecode, AttentionDecodeCombine};
use crate::cuda::launch::Mode;
use crate::cuda::ops::{check, int, need, QkvPost};
use crate::cuda::{CudaError, DPtr, DriverCtx, Gpu, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

mod decode_kernel;
mod extend;
mod order;
use decode_kernel::decode_kernel_name;
pub use decode_kernel::DecodeKernel;
pub use extend::{gqa_tiles, ExtendMeta, QRope, EXTEND_TILE};
pub use order::VisitOrder;

/// One entry of an attention batch, as the host knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnEntry {
    /// Row of this entry's first new token in q and out.
    pub q_start: usize,
    /// New tokens (1 for decode).
    pub q_len: usize,
    /// KV length after this step (cached prefix + new tokens).
    pub kv_len: usize,
    /// Row of the slot table.
    pub row: usize,
}

/// Device-side metadata of a decode batch.
pub struct DecodeMeta {
    q_tok: CudaSlice<i32>,
    kv_len: CudaSlice<i32>,
    row: CudaSlice<i32>,
    entries: usize,
    tokens: usize,
}

fn validate(
    kernel: &'static str,
    entries: &[AttnEntry],
    tokens: usize,
    rows: usize,
    table_stride: usize,
) -> Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let bad = |msg: String| CudaError::Invalid {
            kernel,
            msg: format!("entry {i}: {msg}"),
        };
        if e.q_len == 0 || e.q_len > e.kv_len {
            return Err(bad(format!(
                "q_len {} must be in 1..=kv_len {}",
                e.q_len, e.kv_len
            )));
        }
        if e.q_start + e.q_len > tokens {
            return Err(bad(format!(
                "tokens {}..{} exceed the batch's {tokens}",
                e.q_start,
                e.q_start + e.q_len
            )));
        }
        if e.kv_len > table_stride {
            return Err(bad(format!(
                "kv_len {} exceeds the table width {table_stride}",
                e.kv_len
            )));
        }
        if e.row >= rows {
            return Err(bad(format!(
                "row {} is outside the table's {rows} rows",
                e.row
            )));
        }
    }
    Ok(())
}

impl DecodeMeta {
    /// Validate decode `entries` (q_len 1 each) and upload.
    pub fn new(
        gpu: &Gpu,
        entries: &[AttnEntry],
        tokens: usize,
        rows: usize,
        table_stride: usize,
    ) -> Result<DecodeMeta> {
        const K: &str = "attention_decode";
        validate(K, entries, tokens, rows, table_stride)?;
        check(K, entries.iter().all(|e| e.q_len == 1), || {
            "decode entries must have q_len 1".into()
        })?;
        let col = |f: fn(&AttnEntry) -> usize| -> Result<Vec<i32>> {
            entries.iter().map(|e| int(K, f(e))).collect()
        };
        Ok(DecodeMeta {
            q_tok: gpu.upload(&nonempty(col(|e| e.q_start)?))?,
            kv_len: gpu.upload(&nonempty(col(|e| e.kv_len)?))?,
            row: gpu.upload(&nonempty(col(|e| e.row)?))?,
            entries: entries.len(),
            tokens,
        })
    }

    /// Decode rows in the batch (a graph's padded size when captured for one).
    pub fn entries(&self) -> usize {
        self.entries
    }
}

impl DecodeMeta {
    /// Overwrite the metadata in place with `entries` (same count as at creation): what a
    /// captured CUDA graph needs, since it keeps reading the buffers it was captured with.
    pub fn update(
        &mut self,
        gpu: &Gpu,
        entries: &[AttnEntry],
        rows: usize,
        table_stride: usize,
    ) -> Result<()> {
        const K: &str = "attention_decode";
        check(K, entries.len() == self.entries, || {
            format!(
                "{} entries given, the graph was captured with {}",
                entries.len(),
                self.entries
            )
        })?;
        validate(K, entries, self.tokens, rows, table_stride)?;
        check(K, entries.iter().all(|e| e.q_len == 1), || {
            "decode entries must have q_len 1".into()
        })?;
        let col = |f: fn(&AttnEntry) -> usize| -> Result<Vec<i32>> {
            entries.iter().map(|e| int(K, f(e))).collect()
        };
        let (q, kv, rw) = (col(|e| e.q_start)?, col(|e| e.kv_len)?, col(|e| e.row)?);
        gpu.stream
            .memcpy_htod(&q, &mut self.q_tok)
            .ctx("updating decode metadata")?;
        gpu.stream
            .memcpy_htod(&kv, &mut self.kv_len)
            .ctx("updating decode metadata")?;
        gpu.stream
            .memcpy_htod(&rw, &mut self.row)
            .ctx("updating decode metadata")
    }
}

/// cudarc cannot upload an empty slice; a batch with no entries launches nothing anyway.
fn nonempty(mut v: Vec<i32>) -> Vec<i32> {
    if v.is_empty() {
        v.push(0);
    }
    v
}

/// Shapes shared by both attention kernels.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub nq: usize,
    /// KV heads (divides nq).
    pub nk: usize,
    /// Head dimension (64 or 128).
    pub head_dim: usize,
    /// Row stride of the q buffer (the fused qkv buffer's width).
    pub q_stride: usize,
    /// Row stride of the slot table.
    pub table_stride: usize,
    /// Rows of the slot table.
    pub table_rows: usize,
    /// KV slots in each cache buffer.
    pub num_slots: usize,
    /// Softmax scale (1 / sqrt(head_dim) for these models).
    pub scale: f32,
    /// Fewest keys a decode split takes (V3 kernels): shorter sequences use fewer of the launched
    /// splits, which a CUDA graph fixes at capture for the longest context.
    pub split_min_keys: usize,
    /// Decode (V3 register path): the first iteration's keys are requested before waiting for
    /// the previous kernel (PDL), the newest key filled in after it. (Tensor-core kernel: its
    /// first tiles.)
    pub decode_early_kv: bool,
    /// Decode (V3 register path and the kernel fed from registers): the next kernel's weights
    /// (a multiple of 8 elements) for the blocks to ask into L2 in equal shares, at each
    /// block's end.
    pub decode_prefetch_next: Option<DPtr<bf16>>,
    /// Decode (every kernel): each block asks L2 for the whole KV rows (all kv heads of every
    /// nk-th key) of the first this many keys of its range before waiting for the previous
    /// kernel; 0: no prefetch.
    pub decode_prefetch_kv_keys: usize,
    /// Decode: the kernel family (same plan, arguments and outputs for all).
    pub decode_kernel: DecodeKernel,
}

impl AttnShape {
    fn check(
        &self,
        kernel: &'static str,
        q: &DPtr<bf16>,
        out: &DPtr<bf16>,
        kv: &KvView,
        tokens: usize,
    ) -> Result<()> {
        let (kc, vc, table) = (&kv.k_cache, &kv.v_cache, &kv.table);
        check(kernel, self.head_dim == 64 || self.head_dim == 128, || {
            format!("head_dim {} is not 64 or 128", self.head_dim)
        })?;
        check(
            kernel,
            self.nk > 0 && self.nq.is_multiple_of(self.nk),
            || format!("nq {} is not a multiple of nk {}", self.nq, self.nk),
        )?;
        check(kernel, self.q_stride >= self.nq * self.head_dim, || {
            "q stride below nq * head_dim".into()
        })?;
        need(
            kernel,
            "q",
            q,
            tokens.saturating_sub(1) * self.q_stride + self.nq * self.head_dim,
        )?;
        need(kernel, "out", out, tokens * self.nq * self.head_dim)?;
        need(
            kernel,
            "k_cache",
            kc,
            self.num_slots * self.nk * self.head_dim,
        )?;
        need(
            kernel,
            "v_cache",
            vc,
            self.num_slots * self.nk * self.head_dim,
        )?;
        need(kernel, "table", table, self.table_rows * self.table_stride)
    }
}

/// KV caches and slot table as seen by the attention kernels.
#[derive(Clone, Copy, Debug)]
pub struct KvView {
    /// This layer's K cache, `[num_slots, nk * head_dim]`.
    pub k_cache: DPtr<bf16>,
    /// This layer's V cache, same shape.
    pub v_cache: DPtr<bf16>,
    /// The slot table, `[table_rows, table_stride]`; entries below kv_len must be valid slots.
    pub table: DPtr<u32>,
}

impl Gpu {
    /// Decode attention (split-KV flash-decoding): `dst.splits` blocks per (entry, kv head)
    /// write partials to `dst.part_o` and `dst.part_ml`, merged into `dst.out` per
    /// `dst.variant`. Groups of 1-2 run the pipelined kernels (the next keys requested before
    /// the math on the current ones); every CUDA-core block asks L2 for whole KV rows of every
    /// nk-th key of its range.
    ///
    /// With `post`, the q/k pass ([`Gpu::qk_norm_rope_store`]) is folded in: `q` is the fused
    /// qkv buffer holding each entry's raw projection (`shape.q_stride` its width); the kernel
    /// normalises and rotates q as it loads it, and stores the new token's normalised, rotated k
    /// and its v into `kv`'s caches at `post.slots` (post's own cache pointers are not used),
    /// with the same roundings as the two-kernel path.
    pub fn attention_decode(
        &self,
        q: DPtr<bf16>,
        kv: KvView,
        meta: &DecodeMeta,
        shape: &AttnShape,
        dst: DecodeOut,
        post: Option<(&QkvPost, f32)>,
    ) -> Result<()> {
        const K: &str = "attention_decode";
        check_decode(shape, &q, &kv, meta, &dst)?;
        if let Some((p, _)) = post {
            check_qk_pass(shape, &q, meta.tokens, p)?;
        }
        let n = meta.entries;
        if n == 0 {
            return Ok(());
        }
        let name = decode_kernel_name(shape);
        // The tensor-core kernel's 3 stages per warp (kernels/attention_decode_mma.cu).
        let smem = if shape.decode_kernel == DecodeKernel::TensorCore {
            decode_mma_smem(shape.head_dim, 3)
        } else {
            0
        };
        let args = decode_args(self, q, kv, meta, shape, &dst, post)?;
        let cfg = LaunchConfig {
            grid_dim: (dst.splits as u32, shape.nk as u32, n as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        args.launch(self, name, cfg, Mode::PdlOptIn)?;
        if matches!(dst.variant, DecodeVariant::Fused(_)) {
            return Ok(());
        }
        let combine = if shape.head_dim == 64 {
            "attention_decode_combine_d64"
        } else {
            "attention_decode_combine_d128"
        };
        let cfg = LaunchConfig {
            grid_dim: (shape.nq as u32, n as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        AttentionDecodeCombine {
            out: dst.out,
            part_o: dst.part_o,
            part_ml: dst.part_ml,
            q_tok: args.q_tok,
            nq: args.nq,
            splits: int(K, dst.splits)?,
        }
        .launch(self, combine, cfg, Mode::Pdl)
    }
}

/// Where a decode attention writes: its splits' partial results and the merged output.
#[derive(Clone, Copy, Debug)]
pub struct DecodeOut {
    /// The merged output, `[tokens, nq * head_dim]` (each entry's row `q_start`).
    pub out: DPtr<bf16>,
    /// Partial outputs, `[entries, nq, splits, head_dim]` f32.
    pub part_o: DPtr<f32>,
    /// Partial softmax states (max, sum), `[entries, nq, splits, 2]` f32.
    pub part_ml: DPtr<f32>,
    /// Key splits per (entry, kv head), 1 to 1024.
    pub splits: usize,
    /// How the splits are merged.
    pub variant: DecodeVariant,
}

/// [`Gpu::attention_decode`]'s shape and extent checks (the q/k pass's apart).
fn check_decode(
    shape: &AttnShape,
    q: &DPtr<bf16>,
    kv: &KvView,
    meta: &DecodeMeta,
    dst: &DecodeOut,
) -> Result<()> {
    const K: &str = "attention_decode";
    shape.check(K, q, &dst.out, kv, meta.tokens)?;
    check(K, shape.nq / shape.nk <= 8, || {
        format!("GQA group {} exceeds 8", shape.nq / shape.nk)
    })?;
    let splits = dst.splits;
    check(K, (1..=1024).contains(&splits), || {
        format!("splits {splits} not in 1..=1024")
    })?;
    let n = meta.entries;
    need(
        K,
        "part_o",
        &dst.part_o,
        n * shape.nq * splits * shape.head_dim,
    )?;
    need(K, "part_ml", &dst.part_ml, n * shape.nq * splits * 2)?;
    if let DecodeVariant::Fused(c) = dst.variant {
        need(K, "counters", &c, n * shape.nk)?;
    }
    Ok(())
}

/// The split pass's arguments of [`Gpu::attention_decode`] (checked by its caller).
fn decode_args(
    gpu: &Gpu,
    q: DPtr<bf16>,
    kv: KvView,
    meta: &DecodeMeta,
    shape: &AttnShape,
    dst: &DecodeOut,
    post: Option<(&QkvPost, f32)>,
) -> Result<AttentionDecode> {
    const K: &str = "attention_decode";
    let p = post.map(|(p, _)| p);
    let rs = p.and_then(|p| p.row_scale);
    // The kernel's flags (kernels/prelude.cuh, DecodePost): 1 the q/k pass, 4 the first keys
    // requested before the wait; the KV prefetch is the pf_keys argument.
    let flags = i32::from(post.is_some()) | (i32::from(shape.decode_early_kv) << 2);
    let pf_next = shape.decode_prefetch_next.map(DPtr::bytes);
    let pf_bytes = pf_next.map_or(0, |w| w.len());
    check(
        K,
        pf_bytes.is_multiple_of(16) && pf_bytes <= u32::MAX as usize,
        || format!("prefetch of {pf_bytes} bytes: not a multiple of 16 below 4 GiB"),
    )?;
    Ok(AttentionDecode {
        part_o: dst.part_o,
        part_ml: dst.part_ml,
        q,
        k_cache: kv.k_cache,
        v_cache: kv.v_cache,
        table: kv.table,
        q_tok: gpu.ptr(&meta.q_tok),
        kv_len: gpu.ptr(&meta.kv_len),
        row: gpu.ptr(&meta.row),
        nq: int(K, shape.nq)?,
        nk: int(K, shape.nk)?,
        q_stride: int(K, shape.q_stride)?,
        table_stride: int(K, shape.table_stride)?,
        scale: shape.scale,
        out: dst.out,
        counters: match dst.variant {
            DecodeVariant::Fused(c) => Some(c),
            DecodeVariant::Combine => None,
        },
        min_keys: int(K, shape.split_min_keys.max(1))?,
        wq: p.and_then(|p| p.qk_norm).map(|w| w.0),
        wk: p.and_then(|p| p.qk_norm).map(|w| w.1),
        positions: p.map(|p| p.positions),
        cos_sin: p.map(|p| p.cos_sin),
        slots: p.map(|p| p.slots),
        eps: post.map_or(0f32, |(_, e)| e),
        flags,
        xres: rs.map(|r| r.x),
        hidden: int(K, rs.map_or(0, |r| r.hidden))?,
        xeps: rs.map_or(0f32, |r| r.eps),
        pf_next,
        pf_bytes: pf_bytes as u32,
        pf_keys: shape.decode_prefetch_kv_keys.min(i32::MAX as usize) as i32,
    })
}

/// The folded q/k pass's arguments of [`Gpu::attention_decode`] against `shape`.
fn check_qk_pass(shape: &AttnShape, q: &DPtr<bf16>, tokens: usize, p: &QkvPost) -> Result<()> {
    const K: &str = "attention_decode";
    let width = (shape.nq + 2 * shape.nk) * shape.head_dim;
    check(K, shape.q_stride >= width, || {
        format!(
            "q stride {} is narrower than a qkv row ({width})",
            shape.q_stride
        )
    })?;
    need(
        K,
        "qkv",
        q,
        tokens.saturating_sub(1) * shape.q_stride + width,
    )?;
    check(K, p.cos_sin.len().is_multiple_of(shape.head_dim), || {
        "cos/sin table is not [max_pos, head_dim]".into()
    })?;
    need(K, "positions", &p.positions, tokens)?;
    need(K, "slots", &p.slots, tokens)?;
    if let Some((wq, wk)) = &p.qk_norm {
        need(K, "wq", wq, shape.head_dim)?;
        need(K, "wk", wk, shape.head_dim)?;
    }
    if let Some(rs) = &p.row_scale {
        check(K, rs.hidden > 0 && rs.hidden.is_multiple_of(8), || {
            format!(
                "row-scale width {} is not a positive multiple of 8",
                rs.hidden
            )
        })?;
        need(K, "row-scale rows", &rs.x, tokens * rs.hidden)?;
    }
    Ok(())
}

/// How a decode attention's splits are merged.
#[derive(Clone, Copy, Debug)]
pub enum DecodeVariant {
    /// A second kernel merges the splits.
    Combine,
    /// The last split block of each (entry, kv head) merges them (one launch). The buffer holds
    /// one `u32` per (entry, kv head), zero before the first launch (the kernel leaves it zero).
    /// On the H100 slower than the combine kernel with many splits (b=1: 10.6 vs 10.1 us per
    /// layer), faster with one (b=64: 23.2 vs 24.1 us): the plan fuses with one split.
    Fused(DPtr<u32>),
}

/// Dynamic shared memory of the tensor-core decode kernel with `stages` per warp (the kernel
/// traps if launched with less): the Q tile and per warp `stages` 16-key K and V tiles, rows
/// padded by 8 elements (kernels/attention_decode_mma.cu).
pub fn decode_mma_smem(head_dim: usize, stages: usize) -> usize {
    (16 + 4 * stages * 2 * 16) * (head_dim + 8) * 2
}

/// A split count for decode: enough blocks to cover the GPU about twice over (four times was
/// slower at batch 64 on the H100: 26.3 vs 20.9 us per layer for 2 splits vs 1), with at
/// least [`MIN_KEYS_PER_SPLIT`] keys per split (shorter splits leave warps idle and give the
/// combine more to merge).
pub fn decode_splits(entries: usize, nk: usize, max_kv: usize, sm_count: usize) -> usize {
    let blocks = (entries * nk).max(1);
    let want = (2 * sm_count).div_ceil(blocks);
    want.clamp(1, max_kv.div_ceil(MIN_KEYS_PER_SPLIT).max(1))
}

/// Fewest keys a launched decode split is planned for. On the H100 at ~160 keys, b = 1 and 4
/// decode steps took 25-50 us less with 4 splits (40 keys each) than with 9-10 (16 each).
pub const MIN_KEYS_PER_SPLIT: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decode_kernel_the_selector_picks_takes_the_decode_arguments() {
        let mut picked = std::collections::BTreeSet::new();
        for head_dim in [64, 128] {
            for group in 1..=8 {
                for kernel in [
                    DecodeKernel::TensorCore,
                    DecodeKernel::TensorCoreRegs,
                    DecodeKernel::CudaCore,
                    DecodeKernel::CudaCorePipelined,
                ] {
                    let shape = AttnShape {
                        nq: 2 * group,
                        nk: 2,
                        head_dim,
                        q_stride: 0,
                        table_stride: 0,
                        table_rows: 0,
                        num_slots: 0,
                        scale: 1.0,
                        split_min_keys: 1,
                        decode_early_kv: false,
                        decode_prefetch_kv_keys: usize::MAX,
                        decode_prefetch_next: None,
                        decode_kernel: kernel,
                    };
                    picked.insert(decode_kernel_name(&shape));
                }
            }
        }
        let declared = crate::cuda::args::AttentionDecode::KERNELS;
        for k in &picked {
            assert!(declared.contains(k), "{k} has no argument struct");
        }
        // Every declared decode kernel is reachable.
        assert_eq!(picked.len(), declared.len());
    }

    #[test]
    fn decode_splits_fill_the_gpu_without_tiny_splits() {
        // One sequence, 8 kv heads, 132 SMs: 33 splits wanted, capped by 40 keys per split.
        assert_eq!(decode_splits(1, 8, 160, 132), 4);
        assert_eq!(decode_splits(1, 8, 192, 132), 5);
        assert_eq!(decode_splits(1, 8, 8192, 132), 33);
        // Batch 64: one split (512 blocks already cover 132 SMs).
        assert_eq!(decode_splits(64, 8, 8192, 132), 1);
        // Enough blocks already: one split.
        assert_eq!(decode_splits(128, 8, 8192, 132), 1);
        assert_eq!(decode_splits(0, 8, 0, 132), 1);
    }
}
