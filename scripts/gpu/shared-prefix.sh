#!/usr/bin/env bash
# On the GPU machine, from the repository root (issue 24, W5; docs/cuda.md, "Decode attention"):
# the attention correctness test (every decode configuration also in a permuted visit order),
# then the decode attention over shared prefixes by row order (grouped, W5's interleaved, the
# backend's VisitOrder; 1,024 and 256 rows, unshared controls), and each decode kernel family at
# Llama-3.1-8B's GQA group 4 (64 and 256 unshared rows). Under two minutes on an H100
# (most of it the kernels' first compile on a fresh machine).
#   T: the folder of the release test executables (scripts/gpu/stage.sh puts them in carry/bin;
#   run with carry ["carry"]). Logs land in $OUT (summary.txt: the table and the checks); the
#   exit status is non-zero if a check failed.
set -uo pipefail
T=${T:-carry/bin}
OUT=${OUT:-/tmp/doppel-shared-prefix}
source "$(dirname "$0")/env.sh"
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
echo "=== cuda_attention ==="
timeout 120 "$T/cuda_attention" --nocapture 2>&1 | tee "$OUT/attention.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "=== cuda_shared_prefix ==="
timeout 120 "$T/cuda_shared_prefix" --ignored --nocapture 2>&1 | tee "$OUT/shared-prefix.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
# The table and the checks, for verify.sh's summary.
grep -hE "^(one layer|batch |[0-9]+ rows)|checks (ok|failed)|permuted visit order.*FAIL|VisitOrder's|output written|test result" \
    "$OUT/attention.log" "$OUT/shared-prefix.log" >"$OUT/summary.txt"
exit $status
