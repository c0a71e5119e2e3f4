#!/usr/bin/env python3
"""Random-weight Qwen3-0.6B checkpoint (real shapes) and transformers reference logits.

Usage: make_reference.py OUT_DIR
Writes OUT_DIR/{config.json, model.safetensors, ...} via save_pretrained, plus
OUT_DIR/reference/prompts.json (token id lists) and OUT_DIR/reference/logits.safetensors
(tensor "logits": [num_prompts, vocab] f32, the last position's logits of each prompt from the
bf16 model) and OUT_DIR/reference/greedy.json (8 greedy tokens per prompt from HF generate).
Runs on the GPU machine (torch + transformers, no downloads).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

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
model = Qwen3ForCausalLM(cfg).to(torch.bfloat16).cuda().eval()
model.save_pretrained(out)

g = torch.Generator().manual_seed(1)
lengths = [1, 7, 64, 200, 130, 33]
prompts = [torch.randint(0, 151936, (n,), generator=g).tolist() for n in lengths]
logits = []
greedy = []
with torch.no_grad():
    for p in prompts:
        ids = torch.tensor([p], device="cuda")
        logits.append(model(ids).logits[0, -1].float().cpu())
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
        greedy.append(gen[0, len(p):].tolist())
ref = os.path.join(out, "reference")
os.makedirs(ref, exist_ok=True)
save_file({"logits": torch.stack(logits).contiguous()}, os.path.join(ref, "logits.safetensors"))
with open(os.path.join(ref, "prompts.json"), "w") as f:
    json.dump(prompts, f)
with open(os.path.join(ref, "greedy.json"), "w") as f:
    json.dump(greedy, f)
print(f"wrote {out}: {len(prompts)} prompts, lengths {lengths}")
