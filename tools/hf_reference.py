#!/usr/bin/env python3
"""Independent reference for doppel's CPU backend: load a Hugging Face checkpoint directory with
transformers + torch (f32, eager attention, CPU) and write, for fixed prompts, the logits of every
prompt position and a greedy continuation.

Usage: python3 tools/hf_reference.py MODEL_DIR [MODEL_DIR ...]
Writes MODEL_DIR/reference.json and MODEL_DIR/reference-logits.bin (little-endian f32, rows of
vocab_size floats, at the offsets reference.json gives). exec/tests/hf_reference.rs compares.
"""
import json
import struct
import sys
import traceback

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

GREEDY_TOKENS = 12
TEXT_PROMPTS = [
    "The engine streams each piece of text",
    "What is the capital of France? Paris is",
]
CHAT = [{"role": "user", "content": "How many legs does a spider have?"}]


def id_prompt(vocab_limit):
    # Fixed ids spread over the trained vocabulary (no special tokens).
    return [(i * 37 + 11) % vocab_limit for i in range(19)]


def load_model(d):
    kw = dict(attn_implementation="eager")
    try:
        return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kw)
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, **kw)


@torch.no_grad()
def all_logits(model, ids):
    out = model(torch.tensor([ids], dtype=torch.long))
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, ids, n):
    # Full recompute each step: the simplest correct decode, independent of any KV cache.
    seq = list(ids)
    for _ in range(n):
        seq.append(int(all_logits(model, seq)[-1].argmax()))
    return seq[len(ids):]


def run(d):
    torch.manual_seed(0)
    model = load_model(d).eval()
    cfg = model.config
    vocab = cfg.vocab_size
    ref = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vocab_size": vocab,
        "greedy_tokens": GREEDY_TOKENS,
        "prompts": [],
    }
    prompts = [{"name": "ids", "ids": id_prompt(min(vocab, 320))}]
    try:
        # tokenizer.json as written, like transformers 4's PreTrainedTokenizerFast: transformers 5's
        # AutoTokenizer rebuilds the pipeline for some model types (Qwen2's own pre-tokenizer regex).
        with open(f"{d}/tokenizer_config.json") as f:
            tc = json.load(f)
        specials = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token") if tc.get(k)}
        tok = PreTrainedTokenizerFast(tokenizer_file=f"{d}/tokenizer.json", **specials)
        tok.chat_template = tc.get("chat_template")
        for i, t in enumerate(TEXT_PROMPTS):
            prompts.append({"name": f"text{i}", "text": t, "add_special_tokens": True,
                            "ids": tok(t, add_special_tokens=True)["input_ids"]})
        chat_text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        prompts.append({"name": "chat", "chat": CHAT, "text": chat_text, "add_special_tokens": False,
                        "ids": tok(chat_text, add_special_tokens=False)["input_ids"]})
    except Exception:  # recorded so the Rust test reports it instead of silently skipping
        ref["hf_tokenizer_error"] = traceback.format_exc()
    blob = bytearray()
    for p in prompts:
        logits = all_logits(model, p["ids"])
        p["logits_offset"] = len(blob) // 4
        p["rows"] = logits.shape[0]
        for row in logits.tolist():
            blob += struct.pack(f"<{len(row)}f", *row)
        p["greedy"] = greedy(model, p["ids"], GREEDY_TOKENS)
        ref["prompts"].append(p)
    with open(f"{d}/reference-logits.bin", "wb") as f:
        f.write(blob)
    with open(f"{d}/reference.json", "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"{d}: {len(prompts)} prompts, {len(blob)} bytes of logits, greedy {[p['greedy'] for p in prompts]}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for d in sys.argv[1:]:
        run(d)
