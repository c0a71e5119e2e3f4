//! Safetensors checkpoints (single file or sharded), memory-mapped, with named, shape- and
//! dtype-checked tensor access, and the tensor layout of the supported model families.

use super::config::ModelConfig;
use memmap2::Mmap;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Element type of a stored floating-point tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE f32.
    F32,
    /// IEEE f16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// A checkpoint that cannot be loaded; every variant names the file and, where it applies, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// No model.safetensors and no model.safetensors.index.json.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json")]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The index or a safetensors header is malformed.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A tensor's bytes run past the end of its file.
    #[error(
        "{path}: truncated: tensor `{tensor}` needs bytes up to {needed} but the file holds {have}"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Bytes needed (from the start of the file).
        needed: u64,
        /// File size.
        have: u64,
    },
    /// The model needs a tensor the checkpoint lacks.
    #[error("{dir}: missing tensor `{tensor}`")]
    Missing {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        found: Vec<usize>,
        /// The shape config.json implies.
        expected: Vec<usize>,
    },
    /// A tensor is not F32/F16/BF16.
    #[error("{path}: tensor `{tensor}` has dtype {found}; supported: F32, F16, BF16")]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype as written.
        found: String,
    },
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The memory-mapped tensors of a checkpoint directory, by name.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, Entry>,
}

/// A borrowed, checked view of one stored tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// File it lives in.
    pub file: &'a Path,
    /// Element type.
    pub dtype: DType,
    /// Shape (row-major).
    pub shape: &'a [usize],
    /// Raw little-endian bytes.
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements converted to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes;
        match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightError + '_ {
    move |source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn map_file(path: &Path) -> Result<Mmap, WeightError> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    // SAFETY: the mapping is read-only; checkpoints are not modified while a model is loaded
    // (the same assumption transformers and every mmap-based loader make).
    unsafe { Mmap::map(&f) }.map_err(io_err(path))
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        other => Err(other.to_string()),
    }
}

/// Parse a safetensors header, checking every tensor's extent against the file size.
fn read_header(path: &Path, buf: &[u8], file: usize) -> Result<Vec<(String, Entry)>, WeightError> {
    let fmt = |why: String| WeightError::Format {
        path: path.to_path_buf(),
        why,
    };
    if buf.len() < 8 {
        return Err(fmt(format!(
            "{} bytes is too short for a safetensors header",
            buf.len()
        )));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&buf[..8]);
    let n = u64::from_le_bytes(n8);
    if n > 100 << 20 || 8 + n > buf.len() as u64 {
        return Err(fmt(format!(
            "header length {n} does not fit the file ({} bytes): truncated or not a safetensors file",
            buf.len()
        )));
    }
    let data_start = 8 + n as usize;
    let header: Value = serde_json::from_slice(&buf[8..data_start])
        .map_err(|e| fmt(format!("bad header JSON: {e}")))?;
    let Value::Object(map) = header else {
        return Err(fmt("header is not a JSON object".into()));
    };
    let mut out = Vec::with_capacity(map.len());
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| fmt(format!("tensor `{name}`: bad {what} in header"));
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("dtype"))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape"))?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("data_offsets"))?;
        let (Some(s), Some(e)) = (
            offs.first().and_then(Value::as_u64),
            offs.get(1).and_then(Value::as_u64),
        ) else {
            return Err(bad("data_offsets"));
        };
        let dtype = parse_dtype(dtype);
        if let Ok(dt) = dtype {
            let numel: u64 = shape.iter().map(|&d| d as u64).product();
            if e < s || e - s != numel * dt.size() as u64 {
                return Err(fmt(format!(
                    "tensor `{name}`: data_offsets [{s}, {e}] do not match shape {shape:?} of {}",
                    dt.name()
                )));
            }
        }
        let needed = data_start as u64 + e;
        if needed > buf.len() as u64 {
            return Err(WeightError::Truncated {
                path: path.to_path_buf(),
                tensor: name,
                needed,
                have: buf.len() as u64,
            });
        }
        let entry = Entry {
            file,
            dtype,
            shape,
            start: data_start + s as usize,
            end: data_start + e as usize,
        };
        out.push((name, entry));
    }
    Ok(out)
}

