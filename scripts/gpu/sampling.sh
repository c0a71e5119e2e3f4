#!/usr/bin/env bash
# On the GPU machine, from the repository root (issue 21, "Correctness"): exec/tests/cuda_sampling.rs.
# 1. the sampling checks on CudaBackend over a tiny bf16 model (the CPU backend passes the same
#    checks in CI): seeded runs reproduce, every sampled token explained by its seeded draw,
#    frequencies under temperature / top-k / top-p / min-p (chi-square), logprobs against the CPU
#    model's, penalties and logit bias; 2. the scheduler scenarios (prefix hit, chunked prefill,
#    retraction, mixed batch) at Llama-3.1-8B shapes with random weights against one plain pass.
#   T: the folder of the release test executables (scripts/gpu/stage.sh puts them in carry/bin;
#   run with carry ["carry"]).
# About a minute on an H100 once the kernels are cached (a fresh machine compiles them first, up
# to a minute more). Logs land in $OUT; the exit status is non-zero if a check failed.
set -uo pipefail
T=${T:-carry/bin}
OUT=${OUT:-/tmp/doppel-sampling}
source "$(dirname "$0")/env.sh"
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
for t in sampling_checks_pass_on_the_cuda_backend:100 scheduler_scenarios_at_8b_shapes:80; do
    name=${t%%:*}
    echo "=== $name ==="
    timeout "${t##*:}" "$T/cuda_sampling" "$name" --exact --nocapture --test-threads=1 2>&1 | tee "$OUT/$name.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
exit $status
