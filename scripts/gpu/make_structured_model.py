#!/usr/bin/env python3
"""A servable random-weight Qwen3-0.6B for the structured-outputs benchmark (issue 20).

Usage: make_structured_model.py OUT_DIR [VOCAB]
Writes OUT_DIR/{config.json, model.safetensors} (transformers, real shapes, random bf16 weights)
and a byte-level BPE tokenizer.json of VOCAB tokens (default 32000) trained on the Python
standard library's sources, with Qwen's <|endoftext|> / <|im_end|> as specials. The constraint
masks walk this tokenizer's token trie, so mask time depends on its size; the model's 151936
logits are all masked (ids past the tokenizer are never allowed). Runs on the GPU machine.
"""
import glob
import json
import os
import sys
import sysconfig

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen3Config, Qwen3ForCausalLM

out = sys.argv[1]
vocab = int(sys.argv[2]) if len(sys.argv) > 2 else 32000
os.makedirs(out, exist_ok=True)
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))[:1500]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train(files, trainer)
tok.save(os.path.join(out, "tokenizer.json"))
eos = tok.token_to_id("<|im_end|>")
# ChatML, as Qwen's: the chat checks and the chat completions need a template.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|im_end|>", "bos_token": None, "chat_template": CHATML}, f)

torch.manual_seed(0)
cfg = Qwen3Config(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=eos,
)
Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval().save_pretrained(out)
with open(os.path.join(out, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": eos}, f)
print(f"model in {out}: tokenizer of {tok.get_vocab_size()} tokens, eos {eos}")