impl WeightStore {
    /// Open `dir/model.safetensors`, or every shard listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<WeightStore, WeightError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut store = WeightStore {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| WeightError::Format {
                path: index.clone(),
                why: format!("invalid JSON: {e}"),
            })?;
            let Some(Value::Object(map)) = v.get("weight_map") else {
                return Err(WeightError::Format {
                    path: index,
                    why: "no `weight_map` object".into(),
                });
            };
            // Shard files in sorted order, each opened once.
            let mut shards: BTreeMap<String, usize> = BTreeMap::new();
            for (tensor, f) in map {
                let Some(f) = f.as_str() else {
                    return Err(WeightError::Format {
                        path: index.clone(),
                        why: format!("weight_map[`{tensor}`] is not a file name"),
                    });
                };
                shards.insert(f.to_string(), 0);
            }
            for (i, (f, slot)) in shards.iter_mut().enumerate() {
                *slot = i;
                store.add_file(dir.join(f.as_str()))?;
            }
            for (tensor, f) in map {
                let f = f.as_str().unwrap_or_default();
                let want = shards[f];
                match store.tensors.get(tensor) {
                    Some(e) if e.file == want => {}
                    _ => {
                        return Err(WeightError::Format {
                            path: dir.join(f),
                            why: format!(
                            "index {} lists tensor `{tensor}` in this shard but it is not there",
                            index.display()
                        ),
                        })
                    }
                }
            }
        } else if single.exists() {
            store.add_file(single)?;
        } else {
            return Err(WeightError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        Ok(store)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<(), WeightError> {
        let map = map_file(&path)?;
        let file = self.files.len();
        for (name, e) in read_header(&path, &map, file)? {
            if let Some(prev) = self.tensors.get(&name) {
                return Err(WeightError::Format {
                    path,
                    why: format!(
                        "tensor `{name}` also appears in {}",
                        self.files[prev.file].0.display()
                    ),
                });
            }
            self.tensors.insert(name, e);
        }
        self.files.push((path, map));
        Ok(())
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor's stored shape, whatever its dtype.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|e| e.end - e.start).sum()
    }

    /// The tensor `name`, checked to have exactly `shape` and a float dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>, WeightError> {
        let (key, e) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| WeightError::Missing {
                dir: self.dir.clone(),
                tensor: name.to_string(),
            })?;
        let (path, map) = &self.files[e.file];
        let dtype = e.dtype.clone().map_err(|found| WeightError::DType {
            path: path.clone(),
            tensor: name.to_string(),
            found,
        })?;
        if e.shape != shape {
            return Err(WeightError::Shape {
                path: path.clone(),
                tensor: name.to_string(),
                found: e.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(TensorRef {
            name: key,
            file: path,
            dtype,
            shape: &e.shape,
            bytes: &map[e.start..e.end],
        })
    }

    /// Check that every tensor the model needs is present with the right shape and dtype.
    pub fn check(&self, specs: &[TensorSpec]) -> Result<(), WeightError> {
        for s in specs {
            self.get(&s.name, &s.shape)?;
        }
        Ok(())
    }
}

/// One tensor the model reads: its checkpoint name and expected shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the checkpoint.
    pub name: String,
    /// Expected shape (row-major; linear weights are [out, in]).
    pub shape: Vec<usize>,
}

/// Checkpoint names of one decoder layer's tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerNames {
    /// RMSNorm before attention, [hidden].
    pub input_norm: String,
    /// [q_dim, hidden].
    pub q_proj: String,
    /// [kv_dim, hidden].
    pub k_proj: String,
    /// [kv_dim, hidden].
    pub v_proj: String,
    /// [hidden, q_dim].
    pub o_proj: String,
    /// Biases [q_dim], [kv_dim], [kv_dim] when `qkv_bias`.
    pub q_bias: String,
    /// See `q_bias`.
    pub k_bias: String,
    /// See `q_bias`.
    pub v_bias: String,
    /// [hidden] when `o_bias`.
    pub o_bias: String,
    /// Per-head RMSNorm weights [head_dim] when `qk_norm`.
    pub q_norm: String,
    /// See `q_norm`.
    pub k_norm: String,
    /// RMSNorm before the MLP, [hidden].
    pub post_norm: String,
    /// [intermediate, hidden].
    pub gate_proj: String,
    /// [intermediate, hidden].
    pub up_proj: String,
    /// [hidden, intermediate].
    pub down_proj: String,
}

