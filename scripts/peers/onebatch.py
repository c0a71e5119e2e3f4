"""A peer's one-batch timings as the table `doppel sim calibrate --one-batch` reads.

    python3 onebatch.py sglang RESULT.jsonl OUT.jsonl
    python3 onebatch.py vllm DIR OUT.jsonl

OUT.jsonl has one JSON object a line: batch_size, input_len, output_len, prefill_latency and
median_decode_latency (seconds), plus `source` (how the row was made); sim/src/calibrate_peer/mod.rs
reads these fields.

sglang: RESULT.jsonl is `python -m sglang.bench_one_batch --result-filename`'s file (one object
per run, the same fields in seconds); its rows are checked and copied.

vllm: `vllm bench latency` times a whole batch (prefill and every decode step) and writes
{"avg_latency", "latencies", "percentiles"} to --output-json. gpu.sh runs it twice per batch
size, with the table's output length and with one output token, into
DIR/latency-b{BATCH}-in{INPUT}-out{OUTPUT}.json. The one-token run is the prefill (it samples the
first token, as SGLang's prefill_latency does); a decode step is the difference of the two
medians over the remaining output_len - 1 tokens: a mean step, where SGLang reports the median.
"""

import json
import os
import re
import statistics
import sys

FIELDS = ("batch_size", "input_len", "output_len", "prefill_latency", "median_decode_latency")
VLLM_NAME = re.compile(r"^latency-b(\d+)-in(\d+)-out(\d+)\.json$")


class TableError(Exception):
    """Bad input, with the file and field named."""


def sglang_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError as e:
                raise TableError(f"{path}:{n}: not JSON ({e})") from e
            row = {}
            for k in FIELDS:
                x = v.get(k)
                if not isinstance(x, (int, float)) or x <= 0:
                    raise TableError(f"{path}:{n}: field {k} is {x!r}, expected a number > 0")
                row[k] = x
            row["source"] = "sglang.bench_one_batch"
            rows.append(row)
    if not rows:
        raise TableError(f"{path}: no bench_one_batch rows")
    return rows


def median_latency(path):
    """The median of one `vllm bench latency --output-json` file's batch latencies (s)."""
    try:
        with open(path, encoding="utf-8") as f:
            v = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TableError(f"{path}: {e}") from e
    lat = v.get("latencies")
    if isinstance(lat, list) and lat and all(isinstance(x, (int, float)) for x in lat):
        m = statistics.median(lat)
    else:
        m = (v.get("percentiles") or {}).get("50")
    if not isinstance(m, (int, float)) or m <= 0:
        raise TableError(f"{path}: no latencies or percentiles.50 > 0")
    return float(m)


def vllm_rows(folder):
    runs = {}
    for name in sorted(os.listdir(folder)):
        m = VLLM_NAME.match(name)
        if m:
            runs[tuple(int(g) for g in m.groups())] = os.path.join(folder, name)
    rows = []
    for (b, i, o), path in sorted(runs.items()):
        if o == 1:
            continue
        first = runs.get((b, i, 1))
        if first is None:
            raise TableError(f"{path}: no one-token run latency-b{b}-in{i}-out1.json beside it")
        prefill = median_latency(first)
        whole = median_latency(path)
        step = (whole - prefill) / (o - 1)
        if step <= 0:
            raise TableError(f"{path}: {whole:.6f} s is not above the one-token run's {prefill:.6f} s")
        rows.append({
            "batch_size": b, "input_len": i, "output_len": o,
            "prefill_latency": prefill, "median_decode_latency": step,
            "source": "vllm latency runs of 1 and output_len tokens (decode: mean step)",
        })
    if not rows:
        raise TableError(f"{folder}: no latency-bB-inI-outO.json pairs (O > 1 with O = 1)")
    return rows


def main(argv):
    if len(argv) != 4 or argv[1] not in ("sglang", "vllm"):
        sys.exit(__doc__.split("\n\n")[1])
    try:
        rows = sglang_rows(argv[2]) if argv[1] == "sglang" else vllm_rows(argv[2])
    except TableError as e:
        sys.exit(f"onebatch.py: {e}")
    with open(argv[3], "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    for r in rows:
        print(f"{argv[1]} b={r['batch_size']:>3} in={r['input_len']} out={r['output_len']}: "
              f"prefill {r['prefill_latency'] * 1e3:.2f} ms, decode step "
              f"{r['median_decode_latency'] * 1e3:.3f} ms")


if __name__ == "__main__":
    main(sys.argv)
