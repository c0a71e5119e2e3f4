//! Model configuration read from a Hugging Face `config.json` (Llama 2/3, Mistral, Qwen2, Qwen3).

pub use super::rope::RopeScaling;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Which decoder family a checkpoint belongs to (they differ in biases and norms only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `LlamaForCausalLM` (Llama 2, Llama 3.x).
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections carry biases.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k before RoPE.
    Qwen3,
    /// `MistralForCausalLM`: Llama's layers without biases (full attention only).
    Mistral,
}

/// Every family, in the order errors list them.
const ARCHES: [Arch; 4] = [Arch::Llama, Arch::Mistral, Arch::Qwen2, Arch::Qwen3];

impl Arch {
    /// The `architectures` entry of config.json.
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
        }
    }

    /// The `model_type` entry of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Mistral => "mistral",
        }
    }

    /// Parse an `architectures` entry.
    pub fn from_hf_name(s: &str) -> Option<Arch> {
        ARCHES.into_iter().find(|a| a.hf_name() == s)
    }
}

/// Everything the forward pass needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary (rows of the embedding and the LM head).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Context length.
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (always for Qwen2; `attention_bias` otherwise).
    pub qkv_bias: bool,
    /// o projection has a bias (Llama's `attention_bias` covers it too).
    pub o_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    /// BOS token id, if the config names one.
    pub bos_token_id: Option<u32>,
    /// EOS token ids named by config.json (generation_config.json may add more).
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's stored dtype name (`torch_dtype` / `dtype`), informational.
    pub torch_dtype: Option<String>,
}

/// A config.json that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A required field is absent.
    #[error("{path}: missing field `{field}`")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
    },
    /// A field has an unusable value.
    #[error("{path}: field `{field}` = {value}: {why}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// The value as written.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// The architecture is not one we implement.
    #[error("{path}: unsupported architecture {found} (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What config.json names.
        found: String,
    },
}

struct Reader<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl Reader<'_> {
    fn bad(&self, field: &str, value: &Value, why: &str) -> ConfigError {
        ConfigError::Bad {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.v.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.bad(field, v, "expected a positive integer")),
            },
        }
    }

    fn usize_req(&self, field: &'static str) -> Result<usize, ConfigError> {
        self.usize_opt(field)?.ok_or(ConfigError::Missing {
            path: self.path.to_path_buf(),
            field,
        })
    }

    fn f64_opt(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.bad(field, v, "expected a finite number")),
            },
        }
    }

    fn bool_opt(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(field, v, "expected true or false")),
        }
    }

    /// The family from `architectures` (or `model_type` when that is all there is).
    fn arch(&self) -> Result<Arch, ConfigError> {
        let path = self.path;
        match self.get("architectures") {
            Some(Value::Array(a)) if !a.is_empty() => {
                let name = a[0].as_str().unwrap_or_default();
                Arch::from_hf_name(name).ok_or_else(|| ConfigError::Unsupported {
                    path: path.to_path_buf(),
                    found: a[0].to_string(),
                })
            }
            Some(other) => Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                found: other.to_string(),
            }),
            None => {
                // Some exports carry only model_type.
                let mt = self.get("model_type").and_then(Value::as_str).unwrap_or("");
                ARCHES
                    .into_iter()
                    .find(|a| a.model_type() == mt)
                    .ok_or(ConfigError::Missing {
                        path: path.to_path_buf(),
                        field: "architectures",
                    })
            }
        }
    }

    /// A token id or a list of them.
    fn ids(&self, field: &str) -> Result<Vec<u32>, ConfigError> {
        token_ids(self.get(field))
            .map_err(|v| self.bad(field, &v, "expected a token id or a list of token ids"))
    }
}

/// Parse a token id or list of token ids (`eos_token_id` may be either); the offending value on error.
pub(crate) fn token_ids(v: Option<&Value>) -> Result<Vec<u32>, Value> {
    let one = |x: &Value| {
        x.as_u64()
            .filter(|&n| n <= u32::MAX as u64)
            .map(|n| n as u32)
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|x| one(x).ok_or_else(|| x.clone())).collect(),
        Some(x) => one(x).map(|n| vec![n]).ok_or_else(|| x.clone()),
    }
}

