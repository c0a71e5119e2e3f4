"""A random-weight checkpoint with a real model's config, for every engine alike (no downloads).

    python3 make_model.py NAME OUT_DIR [--no-weights]

NAME: qwen3-0.6b, llama-3.1-8b or qwen3-8b. Writes OUT_DIR/config.json (the model's published
config, with the ids of the dummy tokenizer's special tokens), generation_config.json (greedy,
no sampling defaults, so no engine reaches for top-k/top-p kernels), the dummy tokenizer
(dummy-tokenizer.tar.xz beside this file: a 32,000-token byte-level BPE plus <|endoftext|>,
<|im_start|>, <|im_end|>, so prompts are token ids below 32,000; see extend_vocab for the ids
above), and random bf16 weights
(model.safetensors, seed 0) through transformers' save_pretrained unless --no-weights (for a
peer's --load-format dummy). Runs on the GPU machine (torch + transformers there).
"""

import json
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
# Ids of the dummy tokenizer's special tokens (its tokenizer.json's added_tokens).
BOS, EOS = 32000, 32002

QWEN3_COMMON = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "head_dim": 128,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
    "torch_dtype": "bfloat16",
}

# The published config.json of each model (Hugging Face hub), less the token ids.
CONFIGS = {
    "qwen3-0.6b": dict(
        QWEN3_COMMON,
        hidden_size=1024,
        intermediate_size=3072,
        num_attention_heads=16,
        num_hidden_layers=28,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": dict(
        QWEN3_COMMON,
        hidden_size=4096,
        intermediate_size=12288,
        num_attention_heads=32,
        num_hidden_layers=36,
        max_window_layers=36,
        tie_word_embeddings=False,
    ),
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
    },
}


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def extend_vocab(path, vocab_size):
    """Give every id of the model's vocabulary a token: random weights emit any id, and an id the
    tokenizer lacks streams as empty text, which clients (bench_serving, doppel bench) do not
    count as a token, so TTFT and ITL would be wrong. Id k becomes the ASCII text `~k`: it decodes
    alone, like a real vocabulary's tokens, and no merge produces it."""
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    # the special tokens join the model's vocabulary under their own ids: `tokenizers` gives an
    # added token that the model lacks the next free id past the model's, which would move them
    for t in tok["added_tokens"]:
        vocab.setdefault(t["content"], t["id"])
    used = set(vocab.values())
    for k in range(vocab_size):
        if k not in used:
            text = f"~{k}"
            if text in vocab:
                sys.exit(f"{path}: token {text!r} already exists")
            vocab[text] = k
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)


def write_weights(out, name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n / 1e9:.2f} B parameters of random bf16 weights")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    if len(args) != 2 or args[0] not in CONFIGS or not flags <= {"--no-weights"}:
        sys.exit(__doc__ + f"\nmodels: {', '.join(CONFIGS)}")
    name, out = args
    os.makedirs(out, exist_ok=True)
    with tarfile.open(os.path.join(HERE, "dummy-tokenizer.tar.xz")) as t:
        t.extractall(out, filter="data")
    extend_vocab(os.path.join(out, "tokenizer.json"), CONFIGS[name]["vocab_size"])
    config = dict(CONFIGS[name], bos_token_id=BOS, eos_token_id=EOS)
    write_json(os.path.join(out, "config.json"), config)
    if "--no-weights" not in flags:
        write_weights(out, name)
    # Written last: save_pretrained rewrites both files in its own version's layout; the engines
    # read the published layout.
    write_json(os.path.join(out, "config.json"), config)
    write_json(
        os.path.join(out, "generation_config.json"),
        {"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": False},
    )
    print("wrote", out, sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
