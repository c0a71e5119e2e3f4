#!/usr/bin/env bash
# On the GPU machine (no network): carry the peers' packs in, make the checkpoint, serve one
# engine at a time, run the suite. docs/peers.md gives the device calls in order.
#   gpu.sh preflight                     what the machine has (GPU, driver, python packages, disk)
#   gpu.sh put PATH...                   store carried parts (files or folders) in /tmp/xfer
#   gpu.sh unpack vllm|sglang            check the parts against SHA256SUMS, unpack to /tmp/site_ENGINE
#   gpu.sh model NAME [--no-weights]     random-weight checkpoint in /tmp/models/NAME (make_model.py)
#   gpu.sh serve ENGINE NAME [ARGS...]   start doppel|vllm|sglang on NAME, wait for /health, warm up
#   gpu.sh stop ENGINE
#   gpu.sh keep OUTDIR DEST               OUTDIR's summary lines and a tar.xz of the rest into DEST
#                                        (the device tool brings back 8 files at most)
#   gpu.sh bench ENGINE NAME OUTDIR [--quick] [--crosscheck]
#                                        serve + suite.sh (+ SGLang's own client on W3 at 64 streams)
#                                        + stop; logs and results in OUTDIR
#   gpu.sh onebatch ENGINE NAME OUTDIR   the peer's one-batch table (batch 1/4/16/64, input 128
#                                        and 1024, output 64, as doppel exec bench-one-batch) in
#                                        OUTDIR/ENGINE-onebatch.jsonl for sim calibrate --one-batch
#                                        (two input lengths: it fits the KV read rate too);
#                                        no server may be running (docs/fidelity.md)
# Env: DOPPEL (the doppel binary: carry/bin/doppel, copied to /tmp/doppel-bin for later calls;
#      else target/release/doppel), PORT (30000),
#      MEMFRAC (0.85: share of GPU memory for weights + KV), MAXLEN (8192), WAIT_S (300),
#      DOPPEL_LOG (doppel's --log-level, default info: its batch log lines, as SGLang's),
#      ONEBATCH_BATCH ("1 4 16 64"), ONEBATCH_INPUT ("128 1024"): the one-batch grid,
#      DOPPEL_BACKEND (doppel's backend flags; a dry run without a GPU:
#      DOPPEL_BACKEND="--backend sim --profile h100-80g/qwen3-0.6b/doppel").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PY:-/opt/torch/.venv/bin/python3}
command -v "$PY" >/dev/null || PY=python3
XFER=/tmp/xfer
MODELS=/tmp/models
PORT=${PORT:-30000}
MEMFRAC=${MEMFRAC:-0.85}
MAXLEN=${MAXLEN:-8192}
if [ -z "${DOPPEL:-}" ]; then
  # kept in /tmp: later calls need it as the client of the peers without carrying it again
  if [ -x "$ROOT/carry/bin/doppel" ]; then
    mkdir -p /tmp/doppel-bin && cp -u "$ROOT/carry/bin/doppel" /tmp/doppel-bin/doppel
  fi
  DOPPEL=/tmp/doppel-bin/doppel; [ -x "$DOPPEL" ] || DOPPEL=$ROOT/target/release/doppel
fi
# no network: nothing may try a hub at start-up
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
       DO_NOT_TRACK=1 VLLM_NO_USAGE_STATS=1 SGLANG_DISABLE_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$PATH:$CUDA_HOME/bin

die() { echo "gpu.sh: $*" >&2; exit 1; }

engine_env() {  # the peer's site folder first on sys.path, its bin/ (ninja) last on PATH
  local site=/tmp/site_$1
  [ -d "$site" ] || die "$site missing: run 'gpu.sh unpack $1' first"
  export PYTHONPATH=$site
  export PATH=$PATH:$site/bin
  # triton compiles a small C launcher with gcc + Python.h at first use; the machine lacks Python.h
  local inc
  inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  if [ ! -e "$inc/Python.h" ] && [ -d /tmp/pyinc/python3.12 ]; then
    export C_INCLUDE_PATH=/tmp/pyinc/python3.12${C_INCLUDE_PATH:+:$C_INCLUDE_PATH}
  fi
  # flashinfer is not carried for vLLM (its sampler only serves top-k/top-p requests)
  [ "$1" = vllm ] && export VLLM_USE_FLASHINFER_SAMPLER=0
  return 0
}

