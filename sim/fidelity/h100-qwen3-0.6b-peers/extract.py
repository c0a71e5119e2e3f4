#!/usr/bin/env python3
"""Keep what the fidelity comparison needs from the peer harness's returned reports.

    extract.py RESULTS_DIR [OUT_DIR]

RESULTS_DIR holds ENGINE/ENGINE-W.json and ENGINE/ENGINE.jsonl as `gpu.sh keep` returns them
(docs/peers.md); engines and workloads not there are skipped. For each engine and workload it
writes ENGINE-W.json: the report's `config` and `summary` (what `doppel sim compare` reads)
and its requests cut to send time, prompt and output length and server-reported cached tokens
(what sim/tests/peers_fidelity.rs checks the traces against); gzipped without a time stamp so the bytes depend on the content only. The
summary lines ENGINE.jsonl are copied as they are.
"""
import gzip
import json
import os
import shutil
import sys

ENGINES = ["doppel", "vllm", "sglang"]
WORKLOADS = ["w1", "w2", "w3-c64", "w3-c256", "w4", "w5"]
KEEP = ["id", "status", "send", "prompt_len", "output_tokens", "cached_tokens"]


def main():
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    for e in ENGINES:
        if not os.path.isdir(os.path.join(src, e)):
            continue  # an engine not run (the 8B runs have no W1, W4, W5 either)
        shutil.copyfile(os.path.join(src, e, f"{e}.jsonl"), os.path.join(out, f"{e}.jsonl"))
        for w in WORKLOADS:
            path = os.path.join(src, e, f"{e}-{w}.json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                r = json.load(f)
            kept = {
                "config": r["config"],
                "summary": r["summary"],
                "requests": [{k: q[k] for k in KEEP} for q in r["requests"]],
            }
            text = json.dumps(kept, separators=(",", ":"), sort_keys=True).encode()
            with open(os.path.join(out, f"{e}-{w}.json.gz"), "wb") as f:
                with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
                    g.write(text)


if __name__ == "__main__":
    main()
