#!/usr/bin/env python3
"""One model served over HTTP by `doppel exec serve`, checked from the outside (issue 21: each
architecture serves over HTTP on the GPU).

Usage:
  serve_check.py tokenizer MODEL_DIR     put the dummy tokenizer (scripts/peers) into a checkpoint
                                          made by make_models.py, one token per id of its vocabulary
  serve_check.py check PORT NAME         the requests below against a running server; exit 1 on
                                          any failure

The requests: /generate with input_ids (greedy, then seeded sampling twice: the two must agree),
/v1/completions with a token-id prompt and logprobs, /v1/chat/completions plain and streamed. Each
asks for 16 tokens with ignore_eos and must return exactly 16. Standard library only.
"""
import json
import os
import sys
import tarfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
N = 16


def tokenizer(model_dir):
    sys.path.insert(0, os.path.join(HERE, "..", "peers"))
    from make_model import extend_vocab  # the peers' checkpoints get the same tokenizer
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    with tarfile.open(os.path.join(HERE, "..", "peers", "dummy-tokenizer.tar.xz")) as t:
        t.extractall(model_dir, filter="data")
    extend_vocab(os.path.join(model_dir, "tokenizer.json"), vocab)


def post(port, path, body, stream=False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}")
        raw = r.read().decode()
    if not stream:
        return json.loads(raw)
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        raise RuntimeError(f"{path}: the stream did not end with [DONE]")
    return [json.loads(e) for e in events[:-1]]


def check(port, name):
    failures = []

    def expect(what, ok, detail):
        print(f"{name} {what}: {'ok' if ok else 'FAILED'} ({detail})")
        if not ok:
            failures.append(what)

    ids = [(7 * i + 3) % 1000 + 10 for i in range(40)]
    base = {"max_new_tokens": N, "ignore_eos": True}
    g = post(port, "/generate", {"input_ids": ids, "sampling_params": dict(base, temperature=0)})
    out = g["meta_info"]["completion_tokens"]
    expect("/generate greedy", out == N, f"{out} tokens, finish {g['meta_info']['finish_reason']}")
    sampled = dict(base, temperature=0.8, top_p=0.9, top_k=50, sampling_seed=7)
    a = post(port, "/generate", {"input_ids": ids, "sampling_params": sampled, "return_logprob": True})
    b = post(port, "/generate", {"input_ids": ids, "sampling_params": sampled, "return_logprob": True})
    ta = [t[1] for t in a["meta_info"]["output_token_logprobs"]]
    tb = [t[1] for t in b["meta_info"]["output_token_logprobs"]]
    expect("/generate seeded sampling reproduces", ta == tb and len(ta) == N, f"{len(ta)} tokens")
    c = post(port, "/v1/completions", {"model": name, "prompt": ids, "max_tokens": N,
                                       "ignore_eos": True, "temperature": 0, "logprobs": 2})
    lp = c["choices"][0]["logprobs"]["token_logprobs"]
    expect("/v1/completions", c["usage"]["completion_tokens"] == N and len(lp) == N
           and all(x <= 0 for x in lp), f"usage {c['usage']}")
    msgs = [{"role": "user", "content": "Say something."}]
    chat = post(port, "/v1/chat/completions", {"model": name, "messages": msgs, "max_tokens": N,
                                               "ignore_eos": True, "temperature": 0})
    expect("/v1/chat/completions", chat["usage"]["completion_tokens"] == N,
           f"usage {chat['usage']}")
    chunks = post(port, "/v1/chat/completions", {"model": name, "messages": msgs, "max_tokens": N,
                                                 "ignore_eos": True, "temperature": 0,
                                                 "stream": True}, stream=True)
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    plain = chat["choices"][0]["message"]["content"]
    expect("/v1/chat/completions streamed", text == plain, f"{len(chunks)} chunks")
    return 1 if failures else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "tokenizer":
        tokenizer(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(int(sys.argv[2]), sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