healthy() { env -u PYTHONPATH "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; }

serve_cmd() {  # $1 engine, $2 model dir, $3 served name, rest: extra args -> array CMD
  local e=$1 dir=$2 name=$3; shift 3
  case $e in
  doppel)
    [ -x "$DOPPEL" ] || die "no doppel binary at $DOPPEL (bash scripts/gpu/stage.sh here, carry 'carry/bin/doppel')"
    # shellcheck disable=SC2206
    local backend=(${DOPPEL_BACKEND:---device cuda --mem-fraction-static $MEMFRAC})
    CMD=("$DOPPEL" exec serve --model "$dir" "${backend[@]}" --served-model-name "$name"
         --context-length "$MAXLEN" --host 127.0.0.1 --port "$PORT" --seed 0 --log-level "${DOPPEL_LOG:-info}" "$@") ;;
  vllm)
    CMD=("$PY" -m vllm.entrypoints.openai.api_server --model "$dir" --served-model-name "$name"
         --dtype bfloat16 --max-model-len "$MAXLEN" --gpu-memory-utilization "$MEMFRAC" --seed 0
         --host 127.0.0.1 --port "$PORT" --disable-uvicorn-access-log "$@") ;;
  sglang)
    CMD=("$PY" -m sglang.launch_server --model-path "$dir" --served-model-name "$name"
         --dtype bfloat16 --context-length "$MAXLEN" --mem-fraction-static "$MEMFRAC" --random-seed 0
         --host 127.0.0.1 --port "$PORT" "$@") ;;
  *) die "engine $e: expected doppel, vllm or sglang" ;;
  esac
}

do_serve() {  # ENGINE NAME [ARGS...]
  local e=$1 name=$2; shift 2
  local dir=$MODELS/$name
  [ -f "$dir/config.json" ] || die "$dir has no checkpoint: run 'gpu.sh model $name' first"
  healthy && die "something already answers on port $PORT (gpu.sh stop ENGINE)"
  if [ "$e" = doppel ]; then
    # shellcheck source=/dev/null
    . "$ROOT/scripts/gpu/env.sh"
  else
    engine_env "$e"
  fi
  serve_cmd "$e" "$dir" "$name" "$@"
  echo "+ ${CMD[*]}"
  setsid nohup "${CMD[@]}" > "/tmp/$e.log" 2>&1 < /dev/null &
  echo $! > "/tmp/$e.pid"
  local t0=$SECONDS
  while ! healthy; do
    kill -0 "$(cat "/tmp/$e.pid")" 2>/dev/null || { tail -60 "/tmp/$e.log"; die "$e exited"; }
    [ $((SECONDS - t0)) -lt "${WAIT_S:-300}" ] || { tail -60 "/tmp/$e.log"; do_stop "$e"; die "$e not healthy in ${WAIT_S:-300} s"; }
    sleep 1
  done
  echo "$e healthy after $((SECONDS - t0)) s"
  # first requests compile (torch.compile, JIT kernels) and capture: keep them out of the timings
  t0=$SECONDS
  "$DOPPEL" bench serve --base-url "http://127.0.0.1:$PORT" --backend openai --model "$name" \
    --dataset-name random-ids --vocab 32000 --random-input-len 1024 --random-output-len 32 \
    --num-prompts 64 --max-concurrency 64 --seed 99 --disable-tqdm > "/tmp/$e-warmup.txt" 2>&1 \
    || { cat "/tmp/$e-warmup.txt"; die "$e: warm-up failed"; }
  echo "$e warmed up in $((SECONDS - t0)) s"
}

do_stop() {
  local pidf=/tmp/$1.pid
  [ -f "$pidf" ] || return 0
  local pid; pid=$(cat "$pidf")
  # the server runs in its own session (setsid): end its process group (peers fork workers)
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidf"
  # the GPU is free again before the next engine starts
  for _ in $(seq 1 30); do healthy || break; sleep 1; done
}

