//! The decoder (Qwen3 / Llama) on the GPU: bf16 weights, a paged KV pool addressed by the core's
//! slots, and one forward pass over a mixed batch of extend and decode entries.
//!
//! Per layer: RMSNorm (fused with the residual add from the previous layer), one fused QKV
//! projection, Qwen3's q/k norm, RoPE, KV store, attention (extend kernel for extend entries,
//! split-KV decode kernel for decode entries), output projection, fused add + RMSNorm, one fused
//! gate/up projection, SiLU-and-mul, down projection. Projections use the custom GEMV (norms
//! folded in) up to `gemv_max_tokens` tokens, the skinny tensor-core GEMM up to
//! `KernelChoice::skinny_max_tokens`, and cuBLAS above. Only the rows that need logits reach the LM head.
//! This file holds the weights; the step plan is in `plan.rs`, the forward pass in `forward.rs`
//! and `layer.rs`, the KV pool and workspace in `buffers.rs`.

pub mod buffers;
pub mod forward;
pub(crate) mod layer;
pub mod plan;

use crate::cuda::attention::MIN_KEYS_PER_SPLIT;
pub use crate::cuda::forward::{KvPool, RowSampling, StepBatch, StepInput, TokenPick, Workspace};
use crate::cuda::rope::cos_sin_table_scaled;
use crate::cuda::{CudaError, DriverCtx, Gpu, Result};
use crate::model::weights::{LayerNames, EMBED, FINAL_NORM, LM_HEAD};
use crate::model::{DType, ModelConfig, Part, Shard, Split, TensorRef, WeightStore};
use cudarc::driver::CudaSlice;
use half::bf16;
use rayon::prelude::*;
use std::time::Instant;

/// One decoder layer's weights on the GPU: the checkpoint's tensors, with the RMSNorm before
/// the qkv and gate/up projections folded into their columns at load (`W diag(w)`, in place), so
/// every path's norm before them applies only 1 / rms (docs/cuda.md, "Norm weights folded in").
pub struct LayerWeights {
    /// [q; k; v] rows: [(nq + 2 nk) * D, H], the input norm's weight folded in.
    pub(in crate::cuda) qkv: CudaSlice<bf16>,
    /// [q; k; v] biases (Qwen2), added to the projection's output after the whole input norm
    /// (not scaled by 1 / rms), before the q/k pass.
    pub(in crate::cuda) qkv_bias: Option<CudaSlice<bf16>>,
    pub(in crate::cuda) q_norm: Option<CudaSlice<bf16>>,
    pub(in crate::cuda) k_norm: Option<CudaSlice<bf16>>,
    pub(in crate::cuda) o: CudaSlice<bf16>,
    /// [gate; up] rows: [2 I, H], the post-attention norm's weight folded in.
    pub(in crate::cuda) gate_up: CudaSlice<bf16>,
    pub(in crate::cuda) down: CudaSlice<bf16>,
}

/// The model's weights and constant tables on the GPU.
pub struct GpuModel {
    /// The configuration.
    pub cfg: ModelConfig,
    pub(in crate::cuda) embed: CudaSlice<bf16>,
    pub(in crate::cuda) lm_head: Option<CudaSlice<bf16>>,
    pub(in crate::cuda) final_norm: CudaSlice<bf16>,
    /// `hidden_size` ones: the norm weight of the RMSNorms whose weights are folded into the
    /// projection after them.
    pub(in crate::cuda) unit_norm: CudaSlice<bf16>,
    pub(in crate::cuda) layers: Vec<LayerWeights>,
    pub(in crate::cuda) cos_sin: CudaSlice<f32>,
    /// Positions the RoPE table covers.
    pub max_pos: usize,
    /// Bytes of weights held on the GPU.
    pub weight_bytes: usize,
    /// Bytes of the checkpoint's weights as bf16 (norm weights included).
    pub checkpoint_bytes: usize,
    /// Seconds reading, converting and uploading the checkpoint (None: random weights).
    pub load_seconds: Option<f64>,
    /// The thresholds of the per-step plan (plan.rs).
    pub kernels: KernelChoice,
    /// This rank's communicator when the model is one shard of a tensor-parallel group
    /// (`cfg` then holds the rank's own head and MLP widths; docs/cuda.md, "Tensor
    /// parallelism").
    pub(super) tp: Option<super::tp::RankComm>,
}

