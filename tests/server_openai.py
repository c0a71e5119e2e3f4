"""The OpenAI Python client against `doppel exec serve` (driven by tests/server_cli.rs).

usage: server_openai.py BASE_URL MODEL
"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
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
a = client.completions.create(model=model, prompt="seed", max_tokens=6, temperature=1.0, seed=7, extra_body=full)
b = client.completions.create(model=model, prompt="seed", max_tokens=6, temperature=1.0, seed=7, extra_body=full)
assert a.choices[0].text == b.choices[0].text, (a, b)
c = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, extra_body=full)
assert len(c.choices[0].logprobs.content) == 4, c

# Errors surface as the client's typed exceptions.
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    raise AssertionError("unknown model accepted")
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
print("openai client: ok")
