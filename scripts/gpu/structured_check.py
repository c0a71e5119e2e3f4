#!/usr/bin/env python3
"""Structured outputs against a running server, standard library only (the GPU machine has no
jsonschema): constrained requests must give valid output, mixed in one batch with free ones.

usage: structured_check.py BASE_URL     (checks; exit 1 on a failure)
       structured_check.py --schema20   (prints the benchmark's 20-field schema)
"""
import json
import re
import sys
import threading
import urllib.request

FIELDS = {}
for i in range(20):
    kind = i % 5
    FIELDS[f"field_{i:02d}"] = [
        {"type": "string", "maxLength": 12},
        {"type": "integer", "minimum": 0, "maximum": 100000},
        {"enum": ["alpha", "beta", "gamma", "delta"]},
        {"type": "boolean"},
        {"type": "number", "minimum": -1000, "maximum": 1000},
    ][kind]
SCHEMA20 = {"type": "object", "properties": FIELDS, "required": list(FIELDS), "additionalProperties": False}


def valid(v, s):
    """The subset of JSON schema the checks use."""
    if "enum" in s:
        return v in s["enum"]
    t = s.get("type")
    if t == "object":
        props = s.get("properties", {})
        return (isinstance(v, dict) and all(k in v for k in s.get("required", []))
                and (s.get("additionalProperties", True) or set(v) <= set(props))
                and all(valid(v[k], props[k]) for k in v if k in props))
    if t == "string":
        return (isinstance(v, str) and len(v) <= s.get("maxLength", 1 << 30)
                and ("pattern" not in s or re.search(s["pattern"], v) is not None))
    if t == "boolean":
        return isinstance(v, bool)
    if t in ("integer", "number"):
        ok = isinstance(v, int) if t == "integer" else isinstance(v, (int, float))
        return ok and not isinstance(v, bool) and s.get("minimum", -1e300) <= v <= s.get("maximum", 1e300)
    if t == "array":
        return isinstance(v, list) and len(v) <= s.get("maxItems", 1 << 30) and all(valid(x, s["items"]) for x in v)
    return False


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as f:
        return json.load(f)


def main(base):
    failures = []
    results = {}

    def one(name, path, body, check):
        try:
            r = post(base, path, body)
            ok, what = check(r)
        except Exception as e:  # noqa: BLE001 - report and go on
            ok, what = False, repr(e)
        results[name] = (ok, what)

    jobs = []
    schemas = {
        "schema20": SCHEMA20,
        "nested": {"type": "object", "additionalProperties": False, "required": ["a", "b"], "properties": {
            "a": {"type": "array", "maxItems": 3, "items": {"type": "integer", "minimum": 0, "maximum": 9}},
            "b": {"type": "object", "additionalProperties": False, "required": ["c"], "properties": {
                "c": {"type": "string", "pattern": "^[a-z]{2,4}$"}}}}},
    }
    for t in (0.0, 1.0):
        for name, s in schemas.items():
            def chk(r, s=s):
                c = r["choices"][0]
                text = c["message"]["content"]
                return c["finish_reason"] == "stop" and valid(json.loads(text), s), text[:200]
            jobs.append((f"chat {name} t={t}", "/v1/chat/completions", {
                "model": "m", "messages": [{"role": "user", "content": "json"}], "max_tokens": 1024, "temperature": t,
                "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": s, "strict": True}}}, chk))
        rx = r"(yes|no), [0-9]{1,3} (apples|pears)"
        jobs.append((f"regex t={t}", "/generate", {"text": "answer", "sampling_params": {"regex": rx, "temperature": t, "max_new_tokens": 64}},
                     lambda r, rx=rx: (re.fullmatch(rx, r["text"]) is not None, r["text"])))
        g = 'root ::= "(" num ("," num)* ")"\nnum ::= [1-9] [0-9]?'
        jobs.append((f"ebnf t={t}", "/generate", {"text": "answer", "sampling_params": {"ebnf": g, "temperature": t, "max_new_tokens": 48}},
                     lambda r: (re.fullmatch(r"\([1-9][0-9]?(,[1-9][0-9]?)*\)", r["text"]) is not None
                                or r["meta_info"]["finish_reason"]["type"] == "length", r["text"])))
    for i in range(4):
        jobs.append((f"free {i}", "/generate", {"text": "free", "sampling_params": {"temperature": 1.0, "max_new_tokens": 64, "ignore_eos": True}},
                     lambda r: (r["meta_info"]["completion_tokens"] == 64, r["meta_info"])))
    threads = [threading.Thread(target=one, args=j) for j in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for name, (ok, what) in sorted(results.items()):
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {what}")
        if not ok:
            failures.append(name)
    print(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1] == "--schema20":
        print(json.dumps(SCHEMA20))
    else:
        sys.exit(main(sys.argv[1]))
