#!/usr/bin/env bash
# On the GPU machine, from the repository root: bench-one-batch (batch 1/4/16/64, input INPUT,
# output 64) of a baseline binary and of this build on the same checkpoint, alternated over
# ROUNDS rounds so drift hits both alike; prints each binary's weight line and a comparison
# table of the per-batch medians over the rounds (the table is the last thing printed).
#   BASE: the baseline binary (default carry/base/doppel; scripts/gpu/stage.sh --base COMMIT builds it)
#   NEW: this build's binary (default carry/bin/doppel)
#   MODEL: checkpoint directory (default /tmp/qwen3-ref, made by scripts/gpu/make_reference.py)
#   OUT: folder for the JSON and logs (default /tmp/doppel-gpu-out)
#   INPUT: prompt length (default 128; 1024 for the decode attention at W3's contexts)
#   BASE_ARGS, NEW_ARGS: extra bench-one-batch flags of each side, e.g. one binary as both
#   with NEW_ARGS="--decode-pipelined-max-group 4"
set -uo pipefail
BASE=${BASE:-carry/base/doppel}
NEW=${NEW:-carry/bin/doppel}
MODEL=${MODEL:-/tmp/qwen3-ref}
OUT=${OUT:-/tmp/doppel-gpu-out}
ROUNDS=${ROUNDS:-3}
INPUT=${INPUT:-128}
mkdir -p "$OUT"
source "$(dirname "$0")/env.sh"
status=0
for r in $(seq 1 "$ROUNDS"); do
    for which in base new; do
        bin=$BASE args=${BASE_ARGS:-}
        [ "$which" = new ] && bin=$NEW args=${NEW_ARGS:-}
        # shellcheck disable=SC2086
        timeout 90 "$bin" exec bench-one-batch --model "$MODEL" --batch-size 1 4 16 64 \
            --input-len "$INPUT" --output-len 64 $args --json >"$OUT/bob-$which-$r.json" 2>"$OUT/bob-$which-$r.log"
        rc=$?
        [ "$rc" = 0 ] || status=1
        echo "$which round $r: exit $rc; $(grep -m1 -o 'weights [^;]*' "$OUT/bob-$which-$r.log")"
    done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(which):
    runs = []
    for r in range(1, rounds + 1):
        try:
            runs.append({row["batch_size"]: row for row in json.load(open(f"{out}/bob-{which}-{r}.json"))})
        except Exception as e:
            print(f"{which} round {r}: no result ({e})")
    return runs
base, new = load("base"), load("new")
print(f"bench-one-batch, median of {rounds} rounds (ms); delta = new / base - 1")
print(f"{'batch':>5} | {'decode base':>11} {'decode new':>11} {'delta':>7} | {'prefill base':>12} {'prefill new':>12} {'delta':>7}")
for b in (1, 4, 16, 64):
    def med(runs, key):
        v = [r[b][key] for r in runs if b in r]
        return statistics.median(v) if v else float("nan")
    db, dn = med(base, "median_decode_latency_ms"), med(new, "median_decode_latency_ms")
    pb, pn = med(base, "prefill_latency_ms"), med(new, "prefill_latency_ms")
    print(f"{b:>5} | {db:>11.4f} {dn:>11.4f} {100 * (dn / db - 1):>+6.2f}% | {pb:>12.3f} {pn:>12.3f} {100 * (pn / pb - 1):>+6.2f}%")
PY
exit $status
