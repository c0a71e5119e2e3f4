#!/usr/bin/env bash
# On the GPU machine, from the repository root (issue 20): structured outputs on the CUDA backend.
# 1. correctness: constrained requests (json_schema, regex, ebnf, greedy and sampled, mixed with
#    free ones in a batch) give valid output; 2. ITL at 64 streams with every request constrained
#    by a 20-field JSON schema vs unconstrained (alternating, twice each), and the mask time per
#    token from /get_server_info. Target: constrained median ITL <= 1.10x unconstrained.
#   BIN: the doppel binary, T: the folder of the release test executables (scripts/gpu/stage.sh
#   puts both in carry/bin; run with carry ["carry"]).
# Logs and a summary land in $OUT.
set -uo pipefail
BIN=${BIN:-carry/bin/doppel}
T=${T:-carry/bin}
OUT=${OUT:-/tmp/doppel-structured}
PORT=${PORT:-30123}
W=$(mktemp -d)
source "$(dirname "$0")/env.sh"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
echo "=== kernels: nvrtc, token mask vs CPU ==="
DOPPEL_REQUIRE_NVRTC=1 timeout 90 "$T/cuda_nvrtc" --nocapture 2>&1 | tail -3 | tee "$OUT/nvrtc.txt"
timeout 60 "$T/cuda_constraint" --nocapture 2>&1 | tee "$OUT/mask-kernel.txt"
python3 scripts/gpu/make_structured_model.py "$W/model" 2>&1 | tail -2 | tee "$OUT/model.txt"
"$BIN" exec serve --model "$W/model" --device cuda --port "$PORT" >"$OUT/server.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null' EXIT
for _ in $(seq 240); do
    python3 -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:$PORT/health\", timeout=2)" 2>/dev/null && break
    sleep 1
done
grep -i "structured" "$OUT/server.log"
echo "=== correctness ==="
python3 scripts/gpu/structured_check.py "http://127.0.0.1:$PORT" 2>&1 | tee "$OUT/check.txt"
check=${PIPESTATUS[0]}
SCHEMA=$(python3 scripts/gpu/structured_check.py --schema20)
EXTRA="{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"f20\", \"schema\": $SCHEMA}}}"
bench() {
    "$BIN" bench serve --backend openai --port "$PORT" --dataset-name random-ids \
        --random-input-len 256 --random-output-len 256 --random-range-ratio 1 \
        --num-prompts 320 --max-concurrency 64 --request-rate inf --warmup-requests 64 \
        --disable-tqdm "$@"
}
stats() { python3 -c "import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:$PORT/get_server_info\").read().decode())" | python3 -c 'import json,sys; s=json.load(sys.stdin)["structured_outputs"]; print(s["masks"], s["mask_ns"])'; }
for round in 1 2; do
    echo "=== free, round $round ==="
    bench >"$OUT/free-$round.txt" 2>&1
    grep -E "Successful|Median ITL|Mean ITL|P99 ITL|Output token throughput" "$OUT/free-$round.txt"
    read -r m0 n0 < <(stats)
    echo "=== constrained, round $round ==="
    bench --extra-request-body "$EXTRA" >"$OUT/constrained-$round.txt" 2>&1
    grep -E "Successful|Median ITL|Mean ITL|P99 ITL|Output token throughput" "$OUT/constrained-$round.txt"
    read -r m1 n1 < <(stats)
    python3 -c "m=$m1-$m0; print(f'masks {m}, mask time per token {($n1-$n0)/max(m,1)/1e3:.1f} us (CPU time per request-token, computed in parallel across requests)')" \
        | tee -a "$OUT/masks.txt"
done
echo "=== summary (median ITL, ms) ==="
for f in "$OUT"/free-*.txt "$OUT"/constrained-*.txt; do
    printf '%-20s %s\n' "$(basename "$f" .txt)" "$(grep 'Median ITL' "$f" | awk '{print $NF}')"
done | tee "$OUT/summary.txt"
# The correctness checks decide the exit status (the timings are read from the summary).
exit "$check"