/// The thresholds the per-step plan ([`crate::cuda::plan::StepPlan`]) reads: each depends on the
/// hardware or the model's shapes, and each default was measured on the H100 (docs/cuda.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// Steps of at most this many tokens (at most 8) run the custom GEMVs with the RMSNorms and
    /// residual adds folded in. Default 1: from 2 tokens the skinny GEMM is faster
    /// (docs/cuda.md, "Projections").
    pub gemv_max_tokens: usize,
    /// Projections with more tokens than the GEMV takes and at most this many (at most 64) use
    /// the skinny tensor-core GEMM (0: none). Default 16: cuBLAS was faster at 64 tokens, the
    /// skinny GEMM at 16 (docs/cuda.md, "Projections").
    pub skinny_max_tokens: usize,
    /// The LM head uses the GEMV (f32 logits) for at most this many rows (at most 8), cuBLAS
    /// above. Default 2.
    pub lm_head_gemv_max: usize,
    /// cuBLAS GEMMs of at least this many rows run the algorithm measured fastest for their
    /// shape (`GpuModel::tune_gemms`; usize::MAX: cublasGemmEx's default everywhere). Default
    /// 4096: the 64 x 128 prefill gained 3-4 %, 1024-2048 rows 0-3 % for ~6 ms of tuning per
    /// shape (docs/cuda.md, "Measured GEMM algorithms").
    pub gemm_lt_min_tokens: usize,
    /// Fewest keys per decode split at run time (`AttnShape::split_min_keys`): a CUDA graph
    /// captured with splits for the longest context leaves the extra ones empty on short
    /// sequences. Default [`MIN_KEYS_PER_SPLIT`].
    pub decode_split_min_keys: usize,
    /// Decode steps of at most this many rows run the tensor-core decode attention where its
    /// shared memory fits (0: never). Default 8: faster at b=1-4, slower at 16 and 64 on the H100
    /// (docs/cuda.md, "Decode attention").
    pub decode_mma_max_tokens: usize,
    /// Decode steps of up to this many rows not on the shared-memory tensor-core kernel run the
    /// one fed from registers (`kernels/attention_decode_rmma.cu`), larger ones the CUDA-core
    /// kernels (0: never). Default 32: faster at b=16-32, slower at 64 (docs/cuda.md, "Decode
    /// attention").
    pub decode_reg_mma_max_tokens: usize,
    /// Decode steps on the CUDA-core kernels run the pipelined one for GQA groups up to this
    /// many (at most 4), the one that waits for each iteration's keys above. Default 2 (groups
    /// 1-2, Qwen3-0.6B's); group 4 (Llama-3.1-8B, Qwen3-8B) is untimed: `cuda_shared_prefix`'s
    /// `gqa_group_4_decode_attention_by_kernel` (docs/cuda.md, "Decode attention").
    pub decode_pipelined_max_group: usize,
    /// Pure decode steps of at least this many rows have the decode attention ask the o
    /// projection's weights into L2 for the GEMM after it (usize::MAX: never). Default 32: b=32
    /// and b=64 gained ~1 %, b=16 lost 3-8 us (docs/cuda.md, "Decode attention").
    pub decode_prefetch_o_min_rows: usize,
    /// Decode steps of at most this many rows have each attention block ask L2 for the whole KV
    /// rows of its first keys before the wait (length bounded by the L2; usize::MAX: always; 0:
    /// never). Default 256: b=64 1.609 against 1.638 ms without (H100); at 1,024 rows none is
    /// 0-7 % faster, at 256 within 3 % either way (H200; docs/cuda.md, "Decode attention").
    pub decode_prefetch_kv_max_rows: usize,
}

