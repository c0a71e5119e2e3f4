#!/usr/bin/env bash
# The side-by-side workloads (issue 24) against one OpenAI-compatible server, all through
# `doppel bench serve` on /v1/completions with token-id prompts below the dummy tokenizer's 32,000
# and ignore_eos, seeded alike for every engine. One line per workload; OUTDIR/ENGINE-W.json (the
# full report), OUTDIR/ENGINE-W.txt (the printed report) and OUTDIR/ENGINE.jsonl (one summary line
# per workload, what table.py reads).
#   suite.sh ENGINE URL MODEL OUTDIR [--quick]
# ENGINE only labels the results. --quick: fewer prompts, for a first bring-up (not for the table).
# Env: DOPPEL (the doppel binary, default target/release/doppel), ONLY (workloads to run, e.g. "w2 w4").
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,9p "$0"; exit 2; }
eng=$1 url=$2 model=$3 out=$4 quick=${5:-}
HERE=$(cd "$(dirname "$0")" && pwd)
B=${DOPPEL:-target/release/doppel}
mkdir -p "$out"
: > "$out/$eng.jsonl"
if [ "$quick" = --quick ]; then
  n1=40 n2=4 n3=256 n4=400 groups=8
else
  n1=200 n2=10 n3=1000 n4=2000 groups=64
fi
failed=0

# b NAME EXPECTED ARGS...: one workload; its line and its summary line
b() {
  local w=$1 want=$2; shift 2
  case " ${ONLY:-$w} " in *" $w "*) ;; *) return 0 ;; esac
  timeout 300 "$B" bench serve --base-url "$url" --backend openai --model "$model" \
    --vocab 32000 --seed 1 --disable-tqdm --time-limit 240 --json "$out/$eng-$w.json" "$@" \
    > "$out/$eng-$w.txt" 2>&1
  local rc=$?
  if ! python3 "$HERE/table.py" line "$eng" "$model" "$w" "$want" "$rc" "$out/$eng-$w.json" "$*" >> "$out/$eng.jsonl"; then
    failed=1
  fi
  python3 "$HERE/table.py" show "$out/$eng.jsonl" --last
}

b w1 "$n1" --dataset-name random-ids --random-input-len 128 --random-output-len 64 \
  --random-range-ratio 1 --num-prompts "$n1" --request-rate 5
b w2 "$n2" --dataset-name random-ids --random-input-len 512 --random-output-len 256 \
  --random-range-ratio 1 --num-prompts "$n2" --max-concurrency 1
b w3-c64 "$n3" --dataset-name random-ids --random-input-len 1024 --random-output-len 256 \
  --random-range-ratio 0.5 --num-prompts "$n3" --max-concurrency 64
b w3-c256 "$n3" --dataset-name random-ids --random-input-len 1024 --random-output-len 256 \
  --random-range-ratio 0.5 --num-prompts "$n3" --max-concurrency 256
b w4 "$n4" --dataset-name random-ids --random-input-len 1024 --random-output-len 256 \
  --random-range-ratio 0.5 --num-prompts "$n4" --request-rate inf
b w5 "$((groups * 16))" --dataset-name generated-shared-prefix --gsp-num-groups "$groups" \
  --gsp-prompts-per-group 16 --gsp-system-prompt-len 2048 --gsp-question-len 128 \
  --gsp-output-len 256 --request-rate inf
exit $failed
