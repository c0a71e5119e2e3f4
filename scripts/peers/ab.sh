#!/usr/bin/env bash
# On the GPU machine: doppel served with two or more sets of backend flags, one after the other
# on the same machine, checkpoint, client and suite (gpu.sh bench), then every summary line and
# each later variant / A.
#   ab.sh NAME OUTDIR "FLAGS_A" "FLAGS_B" ["FLAGS_C" ...]
#   e.g. ONLY="w3-c64 w3-c256" ab.sh llama-3.1-8b /tmp/ab "" "--enable-mixed-chunk"
# FLAGS_* are added to the default backend flags (--device cuda --mem-fraction-static MEMFRAC).
# Env: ONLY (suite.sh's workloads), LIMIT_S (seconds per variant, default 270), DOPPEL_BASE
# (the backend flags both share; a dry run without a GPU: "--backend sim --profile P").
# Each variant's summary lines land in OUTDIR/A.jsonl, OUTDIR/B.jsonl, ..., its reports and
# server log in OUTDIR/A/, OUTDIR/B/, ... A always runs first: for a small difference, run it
# again with the order changed.
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,12p "$0"; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
name=$1 out=$2
shift 2
base=${DOPPEL_BASE:---device cuda --mem-fraction-static ${MEMFRAC:-0.85}}
mkdir -p "$out"
rc=0
tags=(A B C D E F G H)
[ $# -le ${#tags[@]} ] || { echo "ab.sh: at most ${#tags[@]} variants"; exit 2; }
variants=("$@") files=()
for i in "${!variants[@]}"; do
  v=${tags[$i]} flags=${variants[$i]}
  echo "== $v: $base $flags"
  rm -f "$out/$v/doppel.jsonl"  # a failed start must not leave an earlier run's lines in place
  DOPPEL_BACKEND="$base $flags" timeout "${LIMIT_S:-270}" bash "$HERE/gpu.sh" bench doppel "$name" "$out/$v" \
    > "$out/$v.log" 2>&1 || { rc=1; tail -5 "$out/$v.log"; }
  cp -f "$out/$v/doppel.jsonl" "$out/$v.jsonl" 2>/dev/null || : > "$out/$v.jsonl"
  files+=("$out/$v.jsonl")
done
python3 "$HERE/table.py" ab "${files[@]}" || rc=1
exit $rc
