//! Tensor-parallel sharding as SGLang and vLLM do it, as plain data shared by every backend.
//!
//! Column-parallel (split by output features, the rows of an [out, in] matrix): q, k, v (and
//! their biases), gate, up. Row-parallel (split by input features, the columns): o and down,
//! each followed by an all-reduce of the partial sums (their biases are added once, after it).
//! KV heads are split across ranks, so each rank's KV cache holds only its heads. Embedding and
//! LM head are split by vocabulary: the embedding lookup is all-reduced (rows outside a rank's
//! range contribute zeros) and the LM head's logits are gathered in rank order for sampling.
//! Norms (including the per-head q/k norms) are replicated.

use super::config::ModelConfig;
use std::ops::Range;

/// This rank's place in a tensor-parallel group of `size` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0..size.
    pub rank: usize,
    /// Ranks in the group (1: no parallelism).
    pub size: usize,
}

/// A model that cannot be split `size` ways.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TpError {
    /// A TP size of zero.
    #[error("tensor-parallel size must be at least 1 (got 0)")]
    ZeroSize,
    /// A config.json field that the TP size does not divide.
    #[error(
        "tensor-parallel size {size} does not divide config.json's {field} ({value}); \
         choose a TP size that divides it"
    )]
    NotDivisible {
        /// The config.json field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The TP size asked for.
        size: usize,
    },
}

/// How one weight of a rank is cut from the full checkpoint tensor (shape [out, in], or [out]
/// for vectors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    /// The whole tensor.
    Replicated,
    /// Output features (rows) in this range.
    Rows(Range<usize>),
    /// Input features (columns) in this range.
    Cols(Range<usize>),
}

/// The tensors of a decoder layer (and the model's ends), for [`Shard::split`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// q_proj weight or bias.
    Q,
    /// k_proj or v_proj weight or bias.
    Kv,
    /// o_proj weight.
    O,
    /// gate_proj or up_proj weight.
    GateUp,
    /// down_proj weight.
    Down,
    /// Embedding or LM head ([vocab, hidden]).
    Vocab,
    /// Norm weights, o_proj's bias, anything added after an all-reduce.
    Replicated,
}

impl Shard {
    /// The only rank of an unsplit model.
    pub const SOLE: Shard = Shard { rank: 0, size: 1 };

    /// Every rank of a group of `size`, after checking that `cfg` splits that many ways.
    pub fn group(cfg: &ModelConfig, size: usize) -> Result<Vec<Shard>, TpError> {
        check(cfg, size)?;
        Ok((0..size).map(|rank| Shard { rank, size }).collect())
    }

    /// This rank's even share of `n` items (n divisible by size, checked by [`check`]).
    fn even(&self, n: usize) -> Range<usize> {
        let per = n / self.size;
        self.rank * per..(self.rank + 1) * per
    }

    /// Query heads of this rank.
    pub fn heads(&self, cfg: &ModelConfig) -> Range<usize> {
        self.even(cfg.num_heads)
    }

    /// KV heads of this rank.
    pub fn kv_heads(&self, cfg: &ModelConfig) -> Range<usize> {
        self.even(cfg.num_kv_heads)
    }

    /// MLP intermediate features of this rank.
    pub fn inter(&self, cfg: &ModelConfig) -> Range<usize> {
        self.even(cfg.intermediate_size)
    }

    /// Vocabulary rows of this rank: ceil(vocab / size) each, the last rank takes the rest.
    pub fn vocab(&self, cfg: &ModelConfig) -> Range<usize> {
        let per = cfg.vocab_size.div_ceil(self.size);
        let start = (self.rank * per).min(cfg.vocab_size);
        start..((self.rank + 1) * per).min(cfg.vocab_size)
    }

    /// How this rank cuts `part`.
    pub fn split(&self, cfg: &ModelConfig, part: Part) -> Split {
        if self.size == 1 {
            return Split::Replicated;
        }
        let hd = cfg.head_dim;
        let scale = |r: Range<usize>| r.start * hd..r.end * hd;
        match part {
            Part::Q => Split::Rows(scale(self.heads(cfg))),
            Part::Kv => Split::Rows(scale(self.kv_heads(cfg))),
            Part::O => Split::Cols(scale(self.heads(cfg))),
            Part::GateUp => Split::Rows(self.inter(cfg)),
            Part::Down => Split::Cols(self.inter(cfg)),
            Part::Vocab => Split::Rows(self.vocab(cfg)),
            Part::Replicated => Split::Replicated,
        }
    }
}