impl LayerNames {
    /// Names for layer `i`.
    pub fn new(i: usize) -> LayerNames {
        let p = format!("model.layers.{i}");
        LayerNames {
            input_norm: format!("{p}.input_layernorm.weight"),
            q_proj: format!("{p}.self_attn.q_proj.weight"),
            k_proj: format!("{p}.self_attn.k_proj.weight"),
            v_proj: format!("{p}.self_attn.v_proj.weight"),
            o_proj: format!("{p}.self_attn.o_proj.weight"),
            q_bias: format!("{p}.self_attn.q_proj.bias"),
            k_bias: format!("{p}.self_attn.k_proj.bias"),
            v_bias: format!("{p}.self_attn.v_proj.bias"),
            o_bias: format!("{p}.self_attn.o_proj.bias"),
            q_norm: format!("{p}.self_attn.q_norm.weight"),
            k_norm: format!("{p}.self_attn.k_norm.weight"),
            post_norm: format!("{p}.post_attention_layernorm.weight"),
            gate_proj: format!("{p}.mlp.gate_proj.weight"),
            up_proj: format!("{p}.mlp.up_proj.weight"),
            down_proj: format!("{p}.mlp.down_proj.weight"),
        }
    }
}

/// Embedding matrix name, [vocab, hidden].
pub const EMBED: &str = "model.embed_tokens.weight";
/// Final RMSNorm name, [hidden].
pub const FINAL_NORM: &str = "model.norm.weight";
/// Untied LM head name, [vocab, hidden].
pub const LM_HEAD: &str = "lm_head.weight";

/// Every tensor a model with this configuration reads, with its shape, in a fixed order.
pub fn tensor_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (h, q, kv, i, d, v) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.head_dim,
        cfg.vocab_size,
    );
    let mut out = Vec::new();
    let mut add = |name: &str, shape: &[usize]| {
        out.push(TensorSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
        })
    };
    add(EMBED, &[v, h]);
    for l in 0..cfg.num_layers {
        let n = LayerNames::new(l);
        add(&n.input_norm, &[h]);
        add(&n.q_proj, &[q, h]);
        add(&n.k_proj, &[kv, h]);
        add(&n.v_proj, &[kv, h]);
        add(&n.o_proj, &[h, q]);
        if cfg.qkv_bias {
            add(&n.q_bias, &[q]);
            add(&n.k_bias, &[kv]);
            add(&n.v_bias, &[kv]);
        }
        if cfg.o_bias {
            add(&n.o_bias, &[h]);
        }
        if cfg.qk_norm {
            add(&n.q_norm, &[d]);
            add(&n.k_norm, &[d]);
        }
        add(&n.post_norm, &[h]);
        add(&n.gate_proj, &[i, h]);
        add(&n.up_proj, &[i, h]);
        add(&n.down_proj, &[h, i]);
    }
    add(FINAL_NORM, &[h]);
    if !cfg.tie_word_embeddings {
        add(LM_HEAD, &[v, h]);
    }
    out
}
