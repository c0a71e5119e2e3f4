//! Tests of config.rs: published configs, refusals, context length.
use super::*;

// Llama-3.1-8B's published config.json (shapes, llama3 rope scaling, three EOS ids).
const LLAMA3: &str = include_str!("../../../scripts/gpu/llama3.1-8b/config.json");

#[test]
fn parses_llama3() {
    let c = ModelConfig::parse(LLAMA3, Path::new("config.json")).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.kv_dim(), 1024);
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
    let f = c.rope_inv_freq();
    // Highest frequency untouched, lowest divided by the factor.
    assert_eq!(f[0], 1.0);
    let plain = 1.0 / 500000f64.powf(126.0 / 128.0);
    assert!((f[63] - plain / 8.0).abs() < 1e-15);
    // Round trip through our own writer.
    let back = ModelConfig::parse(&c.to_hf_json().to_string(), Path::new("x")).unwrap();
    assert_eq!(back, c);
}

#[test]
fn rejects_bad_input_naming_the_field() {
    let e = ModelConfig::parse(
        r#"{"architectures":["GemmaForCausalLM"]}"#,
        Path::new("m/config.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("m/config.json") && e.contains("GemmaForCausalLM"),
        "{e}"
    );
    let e = ModelConfig::parse(
        r#"{"architectures":["Qwen3ForCausalLM"],"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":3}"#,
        Path::new("c.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_key_value_heads"), "{e}");
    let e = ModelConfig::parse(
        r#"{"architectures":["Qwen3ForCausalLM"],"hidden_size":64}"#,
        Path::new("c.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_attention_heads"), "{e}");
}

#[test]
fn qwen_biases_and_norms() {
    let base = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100"#;
    let q2 = ModelConfig::parse(
        &format!(r#"{{"architectures":["Qwen2ForCausalLM"],{base}}}"#),
        Path::new("c"),
    )
    .unwrap();
    assert!(q2.qkv_bias && !q2.o_bias && !q2.qk_norm);
    let q3 = ModelConfig::parse(
        &format!(r#"{{"architectures":["Qwen3ForCausalLM"],"head_dim":32,{base}}}"#),
        Path::new("c"),
    )
    .unwrap();
    assert!(!q3.qkv_bias && q3.qk_norm && q3.head_dim == 32 && q3.q_dim() == 128);
}

const MISTRAL_V03: &str = r#"{"architectures": ["MistralForCausalLM"], "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "vocab_size": 32768}"#;

#[test]
fn parses_mistral_and_refuses_its_sliding_window() {
    let c = ModelConfig::parse(MISTRAL_V03, Path::new("config.json")).unwrap();
    assert_eq!(c.arch, Arch::Mistral);
    assert!(!c.qkv_bias && !c.o_bias && !c.qk_norm);
    assert_eq!((c.head_dim, c.num_heads / c.num_kv_heads), (128, 4));
    let back = ModelConfig::parse(&c.to_hf_json().to_string(), Path::new("x")).unwrap();
    assert_eq!(back, c);
    let v01 = MISTRAL_V03.replace(r#""sliding_window": null"#, r#""sliding_window": 4096"#);
    let e = ModelConfig::parse(&v01, Path::new("m/config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m/config.json") && e.contains("`sliding_window` = 4096"),
        "{e}"
    );
}

#[test]
fn refuses_moe_vision_and_sliding_layers_naming_the_field() {
    let base = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100"#;
    for (extra, field) in [
        (
            r#""architectures":["Qwen3MoeForCausalLM"],"num_experts":128"#,
            "num_experts",
        ),
        (
            r#""architectures":["MixtralForCausalLM"],"num_local_experts":8"#,
            "num_local_experts",
        ),
        (
            r#""architectures":["Qwen2VLForConditionalGeneration"],"vision_config":{"depth":32}"#,
            "vision_config",
        ),
        (
            r#""architectures":["Qwen2ForCausalLM"],"use_sliding_window":true"#,
            "use_sliding_window",
        ),
        (
            r#""architectures":["Qwen3ForCausalLM"],"layer_types":["full_attention","sliding_attention"]"#,
            "layer_types",
        ),
    ] {
        let e = ModelConfig::parse(&format!("{{{extra},{base}}}"), Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
    // Qwen's dense configs carry a window size that is off: accepted.
    let ok = format!(
        r#"{{"architectures":["Qwen2ForCausalLM"],"sliding_window":131072,"use_sliding_window":false,"layer_types":["full_attention","full_attention"],{base}}}"#
    );
    assert!(ModelConfig::parse(&ok, Path::new("c")).is_ok());
}

#[test]
fn context_length_below_or_above_with_yarn_only() {
    let mut c = ModelConfig::parse(MISTRAL_V03, Path::new("c")).unwrap();
    assert_eq!(c.context_length(None), Ok(32768));
    assert_eq!(c.context_length(Some(4096)), Ok(4096));
    let e = c.context_length(Some(65536)).unwrap_err();
    assert!(
        e.contains("--context-length 65536") && e.contains("YaRN"),
        "{e}"
    );
    assert!(c.context_length(Some(0)).is_err());
    c.rope_scaling = RopeScaling::parse(
        &serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
        32768,
    )
    .unwrap();
    assert_eq!(c.context_length(Some(131072)), Ok(131072));
    let e = c.context_length(Some(131073)).unwrap_err();
    assert!(e.contains("131072"), "{e}");
}
