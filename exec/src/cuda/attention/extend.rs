//! Extend (prefill) attention: its tile lists and metadata, the kernel variants and their launch.

use super::{nonempty, validate, AttnEntry, AttnShape, KvView};
use crate::cuda::ops::{check, int, need};
use crate::cuda::{CudaError, DPtr, DriverCtx, Gpu, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

/// Query rows per extend tile (BM in attention_extend.cu and attention_extend_gqa.cu): tokens
/// for the per-head kernels, (token, q head) rows for the GQA-packed ones.
pub const EXTEND_TILE: usize = 64;

/// Device-side metadata of an extend batch.
pub struct ExtendMeta {
    tile_entry: CudaSlice<i32>,
    tile_m0: CudaSlice<i32>,
    q_start: CudaSlice<i32>,
    q_len: CudaSlice<i32>,
    kv_len: CudaSlice<i32>,
    row: CudaSlice<i32>,
    num_tiles: usize,
    /// The GQA-packed kernels' tiles: 64 (token, q head of the group) rows each, heaviest first.
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
        let (mut te, mut tm) = (Vec::new(), Vec::new());
        for (i, e) in entries.iter().enumerate() {
            for m0 in (0..e.q_len).step_by(EXTEND_TILE) {
                te.push(int(K, i)?);
                tm.push(int(K, m0)?);
            }
        }
        let col = |f: fn(&AttnEntry) -> usize| -> Result<Vec<i32>> {
            entries.iter().map(|e| int(K, f(e))).collect()
        };
        Ok(ExtendMeta {
            num_tiles: te.len(),
            tile_entry: gpu.upload(&nonempty(te))?,
            tile_m0: gpu.upload(&nonempty(tm))?,
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

/// Which extend kernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtendVariant {
    /// GQA-packed (run 6): a block's 64 rows are (token, q head) pairs of one kv head, 32-key
    /// K/V tiles double-buffered with cp.async, Q fragments in registers. The default.
    Gqa,
    /// [`ExtendVariant::Gqa`] with Q re-read from shared memory for every key tile (fewer
    /// registers). head_dim 128 only, as the other candidates below.
    GqaQSmem,
    /// [`ExtendVariant::GqaQSmem`] capped at 128 registers (4 blocks per SM).
    GqaQSmemB4,
    /// [`ExtendVariant::Gqa`] with three K/V buffers (two tiles in flight).
    GqaStages3,
    /// [`ExtendVariant::Gqa`] with 64-key tiles.
    GqaBn64,
    /// [`ExtendVariant::Gqa`] with the grid's tile index fastest (run 6's first version), not
    /// the kv head.
    GqaKvhMajor,
    /// One q head per block, 32-key tiles loaded synchronously (run 5's default).
    Fast,
    /// The fast path with the next K/V tile prefetched into registers during this tile's math.
    Prefetch,
    /// 64-key tiles (head_dim 128 only): slower on the H100, kept as a cross-check.
    Bn64,
    /// V fragments from scalar shared loads (head_dim 128 only): a cross-check of the fast path.
    ScalarV,
}

/// The kernel entry point of an extend variant at a head dimension (None: not built).
fn extend_kernel_name(head_dim: usize, variant: ExtendVariant) -> Option<&'static str> {
    Some(match (head_dim, variant) {
        (64, ExtendVariant::Fast) => "attention_extend_d64",
        (128, ExtendVariant::Fast) => "attention_extend_d128",
        (64, ExtendVariant::Prefetch) => "attention_extend_d64_pf",
        (128, ExtendVariant::Prefetch) => "attention_extend_d128_pf",
        (128, ExtendVariant::ScalarV) => "attention_extend_d128_scalar_v",
        (128, ExtendVariant::Bn64) => "attention_extend_d128_bn64",
        (64, ExtendVariant::Gqa) => "attention_extend_gqa_d64",
        (128, ExtendVariant::Gqa) => "attention_extend_gqa_d128",
        (128, ExtendVariant::GqaQSmem) => "attention_extend_gqa_d128_qsmem",
        (128, ExtendVariant::GqaQSmemB4) => "attention_extend_gqa_d128_qsmem_b4",
        (128, ExtendVariant::GqaStages3) => "attention_extend_gqa_d128_s3",
        (128, ExtendVariant::GqaBn64) => "attention_extend_gqa_d128_bn64",
        (128, ExtendVariant::GqaKvhMajor) => "attention_extend_gqa_d128_kvh_major",
        _ => return None,
    })
}

impl ExtendVariant {
    /// Every variant.
    pub const ALL: [ExtendVariant; 10] = [
        ExtendVariant::Gqa,
        ExtendVariant::GqaQSmem,
        ExtendVariant::GqaQSmemB4,
        ExtendVariant::GqaStages3,
        ExtendVariant::GqaBn64,
        ExtendVariant::GqaKvhMajor,
        ExtendVariant::Fast,
        ExtendVariant::Prefetch,
        ExtendVariant::Bn64,
        ExtendVariant::ScalarV,
    ];

    /// One of the GQA-packed kernels (these can apply q norm + RoPE on load).
    pub fn is_gqa(self) -> bool {
        !matches!(
            self,
            ExtendVariant::Fast
                | ExtendVariant::Prefetch
                | ExtendVariant::Bn64
                | ExtendVariant::ScalarV
        )
    }
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
    /// (cached prefix and new tokens, whose K/V must already be stored in the cache).
    pub fn attention_extend(
        &self,
        out: DPtr<bf16>,
        q: DPtr<bf16>,
        kv: KvView,
        meta: &ExtendMeta,
        shape: &AttnShape,
        variant: ExtendVariant,
    ) -> Result<()> {
        self.attention_extend_rope(out, q, kv, meta, shape, variant, None)
    }

    /// [`Gpu::attention_extend`] on raw q (before q norm and RoPE) with `rope` applied as q is
    /// loaded (GQA variants only).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_extend_rope(
        &self,
        out: DPtr<bf16>,
        q: DPtr<bf16>,
        kv: KvView,
        meta: &ExtendMeta,
        shape: &AttnShape,
        variant: ExtendVariant,
        rope: Option<&QRope>,
    ) -> Result<()> {
        const K: &str = "attention_extend";
        shape.check(
            K,
            &q,
            &out,
            &kv.k_cache,
            &kv.v_cache,
            &kv.table,
            meta.tokens,
        )?;
        let name = extend_kernel_name(shape.head_dim, variant).ok_or(CudaError::Invalid {
            kernel: K,
            msg: "the cross-check variants exist for head_dim 128 only".into(),
        })?;
        // (key tile, buffers) of the GQA-packed kernels; None for the per-head ones.
        let gqa = match variant {
            ExtendVariant::Gqa
            | ExtendVariant::GqaQSmem
            | ExtendVariant::GqaQSmemB4
            | ExtendVariant::GqaKvhMajor => Some((32, 2)),
            ExtendVariant::GqaStages3 => Some((32, 3)),
            ExtendVariant::GqaBn64 => Some((64, 2)),
            _ => None,
        };
        check(K, rope.is_none() || gqa.is_some(), || {
            "q norm + RoPE on load needs a GQA variant".into()
        })?;
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
        if gqa.is_some() {
            check(K, meta.group * shape.nk == shape.nq, || {
                format!(
                    "metadata built for GQA group {}, the shape has {} q heads over {} kv heads",
                    meta.group, shape.nq, shape.nk
                )
            })?;
        }
        let tiles = if gqa.is_some() {
            meta.g_num_tiles
        } else {
            meta.num_tiles
        };
        if tiles == 0 {
            return Ok(());
        }
        let (nq, nk, qs, ts) = (
            int(K, shape.nq)?,
            int(K, shape.nk)?,
            int(K, shape.q_stride)?,
            int(K, shape.table_stride)?,
        );
        let (o, qa, kc, vc, t) = (
            out.addr(),
            q.addr(),
            kv.k_cache.addr(),
            kv.v_cache.addr(),
            kv.table.addr(),
        );
        let (te_buf, tm_buf) = if gqa.is_some() {
            (&meta.g_tile_entry, &meta.g_tile_f0)
        } else {
            (&meta.tile_entry, &meta.tile_m0)
        };
        let [te, tm, qst, ql, kl, rw] = [
            te_buf,
            tm_buf,
            &meta.q_start,
            &meta.q_len,
            &meta.kv_len,
            &meta.row,
        ]
        .map(|b| self.ptr(b).addr());
        // GQA kernels: the Q tile + `stages` K and V tiles, rows padded by 8 elements.
        let smem = gqa.map_or(0, |(bn, stages)| {
            (EXTEND_TILE + 2 * stages * bn) * (shape.head_dim + 8) * 2
        });
        let f = self.kernels.get_with_smem(name, smem)?;
        let mut b = self.launcher(f);
        b.arg(&o)
            .arg(&qa)
            .arg(&kc)
            .arg(&vc)
            .arg(&t)
            .arg(&te)
            .arg(&tm)
            .arg(&qst)
            .arg(&ql)
            .arg(&kl)
            .arg(&rw);
        b.arg(&nq).arg(&nk).arg(&qs).arg(&ts).arg(&shape.scale);
        let (q_rope, qn, pos, cs, eps) = match rope {
            Some(r) => (
                1i32,
                r.q_norm.map_or(0u64, |w| w.addr()),
                r.positions.addr(),
                r.cos_sin.addr(),
                r.eps,
            ),
            None => (0i32, 0u64, 0u64, 0u64, 0f32),
        };
        if gqa.is_some() {
            b.arg(&q_rope).arg(&qn).arg(&pos).arg(&cs).arg(&eps);
        }
        let cfg = match gqa {
            Some(_) => {
                let blocks = u32::try_from(tiles * shape.nk).map_err(|_| CudaError::Invalid {
                    kernel: K,
                    msg: format!("{tiles} tiles x {} kv heads is too many blocks", shape.nk),
                })?;
                LaunchConfig {
                    grid_dim: (blocks, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: smem as u32,
                }
            }
            None => LaunchConfig {
                grid_dim: (tiles as u32, shape.nq as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            },
        };
        unsafe { b.launch(cfg) }.ctx(name).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extend_variant_names_a_listed_kernel() {
        let listed: Vec<&str> = crate::cuda::compile::KERNEL_SOURCES
            .iter()
            .flat_map(|k| k.entries.iter().copied())
            .collect();
        for v in ExtendVariant::ALL {
            for d in [64, 128] {
                if let Some(name) = extend_kernel_name(d, v) {
                    assert!(listed.contains(&name), "{name} is not in KERNEL_SOURCES");
                }
            }
            assert!(
                extend_kernel_name(128, v).is_some(),
                "{v:?} has no D=128 kernel"
            );
        }
        assert!(extend_kernel_name(64, ExtendVariant::Gqa).is_some());
    }

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
