#!/usr/bin/env bash
# On the GPU machine, from the repository root: tensor parallelism over NCCL (docs/cuda.md,
# "Tensor parallelism"). Correctness first, then timings.
#   BIN: folder with the release test executables and doppel (scripts/gpu/stage.sh puts them in
#        carry/bin; run with carry: ["carry"])
#   STAGES: which stages, in order (default below)
#   OUT: folder for logs (default /tmp/doppel-gpu-out)
# Stages:
#   reference  random-weight Qwen3-0.6B checkpoint + transformers logits (make_reference.py)
#   tp         exec/tests/cuda_tp.rs: one-rank NCCL round trip and one-rank group = plain model
#              (1 GPU); TP=2/4 logits within 2e-2 of TP=1 and equal greedy tokens (>= 2 GPUs)
#   model      exec/tests/cuda_model.rs: the TP=1 path after the change (logits vs transformers,
#              greedy tokens vs the CPU backend)
#   serve      >= 2 GPUs: `doppel exec serve --tp-size 2` on the Qwen3-0.6B checkpoint answers
#              the same greedy output_ids as --tp-size 1
#   bob        bench-one-batch at Qwen3-8B shapes (random weights) for TP 1, 2, 4 (those that
#              fit), with the all-reduce time per layer; a scaling table last
#   compare    (not in the default list) the TP=1 speed against a baseline binary
#              (carry/base/doppel, e.g. main's): scripts/gpu/compare-bob.sh on Qwen3-0.6B
# The exit status is non-zero if any correctness stage failed.
set -uo pipefail
BIN=${BIN:-carry/bin}
OUT=${OUT:-/tmp/doppel-gpu-out}
STAGES=${STAGES:-reference tp model serve bob}
mkdir -p "$OUT"
source "$(dirname "$0")/env.sh"
export PYTHONUNBUFFERED=1
# doppel sets it itself before NCCL starts; set here too for anything else on the machine.
export NCCL_NVLS_ENABLE=0
# cudarc loads libnccl.so (or .so.1/.9-.13), NCCL installs libnccl.so.2: link it.
if ! ldconfig -p | grep -q 'libnccl\.so '; then
    lib=$(ldconfig -p | awk '/libnccl\.so\.2 /{print $NF; exit}')
    [ -z "$lib" ] && lib=$(ls /usr/lib/x86_64-linux-gnu/libnccl.so.2 2>/dev/null)
    if [ -n "$lib" ]; then
        mkdir -p /tmp/doppel-nccl && ln -sf "$lib" /tmp/doppel-nccl/libnccl.so
        export LD_LIBRARY_PATH=/tmp/doppel-nccl:$LD_LIBRARY_PATH
        echo "NCCL: $lib linked as /tmp/doppel-nccl/libnccl.so"
    else
        echo "NCCL: no libnccl.so.2 found (the tp stages will fail naming it)"
    fi
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m >>"$OUT/gpu.txt" 2>&1
NGPU=$(nvidia-smi -L | wc -l)
echo "$NGPU GPU(s)"
status=0
REF=/tmp/qwen3-ref
PORT=${PORT:-30111}

# The reference checkpoint has no tokenizer: a word-level one over its whole vocabulary.
word_tokenizer() {
    [ -f "$REF/tokenizer.json" ] && return
    python3 - "$REF" <<'EOF'
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(151936)}, unk_token="t0"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.save(sys.argv[1] + "/tokenizer.json")
EOF
}

# Greedy output_ids of 3 prompts from `doppel exec serve --tp-size $1` on the reference model.
serve_ids() {
    local tp=$1
    "$BIN/doppel" exec serve --model "$REF" --device cuda --tp-size "$tp" --port "$PORT" \
        --cuda-graph-max-bs 16 >"$OUT/serve-tp$tp.log" 2>&1 &
    local srv=$!
    for _ in $(seq 180); do
        python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null && break
        kill -0 $srv 2>/dev/null || break
        sleep 1
    done
    python3 - "$PORT" <<'EOF'
import json, sys, urllib.request as u
port = sys.argv[1]
out = []
for r in range(3):
    ids = [(i * 31 + r * 17 + 3) % 30000 for i in range(20 + 9 * r)]
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}}
    req = u.Request(f"http://127.0.0.1:{port}/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    out.append(json.load(u.urlopen(req, timeout=60))["output_ids"])
print(json.dumps(out))
EOF
    local rc=$?
    kill $srv 2>/dev/null
    wait $srv 2>/dev/null
    grep -E "TP rank|tensor parallel|ready in" "$OUT/serve-tp$tp.log" >&2
    return $rc
}

