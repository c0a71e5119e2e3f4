#!/usr/bin/env python3
"""Per-kernel summary of an ncu CSV from ncu-decode.sh: one line per (kernel, grid, block) with
the launch count, median and total device time, sorted by total; read it beside the step's
layer count (a decode step's kernels repeat once per layer)."""
import csv
import statistics
import sys
from collections import defaultdict

SCALE = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6, "ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


def rows(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own notes before the CSV
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        yield (r["Kernel Name"][:60], r["Grid Size"], r["Block Size"]), v * SCALE[r["Metric Unit"]]


def main():
    by = defaultdict(list)
    for key, us in rows(sys.argv[1]):
        by[key].append(us)
    out = sorted(by.items(), key=lambda kv: -sum(kv[1]))
    print(f"{'n':>5} {'median us':>10} {'total us':>10}  kernel grid block")
    for (name, grid, block), v in out:
        print(f"{len(v):>5} {statistics.median(v):>10.2f} {sum(v):>10.1f}  {name} {grid} {block}")


if __name__ == "__main__":
    main()
