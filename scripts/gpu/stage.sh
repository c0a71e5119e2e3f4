#!/usr/bin/env bash
# Here (no GPU needed): build the release test executables and copy them, stripped, into
# carry/bin for a device run (`carry: ["carry"]`; carry/ is git-ignored via .git/info/exclude).
#   stage.sh --base COMMIT: instead, build COMMIT's doppel binary (in a temporary worktree, its
#   own target/base) into carry/base/doppel, the baseline of scripts/gpu/compare-bob.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ex=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$ex")"
grep -qx '/carry/' "$ex" 2>/dev/null || echo '/carry/' >> "$ex"
if [ "${1:-}" = --base ]; then
    commit=$(git rev-parse --verify "${2:?--base COMMIT}^{commit}")
    tmp=$(mktemp -d)
    trap 'git worktree remove --force "$tmp/base" 2>/dev/null; rm -rf "$tmp"' EXIT
    git worktree add -q --detach "$tmp/base" "$commit"
    root=$PWD
    (cd "$tmp/base" && CARGO_TARGET_DIR="$root/target/base" cargo build -q --release --bin doppel)
    mkdir -p carry/base
    strip -o carry/base/doppel target/base/release/doppel
    echo "doppel = $commit" > carry/base/WHAT.txt
    echo "staged carry/base/doppel ($commit)"
    exit 0
fi
mkdir -p carry/bin
cargo test --release --no-run -p doppel-exec --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys, shutil, subprocess
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("cuda_"):
        subprocess.run(["strip", "-o", "carry/bin/" + m["target"]["name"], m["executable"]], check=True)
        print("staged", m["target"]["name"])
'
cargo build --release --bin doppel
strip -o carry/bin/doppel target/release/doppel
echo "staged doppel"
du -sh carry
