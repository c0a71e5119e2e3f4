#!/usr/bin/env bash
# Here (network to PyPI, no GPU): download the pinned wheels of one or both peers into
# $PEERS/wheels/ENGINE (default PEERS = REPO/.peers, git-ignored through .git/info/exclude).
#   bash scripts/peers/fetch.sh [vllm] [sglang]
# The lists name only what the GPU machine lacks (it has torch 2.11 + CUDA 13, triton, numpy, ...);
# see docs/peers.md. Wheels are for CPython 3.12 on x86-64 glibc, the GPU machine's interpreter.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$ROOT/.peers}
ex=$(git -C "$ROOT" rev-parse --git-path info/exclude)
case $ex in /*) ;; *) ex=$ROOT/$ex ;; esac
mkdir -p "$(dirname "$ex")"
grep -qx '/.peers/' "$ex" 2>/dev/null || echo '/.peers/' >> "$ex"

# pip matches manylinux_2_N exactly, so every N that one of the wheels is tagged with is listed.
PLAT=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 \
         linux_x86_64; do
  PLAT+=(--platform "$p")
done

for e in ${@:-vllm sglang}; do
  list=$HERE/$e-wheels.txt
  [ -f "$list" ] || { echo "fetch.sh: no list $list (engines: vllm, sglang)" >&2; exit 2; }
  dir=$PEERS/wheels/$e
  mkdir -p "$dir"
  # one pip call for the list (a wheel already in $dir is not fetched again); pip names a wheel it
  # cannot find
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d "$dir" -r "$list" || { echo "fetch.sh: $e: pip download failed (above)" >&2; exit 1; }
  n=$(ls "$dir"/*.whl | wc -l)
  echo "$e: $n wheels, $(du -sm "$dir" | cut -f1) MiB in $dir"
done