/// Refuse what no supported family does, naming the field: mixture-of-experts, vision towers,
/// sliding-window attention, non-SiLU MLPs. Checked before the architecture so that e.g. a
/// Qwen3-MoE or Qwen2-VL config says why rather than only "unsupported architecture".
fn refuse_unsupported_features(r: &Reader<'_>) -> Result<(), ConfigError> {
    for field in ["vision_config", "vision_tower"] {
        if let Some(v) = r.get(field) {
            let shown = if v.is_object() {
                Value::from("{...}")
            } else {
                v.clone()
            };
            return Err(r.bad(field, &shown, "vision models are not supported"));
        }
    }
    for field in [
        "num_experts",
        "num_local_experts",
        "n_routed_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
    ] {
        if let Some(v) = r.get(field) {
            if v.as_u64() != Some(0) {
                return Err(r.bad(field, v, "mixture-of-experts models are not supported"));
            }
        }
    }
    if r.bool_opt("use_sliding_window")? == Some(true) {
        return Err(r.bad(
            "use_sliding_window",
            &Value::Bool(true),
            "sliding-window attention is not supported",
        ));
    }
    if let Some(t) = r.get("layer_types") {
        let full = t
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_str() == Some("full_attention")));
        if !full {
            return Err(r.bad(
                "layer_types",
                t,
                "only full_attention layers are supported (no sliding-window layers)",
            ));
        }
    }
    Ok(())
}

