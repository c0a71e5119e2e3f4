#!/usr/bin/env python3
"""Random-weight checkpoints of the served models' real shapes, and transformers' bf16 reference.

Usage:
  make_models.py PRESET OUT_DIR [--layers N] [--prompts 1,7,64,...]   checkpoint + reference
  make_models.py --reference-only OUT_DIR --prompts 32000,100          another reference set
  make_models.py --floor OUT.json CHECKPOINT_DIR                      copy-bandwidth floor

The checkpoint is written like the Hub's: a transformers-4-style config.json (rope_theta +
rope_scaling, exactly the published values but num_hidden_layers when --layers is given) and
sharded safetensors with model.safetensors.index.json, straight from GPU tensors (faster than
save_pretrained at 8B). Biases and norm weights are randomised too (transformers initialises
them to 0 and 1, which would test nothing). The reference for exec/tests/cuda_model.rs
(`reference()`, which scripts/gpu/make_reference.py imports too): reference/prompts.json,
reference/logits.safetensors ("logits" [prompts, vocab] f32 of the last position, bf16 model,
sdpa attention; "logits_f32" the same from the f32 copy of the weights) and reference/greedy.json (8 greedy tokens from generate). No downloads; runs on the GPU machine.
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
QWEN25_YARN = {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}


def llama(**kw):
    base = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                attention_bias=False, mlp_bias=False, rms_norm_eps=1e-5, rope_theta=500000.0,
                max_position_embeddings=131072, vocab_size=128256, bos_token_id=128000,
                eos_token_id=[128001, 128008, 128009], rope_scaling=LLAMA3_ROPE)
    base.update(kw)
    return base


def qwen2(**kw):
    base = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
                sliding_window=131072, use_sliding_window=False, bos_token_id=151643,
                eos_token_id=151645, rope_scaling=None)
    base.update(kw)
    base.setdefault("max_window_layers", base["num_hidden_layers"])
    return base


def qwen3(**kw):
    base = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_act="silu",
                attention_bias=False, rms_norm_eps=1e-6, rope_theta=1000000.0,
                max_position_embeddings=40960, vocab_size=151936, head_dim=128,
                sliding_window=None, use_sliding_window=False, bos_token_id=151643,
                eos_token_id=151645, rope_scaling=None)
    base.update(kw)
    base.setdefault("max_window_layers", base["num_hidden_layers"])
    return base


# The published config.json values of each model (shapes, rope, norms, ids).
PRESETS = {
    "llama3.1-8b": llama(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=False),
    "llama3.2-1b": llama(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         tie_word_embeddings=True,
                         rope_scaling=dict(LLAMA3_ROPE, factor=32.0)),
    "mistral-7b-v0.3": dict(architectures=["MistralForCausalLM"], model_type="mistral",
                            hidden_act="silu", hidden_size=4096, intermediate_size=14336,
                            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                            head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-5,
                            rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False,
                            vocab_size=32768, bos_token_id=1, eos_token_id=2),
    "qwen2.5-7b": qwen2(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                        tie_word_embeddings=False),
    "qwen2.5-7b-yarn": qwen2(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                             num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                             tie_word_embeddings=False, rope_scaling=QWEN25_YARN),
    "qwen2.5-0.5b": qwen2(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                          tie_word_embeddings=True),
    "qwen3-8b": qwen3(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "qwen3-8b-yarn": qwen3(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                           num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                           rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                         "original_max_position_embeddings": 32768}),
    "qwen3-32b": qwen3(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                       num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
}

SHARD_BYTES = 4 << 30


def arg(flag, default=None):
    if flag in sys.argv:
        return sys.argv[sys.argv.index(flag) + 1]
    return default


def rope_buffers(model):
    """The rotary embeddings' inv_freq buffers (f32 until a cast) as copies, to put back after a
    dtype cast. transformers computes them in f32 and reads them as f32 (from_pretrained leaves them so), but
    Module.to(dtype) rounds them too: in bf16 that is an angle error of about position x 2^-9 rad
    (0.4 rad at position 200), which made the references drift from the truth with prompt length
    (docs/exec-model.md, "Transformers references")."""
    return {n: b.detach().clone() for n, b in model.named_buffers() if n.endswith("inv_freq")}


def to_dtype(model, dtype, rope):
    """model.to(dtype) with the rotary buffers `rope` (from rope_buffers) kept in f32."""
    model.to(dtype)
    device = next(model.parameters()).device
    for name, t in rope.items():
        owner, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, t.to(device))
    return model


def build(cfg_dict, out):
    from transformers import AutoConfig, AutoModelForCausalLM
    os.makedirs(out, exist_ok=True)
    cfg_dict = dict(cfg_dict, torch_dtype="bfloat16")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    cfg = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    torch.set_default_dtype(torch.float32)
    model.doppel_rope = rope_buffers(model)
    model = to_dtype(model, torch.bfloat16, model.doppel_rope)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.5)
            elif "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


def save_sharded(model, out, tied):
    t0 = time.time()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if not (tied and k == "lm_head.weight") and "rotary_emb" not in k}
    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * sd[k].element_size()
        if cur and size + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = sd[k]
        size += nbytes
    shards.append(cur)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.cpu() for k, v in shard.items()}, os.path.join(out, name),
                  metadata={"format": "pt"})
        for k, v in shard.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    print(f"{out}: {total / 1e9:.2f} GB in {len(shards)} shards, {time.time() - t0:.1f} s")


@torch.no_grad()
def last_logits(model, prompt):
    ids = torch.tensor([prompt], device="cuda")
    try:
        return model(ids, logits_to_keep=1).logits[0, -1].float()
    except TypeError:
        return model(ids).logits[0, -1].float()


@torch.no_grad()
def reference(model, out, lengths, vocab):
    rope = getattr(model, "doppel_rope", None) or rope_buffers(model)
    assert all(t.dtype == torch.float32 for t in rope.values()), "rope buffers were rounded"
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    logits, greedy = [], []
    for p in prompts:
        ids = torch.tensor([p], device="cuda")
        last = last_logits(model, p)
        logits.append(last.cpu())
        gen = model.generate(ids, max_new_tokens=8, do_sample=False,
                             attention_mask=torch.ones_like(ids), pad_token_id=0)
        greedy.append(gen[0, len(p):].tolist())
    tensors = {"logits": torch.stack(logits).contiguous()}
    # The same weights in f32 (bf16 -> f32 is exact): the truth both bf16 forwards are measured
    # against, since transformers' own bf16 logits sit 1-3e-2 from it on deep random models
    # (docs/exec-model.md). At 8B the f32 copy takes 32 GB; a 32k prompt's f32 attention runs
    # in sdpa's memory-efficient kernel. If it does not fit the reference has no truth and the
    # check falls back to transformers' bf16 logits.
    try:
        to_dtype(model, torch.float32, rope)
        tensors["logits_f32"] = torch.stack([last_logits(model, p).cpu() for p in prompts])
    except torch.cuda.OutOfMemoryError as e:
        print(f"{out}: no f32 reference ({str(e).splitlines()[0]})")
    to_dtype(model, torch.bfloat16, rope)
    torch.cuda.empty_cache()
    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    save_file(tensors, os.path.join(ref, "logits.safetensors"))
    with open(os.path.join(ref, "prompts.json"), "w") as f:
        json.dump(prompts, f)
    with open(os.path.join(ref, "greedy.json"), "w") as f:
        json.dump(greedy, f)
    print(f"{out}: reference for prompts of {lengths} tokens")


def floor(out_json, ckpt):
    """Device copy bandwidth (bytes read + written per second) and the weight-read floor."""
    n = 4 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(10):
        b.copy_(a)
    e.record()
    torch.cuda.synchronize()
    bw = 2 * n * 10 / (s.elapsed_time(e) / 1e3)
    with open(os.path.join(ckpt, "model.safetensors.index.json")) as f:
        wbytes = json.load(f)["metadata"]["total_size"]
    res = {"gpu": torch.cuda.get_device_name(), "copy_bandwidth_gb_s": bw / 1e9,
           "weight_bytes": wbytes, "weight_read_floor_ms": wbytes / bw * 1e3}
    with open(out_json, "w") as f:
        json.dump(res, f, indent=1)
    print(res)


def main():
    if "--floor" in sys.argv:
        floor(arg("--floor"), sys.argv[-1])
        return
    lengths = [int(x) for x in arg("--prompts", "1,7,64,200,130,33").split(",")]
    if "--reference-only" in sys.argv:
        out = arg("--reference-only")
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16,
                                                     attn_implementation="sdpa").cuda().eval()
        reference(model, out, lengths, model.config.vocab_size)
        return
    preset, out = sys.argv[1], sys.argv[2]
    cfg = dict(PRESETS[preset])
    if arg("--layers"):
        cfg["num_hidden_layers"] = int(arg("--layers"))
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = cfg["num_hidden_layers"]
    t0 = time.time()
    model = build(cfg, out)
    print(f"{preset}: built in {time.time() - t0:.1f} s")
    save_sharded(model, out, cfg["tie_word_embeddings"])
    reference(model, out, lengths, cfg["vocab_size"])


if __name__ == "__main__":
    main()