impl Default for KernelChoice {
    fn default() -> Self {
        KernelChoice {
            gemv_max_tokens: 1,
            skinny_max_tokens: 16,
            lm_head_gemv_max: 2,
            gemm_lt_min_tokens: 4096,
            decode_split_min_keys: MIN_KEYS_PER_SPLIT,
            decode_mma_max_tokens: 8,
            decode_reg_mma_max_tokens: 32,
            decode_pipelined_max_group: 2,
            decode_prefetch_o_min_rows: 32,
            decode_prefetch_kv_max_rows: 256,
        }
    }
}

fn unsupported(msg: String) -> CudaError {
    CudaError::Invalid {
        kernel: "model",
        msg,
    }
}

/// Appends `t` converted to bf16 to `out`. In parallel: touching the mmapped pages and
/// converting them is the CPU side of loading, and one thread reads a warm page cache at
/// about 1 GB/s (docs/exec-model.md, "On the GPU").
fn append_bf16(t: &TensorRef<'_>, out: &mut Vec<bf16>) {
    let b = t.bytes;
    match t.dtype {
        DType::BF16 => out.par_extend(
            b.par_chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]])),
        ),
        DType::F16 => out.par_extend(
            b.par_chunks_exact(2)
                .map(|c| bf16::from_f32(half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        ),
        DType::F32 => out.par_extend(
            b.par_chunks_exact(4)
                .map(|c| bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
    }
}

impl GpuModel {
    fn check_supported(cfg: &ModelConfig) -> Result<()> {
        if cfg.o_bias {
            return Err(unsupported(
                "an o_proj bias (attention_bias on a Llama config) is not supported on the GPU"
                    .into(),
            ));
        }
        if cfg.head_dim != 64 && cfg.head_dim != 128 {
            return Err(unsupported(format!(
                "head_dim {} (the attention kernels take 64 or 128)",
                cfg.head_dim
            )));
        }
        if cfg.num_kv_heads == 0
            || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads)
            || cfg.num_heads / cfg.num_kv_heads > 8
        {
            return Err(unsupported(format!(
                "{} q heads over {} kv heads",
                cfg.num_heads, cfg.num_kv_heads
            )));
        }
        for (n, v) in [
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
        ] {
            if !v.is_multiple_of(8) {
                return Err(unsupported(format!("{n} {v} is not a multiple of 8")));
            }
        }
        Ok(())
    }

    /// Load a checkpoint's weights (converted to bf16) onto the GPU.
    pub fn load(
        gpu: &Gpu,
        cfg: &ModelConfig,
        store: &WeightStore,
        max_pos: usize,
    ) -> Result<GpuModel> {
        Self::load_shard(gpu, cfg, store, Shard::SOLE, max_pos)
    }

    /// `shard`'s part of a checkpoint (all of it for [`Shard::SOLE`]): q/k/v and gate/up cut
    /// by output rows, o and down by input columns (`crate::model::shard`), embedding and LM
    /// head whole; the model's `cfg` is the rank's own shapes (`Shard::local_config`). The
    /// caller has checked that the model splits `shard.size` ways.
    pub fn load_shard(
        gpu: &Gpu,
        cfg: &ModelConfig,
        store: &WeightStore,
        shard: Shard,
        max_pos: usize,
    ) -> Result<GpuModel> {
        let local = shard.local_config(cfg);
        Self::check_supported(&local)?;
        let start = Instant::now();
        let r = ShardReader {
            cfg,
            store,
            shard,
            bar: load_bar(shard, checkpoint_bytes(&local)),
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let whole = Part::Replicated;
        let up = |x: Vec<bf16>| gpu.upload(&x);
        let layers = (0..cfg.num_layers)
            .map(|l| r.layer(gpu, l))
            .collect::<Result<Vec<_>>>()?;
        // Embedding and LM head whole on every rank (each rank picks the same tokens).
        let embed = up(r.get(EMBED, &[v, h], whole)?)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(up(r.get(LM_HEAD, &[v, h], whole)?)?)
        };
        let final_norm = up(r.get(FINAL_NORM, &[h], whole)?)?;
        r.bar.finish_and_clear();
        let mut model = Self::assemble(gpu, &local, embed, lm_head, final_norm, layers, max_pos)?;
        model.load_seconds = Some(start.elapsed().as_secs_f64());
        Ok(model)
    }

    /// Random weights of `cfg`'s shapes (for benchmarks): uniform in [-a, a] with a = 0.05 for
    /// matrices and norms around 1. Filled on the device from one uploaded random block.
    pub fn random(gpu: &Gpu, cfg: &ModelConfig, seed: u64, max_pos: usize) -> Result<GpuModel> {
        Self::check_supported(cfg)?;
        let (h, q, kv, i, d, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.vocab_size,
        );
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        const BLOCK: usize = 1 << 22;
        let mat: Vec<bf16> = (0..BLOCK + 4096)
            .map(|_| bf16::from_f32((next() * 2.0 - 1.0) * 0.05))
            .collect();
        let norm: Vec<bf16> = (0..BLOCK + 4096)
            .map(|_| bf16::from_f32(0.8 + 0.4 * next()))
            .collect();
        let (dmat, dnorm) = (gpu.upload(&mat)?, gpu.upload(&norm)?);
        let mut counter = 0usize;
        let mut fill = |n: usize, src: &CudaSlice<bf16>| -> Result<CudaSlice<bf16>> {
            let mut dst = gpu.zeros::<bf16>(n)?;
            let mut done = 0;
            while done < n {
                // A different offset each time, so no two tensors are identical.
                counter = (counter * 7919 + 12345) % 4096;
                let len = (n - done).min(BLOCK);
                let srcv = src.slice(counter..counter + len);
                let mut dstv = dst.slice_mut(done..done + len);
                gpu.stream
                    .memcpy_dtod(&srcv, &mut dstv)
                    .ctx("filling random weights")?;
                done += len;
            }
            Ok(dst)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let (in_norm, post_norm) = (fill(h, &dnorm)?, fill(h, &dnorm)?);
            let qkv = fill((q + 2 * kv) * h, &dmat)?;
            let qkv_bias = if cfg.qkv_bias {
                Some(fill(q + 2 * kv, &dmat)?)
            } else {
                None
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (Some(fill(d, &dnorm)?), Some(fill(d, &dnorm)?))
            } else {
                (None, None)
            };
            let o = fill(h * q, &dmat)?;
            let gate_up = fill(2 * i * h, &dmat)?;
            layers.push(LayerWeights {
                qkv: fold_norm(gpu, qkv, &in_norm)?,
                qkv_bias,
                q_norm,
                k_norm,
                o,
                gate_up: fold_norm(gpu, gate_up, &post_norm)?,
                down: fill(h * i, &dmat)?,
            });
        }
        let embed = fill(v * h, &dmat)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(fill(v * h, &dmat)?)
        };
        let final_norm = fill(h, &dnorm)?;
        Self::assemble(gpu, cfg, embed, lm_head, final_norm, layers, max_pos)
    }

    fn assemble(
        gpu: &Gpu,
        cfg: &ModelConfig,
        embed: CudaSlice<bf16>,
        lm_head: Option<CudaSlice<bf16>>,
        final_norm: CudaSlice<bf16>,
        layers: Vec<LayerWeights>,
        max_pos: usize,
    ) -> Result<GpuModel> {
        let max_pos = max_pos.max(1);
        let cos_sin = gpu.upload(&cos_sin_table_scaled(
            &cfg.rope_inv_freq(),
            max_pos,
            cfg.rope_attention_factor(),
        ))?;
        let unit_norm = gpu.upload(&vec![bf16::ONE; cfg.hidden_size])?;
        let opt = |x: &Option<CudaSlice<bf16>>| x.as_ref().map_or(0, |x| x.len());
        let mut elems = embed.len() + final_norm.len() + opt(&lm_head) + unit_norm.len();
        for l in &layers {
            elems += l.qkv.len()
                + opt(&l.qkv_bias)
                + opt(&l.q_norm)
                + opt(&l.k_norm)
                + l.o.len()
                + l.gate_up.len()
                + l.down.len();
        }
        Ok(GpuModel {
            cfg: cfg.clone(),
            embed,
            lm_head,
            final_norm,
            unit_norm,
            layers,
            cos_sin,
            max_pos,
            weight_bytes: 2 * elems,
            checkpoint_bytes: checkpoint_bytes(cfg),
            load_seconds: None,
            kernels: KernelChoice::default(),
            tp: None,
        })
    }

    /// The weights held, for start-up lines: "weights X GB (checkpoint Y GB as bf16)".
    pub fn weights_summary(&self) -> String {
        let loaded = self.load_seconds.map_or(String::new(), |t| {
            format!(
                ", loaded in {t:.1} s ({:.1} GB/s)",
                self.checkpoint_bytes as f64 / 1e9 / t.max(1e-9)
            )
        });
        format!(
            "weights {:.3} GB (checkpoint {:.3} GB as bf16; norm weights folded into the projections{loaded})",
            self.weight_bytes as f64 / 1e9,
            self.checkpoint_bytes as f64 / 1e9
        )
    }

    /// Bytes of KV cache per token slot (all layers, K and V).
    pub fn kv_bytes_per_slot(&self) -> usize {
        2 * self.cfg.num_layers * self.cfg.kv_dim() * 2
    }
}

