"""The OpenAI Python client against `doppel exec serve` (driven by tests/server_cli.rs).

usage: server_openai.py BASE_URL MODEL REASONING_BASE_URL
(the second server runs with --reasoning-parser deepseek-r1)
"""
import json
import sys

import openai

base, model, reasoning_base = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
full = {"ignore_eos": True}

models = client.models.list()
assert [m.id for m in models.data] == [model], models

# Completions: non-streamed and streamed agree; usage adds up.
prompt = "The capital of France is Paris, and the capital of Italy is"
r = client.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0, extra_body=full)
assert r.object == "text_completion", r
assert r.choices[0].finish_reason == "length", r
assert r.usage.completion_tokens == 10, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + 10, r.usage
text = r.choices[0].text
chunks = list(
    client.completions.create(
        model=model, prompt=prompt, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=full,
    )
)
streamed = "".join(c.choices[0].text for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage.completion_tokens == 10, chunks[-1]
# The repeated prompt is served from the prefix cache.
assert chunks[-1].usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1, chunks[-1].usage

# Chat: non-streamed and streamed agree.
msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
c = client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=8, temperature=0, extra_body=full)
assert c.object == "chat.completion", c
assert c.choices[0].message.role == "assistant", c
assert c.usage.completion_tokens == 8, c.usage
parts = []
finish = []
for ch in client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True, extra_body=full):
    assert ch.object == "chat.completion.chunk", ch
    for choice in ch.choices:
        parts.append(choice.delta.content or "")
        if choice.finish_reason:
            finish.append(choice.finish_reason)
assert "".join(parts) == c.choices[0].message.content, (parts, c)
assert finish == ["length"], finish

# n > 1, logprobs, seed, stop.
r = client.completions.create(model=model, prompt=prompt, max_tokens=4, n=3, temperature=0, logprobs=2, extra_body=full)
assert sorted(ch.index for ch in r.choices) == [0, 1, 2], r
assert len({ch.text for ch in r.choices}) == 1, r
lp = r.choices[0].logprobs
assert len(lp.tokens) == 4 and len(lp.token_logprobs) == 4 and all(len(t) == 2 for t in lp.top_logprobs), lp
# echo with logprobs: the prompt's tokens first, the first with no logprob.
e = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2, extra_body=full)
elp, n_prompt = e.choices[0].logprobs, e.usage.prompt_tokens
assert e.choices[0].text == prompt + r.choices[0].text, e
assert len(elp.tokens) == n_prompt + 4 and elp.token_logprobs[0] is None and elp.top_logprobs[0] is None, elp
assert all(x <= 0 for x in elp.token_logprobs[1:]) and elp.text_offset[0] == 0, elp
assert elp.token_logprobs[n_prompt:] == lp.token_logprobs, (elp, lp)
a = client.completions.create(model=model, prompt="seed", max_tokens=6, temperature=1.0, seed=7, extra_body=full)
b = client.completions.create(model=model, prompt="seed", max_tokens=6, temperature=1.0, seed=7, extra_body=full)
assert a.choices[0].text == b.choices[0].text, (a, b)
c = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, extra_body=full)
assert len(c.choices[0].logprobs.content) == 4, c

# Errors surface as the client's typed exceptions.
# Any model name is served (as SGLang does); the card of the served one can be fetched.
r = client.completions.create(model="no-such-model", prompt="x", max_tokens=2, extra_body=full)
assert r.usage.completion_tokens == 2, r
assert client.models.retrieve(model).id == model
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("unknown model card")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e
try:
    client.completions.create(model=model, prompt="x", max_tokens=2, temperature=-1)
    raise AssertionError("negative temperature accepted")
except openai.BadRequestError as e:
    assert "temperature" in str(e), e
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=2)
    raise AssertionError("empty messages accepted")
except openai.BadRequestError as e:
    assert "messages" in str(e), e
