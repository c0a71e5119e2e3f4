#!/usr/bin/env bash
# Experiment: the register-fed tensor-core decode attention (tile 16 / 8 / 8 pipelined).
set -uo pipefail
B=carry-m/bin
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib DOPPEL_CUDA_INCLUDE=/usr/local/cuda/include DOPPEL_KERNEL_CACHE=/tmp/doppel-kernels
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
for v in 16 8 8p; do
  echo "=== correctness DOPPEL_RMMA=$v ==="
  for t in cuda_attention cuda_decode_post; do
    DOPPEL_RMMA=$v timeout 100 $B/$t --nocapture > /tmp/$t.$v.log 2>&1; echo "$t exit $?"
    grep "registers true" /tmp/$t.$v.log | awk '{ if ($NF == "ok") n++; else print } END { print n " rmma checks ok" }'
    grep "registers true" /tmp/$t.$v.log | grep "D=128" | head -3
    grep -E "test result|panicked" /tmp/$t.$v.log
  done
done
M="--model scripts/gpu/qwen3-0.6b --random-weights --batch-size 16 64 --input-len 128 --output-len 64"
for rep in 1 2; do
for v in V3 16 8 8p; do
  echo "=== bob $v (rep $rep) ==="
  if [ $v = V3 ]; then timeout 60 $B/doppel exec bench-one-batch $M --no-decode-reg-mma  # (the development build: on by default, this switched it off) 2>&1 | grep -E "^\s*(16|64)\b|decode|Decode" | tail -4
  else DOPPEL_RMMA=$v timeout 60 $B/doppel exec bench-one-batch $M 2>&1 | grep -E "^\s*(16|64)\b|decode|Decode" | tail -4; fi
done
done
cp /tmp/cuda_*.log "$OUT/" 2>/dev/null; true