/// Reads one rank's part of a checkpoint's tensors as bf16, counting them on the progress bar.
struct ShardReader<'a> {
    cfg: &'a ModelConfig,
    store: &'a WeightStore,
    shard: Shard,
    bar: indicatif::ProgressBar,
}

impl ShardReader<'_> {
    /// The checkpoint's tensor `name` of `shape`, cut to this rank's part of it.
    fn get(&self, name: &str, shape: &[usize], part: Part) -> Result<Vec<bf16>> {
        let mut v = Vec::new();
        self.append(name, shape, part, &mut v)?;
        Ok(v)
    }

    /// [`Self::get`] appended to `out`, so concatenated weights (q/k/v, gate/up) are written
    /// once, in place.
    fn append(&self, name: &str, shape: &[usize], part: Part, out: &mut Vec<bf16>) -> Result<()> {
        let t = self
            .store
            .get(name, shape)
            .map_err(|e| unsupported(e.to_string()))?;
        let before = out.len();
        match self.shard.split(self.cfg, part) {
            Split::Replicated => append_bf16(&t, out),
            cut => {
                let mut all = Vec::new();
                append_bf16(&t, &mut all);
                out.extend(cut.cut(&all, shape.get(1).copied().unwrap_or(1)));
            }
        }
        self.bar.inc(2 * (out.len() - before) as u64);
        Ok(())
    }

    /// Layer `l`'s weights on the GPU, q/k/v and gate/up concatenated, norms folded in.
    fn layer(&self, gpu: &Gpu, l: usize) -> Result<LayerWeights> {
        let cfg = self.cfg;
        let (h, q, kv, i, d) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.head_dim,
        );
        let (n, whole) = (LayerNames::new(l), Part::Replicated);
        let up = |x: Vec<bf16>| gpu.upload(&x);
        let get = |name: &str, shape: &[usize], part| self.get(name, shape, part);
        let mut qkv = get(&n.q_proj, &[q, h], Part::Q)?;
        self.append(&n.k_proj, &[kv, h], Part::Kv, &mut qkv)?;
        self.append(&n.v_proj, &[kv, h], Part::Kv, &mut qkv)?;
        let mut gu = get(&n.gate_proj, &[i, h], Part::GateUp)?;
        self.append(&n.up_proj, &[i, h], Part::GateUp, &mut gu)?;
        let qkv_bias = if cfg.qkv_bias {
            let mut b = get(&n.q_bias, &[q], Part::Q)?;
            self.append(&n.k_bias, &[kv], Part::Kv, &mut b)?;
            self.append(&n.v_bias, &[kv], Part::Kv, &mut b)?;
            Some(up(b)?)
        } else {
            None
        };
        let in_norm = up(get(&n.input_norm, &[h], whole)?)?;
        let post_norm = up(get(&n.post_norm, &[h], whole)?)?;
        let qk_norm = |name: &str| -> Result<Option<CudaSlice<bf16>>> {
            match cfg.qk_norm {
                true => Ok(Some(up(get(name, &[d], whole)?)?)),
                false => Ok(None),
            }
        };
        Ok(LayerWeights {
            qkv: fold_norm(gpu, up(qkv)?, &in_norm)?,
            qkv_bias,
            q_norm: qk_norm(&n.q_norm)?,
            k_norm: qk_norm(&n.k_norm)?,
            o: up(get(&n.o_proj, &[h, q], Part::O)?)?,
            gate_up: fold_norm(gpu, up(gu)?, &post_norm)?,
            down: up(get(&n.down_proj, &[h, i], Part::Down)?)?,
        })
    }
}