# Fields the server cannot honour are refused by name, never dropped.
for extra, field in [
    ({"lora_path": "adapter"}, "lora_path"),
    ({"priority": 2}, "priority"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "response_format"),
]:
    try:
        client.chat.completions.create(model=model, messages=msgs, max_tokens=2, extra_body=extra)
        raise AssertionError(f"{field} accepted")
    except openai.BadRequestError as e:
        assert field in str(e), e

# Tools (auto): the answer parses with and without streaming; on random weights no call is made.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
c = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="auto", max_tokens=6,
                                   temperature=0, parallel_tool_calls=False, extra_body=full)
assert c.choices[0].finish_reason == "length" and not c.choices[0].message.tool_calls, c
text = c.choices[0].message.content
streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
    model=model, messages=msgs, tools=tools, max_tokens=6, temperature=0, stream=True, extra_body=full) if ch.choices)
assert streamed == text, (streamed, text)

# Forced calls (tool_choice required or named): constrained to the tools' schemas, so even random
# weights answer valid calls, in tool_calls with finish reason tool_calls, streamed and not.
calc = [{"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                             "op": {"enum": ["plus", "minus"]}},
            "required": ["a", "op"], "additionalProperties": False}}},
        {"type": "function", "function": {"name": "now", "parameters": {
            "type": "object", "properties": {}, "additionalProperties": False}}}]
def check_call(name, arguments):
    args = json.loads(arguments)
    if name == "add":
        assert set(args) == {"a", "op"} and 0 <= args["a"] <= 9 and args["op"] in ("plus", "minus"), args
    else:
        assert name == "now" and args == {}, (name, args)
named = {"type": "function", "function": {"name": "add"}}
for choice, parallel in [(named, True), ("required", False), ("required", True)]:
    c = client.chat.completions.create(model=model, messages=msgs, tools=calc, tool_choice=choice, max_tokens=256,
                                       seed=3, parallel_tool_calls=parallel)
    ch = c.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None and ch.message.tool_calls, c
    assert parallel or len(ch.message.tool_calls) == 1, c
    for call in ch.message.tool_calls:
        check_call(call.function.name, call.function.arguments)
    assert choice != named or [t.function.name for t in ch.message.tool_calls] == ["add"], c
# Streamed: each call's first delta names it, later deltas add argument text (as it is
# generated); joined, they are the non-streamed answer's calls.
for choice in [named, "required"]:
    body = dict(model=model, messages=msgs, tools=calc, tool_choice=choice, max_tokens=64, seed=3)
    whole = client.chat.completions.create(**body).choices[0].message.tool_calls
    got, finish = {}, None
    for chunk in client.chat.completions.create(**body, stream=True):
        for ch in chunk.choices:
            assert not ch.delta.content, ch
            for t in ch.delta.tool_calls or []:
                first = t.index not in got
                g = got.setdefault(t.index, {"name": "", "arguments": ""})
                assert first == bool(t.function.name) == bool(t.id), t
                g["name"] += t.function.name or ""
                g["arguments"] += t.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls" and len(got) == len(whole), (finish, got, whole)
    for i, w in enumerate(whole):
        assert got[i]["name"] == w.function.name, (got, whole)
        assert json.loads(got[i]["arguments"]) == json.loads(w.function.arguments), (got, whole)
        check_call(got[i]["name"], got[i]["arguments"])
    assert choice != named or got[0]["name"] == "add", got

# Reasoning split (deepseek-r1: the output starts inside the think block), streamed and not.
rc = openai.OpenAI(base_url=reasoning_base, api_key="unused", max_retries=0, timeout=60)
body = dict(model=model, messages=msgs, max_tokens=8, temperature=0)
whole = rc.chat.completions.create(**body, extra_body={**full, "separate_reasoning": False}).choices[0].message.content
m = rc.chat.completions.create(**body, extra_body=full).choices[0].message
assert m.reasoning_content == whole and m.content == "", m
parts = {"reasoning_content": "", "content": ""}
for ch in rc.chat.completions.create(**body, stream=True, extra_body=full):
    for choice in ch.choices:
        for k in parts:
            parts[k] += getattr(choice.delta, k, None) or ""
assert parts == {"reasoning_content": whole, "content": ""}, (parts, whole)
print("openai client: ok")
