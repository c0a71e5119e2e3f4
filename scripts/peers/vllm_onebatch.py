"""vLLM's one-batch latencies in one process (what `vllm bench latency` measures per call).

    python3 vllm_onebatch.py MODEL_DIR OUTDIR [--batch 1 4 16 64] [--input-len 128 1024]
                             [--output-len 64] [--warmup 3] [--iters 10] [--mem-fraction 0.85]

For each batch size B and prompt length INPUT it times `LLM.generate` on B random token-id
prompts with ignore_eos, once with OUTPUT tokens and once with one token, and writes
OUTDIR/latency-bB-inINPUT-outO.json in `vllm bench latency --output-json`'s form
({"avg_latency", "latencies", "percentiles"}); onebatch.py turns the pairs into the table.
`vllm bench latency` starts a new engine per call (about a minute each with compilation and
graph capture): sixteen calls would not fit one device call, one engine here does.
"""

import argparse
import json
import os
import time

import numpy as np
from vllm import LLM, SamplingParams


def timed(llm, prompts, params, warmup, iters):
    for _ in range(warmup):
        llm.generate(prompts, sampling_params=params, use_tqdm=False)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        llm.generate(prompts, sampling_params=params, use_tqdm=False)
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("outdir")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--input-len", type=int, nargs="+", default=[128])
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--mem-fraction", type=float, default=0.85)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    # Every timed call repeats its prompts: with vLLM's default prefix caching all but the last
    # token of each would come from the cache, and its default budget of 8,192-16,384 tokens a
    # step would split a 64 x 1,024 prefill over several steps.
    llm = LLM(model=a.model, dtype="bfloat16", seed=0, gpu_memory_utilization=a.mem_fraction,
              max_model_len=max(a.input_len) + a.output_len + 16, max_num_seqs=max(a.batch),
              enable_prefix_caching=False,
              max_num_batched_tokens=max(a.batch) * (max(a.input_len) + a.output_len + 16))
    # token ids below the dummy tokenizer's 32,000, as the serving suite sends
    rng = np.random.default_rng(0)
    for b, n in ((b, n) for n in a.input_len for b in a.batch):
        prompts = [{"prompt_token_ids": rng.integers(0, 32000, n).tolist()} for _ in range(b)]
        for o in sorted({1, a.output_len}):
            params = SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True,
                                    max_tokens=o, detokenize=False)
            lat = timed(llm, prompts, params, a.warmup, a.iters)
            pct = (10, 25, 50, 75, 90, 99)
            res = {"avg_latency": float(np.mean(lat)), "latencies": lat,
                   "percentiles": {str(p): float(v) for p, v in zip(pct, np.percentile(lat, pct))}}
            path = os.path.join(a.outdir, f"latency-b{b}-in{n}-out{o}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(res, f)
            print(f"b={b} in={n} out={o}: median {np.median(lat) * 1e3:.2f} ms over {a.iters}", flush=True)


if __name__ == "__main__":
    main()
