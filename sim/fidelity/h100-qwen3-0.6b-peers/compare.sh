#!/usr/bin/env bash
# The simulator against the side-by-side runs (docs/fidelity.md): for ENGINE (doppel, sglang or
# vllm) replay traces/peers/ENGINE/W.yaml on its profile and `sim compare` the replay with
# the measured report kept here (open-loop W1, W4, W5 at the client's real send times); one
# row per workload, (sim - real) / real.
#   compare.sh ENGINE [PROFILE]     (OUT: where reports go, default a temporary folder;
#   REPORTS: the folder of measured reports, default this one; WORKLOADS: which to replay)
set -euo pipefail
E=${1:?usage: compare.sh doppel|sglang|vllm [PROFILE]}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release/doppel}
OUT=${OUT:-$(mktemp -d)}
REPORTS=${REPORTS:-$HERE}
mkdir -p "$OUT"
printf "%-8s %9s %9s %9s %9s %9s %9s\n" workload "TTFT med" "ITL med" "TPOT med" "tok/s" "TTFT p99" "ITL p99"
for w in ${WORKLOADS:-w1 w2 w3-c64 w3-c256 w4 w5}; do
    gunzip -c "$REPORTS/$E-$w.json.gz" >"$OUT/real-$E-$w.json"
    args=()
    [ -n "${2:-}" ] && args=(--profile "$2")
    # Open-loop workloads go out when the client really sent them (a burst takes it 0.1-0.2 s).
    case $w in w1 | w4 | w5) args+=(--sends-from "$OUT/real-$E-$w.json") ;; esac
    "$BIN" sim replay "$ROOT/traces/peers/$E/$w.yaml" "${args[@]}" --json "$OUT/sim-$E-$w.json" >/dev/null
    "$BIN" sim compare "$OUT/real-$E-$w.json" "$OUT/sim-$E-$w.json" >"$OUT/compare-$E-$w.txt"
    err() { grep -E "^$1" "$OUT/compare-$E-$w.txt" | grep -oE '[-+][0-9.]+%' | head -1; }
    printf "%-8s %9s %9s %9s %9s %9s %9s\n" "$w" "$(err 'median TTFT')" "$(err 'median ITL')" \
        "$(err 'median TPOT')" "$(err 'Output token throughput')" "$(err 'p99 TTFT')" "$(err 'p99 ITL')"
done
