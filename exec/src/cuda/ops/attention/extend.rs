//! Extend (prefill) attention: its tile lists and metadata and the GQA-packed kernel's launch
//! (`kernels/attention_extend_gqa.cu`).

use super::{nonempty, validate, AttnEntry, AttnShape, KvView};
use crate::cuda::args::AttentionExtend;
use crate::cuda::launch::Mode;
use crate::cuda::ops::{check, int, need};
use crate::cuda::{CudaError, DPtr, Gpu, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

/// (token, q head) rows per extend tile (BM in attention_extend_gqa.cu).
pub const EXTEND_TILE: usize = 64;

/// Device-side metadata of an extend batch.
pub struct ExtendMeta {
    q_start: CudaSlice<i32>,
    q_len: CudaSlice<i32>,
    kv_len: CudaSlice<i32>,
    row: CudaSlice<i32>,
    /// The tiles: 64 (token, q head of the group) rows each, heaviest first.
    g_tile_entry: CudaSlice<i32>,
    g_tile_f0: CudaSlice<i32>,
    g_num_tiles: usize,
    group: usize,
    leading: Option<usize>,
    tokens: usize,
}

impl ExtendMeta {
    /// Validate `entries` against a batch of `tokens` tokens and a `rows` x `table_stride` slot
    /// table, build the tile lists (`group` = q heads per kv head, for the GQA-packed kernels),
    /// and upload.
    pub fn new(
        gpu: &Gpu,
        entries: &[AttnEntry],
        tokens: usize,
        rows: usize,
        table_stride: usize,
        group: usize,
    ) -> Result<ExtendMeta> {
        const K: &str = "attention_extend";
        validate(K, entries, tokens, rows, table_stride)?;
        check(K, group >= 1, || "GQA group must be at least 1".into())?;
        let (g_te, g_tf) = gqa_tiles(entries, group)
            .into_iter()
            .map(|(e, f0)| Ok((int(K, e)?, int(K, f0)?)))
            .collect::<Result<(Vec<i32>, Vec<i32>)>>()?;
        let col = |f: fn(&AttnEntry) -> usize| -> Result<Vec<i32>> {
            entries.iter().map(|e| int(K, f(e))).collect()
        };
        Ok(ExtendMeta {
            q_start: gpu.upload(&nonempty(col(|e| e.q_start)?))?,
            q_len: gpu.upload(&nonempty(col(|e| e.q_len)?))?,
            kv_len: gpu.upload(&nonempty(col(|e| e.kv_len)?))?,
            row: gpu.upload(&nonempty(col(|e| e.row)?))?,
            leading: leading_tokens(entries),
            g_num_tiles: g_te.len(),
            g_tile_entry: gpu.upload(&nonempty(g_te))?,
            g_tile_f0: gpu.upload(&nonempty(g_tf))?,
            group,
            tokens,
        })
    }
}

/// `Some(n)` when the entries' new tokens are exactly rows `0..n` (entries in order, no gaps).
fn leading_tokens(entries: &[AttnEntry]) -> Option<usize> {
    let mut n = 0;
    for e in entries {
        if e.q_start != n {
            return None;
        }
        n += e.q_len;
    }
    Some(n)
}

/// The GQA-packed kernels' tiles as (entry, first row): each entry's `q_len * group` rows in
/// tiles of [`EXTEND_TILE`]. Entries whose heaviest tile attends to the most keys come first
/// (stable) and each entry's tiles run heaviest first, so the longest blocks start early
/// instead of forming the tail of the grid, and an entry's blocks run close together (its K/V
/// is read from DRAM once and then from L2).
pub fn gqa_tiles(entries: &[AttnEntry], group: usize) -> Vec<(usize, usize)> {
    let mut order: Vec<(usize, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.kv_len, i))
        .collect();
    order.sort_by_key(|t| std::cmp::Reverse(t.0));
    let mut tiles = Vec::new();
    for (_, i) in order {
        let rows = entries[i].q_len * group;
        let n = rows.div_ceil(EXTEND_TILE);
        tiles.extend((0..n).rev().map(|t| (i, t * EXTEND_TILE)));
    }
    tiles
}

/// Normalise (Qwen3's q norm, when given) and rotate (RoPE) q as the GQA extend kernels load it,
/// instead of in the qk_norm_rope_store pass: saves that pass's read and write of every q row.
#[derive(Clone, Copy, Debug)]
pub struct QRope {
    /// The q RMSNorm weight (`head_dim`), or None (RoPE only).
    pub q_norm: Option<DPtr<bf16>>,
    /// Position of each token of the batch.
    pub positions: DPtr<i32>,
    /// The RoPE cos/sin table (`[max_pos, head_dim]`: cos in the first half of a row).
    pub cos_sin: DPtr<f32>,
    /// RMSNorm epsilon.
    pub eps: f32,
}

