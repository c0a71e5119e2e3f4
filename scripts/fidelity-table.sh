#!/usr/bin/env bash
# Here (no GPU): the simulator against real runs. DIR holds real-<trace>.json (or .json.gz, as
# in sim/fidelity/h100-qwen3-0.6b-doppel) from scripts/gpu/fidelity.sh; PROFILE is the fitted profile
# (default: the shipped one). Reports go to OUT (default DIR).
# For each fidelity trace it writes sim-<trace>.json (free-running: the trace's own arrival
# schedule on the simulated clock) and lock-<trace>.json (step times taken from the real run,
# `sim replay --timing-from`), the two `sim compare` reports, and prints one table row.
set -euo pipefail
DIR=${1:?usage: scripts/fidelity-table.sh DIR [PROFILE]}
PROFILE=${2:-h100-80g/qwen3-0.6b/doppel}
BIN=${BIN:-target/release/doppel}
OUT=${OUT:-$DIR}
mkdir -p "$OUT"
printf "%-14s %9s %9s %9s %9s %22s %22s\n" trace "TTFT" "ITL" "TPOT" "tok/s" "same steps (free)" "same steps (locked)"
for t in ${TRACES:-burst poisson_low poisson_high shared_prefix multi_turn}; do
    real="$DIR/real-$t.json"
    if [ ! -f "$real" ] && [ -f "$real.gz" ]; then
        gunzip -c "$real.gz" >"$OUT/real-$t.json"
        real="$OUT/real-$t.json"
    fi
    "$BIN" sim replay "traces/fidelity/$t.yaml" --profile "$PROFILE" --json "$OUT/sim-$t.json" >/dev/null
    "$BIN" sim replay "traces/fidelity/$t.yaml" --profile "$PROFILE" \
        --timing-from "$real" --json "$OUT/lock-$t.json" >/dev/null
    "$BIN" sim compare "$real" "$OUT/sim-$t.json" >"$OUT/compare-$t.txt"
    "$BIN" sim compare "$real" "$OUT/lock-$t.json" >"$OUT/compare-locked-$t.txt"
    err() { grep -E "^$1" "$OUT/compare-$t.txt" | grep -oE '[-+][0-9.]+%' | head -1; }
    share() { grep -E "^batch sequence:" "$1" | grep -oE '[0-9]+ identical at the same index \([0-9.]+%' | grep -oE '[0-9.]+%$'; }
    printf "%-14s %9s %9s %9s %9s %22s %22s\n" "$t" "$(err 'median TTFT')" "$(err 'median ITL')" \
        "$(err 'median TPOT')" "$(err 'Output token throughput')" \
        "$(share "$OUT/compare-$t.txt")" "$(share "$OUT/compare-locked-$t.txt")"
done