impl Shard {
    /// The shapes this rank computes with: `cfg` with its query heads, KV heads and MLP width
    /// cut to this rank's share (hidden size, head width and vocabulary unchanged). A backend
    /// that runs the whole-model code on a shard builds its buffers from this.
    pub fn local_config(&self, cfg: &ModelConfig) -> ModelConfig {
        ModelConfig {
            num_heads: self.heads(cfg).len(),
            num_kv_heads: self.kv_heads(cfg).len(),
            intermediate_size: self.inter(cfg).len(),
            ..cfg.clone()
        }
    }

    /// Whether this rank adds its row-parallel partial sums (o and down) onto the residual
    /// stream (beta = 1) or writes them alone (beta = 0): rank 0 adds, the others write, so
    /// one all-reduce of the residual buffer gives residual + the sum of every rank's partial
    /// on every rank, and the GEMM epilogues that add the residual stay fused.
    pub fn adds_residual(&self) -> bool {
        self.rank == 0
    }
}

/// Check that `cfg` splits `size` ways: attention heads, KV heads and the MLP width must divide.
pub fn check(cfg: &ModelConfig, size: usize) -> Result<(), TpError> {
    if size == 0 {
        return Err(TpError::ZeroSize);
    }
    for (field, value) in [
        ("num_attention_heads", cfg.num_heads),
        ("num_key_value_heads", cfg.num_kv_heads),
        ("intermediate_size", cfg.intermediate_size),
    ] {
        if value % size != 0 {
            return Err(TpError::NotDivisible { field, value, size });
        }
    }
    Ok(())
}

