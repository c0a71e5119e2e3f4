#!/usr/bin/env bash
# Regenerates the tiny checkpoints under exec/tests/fixtures/ (deterministic: same bytes every run).
# Reference logits are then made with tools/hf_reference.py wherever torch + transformers exist.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
B=target/release/doppel
F=exec/tests/fixtures
common=(--intermediate 96 --tokenizer-vocab 320 --dtype bf16)
rm -rf "$F/tiny-qwen3" "$F/tiny-llama" "$F/tiny-qwen2" "$F/tiny-mistral" "$F/tiny-qwen2-yarn"
$B exec make-model --arch qwen3 --out "$F/tiny-qwen3" "${common[@]}" --seed 11
$B exec make-model --arch llama --out "$F/tiny-llama" "${common[@]}" --seed 12 --shards 2
$B exec make-model --arch qwen2 --out "$F/tiny-qwen2" "${common[@]}" --seed 13 --hidden 48 --heads 3 --kv-heads 1
# Head dim 64 with 4 q heads per kv head, and YaRN over a 64-token original context (factor 4).
$B exec make-model --arch mistral --out "$F/tiny-mistral" "${common[@]}" --seed 14 --hidden 128 --heads 4 --kv-heads 1 --head-dim 64
$B exec make-model --arch qwen2 --out "$F/tiny-qwen2-yarn" "${common[@]}" --seed 15 --head-dim 32 --yarn 4:64