impl ModelConfig {
    /// Read `dir/config.json`.
    pub fn load(dir: &Path) -> Result<ModelConfig, ConfigError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parse config.json text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ModelConfig, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let r = Reader { path, v: &v };
        refuse_unsupported_features(&r)?;
        let arch = r.arch()?;
        if arch == Arch::Mistral {
            if let Some(w) = r.get("sliding_window") {
                return Err(r.bad(
                    "sliding_window",
                    w,
                    "sliding-window attention is not supported (only configs with \"sliding_window\": null, like Mistral-7B-v0.3)",
                ));
            }
        }
        let hidden_size = r.usize_req("hidden_size")?;
        let num_heads = r.usize_req("num_attention_heads")?;
        let num_kv_heads = r.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
        if !num_heads.is_multiple_of(num_kv_heads) {
            return Err(r.bad(
                "num_key_value_heads",
                &Value::from(num_kv_heads),
                &format!("must divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match r.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_heads) {
                    return Err(r.bad(
                        "hidden_size",
                        &Value::from(hidden_size),
                        &format!("not divisible by num_attention_heads ({num_heads}) and no head_dim given"),
                    ));
                }
                hidden_size / num_heads
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(r.bad(
                "head_dim",
                &Value::from(head_dim),
                "RoPE needs an even head_dim",
            ));
        }
        if let Some(act) = r.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(r.bad("hidden_act", act, "only silu is supported"));
            }
        }
        if r.bool_opt("mlp_bias")? == Some(true) {
            return Err(r.bad(
                "mlp_bias",
                &Value::Bool(true),
                "MLP biases are not supported",
            ));
        }
        let attention_bias = r.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Qwen3 => (attention_bias, false),
            Arch::Llama => (attention_bias, attention_bias),
            // transformers' Mistral layers have no biases whatever the config says.
            Arch::Mistral => (false, false),
        };
        // transformers 5 nests rope settings in `rope_parameters`; older files use rope_theta + rope_scaling.
        let rope_params = r.get("rope_parameters");
        let rope_theta = match r.f64_opt("rope_theta")? {
            Some(t) => t,
            None => rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        if rope_theta <= 0.0 {
            return Err(r.bad("rope_theta", &Value::from(rope_theta), "must be positive"));
        }
        let max_position_embeddings = r.usize_opt("max_position_embeddings")?.unwrap_or(4096);
        let rope_scaling = match r.get("rope_scaling").or(rope_params) {
            None => RopeScaling::None,
            Some(obj) => RopeScaling::parse(obj, max_position_embeddings)
                .map_err(|(field, value, why)| r.bad(&field, &value, &why))?,
        };
        let rms_norm_eps = r.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
        let torch_dtype = r
            .get("torch_dtype")
            .or_else(|| r.get("dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: r.usize_req("intermediate_size")?,
            num_layers: r.usize_req("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: r.usize_req("vocab_size")?,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: r.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: arch == Arch::Qwen3,
            bos_token_id: r.ids("bos_token_id")?.first().copied(),
            eos_token_ids: r.ids("eos_token_id")?,
            torch_dtype,
        };
        Ok(cfg)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies (head_dim / 2 of them), with scaling applied, in f64.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        self.rope_scaling.inv_freq(self.rope_theta, self.head_dim)
    }

    /// What RoPE's cos and sin are multiplied by (YaRN's attention factor, else 1).
    pub fn rope_attention_factor(&self) -> f64 {
        self.rope_scaling.attention_factor()
    }

    /// The context length to serve: `requested` (SGLang's `--context-length`) or the config's
    /// max_position_embeddings. Longer than the config only with YaRN, up to its factor times
    /// the original length.
    pub fn context_length(&self, requested: Option<usize>) -> Result<usize, String> {
        let Some(n) = requested else {
            return Ok(self.max_position_embeddings);
        };
        let limit = self
            .rope_scaling
            .extended_context()
            .unwrap_or(0)
            .max(self.max_position_embeddings);
        if n == 0 {
            Err("--context-length 0: must be positive".into())
        } else if n > limit {
            let how = if limit > self.max_position_embeddings {
                format!("YaRN's factor × original_max_position_embeddings = {limit}")
            } else {
                "longer contexts need YaRN rope_scaling in config.json".into()
            };
            Err(format!(
                "--context-length {n} exceeds the model's max_position_embeddings ({}); {how}",
                self.max_position_embeddings
            ))
        } else {
            Ok(n)
        }
    }

    /// Write this configuration as a config.json value in the layout transformers 4.x writes.
    pub fn to_hf_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("architectures", Value::from(vec![self.arch.hf_name()]));
        put("model_type", Value::from(self.arch.model_type()));
        put("hidden_size", Value::from(self.hidden_size));
        put("intermediate_size", Value::from(self.intermediate_size));
        put("num_hidden_layers", Value::from(self.num_layers));
        put("num_attention_heads", Value::from(self.num_heads));
        put("num_key_value_heads", Value::from(self.num_kv_heads));
        put("head_dim", Value::from(self.head_dim));
        put("vocab_size", Value::from(self.vocab_size));
        put("rms_norm_eps", Value::from(self.rms_norm_eps));
        put("rope_theta", Value::from(self.rope_theta));
        put(
            "max_position_embeddings",
            Value::from(self.max_position_embeddings),
        );
        put("tie_word_embeddings", Value::from(self.tie_word_embeddings));
        put("hidden_act", Value::from("silu"));
        if matches!(self.arch, Arch::Llama | Arch::Qwen3) {
            put("attention_bias", Value::from(self.qkv_bias));
        }
        put("attention_dropout", Value::from(0.0));
        match self.arch {
            Arch::Llama => {}
            Arch::Mistral => put("sliding_window", Value::Null),
            Arch::Qwen2 | Arch::Qwen3 => put("use_sliding_window", Value::from(false)),
        }
        if let Some(b) = self.bos_token_id {
            put("bos_token_id", Value::from(b));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => put("eos_token_id", Value::from(*one)),
            many => put("eos_token_id", Value::from(many.to_vec())),
        }
        let scaling = self.rope_scaling.to_hf_json();
        put("rope_scaling", scaling);
        put(
            "torch_dtype",
            Value::from(self.torch_dtype.clone().unwrap_or_else(|| "float32".into())),
        );
        Value::Object(m)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
