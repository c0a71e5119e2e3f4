#!/usr/bin/env bash
# A peer's Qwen3-0.6B profile carried to Llama-3.1-8B (docs/fidelity.md, "Another model"): its
# fitted h100-80g/qwen3-0.6b/ENGINE profile with the model block of h100-80g/llama-3-8b/sglang
# (Llama-3.1-8B's shape), replayed on W2 and W3 and compared with the 8B runs kept here (one
# H100, docs/peers.md, "Llama-3.1-8B"); one row per workload, (sim - real) / real.
#   compare.sh sglang|vllm [PROFILE]   (PROFILE: replay that one instead of the carried one)
# doppel's profile holds step tables measured at 0.6B, which do not carry to another model.
set -euo pipefail
E=${1:?usage: compare.sh sglang|vllm [PROFILE]}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
profile=${2:-}
if [ -z "$profile" ]; then
    src=$ROOT/sim/profiles/h100-80g_qwen3-0.6b_$E.yaml
    [ -f "$src" ] || { echo "compare.sh: no profile $src" >&2; exit 2; }
    if grep -q '^decode_table:' "$src"; then
        echo "compare.sh: $src holds measured step tables; they do not carry to another model" >&2
        exit 2
    fi
    profile=$(mktemp --suffix=.yaml)
    trap 'rm -f "$profile"' EXIT
    python3 - "$src" "$ROOT/sim/profiles/h100-80g_llama-3-8b_sglang.yaml" "$profile" "$E" <<'PY'
import re, sys
src, shape, out, engine = sys.argv[1:]
block = re.compile(r"^model:\n(?:  .*\n)+", re.M)
text = block.sub(lambda _: block.search(open(shape).read()).group(0), open(src).read(), count=1)
text = re.sub(r"^name: .*$", f"name: h100-80g/llama-3.1-8b/{engine}-from-qwen3-0.6b", text, count=1, flags=re.M)
open(out, "w").write(text)
PY
fi
REPORTS=$HERE WORKLOADS="w2 w3-c64 w3-c256" bash "$ROOT/sim/fidelity/h100-qwen3-0.6b-peers/compare.sh" "$E" "$profile"
