#!/usr/bin/env bash
# On the GPU machine: the register-fed tensor-core decode attention (kernels/attention_decode_rmma.cu,
# run 19, off by default) and the first keys requested before the folded q/k pass (run 20, off by
# default) against the default kernels: their per-kernel checks, then bench-one-batch at 16, 32
# and 64 rows with each combination (two repeats, one process each), then (NCU=1) ncu of the
# decode attention at b=32 and b=64. What docs/cuda.md ("What is missing", 3a) needs before
# either can become the default for some row range.
#   BIN: folder with cuda_attention, cuda_decode_post and doppel (scripts/gpu/stage.sh); OUT: logs.
#   MODEL: checkpoint (default: the reference shape with random weights).
set -uo pipefail
BIN=${BIN:-carry/bin}
OUT=${OUT:-/tmp/doppel-decode-attn}
mkdir -p "$OUT"
source "$(dirname "$0")/env.sh"
if [ -n "${MODEL:-}" ]; then M="--model $MODEL"; else M="--model scripts/gpu/qwen3-0.6b --random-weights"; fi
status=0
for t in cuda_attention cuda_decode_post; do
    timeout 120 "$BIN/$t" --nocapture >"$OUT/$t.log" 2>&1
    rc=$?
    echo "$t: exit $rc; register-kernel checks: $(grep 'registers true' "$OUT/$t.log" | awk '$NF == "ok" { n++ } $NF != "ok" { f++ } END { print n + 0 " ok, " f + 0 " not ok" }');" \
        "keys-before-q/k checks: $(grep 'before q/k true' "$OUT/$t.log" | awk '$NF == "ok" { n++ } $NF != "ok" { f++ } END { print n + 0 " ok, " f + 0 " not ok" }')"
    [ $rc != 0 ] && status=1
done
for rep in 1 2; do
    for flag in "" --decode-kv-before-qk "--decode-reg-mma-max-rows 64" "--decode-reg-mma-max-rows 64 --decode-kv-before-qk"; do
        echo "=== bench-one-batch ${flag:-default} (repeat $rep) ==="
        timeout 90 "$BIN/doppel" exec bench-one-batch $M --batch-size 16 32 64 --input-len 128 --output-len 64 $flag 2>&1 |
            tee -a "$OUT/bob.txt" | grep -E '^ +(16|32|64) '
    done
done
[ "${NCU:-0}" = 1 ] || exit $status
for b in 32 64; do
    for flag in "" "--decode-reg-mma-max-rows 64"; do
        name="ncu-b$b${flag:+-reg}"
        timeout 120 /usr/local/cuda/bin/ncu --graph-profiling node -k regex:attention_decode --launch-skip 140 --launch-count 2 \
            --cache-control none --clock-control none --section SpeedOfLight --section WarpStateStats \
            --section MemoryWorkloadAnalysis --section Occupancy --section InstructionStats \
            "$BIN/doppel" exec bench-one-batch $M --batch-size $b --input-len 128 --output-len 8 $flag >"$OUT/$name.txt" 2>&1
        echo "$name: exit $?; $(grep -E '^ +Duration' "$OUT/$name.txt" | awk '{ printf "%s us  ", $3 }')"
    done
done
exit $status
