#!/usr/bin/env bash
# The served models on the GPU, in one device command from the repository root (issue 21):
#   tiny: CudaBackend == CpuBackend greedy tokens on tiny Llama, Mistral, Qwen3+YaRN, Qwen2 (biases);
#   archs: per architecture, a random-weight checkpoint of the real shapes (4 layers unless the
#      model is small: the layers repeat, the shapes are what differ) and the last-position logits
#      of 6 prompts in 4 batch mixes vs transformers (exec/tests/cuda_model.rs: against its f32
#      logits, at most 1.25 x its bf16 error), then the checkpoint served over HTTP
#      (scripts/gpu/serve_check.py: /generate, seeded sampling, completions, chat, streaming);
#   8b: Llama-3.1-8B at full size: the same check, then one 32000-token prompt (chunked prefill),
#      the copy-bandwidth floor, the GEMVs' row prefetch (cuda_bench) and bench-one-batch
#      1/4/16/64 at input 128 and 1024, output 64.
#   BIN: staged executables (scripts/gpu/stage.sh -> carry/bin); OUT: logs (default /tmp/doppel-models)
#   STAGES: subset of "tiny archs 8b" (default all); ARCHES: presets for stage archs; NCU8B=1:
#   stage 8b ends with ncu's per-kernel times of its b=1 decode (ncu-decode.sh, ncu_summary.py).
#   BASE_MODEL_TEST: an older build's cuda_model test executable (default none), e.g. carry/base/cuda_model:
#   stage archs also runs it on each checkpoint, reported beside ours, never failing the stage.
# Exit status non-zero if any correctness stage failed. Budget (H100): tiny ~0.5 min, archs ~3 min
# (measured; more with BASE_MODEL_TEST), 8b ~5 min (estimated): two device calls, STAGES="tiny archs" then
# STAGES=8b, to stay inside the 10-minute limit of one command.
set -uo pipefail
BIN=${BIN:-carry/bin}
OUT=${OUT:-/tmp/doppel-models}
W=${W:-/tmp/doppel-models-work}
mkdir -p "$OUT" "$W"
source "$(dirname "$0")/env.sh"
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-"tiny archs 8b"}
BASE_MODEL_TEST=${BASE_MODEL_TEST:-}
ARCHES=${ARCHES:-"llama3.2-1b:0 mistral-7b-v0.3:4 qwen2.5-0.5b:0 qwen2.5-7b:4 qwen2.5-7b-yarn:4 qwen3-8b:4 qwen3-32b:4"}
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"

hf_check() { # DIR LOG: the transformers comparison of exec/tests/cuda_model.rs on DIR
    DOPPEL_HF_REF=$1 timeout 300 "${BIN_TEST:-$BIN/cuda_model}" qwen3_logits_match_transformers --exact \
        --nocapture --test-threads=1 >"$2" 2>&1
    local rc=$?
    grep -E "rel err|worst|greedy agreement|panicked|error" "$2" | tail -40
    return $rc
}

serve_check() { # DIR NAME LOG: DIR served over HTTP by `doppel exec serve` (serve_check.py)
    local port=30123 pid t0=$SECONDS rc
    python3 scripts/gpu/serve_check.py tokenizer "$1" || return 1
    "$BIN/doppel" exec serve --model "$1" --device cuda --host 127.0.0.1 --port $port --seed 0 \
        --context-length 4096 >"$3.server" 2>&1 &
    pid=$!
    until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; do
        if ! kill -0 $pid 2>/dev/null || [ $((SECONDS - t0)) -gt 180 ]; then
            tail -20 "$3.server"; kill $pid 2>/dev/null; return 1
        fi
        sleep 1
    done
    grep -m1 "weights" "$3.server"
    timeout 120 python3 scripts/gpu/serve_check.py check $port "$2" >"$3" 2>&1
    rc=$?
    cat "$3"
    kill $pid; wait $pid 2>/dev/null
    return $rc
}

