#!/usr/bin/env bash
# On the GPU machine, from the repository root (issue 7): measure step times for calibration, then
# replay the five fidelity traces on the real engine. Everything lands in $OUT/fidelity.tar.gz.
#   BIN: the doppel binary, built here and carried:
#     cargo build --release --bin doppel && mkdir -p mycarry && strip -o mycarry/doppel target/release/doppel
#     (mycarry/ listed in .git/info/exclude; run with carry: ["mycarry"])
#   MODEL: a folder with a Qwen3-0.6B config.json (random weights: nothing else is read).
set -uo pipefail
BIN=${BIN:-mycarry/doppel}
MODEL=${MODEL:-scripts/gpu/qwen3-0.6b}
OUT=${OUT:-/tmp/doppel-fidelity}
W=$(mktemp -d)
source "$(dirname "$0")/env.sh"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$W/gpu.txt"
# The profile takes ~300 s on an H100 (rests after each scenario, the sustained run); the replays
# ~30 s each: one call fits a 600 s device command.
# SKIP_PROFILE=1: the replays only (a second call when profile and replays exceed one).
if [ -z "${SKIP_PROFILE:-}" ]; then
    echo "=== profile ==="
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv -lms 250 >"$W/clocks-profile.csv" 2>/dev/null &
    SMI=$!
    timeout ${PROFILE_LIMIT:-450} "$BIN" exec profile --device cuda --random-weights --model "$MODEL" \
        --out "$W/h100-qwen3-0.6b-measurements.json" 2>&1 | tee "$W/profile.log"
    kill "$SMI" 2>/dev/null
fi
# TRACES: names of traces/fidelity/*.yaml, or paths to other trace files (diagnostics).
for tr in ${TRACES:-burst poisson_low poisson_high shared_prefix multi_turn}; do
    case $tr in
    *.yaml) file=$tr; t=$(basename "$tr" .yaml) ;;
    *) file=traces/fidelity/$tr.yaml; t=$tr ;;
    esac
    echo "=== replay $t ==="
    # SM clock, power and throttle reasons every 50 ms: the burst's prefills ran 4 % slower than
    # the profile measured the same shapes, from the third step on (sustained load?).
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv -lms 50 >"$W/clocks-$t.csv" 2>/dev/null &
    SMI=$!
    timeout 100 "$BIN" exec replay "$file" --device cuda --random-weights \
        --model "$MODEL" --profile h100-80g/qwen3-0.6b/sglang --time-limit 90 \
        --json "$W/real-$t.json" >"$W/real-$t.txt" 2>&1
    echo "exit $?"
    kill "$SMI" 2>/dev/null
    grep -E "Successful|Median TTFT|Median ITL|Output token throughput|error" "$W/real-$t.txt"
done
tar -C "$W" -czf "$OUT/fidelity.tar.gz" .
ls -la "$W"
