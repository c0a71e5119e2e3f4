//! The f32 reference forward pass over a slot-addressed KV cache, multi-threaded with rayon.
//!
//! Every output element is computed by the same sequence of operations whatever the batch, so a
//! token's logits are bit-identical whether it is computed alone, in a chunk, or in a batch with
//! other requests: the property the scheduler tests (prefix hit == miss, chunked == one pass) rely on.

use super::config::ModelConfig;
use super::linear::Mat;
use super::shard::{Part, Shard, TpError};
use super::weights::{
    tensor_specs, LayerNames, TensorRef, WeightError, WeightStore, EMBED, FINAL_NORM, LM_HEAD,
};
use doppel_core::KvSlot;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// A loaded model on the CPU: the whole model, or one tensor-parallel rank's shard of it.
pub struct CpuModel {
    cfg: ModelConfig,
    shard: Shard,
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
    /// A KV cache made for another shard or model.
    #[error("the KV cache holds {got} floats per slot and layer, this model needs {want}")]
    KvMismatch {
        /// The cache's width.
        got: usize,
        /// This model's (shard's) width.
        want: usize,
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
        KvCache::for_shard(cfg, Shard::SOLE, slots)
    }

    /// A zeroed cache holding only `shard`'s KV heads.
    pub fn for_shard(cfg: &ModelConfig, shard: Shard, slots: usize) -> KvCache {
        let kv_dim = shard.kv_heads(cfg).len() * cfg.head_dim;
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
    /// The last `n` new tokens' (prompt logprob rows, then the sampled position).
    Tail(usize),
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
        CpuModel::shard_from_store(cfg, store, Shard::SOLE, progress)
    }

    /// This rank's shard of an opened checkpoint (see [`super::shard`]); the caller has checked
    /// that the model splits `shard.size` ways ([`Shard::group`]).
    pub fn shard_from_store(
        cfg: ModelConfig,
        store: &WeightStore,
        shard: Shard,
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
        let split = |part| shard.split(&cfg, part);
        // Vectors: norms replicated, biases cut like their matrix's rows.
        let mut get = |name: &str, part: Part| -> Result<Vec<f32>, WeightError> {
            let v = split(part).cut(&fetch(name)?.to_f32(), 1);
            bytes += v.len() * 4;
            Ok(v)
        };
        let mut mat_bytes = 0usize;
        let mut getm = |name: &str, part: Part, in_dim: usize| -> Result<Mat, WeightError> {
            let m = Mat::from_tensor_cut(&fetch(name)?, &split(part), in_dim);
            mat_bytes += m.bytes();
            Ok(m)
        };
        let (h, qd, inter) = (cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size);
        let embed = getm(EMBED, Part::Vocab, h)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let n = LayerNames::new(l);
            let mut opt = |on: bool, name: &str, part: Part| {
                if on {
                    get(name, part).map(Some)
                } else {
                    Ok(None)
                }
            };
            let q_bias = opt(cfg.qkv_bias, &n.q_bias, Part::Q)?;
            let k_bias = opt(cfg.qkv_bias, &n.k_bias, Part::Kv)?;
            let v_bias = opt(cfg.qkv_bias, &n.v_bias, Part::Kv)?;
            let o_bias = opt(cfg.o_bias, &n.o_bias, Part::Replicated)?;
            let q_norm = opt(cfg.qk_norm, &n.q_norm, Part::Replicated)?;
            let k_norm = opt(cfg.qk_norm, &n.k_norm, Part::Replicated)?;
            layers.push(Layer {
                input_norm: get(&n.input_norm, Part::Replicated)?,
                q: getm(&n.q_proj, Part::Q, h)?,
                k: getm(&n.k_proj, Part::Kv, h)?,
                v: getm(&n.v_proj, Part::Kv, h)?,
                o: getm(&n.o_proj, Part::O, qd)?,
                q_bias,
                k_bias,
                v_bias,
                o_bias,
                q_norm,
                k_norm,
                post_norm: get(&n.post_norm, Part::Replicated)?,
                gate: getm(&n.gate_proj, Part::GateUp, h)?,
                up: getm(&n.up_proj, Part::GateUp, h)?,
                down: getm(&n.down_proj, Part::Down, inter)?,
            });
        }
        let final_norm = get(FINAL_NORM, Part::Replicated)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(getm(LM_HEAD, Part::Vocab, h)?)
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
            shard,
        };
        let report = LoadReport {
            elapsed: start.elapsed(),
            weight_bytes: bytes,
            checkpoint_bytes: store.total_bytes(),
        };
        Ok((model, report))
    }

    /// The configuration (of the whole model, also for a shard).
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Which shard this is ([`Shard::SOLE`] for a whole model).
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// A zeroed KV cache for this model (its shard's heads) with `slots` slots.
    pub fn kv_cache(&self, slots: usize) -> KvCache {
        KvCache::for_shard(&self.cfg, self.shard, slots)
    }

    /// Load `dir`'s shard for `shard` after checking that the model splits `shard.size` ways.
    pub fn load_shard(
        dir: &Path,
        shard: Shard,
        progress: bool,
    ) -> Result<(CpuModel, LoadReport), LoadError> {
        let cfg = ModelConfig::load(dir)?;
        super::shard::check(&cfg, shard.size).map_err(|reason| LoadError::Tp {
            dir: dir.to_path_buf(),
            reason,
        })?;
        let store = WeightStore::open(dir)?;
        Ok(CpuModel::shard_from_store(cfg, &store, shard, progress)?)
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
    /// The model does not split across the tensor-parallel ranks asked for.
    #[error("{}: {reason}", dir.display())]
    Tp {
        /// Checkpoint directory.
        dir: std::path::PathBuf,
        /// Why.
        reason: TpError,
    },
    /// A tensor-parallel worker thread could not start.
    #[error("could not start a tensor-parallel worker thread: {0}")]
    Thread(std::io::Error),
}

#[path = "cpu_forward.rs"]
mod forward;
