#!/usr/bin/env bash
# On the GPU machine, from the repository root (issue 20): prompt logprobs on the CUDA backend.
# 1. the `token_logprobs_rows` kernel against the CPU's log-softmax and top-k, and the CUDA
#    backend's prompt logprobs against the CPU backend's (plain, overlap, chunked prefill, a
#    cache hit capped at logprob_start_len); 2. a served random-weight Qwen3-0.6B: /generate with
#    logprob_start_len 0 and top 5 on a ~3000-token prompt (shapes, null first entry), timed
#    against the same request without prompt logprobs.
#   BIN: the doppel binary, T: the folder of the release test executables (scripts/gpu/stage.sh
#   puts both in carry/bin; run with carry ["carry"]).
# Logs land in $OUT; the exit status is non-zero if a correctness check failed.
set -uo pipefail
BIN=${BIN:-carry/bin/doppel}
T=${T:-carry/bin}
OUT=${OUT:-/tmp/doppel-prompt-logprobs}
PORT=${PORT:-30124}
W=$(mktemp -d)
source "$(dirname "$0")/env.sh"
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
echo "=== kernels and backend vs CPU ==="
DOPPEL_REQUIRE_NVRTC=1 timeout 90 "$T/cuda_nvrtc" --nocapture 2>&1 | tail -3 | tee "$OUT/nvrtc.txt"
timeout 180 "$T/cuda_prompt_logprobs" --nocapture --test-threads=1 2>&1 | tee "$OUT/tests.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "=== served model ==="
python3 scripts/gpu/make_structured_model.py "$W/model" 2>&1 | tail -2 | tee "$OUT/model.txt"
"$BIN" exec serve --model "$W/model" --device cuda --port "$PORT" >"$OUT/server.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null' EXIT
for _ in $(seq 240); do
    python3 -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:$PORT/health\", timeout=2)" 2>/dev/null && break
    sleep 1
done
python3 - "$PORT" <<'PY' 2>&1 | tee "$OUT/served.txt"
import json, sys, time, urllib.request
port = sys.argv[1]
def gen(body):
    r = urllib.request.Request(f"http://127.0.0.1:{port}/generate", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    t = time.time()
    v = json.load(urllib.request.urlopen(r, timeout=120))
    return v, time.time() - t
ids = [(i * 7919 + 13) % 30000 + 100 for i in range(3000)]
sp = {"max_new_tokens": 1, "temperature": 0}
for rep in range(2):
    # Distinct first tokens per run: no cache hit between them.
    a, ta = gen({"input_ids": [rep * 2 + 1] + ids, "sampling_params": sp})
    b, tb = gen({"input_ids": [rep * 2 + 2] + ids, "sampling_params": sp, "return_logprob": True,
                 "logprob_start_len": 0, "top_logprobs_num": 5})
    m = b["meta_info"]
    toks, tops = m["input_token_logprobs"], m["input_top_logprobs"]
    ok = (len(toks) == 3001 and toks[0][0] is None and tops[0] is None
          and all(t[0] is not None and t[0] <= 0 for t in toks[1:])
          and all(len(t) == 5 and t[0][0] >= t[4][0] for t in tops[1:]))
    print(f"run {rep}: without {ta*1000:.1f} ms, with prompt logprobs (top 5) {tb*1000:.1f} ms; shapes ok: {ok}")
    if not ok:
        sys.exit(1)
PY
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