impl ExtendMeta {
    /// Tokens `0..n` are exactly the extend entries' new tokens (what a forward pass needs to
    /// leave the q of these tokens to the extend kernel and process only the rest): `Some(n)`.
    pub fn leading_tokens(&self) -> Option<usize> {
        self.leading
    }
}

impl Gpu {
    /// Extend / prefill attention: each entry's new queries attend causally to its whole KV
    /// (cached prefix and new tokens, whose K/V must already be stored in the cache). With
    /// `rope`, q is raw (before q norm and RoPE) and the kernel applies them as it loads q.
    pub fn attention_extend(
        &self,
        out: DPtr<bf16>,
        q: DPtr<bf16>,
        kv: KvView,
        meta: &ExtendMeta,
        shape: &AttnShape,
        rope: Option<&QRope>,
    ) -> Result<()> {
        const K: &str = "attention_extend";
        const NAME: [&str; 2] = ["attention_extend_gqa_d64", "attention_extend_gqa_d128"];
        shape.check(K, &q, &out, &kv, meta.tokens)?;
        let name = NAME[usize::from(shape.head_dim == 128)];
        if let Some(r) = rope {
            need(K, "positions", &r.positions, meta.tokens)?;
            check(
                K,
                !r.cos_sin.is_empty() && r.cos_sin.len().is_multiple_of(shape.head_dim),
                || "cos/sin table is not [max_pos, head_dim]".into(),
            )?;
            if let Some(w) = &r.q_norm {
                need(K, "q_norm", w, shape.head_dim)?;
            }
        }
        check(K, meta.group * shape.nk == shape.nq, || {
            format!(
                "metadata built for GQA group {}, the shape has {} q heads over {} kv heads",
                meta.group, shape.nq, shape.nk
            )
        })?;
        let tiles = meta.g_num_tiles;
        if tiles == 0 {
            return Ok(());
        }
        // The Q tile + 2 stages of 32-key K and V tiles, rows padded by 8 elements.
        let smem = (EXTEND_TILE + 2 * 2 * 32) * (shape.head_dim + 8) * 2;
        let args = AttentionExtend {
            out,
            q,
            k_cache: kv.k_cache,
            v_cache: kv.v_cache,
            table: kv.table,
            tile_entry: self.ptr(&meta.g_tile_entry),
            tile_f0: self.ptr(&meta.g_tile_f0),
            q_start: self.ptr(&meta.q_start),
            q_len: self.ptr(&meta.q_len),
            kv_len: self.ptr(&meta.kv_len),
            row: self.ptr(&meta.row),
            nq: int(K, shape.nq)?,
            nk: int(K, shape.nk)?,
            q_stride: int(K, shape.q_stride)?,
            table_stride: int(K, shape.table_stride)?,
            scale: shape.scale,
            q_rope: i32::from(rope.is_some()),
            q_norm_w: rope.and_then(|r| r.q_norm),
            positions: rope.map(|r| r.positions),
            cos_sin: rope.map(|r| r.cos_sin),
            eps: rope.map_or(0f32, |r| r.eps),
        };
        let blocks = u32::try_from(tiles * shape.nk).map_err(|_| CudaError::Invalid {
            kernel: K,
            msg: format!("{tiles} tiles x {} kv heads is too many blocks", shape.nk),
        })?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        args.launch(self, name, cfg, Mode::PdlOptIn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_tiles_cover_every_row_once_heaviest_first() {
        let e = |q_start, q_len, kv_len| AttnEntry {
            q_start,
            q_len,
            kv_len,
            row: 0,
        };
        // Group 3: tiles of 64 rows split a token's heads (row 63 is token 21, head 0).
        let entries = [e(0, 37, 37), e(37, 1, 101), e(38, 130, 199)];
        for group in [1, 2, 3, 8] {
            let tiles = gqa_tiles(&entries, group);
            // Entries by KV length, most first; each entry's tiles together, last rows first.
            let order: Vec<usize> = tiles.iter().map(|t| t.0).collect();
            let mut dedup = order.clone();
            dedup.dedup();
            assert_eq!(dedup, vec![2, 1, 0], "group {group}");
            for (i, en) in entries.iter().enumerate() {
                let f0s: Vec<usize> = tiles.iter().filter(|t| t.0 == i).map(|t| t.1).collect();
                let mut want: Vec<usize> = (0..en.q_len * group).step_by(EXTEND_TILE).collect();
                want.reverse();
                assert_eq!(f0s, want, "entry {i} group {group}");
            }
        }
        assert_eq!(gqa_tiles(&entries, 2)[0], (2, 256));
        assert_eq!(leading_tokens(&entries), Some(168));
        assert_eq!(leading_tokens(&[e(0, 5, 5), e(6, 1, 1)]), None);
    }
}