# bench-one-batch at Qwen3-8B shapes (random weights) for one TP size, JSON to $OUT.
Q8=$(mktemp -d)
sed -e 's/"hidden_size": 1024/"hidden_size": 4096/' -e 's/"intermediate_size": 3072/"intermediate_size": 12288/' \
    -e 's/"num_hidden_layers": 28/"num_hidden_layers": 36/' -e 's/"num_attention_heads": 16/"num_attention_heads": 32/' \
    -e 's/"tie_word_embeddings": true/"tie_word_embeddings": false/' scripts/gpu/qwen3-0.6b/config.json >"$Q8/config.json"
bob() {
    local tp=$1
    timeout 240 "$BIN/doppel" exec bench-one-batch --model "$Q8" --random-weights --tp-size "$tp" \
        --batch-size 1 4 16 64 --input-len 128 --output-len 64 --json >"$OUT/bob-8b-tp$tp.json" 2>"$OUT/bob-8b-tp$tp.log"
    local rc=$?
    grep -E "TP rank|weights" "$OUT/bob-8b-tp$tp.log"
    return $rc
}

for s in $STAGES; do
    echo "=== $s ==="
    case $s in
    reference) timeout 110 python3 scripts/gpu/make_reference.py "$REF" 2>&1 | tee "$OUT/reference.log"; rc=${PIPESTATUS[0]} ;;
    tp) DOPPEL_HF_REF=$REF timeout 300 "$BIN/cuda_tp" --nocapture --test-threads=1 2>&1 | tee "$OUT/tp.log"; rc=${PIPESTATUS[0]} ;;
    model) DOPPEL_HF_REF=$REF timeout 150 "$BIN/cuda_model" --nocapture --test-threads=1 2>&1 | tee "$OUT/model.log"; rc=${PIPESTATUS[0]} ;;
    serve)
        rc=0
        if [ "$NGPU" -lt 2 ]; then echo "skipped: $NGPU GPU"; else
            word_tokenizer
            one=$(serve_ids 1) && two=$(serve_ids 2) || rc=1
            echo "tp 1: $one" | tee "$OUT/serve.txt"
            echo "tp 2: $two" | tee -a "$OUT/serve.txt"
            [ "$rc" = 0 ] && [ -n "$one" ] && [ "$one" = "$two" ] || rc=1
        fi ;;
    bob)
        rc=0
        for tp in 1 2 4; do
            [ "$tp" -le "$NGPU" ] || continue
            bob "$tp" || rc=1
        done
        python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
runs = {}
for tp in (1, 2, 4):
    p = f"{out}/bob-8b-tp{tp}.json"
    if os.path.exists(p) and os.path.getsize(p) > 0:
        runs[tp] = {r["batch_size"]: r for r in json.load(open(p))}
if not runs:
    sys.exit("no bench-one-batch results")
print("Qwen3-8B shapes, random weights, input 128, output 64 (rank 0's CUDA-event timings)")
print(f"{'tp':>3} {'batch':>5} | {'prefill ms':>10} {'decode ms':>10} {'decode tok/s':>12} | {'speedup':>7} {'efficiency':>10} | {'all-reduce us/layer':>19}")
for tp, rows in runs.items():
    for b, r in rows.items():
        base = runs.get(1, {}).get(b)
        sp = base["median_decode_latency_ms"] / r["median_decode_latency_ms"] if base else float("nan")
        ar = r.get("all_reduce_us_per_layer", 0.0)
        print(f"{tp:>3} {b:>5} | {r['prefill_latency_ms']:>10.3f} {r['median_decode_latency_ms']:>10.4f} "
              f"{r['median_decode_throughput_tok_s']:>12.0f} | {sp:>7.2f} {sp / tp:>10.2f} | {ar:>19.1f}")
EOF
        ;;
    compare) NEW="$BIN/doppel" OUT="$OUT" MODEL=$REF timeout 400 "$(dirname "$0")/compare-bob.sh" 2>&1 | tee "$OUT/compare.log"; rc=${PIPESTATUS[0]} ;;
    *) echo "unknown stage $s"; rc=1 ;;
    esac
    echo "=== $s: exit $rc ==="
    [ "$rc" != 0 ] && status=1
done
exit $status
