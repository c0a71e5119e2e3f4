//! The f32 reference forward pass over a slot-addressed KV cache, multi-threaded with rayon.
//!
//! Every output element is computed by the same sequence of operations whatever the batch, so a
//! token's logits are bit-identical whether it is computed alone, in a chunk, or in a batch with
//! other requests: the property the scheduler tests (prefix hit == miss, chunked == one pass) rely on.

use super::config::ModelConfig;
use super::weights::{
    tensor_specs, DType, LayerNames, TensorRef, WeightError, WeightStore, EMBED, FINAL_NORM,
    LM_HEAD,
};
use doppel_core::KvSlot;
use rayon::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A weight matrix [out, in] kept in the checkpoint's precision when that is bf16 (widening
/// bf16 to f32 is exact, so results are identical to converting at load, with half the memory
/// traffic per decode step); every other dtype is converted to f32 at load.
enum Mat {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Mat {
    fn from_tensor(t: &TensorRef<'_>) -> Mat {
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

    fn len(&self) -> usize {
        match self {
            Mat::F32(v) => v.len(),
            Mat::Bf16(v) => v.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Mat::F32(v) => v.len() * 4,
            Mat::Bf16(v) => v.len() * 2,
        }
    }

    /// Row `o` of width `w` as f32, widened into `buf` when stored as bf16.
    #[inline(always)]
    fn row<'a>(&'a self, o: usize, w: usize, buf: &'a mut [f32]) -> &'a [f32] {
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

/// One decoder layer (norms and biases in f32).
struct Layer {
    input_norm: Vec<f32>,
    q: Mat,
    k: Mat,
    v: Mat,
    o: Mat,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    o_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_norm: Vec<f32>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// A loaded model on the CPU.
pub struct CpuModel {
    cfg: ModelConfig,
    embed: Mat,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// None when tied to the embedding.
    lm_head: Option<Mat>,
    inv_freq: Vec<f32>,
    /// cos and sin are multiplied by this (YaRN's attention factor; 1 otherwise), as transformers does.
    rope_scale: f32,
}

/// What loading took.
#[derive(Clone, Copy, Debug)]
pub struct LoadReport {
    /// Wall time.
    pub elapsed: Duration,
    /// Bytes of weights held (bf16 matrices stay bf16, everything else f32).
    pub weight_bytes: usize,
    /// Bytes of tensor data in the checkpoint files.
    pub checkpoint_bytes: usize,
}

/// Bad input to [`CpuModel::forward`].
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A KV slot outside the cache.
    #[error("KV slot {slot} is outside the cache ({slots} slots)")]
    SlotOutOfRange {
        /// The slot.
        slot: u32,
        /// Slots in the cache.
        slots: usize,
    },
    /// A sequence's KV row is shorter than its new tokens.
    #[error("sequence {index}: {tokens} new tokens but only {row} KV slots")]
    RowTooShort {
        /// Sequence index in the batch.
        index: usize,
        /// New tokens.
        tokens: usize,
        /// Slots given.
        row: usize,
    },
}

/// Host KV cache: for each layer, K and V rows of `kv_dim` floats indexed by KV slot.
pub struct KvCache {
    kv_dim: usize,
    slots: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// A zeroed cache with `slots` slots (slot 0 included) for `cfg`.
    pub fn new(cfg: &ModelConfig, slots: usize) -> KvCache {
        let kv_dim = cfg.kv_dim();
        KvCache {
            kv_dim,
            slots,
            k: (0..cfg.num_layers)
                .map(|_| vec![0.0; slots * kv_dim])
                .collect(),
            v: (0..cfg.num_layers)
                .map(|_| vec![0.0; slots * kv_dim])
                .collect(),
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.slots * self.kv_dim * 4
    }
}

/// Which logits a sequence wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a non-final prefill chunk).
    None,
    /// The last new token's.
    Last,
    /// Every new token's.
    All,
}

/// One sequence of a forward batch.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// Tokens computed now: they sit at the last `tokens.len()` positions of `kv_row`.
    pub tokens: &'a [u32],
    /// KV slot of every position 0..seq_len; the new tokens' K/V are written to the tail.
    pub kv_row: &'a [KvSlot],
    /// Logits to return.
    pub logits: LogitsWanted,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * r);
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
fn linear(x: &[f32], rows: usize, w: &Mat, bias: Option<&[f32]>, out_dim: usize, y: &mut Vec<f32>) {
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

impl CpuModel {
    /// Load `dir` (config.json + safetensors), showing a progress bar on stderr when `progress`.
    pub fn load(dir: &Path, progress: bool) -> Result<(CpuModel, LoadReport), LoadError> {
        let cfg = ModelConfig::load(dir)?;
        let store = WeightStore::open(dir)?;
        Ok(CpuModel::from_store(cfg, &store, progress)?)
    }

    /// Build from an opened checkpoint; every tensor is checked before any is converted.
    pub fn from_store(
        cfg: ModelConfig,
        store: &WeightStore,
        progress: bool,
    ) -> Result<(CpuModel, LoadReport), WeightError> {
        let start = Instant::now();
        let specs = tensor_specs(&cfg);
        store.check(&specs)?;
        let bar = if progress {
            let b = indicatif::ProgressBar::new(specs.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "loading weights {bar:40} {pos}/{len} {msg}",
            ) {
                b.set_style(style);
            }
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let fetch = |name: &str| -> Result<TensorRef<'_>, WeightError> {
            let shape = specs
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.shape.as_slice())
                .unwrap_or_default();
            let t = store.get(name, shape)?;
            bar.set_message(name.to_string());
            bar.inc(1);
            Ok(t)
        };
        let mut bytes = 0usize;
        let mut get = |name: &str| -> Result<Vec<f32>, WeightError> {
            let v = fetch(name)?.to_f32();
            bytes += v.len() * 4;
            Ok(v)
        };
        let mut mat_bytes = 0usize;
        let mut getm = |name: &str| -> Result<Mat, WeightError> {
            let m = Mat::from_tensor(&fetch(name)?);
            mat_bytes += m.bytes();
            Ok(m)
        };
        let embed = getm(EMBED)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let n = LayerNames::new(l);
            let mut opt = |on: bool, name: &str| if on { get(name).map(Some) } else { Ok(None) };
            let q_bias = opt(cfg.qkv_bias, &n.q_bias)?;
            let k_bias = opt(cfg.qkv_bias, &n.k_bias)?;
            let v_bias = opt(cfg.qkv_bias, &n.v_bias)?;
            let o_bias = opt(cfg.o_bias, &n.o_bias)?;
            let q_norm = opt(cfg.qk_norm, &n.q_norm)?;
            let k_norm = opt(cfg.qk_norm, &n.k_norm)?;
            layers.push(Layer {
                input_norm: get(&n.input_norm)?,
                q: getm(&n.q_proj)?,
                k: getm(&n.k_proj)?,
                v: getm(&n.v_proj)?,
                o: getm(&n.o_proj)?,
                q_bias,
                k_bias,
                v_bias,
                o_bias,
                q_norm,
                k_norm,
                post_norm: get(&n.post_norm)?,
                gate: getm(&n.gate_proj)?,
                up: getm(&n.up_proj)?,
                down: getm(&n.down_proj)?,
            });
        }
        let final_norm = get(FINAL_NORM)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(getm(LM_HEAD)?)
        };
        let bytes = bytes + mat_bytes;
        bar.finish_and_clear();
        let inv_freq = cfg.rope_inv_freq().into_iter().map(|f| f as f32).collect();
        let cfg_rope_scale = cfg.rope_attention_factor() as f32;
        let model = CpuModel {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
            rope_scale: cfg_rope_scale,
        };
        let report = LoadReport {
            elapsed: start.elapsed(),
            weight_bytes: bytes,
            checkpoint_bytes: store.total_bytes(),
        };
        Ok((model, report))
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            // Angle in f32 like transformers (inv_freq * position), trig in higher precision.
            let ang = (f * pos as f32) as f64;
            let (s, c) = (
                ang.sin() as f32 * self.rope_scale,
                ang.cos() as f32 * self.rope_scale,
            );
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    }

