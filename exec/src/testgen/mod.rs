//! Writes valid Hugging Face checkpoint directories with random weights and a small real BPE
//! tokenizer (trained here on shipped text), for tests and benchmarks without downloads.

use crate::model::config::{Arch, ModelConfig, RopeScaling};
use crate::model::weights::{tensor_specs, DType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, TokenizerImpl};

/// Named tensors: name -> (shape, f32 values).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Text the tiny tokenizers are trained on.
pub const CORPUS: &str = include_str!("corpus.txt");

/// ChatML template (Qwen style) used by the generated models.
pub const CHAT_TEMPLATE: &str = "{{ bos_token if add_bos_in_template else '' }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Special tokens of the generated tokenizers, in id order after the trained vocabulary.
pub const SPECIAL_TOKENS: [&str; 4] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
];

/// What to generate.
#[derive(Clone, Debug)]
pub struct TinySpec {
    /// Family.
    pub arch: Arch,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Trained tokenizer size (including the 256 byte tokens); at least 260.
    pub tokenizer_vocab: usize,
    /// config vocab_size; None = the tokenizer's size rounded up to a multiple of 16.
    pub vocab_size: Option<usize>,
    /// Share embedding and LM head.
    pub tie_word_embeddings: bool,
    /// config.json's attention_bias: Llama gets q/k/v and o biases, Qwen3 q/k/v biases (Qwen2
    /// always has q/k/v biases; Mistral never has any).
    pub attention_bias: bool,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// RoPE base.
    pub rope_theta: f64,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Stored dtype.
    pub dtype: DType,
    /// Number of safetensors files (1 = model.safetensors, more = sharded with an index).
    pub shards: usize,
    /// Weight seed.
    pub seed: u64,
}

impl TinySpec {
    /// A few-hundred-KB model of the given family: Qwen3 tied, Qwen2 tied, Llama untied with
    /// Llama 3 rope scaling (short original context so every scaling branch is exercised),
    /// Mistral untied with plain RoPE.
    pub fn tiny(arch: Arch) -> TinySpec {
        let llama = arch == Arch::Llama;
        let untied = matches!(arch, Arch::Llama | Arch::Mistral);
        TinySpec {
            arch,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
            tokenizer_vocab: 384,
            vocab_size: None,
            tie_word_embeddings: !untied,
            attention_bias: false,
            rope_scaling: if llama {
                RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 64.0,
                }
            } else {
                RopeScaling::None
            },
            rope_theta: if llama { 500_000.0 } else { 1_000_000.0 },
            max_position_embeddings: 2048,
            dtype: if llama { DType::F32 } else { DType::BF16 },
            shards: 1,
            seed: 7,
        }
    }
}

/// Writing a model directory failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Tokenizer training or saving failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The spec is inconsistent.
    #[error("bad spec: {0}")]
    Spec(String),
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GenError> {
    std::fs::write(path, bytes).map_err(|source| GenError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<(), GenError> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| GenError::Spec(e.to_string()))?;
    s.push('\n');
    write(path, s.as_bytes())
}

type TinyTokenizer =
    TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel>;

/// Train a byte-level BPE tokenizer on [`CORPUS`]; returns it and the id of each special token.
fn train_tokenizer(vocab: usize, add_bos: bool) -> Result<(TinyTokenizer, Vec<u32>), GenError> {
    let terr = |e: tokenizers::Error| GenError::Tokenizer(e.to_string());
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: TinyTokenizer = TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, CORPUS.lines().map(|l| format!("{l}\n")))
        .map_err(terr)?;
    // Specials come after the trained vocabulary, as in real checkpoints.
    tok.add_special_tokens(&specials);
    let ids: Vec<u32> = SPECIAL_TOKENS
        .iter()
        .map(|s| {
            tok.token_to_id(s)
                .ok_or_else(|| GenError::Tokenizer(format!("{s} missing")))
        })
        .collect::<Result<_, _>>()?;
    if add_bos {
        let bos = SPECIAL_TOKENS[3];
        let tp = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(GenError::Tokenizer)?
            .special_tokens(vec![(bos, ids[3])])
            .build()
            .map_err(|e| GenError::Tokenizer(e.to_string()))?;
        tok.with_post_processor(Some(PostProcessorWrapper::Template(tp)));
    }
    Ok((tok, ids))
}

