#!/usr/bin/env bash
# On the GPU machine, from the repository root: every CUDA check, then the timings.
#   BIN: folder holding the release test executables cuda_nvrtc, cuda_kernels, cuda_attention, cuda_fused,
#        cuda_gemm_tile, cuda_decode_post, cuda_startup, cuda_model, cuda_bench and the doppel binary (scripts/gpu/stage.sh puts them in carry/bin)
#   STAGES: which stages, in order (default below); `compare` runs scripts/gpu/compare-bob.sh
#        (bench-one-batch of carry/base/doppel against this build, comparison table last)
#   OUT: folder for logs (default /tmp/doppel-gpu-out)
# Each stage has its own time limit so one hang cannot take the others down; the exit status is
# non-zero if any correctness stage failed.
set -uo pipefail
BIN=${BIN:-carry/bin}
OUT=${OUT:-/tmp/doppel-gpu-out}
mkdir -p "$OUT"
source "$(dirname "$0")/env.sh"
export PYTHONUNBUFFERED=1
# Correctness first (kernels, start-up, whole model), then the timings.
# With a baseline binary carried, the timings are the A/B against it instead.
default="nvrtc kernels startup reference model bench bob"
[ -x "${BASE:-carry/base/doppel}" ] && default="nvrtc kernels startup reference model compare"
STAGES=${STAGES:-$default}
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
# nvrtc compiles every source for two architectures: 17-40 s since gemm_skinny.cu (run 6). The
# first kernel test compiles every source on a fresh machine (cold cache): up to ~60 s since run 15.
for s in $STAGES; do
    echo "=== $s ==="
    case $s in
    nvrtc) DOPPEL_REQUIRE_NVRTC=1 timeout 90 "$BIN/cuda_nvrtc" --nocapture 2>&1 | tee "$OUT/nvrtc.log" ;;
    kernels) { timeout 120 "$BIN/cuda_kernels" --nocapture --test-threads=1 && timeout 60 "$BIN/cuda_attention" --nocapture &&
        timeout 30 "$BIN/cuda_fused" --nocapture && timeout 30 "$BIN/cuda_gemm_tile" --nocapture &&
        timeout 30 "$BIN/cuda_decode_post" --nocapture; } 2>&1 | tee "$OUT/kernels.log" ;;
    startup) timeout 60 "$BIN/cuda_startup" --nocapture --test-threads=1 2>&1 | tee -a "$OUT/kernels.log" ;;
    bench) { timeout 150 "$BIN/cuda_bench" bench_kernels_and_forward --ignored --nocapture --test-threads=1 &&
        timeout 120 "$BIN/cuda_bench" bench_gemv_row_prefetch --ignored --nocapture; } 2>&1 | tee "$OUT/bench.log" ;;
    reference) timeout 110 python3 scripts/gpu/make_reference.py /tmp/qwen3-ref 2>&1 | tee "$OUT/reference.log" ;;
    model) DOPPEL_HF_REF=/tmp/qwen3-ref timeout 120 "$BIN/cuda_model" --nocapture --test-threads=1 2>&1 | tee "$OUT/model.log" ;;
    bob) {
        timeout 60 "$BIN/doppel" exec bench-one-batch --model /tmp/qwen3-ref --batch-size 1 4 16 64 --input-len 128 --output-len 64 2>&1 | tee "$OUT/bob.txt"
        timeout 60 "$BIN/doppel" exec bench-one-batch --model /tmp/qwen3-ref --batch-size 1 4 16 64 --input-len 128 --output-len 64 --json >"$OUT/bob.json"
    } ;;
    compare) NEW="$BIN/doppel" OUT="$OUT" timeout 400 "$(dirname "$0")/compare-bob.sh" 2>&1 | tee "$OUT/compare.log" ;;
    esac
    rc=${PIPESTATUS[0]}
    echo "=== $s: exit $rc ==="
    [ "$s" != bench ] && [ "$rc" != 0 ] && status=1
done
exit $status
