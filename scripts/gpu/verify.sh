#!/usr/bin/env bash
# One device call, from the repository root: runs the GPU check scripts with their logs in a work
# folder and returns them packed, since a device call brings back only a few files from $OUT:
#   $OUT/summary.txt   each job's exit status and the last lines of its console
#   $OUT/logs.tar.xz   every log and JSON the jobs wrote, and their consoles
# JOBS (in order, default "tests"): tests = scripts/gpu/run-tests.sh (every CUDA check, then the
# bench-one-batch A/B against carry/base/doppel); models = scripts/gpu/models.sh with
# MODEL_STAGES (default "tiny archs"); prompt = scripts/gpu/prompt-logprobs.sh; structured =
# scripts/gpu/structured.sh; tp = scripts/gpu/tp.sh (its one-GPU stages on one GPU); w5 =
# scripts/gpu/shared-prefix.sh (attention correctness, then the decode attention over shared
# prefixes by row order); sampling = scripts/gpu/sampling.sh (the sampling paths and the 8B
# scheduler scenarios, ~1-2 min). The jobs
# share DEADLINE seconds (default 570) so the packing still happens inside a 600 s device call; a
# job cut short reports exit 124.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder the device call returns}
JOBS=${JOBS:-tests}
DEADLINE=${DEADLINE:-570}
MODEL_STAGES=${MODEL_STAGES:-"tiny archs"}
W=$(mktemp -d /tmp/doppel-verify.XXXXXX)
mkdir -p "$OUT"
start=$SECONDS
status=0

pack() {
    python3 - "$W" "$OUT/logs.tar.xz" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[2], "w:xz") as t:
    t.add(sys.argv[1], arcname="logs")
PY
}

: >"$OUT/summary.txt"
for job in $JOBS; do
    left=$((DEADLINE - (SECONDS - start)))
    if [ "$left" -le 10 ]; then
        echo "$job: not run (deadline)" | tee -a "$OUT/summary.txt"
        status=1
        continue
    fi
    mkdir -p "$W/$job"
    case $job in
    tests) cmd=(env OUT="$W/tests" bash scripts/gpu/run-tests.sh) ;;
    models) cmd=(env OUT="$W/models" STAGES="$MODEL_STAGES" bash scripts/gpu/models.sh) ;;
    prompt) cmd=(env OUT="$W/prompt" bash scripts/gpu/prompt-logprobs.sh) ;;
    structured) cmd=(env OUT="$W/structured" bash scripts/gpu/structured.sh) ;;
    tp) cmd=(env OUT="$W/tp" bash scripts/gpu/tp.sh) ;;
    w5) cmd=(env OUT="$W/w5" bash scripts/gpu/shared-prefix.sh) ;;
    sampling) cmd=(env OUT="$W/sampling" bash scripts/gpu/sampling.sh) ;;
    *)
        echo "$job: unknown job (tests, models, prompt, structured, tp, w5, sampling)" | tee -a "$OUT/summary.txt"
        status=1
        continue
        ;;
    esac
    timeout --kill-after=5 "$left" "${cmd[@]}" >"$W/$job/console.log" 2>&1
    rc=$?
    [ "$rc" != 0 ] && status=1
    {
        echo "=== $job: exit $rc after $((SECONDS - start)) s ==="
        grep -E "^=== |FAILED|panicked|test result" "$W/$job/console.log" | tail -40
        echo "--- last lines ---"
        tail -12 "$W/$job/console.log"
        # A job's own short summary (its table), where it writes one.
        [ -f "$W/$job/summary.txt" ] && cat "$W/$job/summary.txt"
    } >>"$OUT/summary.txt"
    pack
done
cat "$OUT/summary.txt"
exit $status