    /// Run one batch: write the new tokens' K/V into `kv` and append the requested logits rows
    /// (vocab floats each, in sequence then position order) to `logits`.
    pub fn forward(
        &self,
        kv: &mut KvCache,
        seqs: &[SeqInput<'_>],
        logits: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        let c = &self.cfg;
        let (h, qd, kvd, hd) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.head_dim);
        let eps = c.rms_norm_eps as f32;
        // Per new token: (sequence, position).
        let mut tok_seq: Vec<(usize, usize)> = Vec::new();
        let mut ids = Vec::new();
        for (si, s) in seqs.iter().enumerate() {
            if s.kv_row.len() < s.tokens.len() {
                return Err(ForwardError::RowTooShort {
                    index: si,
                    tokens: s.tokens.len(),
                    row: s.kv_row.len(),
                });
            }
            if let Some(bad) = s.kv_row.iter().find(|k| k.index() >= kv.slots) {
                return Err(ForwardError::SlotOutOfRange {
                    slot: bad.0,
                    slots: kv.slots,
                });
            }
            let start = s.kv_row.len() - s.tokens.len();
            for (i, &t) in s.tokens.iter().enumerate() {
                if t as usize >= c.vocab_size {
                    return Err(ForwardError::TokenOutOfRange {
                        token: t,
                        vocab: c.vocab_size,
                    });
                }
                tok_seq.push((si, start + i));
                ids.push(t);
            }
        }
        let n = ids.len();
        let mut x = Vec::with_capacity(n * h);
        for &t in &ids {
            let mut buf = vec![0f32; h];
            let row = self.embed.row(t as usize, h, &mut buf);
            x.extend_from_slice(row);
        }
        let mut xn = vec![0f32; n * h];
        let (mut q, mut k, mut v, mut att, mut tmp, mut g, mut u) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            vec![0f32; n * qd],
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.num_heads / c.num_kv_heads;
        for (li, l) in self.layers.iter().enumerate() {
            for t in 0..n {
                rms_norm(
                    &x[t * h..(t + 1) * h],
                    &l.input_norm,
                    eps,
                    &mut xn[t * h..(t + 1) * h],
                );
            }
            linear(&xn, n, &l.q, l.q_bias.as_deref(), qd, &mut q);
            linear(&xn, n, &l.k, l.k_bias.as_deref(), kvd, &mut k);
            linear(&xn, n, &l.v, l.v_bias.as_deref(), kvd, &mut v);
            let mut scratch = vec![0f32; hd];
            for (t, &(si, pos)) in tok_seq.iter().enumerate() {
                for head in q[t * qd..(t + 1) * qd].chunks_mut(hd) {
                    if let Some(w) = &l.q_norm {
                        scratch.copy_from_slice(head);
                        rms_norm(&scratch, w, eps, head);
                    }
                    self.rope(head, pos);
                }
                for head in k[t * kvd..(t + 1) * kvd].chunks_mut(hd) {
                    if let Some(w) = &l.k_norm {
                        scratch.copy_from_slice(head);
                        rms_norm(&scratch, w, eps, head);
                    }
                    self.rope(head, pos);
                }
                let slot = seqs[si].kv_row[pos].index();
                kv.k[li][slot * kvd..(slot + 1) * kvd].copy_from_slice(&k[t * kvd..(t + 1) * kvd]);
                kv.v[li][slot * kvd..(slot + 1) * kvd].copy_from_slice(&v[t * kvd..(t + 1) * kvd]);
            }
            let (kc, vc) = (&kv.k[li], &kv.v[li]);
            let qr = &q;
            att.par_chunks_mut(hd).enumerate().for_each(|(idx, out)| {
                let (t, head) = (idx / c.num_heads, idx % c.num_heads);
                let (si, pos) = tok_seq[t];
                let row = &seqs[si].kv_row[..=pos];
                let kvh = head / group;
                let qv = &qr[t * qd + head * hd..t * qd + (head + 1) * hd];
                let mut scores: Vec<f32> = row
                    .iter()
                    .map(|s| {
                        dot(
                            qv,
                            &kc[s.index() * kvd + kvh * hd..s.index() * kvd + (kvh + 1) * hd],
                        ) * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - m).exp();
                    sum += *s;
                }
                out.fill(0.0);
                for (s, w) in row.iter().zip(&scores) {
                    let vv = &vc[s.index() * kvd + kvh * hd..s.index() * kvd + (kvh + 1) * hd];
                    let p = w / sum;
                    for (o, &val) in out.iter_mut().zip(vv) {
                        *o += p * val;
                    }
                }
            });
            linear(&att, n, &l.o, l.o_bias.as_deref(), h, &mut tmp);
            for (a, b) in x.iter_mut().zip(&tmp) {
                *a += b;
            }
            for t in 0..n {
                rms_norm(
                    &x[t * h..(t + 1) * h],
                    &l.post_norm,
                    eps,
                    &mut xn[t * h..(t + 1) * h],
                );
            }
            let inter = c.intermediate_size;
            linear(&xn, n, &l.gate, None, inter, &mut g);
            linear(&xn, n, &l.up, None, inter, &mut u);
            for (a, b) in g.iter_mut().zip(&u) {
                *a = *a / (1.0 + (-*a).exp()) * b;
            }
            linear(&g, n, &l.down, None, h, &mut tmp);
            for (a, b) in x.iter_mut().zip(&tmp) {
                *a += b;
            }
        }
        // Final norm and LM head only for the rows asked for.
        let mut rows = Vec::new();
        let mut t0 = 0;
        for s in seqs {
            let len = s.tokens.len();
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last if len > 0 => rows.push(t0 + len - 1),
                LogitsWanted::Last => {}
                LogitsWanted::All => rows.extend(t0..t0 + len),
            }
            t0 += len;
        }
        let mut hn = vec![0f32; rows.len() * h];
        for (i, &t) in rows.iter().enumerate() {
            rms_norm(
                &x[t * h..(t + 1) * h],
                &self.final_norm,
                eps,
                &mut hn[i * h..(i + 1) * h],
            );
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut out = Vec::new();
        linear(&hn, rows.len(), head, None, c.vocab_size, &mut out);
        logits.extend_from_slice(&out);
        Ok(())
    }
}

/// Loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// config.json.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// The weights.
    #[error(transparent)]
    Weights(#[from] WeightError),
}