versions() {  # what the table's header names: GPU, driver, host CPU, engine version
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  # vLLM's 0.6B rows moved 25 % between two H100 machines while doppel's held (docs/peers.md)
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
  case $1 in
  doppel) echo "doppel: $("$DOPPEL" --version)" ;;
  *) echo "$1: $(PYTHONPATH=/tmp/site_$1 "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>&1 | tail -1)" ;;
  esac
}

crosscheck() {  # NAME OUT N: SGLang's bench_serving on the served engine, W3 at 64 streams (suite.sh's w3-c64)
  local name=$1 out=$2 n=$3
  [ -d /tmp/site_sglang ] || die "crosscheck needs /tmp/site_sglang (gpu.sh unpack sglang)"
  # its module imports HF datasets for one dataset only: bench_stubs/ stands in for it
  PYTHONPATH=/tmp/site_sglang:$HERE/bench_stubs timeout 300 "$PY" -m sglang.bench_serving \
    --backend sglang-oai --base-url "http://127.0.0.1:$PORT" --model "$name" --tokenizer "$MODELS/$name" \
    --dataset-name random-ids --random-input-len 1024 --random-output-len 256 --random-range-ratio 0.5 \
    --num-prompts $n --max-concurrency 64 --request-rate inf --seed 1 --disable-tqdm \
    --output-file "$out.jsonl" > "$out.txt" 2>&1
  local rc=$?
  grep -E 'Successful requests|Output token throughput|Median TTFT|P99 TTFT|Median ITL|P99 ITL' "$out.txt" | sed 's/^/  sglang client: /'
  [ $rc = 0 ] || { tail -20 "$out.txt"; echo "crosscheck: sglang.bench_serving exited $rc"; }
  return $rc
}

onebatch() {  # ENGINE NAME OUT: the engine's own one-batch bench, converted (onebatch.py)
  local e=$1 dir=$MODELS/$2 out=$3 raw=$3/onebatch-raw rc=0 src
  local OB_BATCH=${ONEBATCH_BATCH:-1 4 16 64} OB_INPUT=${ONEBATCH_INPUT:-128 1024}
  [ -f "$dir/config.json" ] || die "$dir has no checkpoint: run 'gpu.sh model $2' first"
  healthy && die "a server answers on port $PORT: it would share the GPU (gpu.sh stop ENGINE)"
  engine_env "$e"
  mkdir -p "$raw"
  versions "$e" > "$out/$e-onebatch-versions.txt"
  case $e in
  sglang)
    rm -f "$raw/sglang-bench_one_batch.jsonl"  # it appends
    PYTHONPATH=/tmp/site_sglang:$HERE/bench_stubs timeout 540 "$PY" -m sglang.bench_one_batch \
      --model-path "$dir" --dtype bfloat16 --mem-fraction-static "$MEMFRAC" --random-seed 0 \
      --batch-size $OB_BATCH --input-len $OB_INPUT --output-len 64 \
      --result-filename "$raw/sglang-bench_one_batch.jsonl" > "$out/sglang-onebatch.log" 2>&1 || rc=$?
    src=$raw/sglang-bench_one_batch.jsonl ;;
  vllm)
    timeout 540 "$PY" "$HERE/vllm_onebatch.py" "$dir" "$raw" --batch $OB_BATCH --input-len $OB_INPUT \
      --output-len 64 --mem-fraction "$MEMFRAC" > "$out/vllm-onebatch.log" 2>&1 || rc=$?
    src=$raw ;;
  *) die "onebatch: expected vllm or sglang (doppel: doppel exec bench-one-batch --json)" ;;
  esac
  [ $rc = 0 ] || { tail -40 "$out/$e-onebatch.log"; die "$e one-batch bench exited $rc"; }
  env -u PYTHONPATH "$PY" "$HERE/onebatch.py" "$e" "$src" "$out/$e-onebatch.jsonl"
}

