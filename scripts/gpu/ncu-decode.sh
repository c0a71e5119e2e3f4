#!/usr/bin/env bash
# On the GPU machine: per-kernel device time of bench-one-batch's steps with ncu (each kernel
# node of the decode CUDA graph profiled on its own, caches and clocks left alone), as CSV.
#   BIN: the doppel binary; MODEL: a checkpoint folder; OUT: where ncu-bBATCH-inINPUT.csv goes;
#   BATCH: batch size (1); INPUT: prompt length (128; 1024 for long-context attention).
set -uo pipefail
BIN=${BIN:-carry/bin/doppel}
MODEL=${MODEL:-/tmp/qwen3-ref}
OUT=${OUT:-/tmp/doppel-ncu}
mkdir -p "$OUT"
source "$(dirname "$0")/env.sh"
timeout ${NCU_LIMIT:-150} /usr/local/cuda/bin/ncu --graph-profiling node --metrics gpu__time_duration.sum \
    --cache-control none --clock-control none --csv --launch-count ${NCU_COUNT:-1500} \
    "$BIN" exec bench-one-batch --model "$MODEL" --batch-size ${BATCH:-1} --input-len ${INPUT:-128} --output-len 4 \
    >"$OUT/ncu-b${BATCH:-1}-in${INPUT:-128}.csv" 2>"$OUT/ncu-b${BATCH:-1}-in${INPUT:-128}.err"
echo "ncu exit $?"
tail -3 "$OUT/ncu-b${BATCH:-1}-in${INPUT:-128}.err"