impl Split {
    /// Cut `data` (row-major, `in_dim` columns; 1 for vectors) to this rank's part.
    pub fn cut<T: Copy>(&self, data: &[T], in_dim: usize) -> Vec<T> {
        match self {
            Split::Replicated => data.to_vec(),
            Split::Rows(r) => data[r.start * in_dim..r.end * in_dim].to_vec(),
            Split::Cols(c) => data
                .chunks_exact(in_dim)
                .flat_map(|row| row[c.clone()].iter().copied())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny_config() -> ModelConfig {
        let json = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "vocab_size": 301, "rms_norm_eps": 1e-6,
          "rope_theta": 10000.0, "max_position_embeddings": 512, "tie_word_embeddings": true,
          "hidden_act": "silu", "torch_dtype": "bfloat16"}"#;
        ModelConfig::parse(json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn column_and_row_cuts_take_the_rank_slice() {
        // [3 rows, 4 cols] = 0..12.
        let m: Vec<u32> = (0..12).collect();
        assert_eq!(Split::Rows(1..2).cut(&m, 4), vec![4, 5, 6, 7]);
        assert_eq!(Split::Cols(2..4).cut(&m, 4), vec![2, 3, 6, 7, 10, 11]);
        assert_eq!(Split::Replicated.cut(&m, 4), m);
    }

    #[test]
    fn ranks_cover_every_head_and_vocab_row_exactly_once() {
        let cfg = tiny_config();
        for size in [1, 2] {
            let g = Shard::group(&cfg, size).unwrap();
            let mut vocab = Vec::new();
            let mut heads = Vec::new();
            for s in &g {
                vocab.extend(s.vocab(&cfg));
                heads.extend(s.heads(&cfg));
            }
            assert_eq!(vocab, (0..cfg.vocab_size).collect::<Vec<_>>());
            assert_eq!(heads, (0..cfg.num_heads).collect::<Vec<_>>());
        }
    }

    #[test]
    fn sizes_that_do_not_divide_name_the_field() {
        let mut cfg = tiny_config();
        cfg.num_heads = 6;
        cfg.num_kv_heads = 3;
        let e = check(&cfg, 2).unwrap_err();
        assert_eq!(
            e,
            TpError::NotDivisible {
                field: "num_key_value_heads",
                value: 3,
                size: 2
            }
        );
        assert!(e.to_string().contains("num_key_value_heads (3)"));
        assert_eq!(check(&cfg, 0), Err(TpError::ZeroSize));
    }

    /// config.json of a real model's shapes: (name, hidden, inter, heads, kv heads, vocab).
    fn real(name: &str) -> ModelConfig {
        let (arch, h, i, nq, nk, v, tie) = match name {
            "Qwen3-0.6B" => ("Qwen3ForCausalLM", 1024, 3072, 16, 8, 151936, true),
            "Qwen3-8B" => ("Qwen3ForCausalLM", 4096, 12288, 32, 8, 151936, false),
            "Llama-3.1-8B" => ("LlamaForCausalLM", 4096, 14336, 32, 8, 128256, false),
            _ => unreachable!(),
        };
        let json = format!(
            r#"{{"architectures": ["{arch}"], "hidden_size": {h}, "intermediate_size": {i},
              "num_hidden_layers": 2, "num_attention_heads": {nq}, "num_key_value_heads": {nk},
              "head_dim": 128, "vocab_size": {v}, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
              "max_position_embeddings": 4096, "tie_word_embeddings": {tie},
              "hidden_act": "silu", "torch_dtype": "bfloat16"}}"#
        );
        ModelConfig::parse(&json, Path::new("config.json")).unwrap()
    }

    fn range(s: Split) -> Range<usize> {
        match s {
            Split::Rows(r) | Split::Cols(r) => r,
            Split::Replicated => panic!("a split part came back whole"),
        }
    }

    #[test]
    fn real_shapes_split_2_4_8_ways_into_disjoint_covering_slices() {
        for name in ["Qwen3-0.6B", "Qwen3-8B", "Llama-3.1-8B"] {
            let cfg = real(name);
            for size in [2, 4, 8] {
                let g = Shard::group(&cfg, size).unwrap();
                let mut seen: [Vec<usize>; 5] = Default::default();
                for s in &g {
                    let parts = [Part::Q, Part::Kv, Part::O, Part::GateUp, Part::Down];
                    for (k, p) in parts.into_iter().enumerate() {
                        seen[k].extend(range(s.split(&cfg, p)));
                    }
                    // The rank's own shapes: every width cut by `size`, the rest whole.
                    let local = s.local_config(&cfg);
                    assert_eq!(local.q_dim() * size, cfg.q_dim(), "{name} tp{size}");
                    assert_eq!(local.kv_dim() * size, cfg.kv_dim());
                    assert_eq!(local.intermediate_size * size, cfg.intermediate_size);
                    assert_eq!(
                        local.num_heads / local.num_kv_heads,
                        cfg.num_heads / cfg.num_kv_heads
                    );
                    assert_eq!(
                        (local.hidden_size, local.vocab_size),
                        (cfg.hidden_size, cfg.vocab_size)
                    );
                    assert_eq!(s.split(&cfg, Part::Replicated), Split::Replicated);
                }
                let full = [
                    cfg.q_dim(),
                    cfg.kv_dim(),
                    cfg.q_dim(),
                    cfg.intermediate_size,
                    cfg.intermediate_size,
                ];
                for (k, n) in full.into_iter().enumerate() {
                    assert_eq!(
                        seen[k],
                        (0..n).collect::<Vec<_>>(),
                        "{name} tp{size} part {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn rank_slices_of_real_models_are_the_sglang_ones() {
        let q8 = real("Qwen3-8B");
        let r1 = Shard { rank: 1, size: 4 };
        assert_eq!(r1.split(&q8, Part::Q), Split::Rows(1024..2048));
        assert_eq!(r1.split(&q8, Part::Kv), Split::Rows(256..512));
        assert_eq!(r1.split(&q8, Part::O), Split::Cols(1024..2048));
        assert_eq!(r1.split(&q8, Part::GateUp), Split::Rows(3072..6144));
        assert_eq!(r1.split(&q8, Part::Down), Split::Cols(3072..6144));
        let llama = real("Llama-3.1-8B");
        let r7 = Shard { rank: 7, size: 8 };
        assert_eq!(r7.split(&llama, Part::Kv), Split::Rows(896..1024));
        assert_eq!(r7.split(&llama, Part::GateUp), Split::Rows(12544..14336));
        let q06 = real("Qwen3-0.6B");
        let r0 = Shard { rank: 0, size: 2 };
        assert_eq!(r0.split(&q06, Part::Q), Split::Rows(0..1024));
        assert_eq!(r0.split(&q06, Part::Kv), Split::Rows(0..512));
        assert_eq!(r0.split(&q06, Part::Down), Split::Cols(0..1536));
        // One rank: every part whole.
        assert_eq!(Shard::SOLE.split(&q06, Part::Q), Split::Replicated);
        assert_eq!(Shard::SOLE.local_config(&q06), q06);
    }

    #[test]
    fn only_rank_0_adds_the_residual() {
        let beta: Vec<bool> = (0..4)
            .map(|rank| Shard { rank, size: 4 }.adds_residual())
            .collect();
        assert_eq!(beta, vec![true, false, false, false]);
        assert!(Shard::SOLE.adds_residual());
    }

    #[test]
    fn real_models_refuse_sizes_past_their_kv_heads() {
        let e = check(&real("Qwen3-8B"), 16).unwrap_err();
        assert_eq!(
            e,
            TpError::NotDivisible {
                field: "num_key_value_heads",
                value: 8,
                size: 16
            }
        );
        assert!(check(&real("Llama-3.1-8B"), 3).is_err());
    }
}
