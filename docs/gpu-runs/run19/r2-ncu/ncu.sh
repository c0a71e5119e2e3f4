#!/usr/bin/env bash
set -uo pipefail
B=carry-m/bin
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib DOPPEL_CUDA_INCLUDE=/usr/local/cuda/include DOPPEL_KERNEL_CACHE=/tmp/doppel-kernels
M="--model scripts/gpu/qwen3-0.6b --random-weights --batch-size 64 --input-len 128 --output-len 8"
for v in V3 16 8 8p; do
  echo "=== ncu $v ==="
  extra=""; [ $v = V3 ] && extra="--no-decode-reg-mma"
  DOPPEL_RMMA=$v timeout 120 /usr/local/cuda/bin/ncu --graph-profiling node -k regex:attention_decode --launch-skip 140 --launch-count 2 \
    --cache-control none --clock-control none \
    --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section SchedulerStats --section InstructionStats \
    $B/doppel exec bench-one-batch $M $extra > $OUT/ncu-$v.txt 2>&1
  echo "exit $?"
  grep -E "attention_decode|Duration|DRAM Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Executed Instructions  |L1/TEX Hit|L2 Hit|Warp Cycles Per Issued|Stall" $OUT/ncu-$v.txt | head -40
done
