#!/usr/bin/env python3
"""Random-weight Qwen3-0.6B checkpoint (real shapes) and transformers reference logits.

Usage: make_reference.py OUT_DIR
Writes OUT_DIR/{config.json, model.safetensors, ...} via save_pretrained, plus
OUT_DIR/reference/prompts.json (token id lists) and OUT_DIR/reference/logits.safetensors
(tensor "logits": [num_prompts, vocab] f32, the last position's logits of each prompt from the
bf16 model) and OUT_DIR/reference/greedy.json (8 greedy tokens per prompt from HF generate).
Runs on the GPU machine (torch + transformers, no downloads).
"""
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from make_models import reference, rope_buffers, to_dtype  # this folder: the reference files' one writer

out = sys.argv[1]
torch.manual_seed(0)
cfg = Qwen3Config(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151645,
)
model = Qwen3ForCausalLM(cfg)
model.doppel_rope = rope_buffers(model)
model = to_dtype(model.cuda(), torch.bfloat16, model.doppel_rope).eval()
model.save_pretrained(out)

reference(model, out, [1, 7, 64, 200, 130, 33], cfg.vocab_size)