case "${1:-}" in
preflight)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "gcc: $(command -v gcc || echo MISSING); nvcc: $("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | tail -1 || echo MISSING)"
  inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  echo "Python.h: $([ -e "$inc/Python.h" ] && echo present || echo 'missing (pyinc.tar.xz is carried)')"
  $PY -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|triton|transformers|tokenizers|numpy|safetensors)==' || true
  df -h /tmp | tail -1 ;;
put)
  shift; mkdir -p $XFER
  for p in "$@"; do
    if [ -d "$p" ]; then cp -f "$p"/* $XFER/; else cp -f "$p" $XFER/; fi
  done
  ls -l $XFER | awk 'NR>1{printf "%8.2f MiB  %s\n", $5/1048576, $9}' ;;
unpack)
  e=${2:-}; [ "$e" = vllm ] || [ "$e" = sglang ] || die "unpack vllm|sglang"
  want=$(grep -c " $e-site.tar.xz.part" "$HERE/SHA256SUMS")
  have=$(ls $XFER/$e-site.tar.xz.part* 2>/dev/null | wc -l)
  [ "$have" = "$want" ] || die "$e: $have of $want parts in $XFER (put the rest first)"
  (cd $XFER && grep -E " ($e-site.tar.xz.part|pyinc.tar.xz)" "$HERE/SHA256SUMS" | sha256sum -c --quiet -) \
    || die "$e: a part does not match SHA256SUMS (carried again, or packs rebuilt without committing the sums?)"
  rm -rf /tmp/site_$e && mkdir -p /tmp/site_$e
  if command -v xz >/dev/null; then unxz=(xz -dc -T0); else unxz=("$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)'); fi
  cat $XFER/$e-site.tar.xz.part* | "${unxz[@]}" | tar -x -C /tmp/site_$e
  mkdir -p /tmp/pyinc && "${unxz[@]}" < $XFER/pyinc.tar.xz | tar -x -C /tmp/pyinc
  rm -f $XFER/$e-site.tar.xz.part*   # /tmp holds the installed copy; the parts are not needed again
  echo "$e: $(du -sh /tmp/site_$e | cut -f1) in /tmp/site_$e" ;;
model)
  name=${2:-}; shift 2 || die "model NAME [--no-weights]"
  env -u PYTHONPATH "$PY" "$HERE/make_model.py" "$name" "$MODELS/$name" "$@" ;;
serve) shift; [ $# -ge 2 ] || die "serve ENGINE NAME [ARGS...]"; do_serve "$@" ;;
stop) [ -n "${2:-}" ] || die "stop ENGINE"; do_stop "$2" ;;
bench)
  [ $# -ge 4 ] || die "bench ENGINE NAME OUTDIR [--quick] [--crosscheck]"
  e=$2; name=$3; out=$4; shift 4
  quick=; cross=
  for f in "$@"; do
    case $f in --quick) quick=--quick ;; --crosscheck) cross=1 ;; *) die "bench: unknown flag $f" ;; esac
  done
  mkdir -p "$out"
  trap 'do_stop "$e"; cp -f /tmp/$e.log /tmp/$e-warmup.txt "$out/" 2>/dev/null || true' EXIT
  do_serve "$e" "$name"
  versions "$e" | tee "$out/$e-versions.txt"
  rc=0
  DOPPEL=$DOPPEL bash "$HERE/suite.sh" "$e" "http://127.0.0.1:$PORT" "$name" "$out" $quick || rc=1
  if [ -n "$cross" ]; then crosscheck "$name" "$out/$e-sglang-client-w3-c64" "$([ -n "$quick" ] && echo 256 || echo 1000)" || rc=1; fi
  exit $rc ;;
onebatch) [ $# -eq 4 ] || die "onebatch ENGINE NAME OUTDIR"; onebatch "$2" "$3" "$4" ;;
keep)
  [ $# -eq 3 ] || die "keep OUTDIR DEST"
  mkdir -p "$3"
  cp -f "$2"/*.jsonl "$3/" 2>/dev/null || true
  tar -C "$(dirname "$2")" -cJf "$3/$(basename "$2").tar.xz" "$(basename "$2")"
  ls -l "$3" ;;
*) sed -n 2,26p "$0"; exit 2 ;;
esac
