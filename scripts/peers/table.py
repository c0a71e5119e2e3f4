"""Summaries of suite.sh runs and the docs/peers.md table.

    table.py line ENGINE MODEL WORKLOAD WANT RC REPORT.json ARGS   one summary line (JSON) to stdout
    table.py show FILE.jsonl [--last]                              the readable line(s)
    table.py table FILE.jsonl...                                   markdown tables, one per model
    table.py ab A.jsonl B.jsonl [C.jsonl...]                       one engine's runs, each / A

A summary line keeps only what the table needs (output tok/s, TTFT and ITL median and p99, the
request counts), so the raw reports can stay out of git. `line` exits 1 when the workload did not
complete every request.
"""

import json
import sys

ENGINES = ("doppel", "vllm", "sglang")
WORKLOADS = ("w1", "w2", "w3-c64", "w3-c256", "w4", "w5")
TITLES = {
    "w1": "W1 128/64, 5 req/s",
    "w2": "W2 512/256, 1 stream",
    "w3-c64": "W3 1024/256, 64 streams",
    "w3-c256": "W3 1024/256, 256 streams",
    "w4": "W4 burst of 2,000",
    "w5": "W5 shared prefix",
}


def summary_line(engine, model, workload, want, rc, path, args):
    row = {"engine": engine, "model": model, "workload": workload, "want": int(want),
           "rc": int(rc), "args": args}
    try:
        with open(path, encoding="utf-8") as f:
            s = json.load(f)["summary"]
    except (OSError, ValueError, KeyError) as e:
        row.update(ok=False, error=f"no report ({e.__class__.__name__}: {e})")
        return row
    row.update(
        completed=s["completed"],
        duration_s=round(s["duration_s"], 3),
        output_tok_s=round(s["output_throughput"], 1),
        ttft_median_ms=round(s["ttft_ms"]["median"], 2),
        ttft_p99_ms=round(s["ttft_ms"]["p99"], 2),
        itl_median_ms=round(s["itl_ms"]["median"], 3),
        itl_p99_ms=round(s["itl_ms"]["p99"], 3),
    )
    row["ok"] = row["rc"] == 0 and row["completed"] == row["want"]
    return row


def show(row):
    head = f"{row['engine']:<7} {row['workload']:<8}"
    if "completed" not in row:
        return f"{head} FAILED rc {row['rc']}: {row.get('error', '')}"
    status = "ok" if row["ok"] else f"INCOMPLETE rc {row['rc']}"
    return (f"{head} {status} {row['completed']}/{row['want']}  out {row['output_tok_s']:9.1f} tok/s  "
            f"TTFT med {row['ttft_median_ms']:8.2f} p99 {row['ttft_p99_ms']:8.2f} ms  "
            f"ITL med {row['itl_median_ms']:7.3f} p99 {row['itl_p99_ms']:7.3f} ms  "
            f"({row['duration_s']:.1f} s)")


def read_rows(paths):
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    sys.exit(f"{p}:{n}: not a JSON line: {e}")
    return rows


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def model_table(model, rows):
    by = {(r["engine"], r["workload"]): r for r in rows if r["model"] == model}
    out = [f"### {model}", "",
           "| workload | engine | output tok/s | TTFT med (ms) | TTFT p99 (ms) | ITL med (ms) "
           "| ITL p99 (ms) | doppel ÷ peer: tok/s, TTFT med, ITL med |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    engines = [e for e in ENGINES if any(k[0] == e for k in by)]
    engines += sorted({k[0] for k in by} - set(engines))
    for w in WORKLOADS:
        d = by.get(("doppel", w))
        for e in engines:
            r = by.get((e, w))
            if r is None:
                continue
            if "completed" not in r:
                out.append(f"| {TITLES.get(w, w)} | {e} | failed (rc {r['rc']}) | | | | | |")
                continue
            note = "" if r["ok"] else f" ({r['completed']}/{r['want']} done)"
            cmp = ""
            if e != "doppel" and d and "completed" in d:
                cmp = (f"{ratio(d['output_tok_s'], r['output_tok_s'])}, "
                       f"{ratio(d['ttft_median_ms'], r['ttft_median_ms'])}, "
                       f"{ratio(d['itl_median_ms'], r['itl_median_ms'])}")
            out.append(f"| {TITLES.get(w, w)} | {e} | {r['output_tok_s']:.0f}{note} "
                       f"| {r['ttft_median_ms']:.1f} | {r['ttft_p99_ms']:.1f} "
                       f"| {r['itl_median_ms']:.2f} | {r['itl_p99_ms']:.2f} | {cmp} |")
    return "\n".join(out) + "\n"


def ab_table(runs):
    """Workload by workload, each run's line (A, B, C, ...) and every later run / A of tok/s,
    TTFT and ITL medians."""
    tags = [chr(ord("A") + i) for i in range(len(runs))]
    by = [{r["workload"]: r for r in rows} for rows in runs]
    out = []
    seen = set().union(*by)
    for w in [w for w in WORKLOADS if w in seen] + sorted(seen - set(WORKLOADS)):
        for tag, m in zip(tags, by):
            out.append(f"{tag} {show(m[w])}" if w in m else f"{tag} {w}: not run")
        ra = by[0].get(w)
        for tag, m in zip(tags[1:], by[1:]):
            rb = m.get(w)
            if ra and rb and "completed" in ra and "completed" in rb:
                out.append(f"  {tag} / A {w}: tok/s {ratio(rb['output_tok_s'], ra['output_tok_s'])}, "
                           f"TTFT med {ratio(rb['ttft_median_ms'], ra['ttft_median_ms'])}, "
                           f"ITL med {ratio(rb['itl_median_ms'], ra['itl_median_ms'])}")
    return "\n".join(out)


def main():
    a = sys.argv[1:]
    if len(a) == 8 and a[0] == "line":
        row = summary_line(*a[1:])
        print(json.dumps(row, sort_keys=True))
        sys.exit(0 if row["ok"] else 1)
    if len(a) in (2, 3) and a[0] == "show" and a[2:] in ([], ["--last"]):
        rows = read_rows([a[1]])
        for r in rows[-1:] if a[2:] else rows:
            print(show(r))
        return
    if len(a) >= 2 and a[0] == "table":
        rows = read_rows(a[1:])
        models = sorted({r["model"] for r in rows})
        print("\n".join(model_table(m, rows) for m in models), end="")
        return
    if len(a) >= 3 and a[0] == "ab":
        runs = [read_rows([p]) for p in a[1:]]
        if not any(runs):
            sys.exit(f"table.py ab: no summary lines in {', '.join(a[1:])}")
        print(ab_table(runs))
        return
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