/// The loading progress bar over `bytes` of bf16 weights: drawn by rank 0 only, and only when
/// stderr is a terminal (indicatif hides it otherwise), so logs keep the one summary line.
fn load_bar(shard: Shard, bytes: usize) -> indicatif::ProgressBar {
    if shard.rank != 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(bytes as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "loading weights {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// `w` (`[rows, hidden]`) with the RMSNorm weight `nw` (`[hidden]`) folded into its columns, in
/// place: `w diag(nw)`, rounded to bf16 once.
fn fold_norm(gpu: &Gpu, w: CudaSlice<bf16>, nw: &CudaSlice<bf16>) -> Result<CudaSlice<bf16>> {
    let h = nw.len();
    let wp = gpu.ptr(&w);
    gpu.scale_cols(wp, wp, gpu.ptr(nw), w.len() / h.max(1), h)?;
    Ok(w)
}

/// Bytes of a checkpoint of `cfg`'s shapes as bf16 (every tensor the loader reads).
pub fn checkpoint_bytes(cfg: &ModelConfig) -> usize {
    let (h, q, kv, i, d, v) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.head_dim,
        cfg.vocab_size,
    );
    let qk_norm = if cfg.qk_norm { 2 * d } else { 0 };
    let bias = if cfg.qkv_bias { q + 2 * kv } else { 0 };
    let layer = 2 * h + (q + 2 * kv) * h + bias + qk_norm + h * q + 3 * i * h;
    let head = if cfg.tie_word_embeddings { 0 } else { v * h };
    2 * (cfg.num_layers * layer + v * h + head + h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parallel_append_keeps_order_and_converts_each_dtype_like_to_f32() {
        let vals: Vec<f32> = (0..100_003).map(|i| (i as f32 - 5e4) * 1.37e-3).collect();
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let shape = [vals.len()];
        for (dtype, bytes) in [
            (DType::F32, &f32_bytes),
            (DType::F16, &f16_bytes),
            (DType::BF16, &bf16_bytes),
        ] {
            let t = TensorRef {
                name: "w",
                file: Path::new("w.safetensors"),
                dtype,
                shape: &shape,
                bytes,
            };
            let mut out = vec![bf16::ONE];
            append_bf16(&t, &mut out);
            let want: Vec<bf16> = std::iter::once(bf16::ONE)
                .chain(t.to_f32().into_iter().map(bf16::from_f32))
                .collect();
            assert_eq!(out, want, "{:?}", t.dtype);
        }
    }
}