for s in $STAGES; do
    echo "=== $s ==="
    rc=0
    case $s in
    tiny)
        timeout 240 "$BIN/cuda_model" cuda_backend_matches_cpu_backend_on_each_architecture \
            --nocapture --test-threads=1 2>&1 | tee "$OUT/tiny.log"
        rc=${PIPESTATUS[0]} ;;
    archs)
        for a in $ARCHES; do
            name=${a%%:*} layers=${a##*:}
            d="$W/$name"
            extra=()
            [ "$layers" != 0 ] && extra=(--layers "$layers")
            echo "--- $name (layers: ${layers/#0/all}) ---"
            if timeout 240 python3 scripts/gpu/make_models.py "$name" "$d" "${extra[@]}" >"$OUT/make-$name.log" 2>&1; then
                hf_check "$d" "$OUT/check-$name.log" || { echo "$name: FAILED"; rc=1; }
                serve_check "$d" "$name" "$OUT/serve-$name.log" || { echo "$name served: FAILED"; rc=1; }
                # The same check by an older build's test (BASE_MODEL_TEST), for comparison
                # only: architectures it did not support yet fail at load.
                if [ -x "$BASE_MODEL_TEST" ]; then
                    echo "--- $name with $BASE_MODEL_TEST (comparison) ---"
                    BIN_TEST=$BASE_MODEL_TEST hf_check "$d" "$OUT/check-$name-base.log" || true
                fi
            else
                tail -20 "$OUT/make-$name.log"; echo "$name: checkpoint FAILED"; rc=1
            fi
            rm -rf "$d"
        done 2>&1 | tee "$OUT/archs.log"
        grep -q FAILED "$OUT/archs.log" && rc=1 ;;
    8b)
        d="$W/llama3.1-8b" l="$W/llama3.1-8b-32k"
        {
            timeout 300 python3 scripts/gpu/make_models.py llama3.1-8b "$d" || echo "llama3.1-8b checkpoint: FAILED"
            hf_check "$d" "$OUT/check-llama3.1-8b.log" || echo "llama3.1-8b: FAILED"
            serve_check "$d" llama3.1-8b "$OUT/serve-llama3.1-8b.log" || echo "llama3.1-8b served: FAILED"
            # The 32k prompt: same weights (links), its own reference.
            mkdir -p "$l" && ln -sf "$d"/*.safetensors "$d"/*.json "$l"/
            timeout 240 python3 scripts/gpu/make_models.py --reference-only "$l" --prompts 32000,100 &&
                { hf_check "$l" "$OUT/check-llama3.1-8b-32k.log" || echo "llama3.1-8b 32k: FAILED"; }
            python3 scripts/gpu/make_models.py --floor "$OUT/floor.json" "$d"
            # The GEMVs' weight-row prefetch at 0.6B and 8B shapes: whole rows, none, the rule.
            timeout 120 "$BIN/cuda_bench" bench_gemv_row_prefetch --ignored --nocapture \
                --test-threads=1 2>&1 | tee "$OUT/gemv-prefetch.log" | grep -A12 "row prefetch"
            for in_len in 128 1024; do
                timeout 150 "$BIN/doppel" exec bench-one-batch --model "$d" --batch-size 1 4 16 64 \
                    --input-len $in_len --output-len 64 --json >"$OUT/bob-8b-in$in_len.json" 2>"$OUT/bob-8b-in$in_len.err"
                tail -15 "$OUT/bob-8b-in$in_len.err"
                cat "$OUT/bob-8b-in$in_len.json"
            done
            # Per-kernel device time of the b=1 decode graph (where the time above the weights'
            # floor goes), when NCU8B=1: about 1-2 min.
            if [ "${NCU8B:-0}" = 1 ]; then
                BIN="$BIN/doppel" MODEL="$d" OUT="$OUT" BATCH=1 NCU_COUNT=600 bash scripts/gpu/ncu-decode.sh
                python3 scripts/gpu/ncu_summary.py "$OUT/ncu-b1-in128.csv" | head -30
            fi
        } 2>&1 | tee "$OUT/8b.log"
        grep -q FAILED "$OUT/8b.log" && rc=1
        rm -rf "$d" "$l" ;;
    esac
    echo "=== $s: exit $rc ==="
    [ "$rc" != 0 ] && status=1
done
exit $status