/// Serialize tensors (name -> (shape, f32 values)) as safetensors bytes in `dtype`.
pub fn safetensors_bytes(tensors: &Tensors, dtype: DType) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    for (name, (shape, vals)) in tensors {
        let start = data.len();
        for &v in vals {
            match dtype {
                DType::F32 => data.extend_from_slice(&v.to_le_bytes()),
                DType::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                DType::BF16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            }
        }
        header.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// The model configuration a spec produces (vocab size needs the trained tokenizer's size).
fn config_for(spec: &TinySpec, tok_vocab: usize, ids: &[u32]) -> Result<ModelConfig, GenError> {
    let vocab_size = spec.vocab_size.unwrap_or(tok_vocab.div_ceil(16) * 16);
    if vocab_size < tok_vocab {
        return Err(GenError::Spec(format!(
            "vocab_size {vocab_size} is smaller than the tokenizer ({tok_vocab})"
        )));
    }
    if spec.num_kv_heads == 0
        || !spec.num_heads.is_multiple_of(spec.num_kv_heads)
        || !spec.head_dim.is_multiple_of(2)
    {
        return Err(GenError::Spec(
            "heads must be a multiple of kv heads and head_dim even".into(),
        ));
    }
    // Llama and Mistral: BOS-prefixed tokenizer, eps 1e-5.
    let llama = matches!(spec.arch, Arch::Llama | Arch::Mistral);
    Ok(ModelConfig {
        arch: spec.arch,
        hidden_size: spec.hidden_size,
        intermediate_size: spec.intermediate_size,
        num_layers: spec.num_layers,
        num_heads: spec.num_heads,
        num_kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        vocab_size,
        rms_norm_eps: if llama { 1e-5 } else { 1e-6 },
        rope_theta: spec.rope_theta,
        rope_scaling: spec.rope_scaling,
        max_position_embeddings: spec.max_position_embeddings,
        tie_word_embeddings: spec.tie_word_embeddings,
        qkv_bias: spec.arch == Arch::Qwen2
            || (spec.attention_bias && matches!(spec.arch, Arch::Qwen3 | Arch::Llama)),
        o_bias: spec.attention_bias && spec.arch == Arch::Llama,
        qk_norm: spec.arch == Arch::Qwen3,
        bos_token_id: Some(if llama { ids[3] } else { ids[0] }),
        eos_token_ids: if llama {
            vec![ids[0], ids[2]]
        } else {
            vec![ids[0]]
        },
        torch_dtype: Some(
            match spec.dtype {
                DType::F32 => "float32",
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
            }
            .into(),
        ),
    })
}

/// Random weights for `cfg`, scaled so activations and logits have useful spread.
fn random_tensors(cfg: &ModelConfig, seed: u64) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for spec in tensor_specs(cfg) {
        let n: usize = spec.shape.iter().product();
        let name = spec.name.as_str();
        let vals: Vec<f32> = if name.ends_with("norm.weight") || name.ends_with("layernorm.weight")
        {
            (0..n).map(|_| 1.0 + rng.gen_range(-0.2f32..0.2)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.gen_range(-0.1f32..0.1)).collect()
        } else if name == crate::model::weights::EMBED {
            (0..n).map(|_| rng.gen_range(-1f32..1.0)).collect()
        } else {
            let fan_in = spec.shape[1] as f32;
            let mut a = (3.0 / fan_in).sqrt();
            if name == crate::model::weights::LM_HEAD {
                a *= 3.0;
            }
            (0..n).map(|_| rng.gen_range(-a..a)).collect()
        };
        out.insert(spec.name, (spec.shape, vals));
    }
    out
}

/// Write a complete checkpoint directory: config.json, generation_config.json, weights,
/// tokenizer.json, tokenizer_config.json. Returns the model configuration written.
pub fn write_model(dir: &Path, spec: &TinySpec) -> Result<ModelConfig, GenError> {
    if spec.tokenizer_vocab < 260 || spec.shards == 0 {
        return Err(GenError::Spec(
            "tokenizer_vocab must be at least 260 and shards at least 1".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|source| GenError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let llama = matches!(spec.arch, Arch::Llama | Arch::Mistral);
    let (tok, ids) = train_tokenizer(spec.tokenizer_vocab, llama)?;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, false)
        .map_err(|e| GenError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    let cfg = config_for(spec, tok.get_vocab_size(true), &ids)?;
    write_json(&dir.join("config.json"), &cfg.to_hf_json())?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_ids,
            "do_sample": true,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
        }),
    )?;
    let template =
        CHAT_TEMPLATE.replace("add_bos_in_template", if llama { "true" } else { "false" });
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": if llama { SPECIAL_TOKENS[3] } else { SPECIAL_TOKENS[0] },
            "eos_token": if llama { SPECIAL_TOKENS[0] } else { SPECIAL_TOKENS[2] },
            "pad_token": SPECIAL_TOKENS[0],
            "model_max_length": cfg.max_position_embeddings,
            "chat_template": template,
        }),
    )?;
    let tensors = random_tensors(&cfg, spec.seed);
    if spec.shards == 1 {
        write(
            &dir.join("model.safetensors"),
            &safetensors_bytes(&tensors, spec.dtype),
        )?;
    } else {
        // Round-robin tensors over shards in name order, like sharded exports spread layers.
        let mut parts: Vec<Tensors> = vec![BTreeMap::new(); spec.shards];
        let mut weight_map = serde_json::Map::new();
        let file_name = |i: usize| format!("model-{:05}-of-{:05}.safetensors", i + 1, spec.shards);
        for (i, (name, t)) in tensors.into_iter().enumerate() {
            let s = i % spec.shards;
            weight_map.insert(name.clone(), Value::from(file_name(s)));
            parts[s].insert(name, t);
        }
        let mut total = 0usize;
        for (i, part) in parts.iter().enumerate() {
            let bytes = safetensors_bytes(part, spec.dtype);
            total += bytes.len();
            write(&dir.join(file_name(i)), &bytes)?;
        }
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    Ok(cfg)
}
