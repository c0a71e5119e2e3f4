"""Structured outputs through the official OpenAI client and /generate (driven by
tests/server_cli.rs), on a random-weight model: the constraint alone must make the output valid.

usage: server_structured.py BASE_URL MODEL
"""
import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import List, Literal

import jsonschema
import openai
from pydantic import BaseModel, Field

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
MAX = 400


def bounded(schema):
    """Close every object and bound every string and array, so a random walk ends."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
            schema.setdefault("required", list(schema.get("properties", {})))
        if schema.get("type") == "string" and "enum" not in schema and "pattern" not in schema:
            schema.setdefault("maxLength", 8)
        if schema.get("type") == "array":
            schema.setdefault("maxItems", 3)
        for v in schema.values():
            bounded(v)
    elif isinstance(schema, list):
        for v in schema:
            bounded(v)
    return schema


S = {"type": "string"}
SCHEMAS = [
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 150}}},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": ["string", "null"]}}},
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}},
    {"type": "object", "properties": {"p": {"type": "number", "minimum": -1.5, "maximum": 2.5}}},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20}}},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "minItems": 1}}},
    {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 4}}},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}, "email": {"type": "string", "pattern": "^[a-z]{1,5}@[a-z]{1,5}\\.com$"}}}}},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"enum": [1, 2, 3]}}}}}}},
    {"type": "object", "properties": {"points": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5}, "y": {"type": "integer", "minimum": -5, "maximum": 5}}}}}},
    {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0, "maximum": 10}}},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "boolean"}]}}},
    {"type": "object", "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]$"}}},
    {"type": "object", "properties": {"status": {"enum": ["open", "closed"]}, "count": {"type": "integer", "minimum": 0, "maximum": 1000}, "label": S}},
    {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 2, "maxItems": 3},
    {"type": "object", "properties": {"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1}, "maxItems": 2}, "maxItems": 2}}},
    {"type": "object", "properties": {"id": {"type": "string", "minLength": 2, "maxLength": 4}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
    {"type": "object", "properties": {"item": {"$ref": "#/$defs/item"}}, "$defs": {"item": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[0-9]{4}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}}}},
    {"type": "object", "properties": {"f1": {"type": "boolean"}, "f2": {"type": "integer", "minimum": 0, "maximum": 3}, "f3": {"enum": ["a", "b"]}, "f4": {"type": "null"}, "f5": S}},
]
assert len(SCHEMAS) == 20
msgs = [{"role": "user", "content": "Reply in JSON."}]



def constrained(i, temperature):
    schema = bounded(SCHEMAS[i])
    r = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=MAX, temperature=temperature, seed=i,
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
    )
    c = r.choices[0]
    assert c.finish_reason == "stop", (i, c)
    jsonschema.validate(json.loads(c.message.content), schema)


def free(i):
    r = client.completions.create(model=model, prompt=f"free {i}", max_tokens=24, temperature=1.0, seed=i, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 24, r


# 20 schemas through chat response_format json_schema (strict), greedy and sampled, running
# concurrently with free requests so constrained and free rows share batches.
with ThreadPoolExecutor(8) as pool:
    jobs = [pool.submit(constrained, i, t) for i in range(len(SCHEMAS)) for t in (0, 1.0)]
    jobs += [pool.submit(free, i) for i in range(8)]
    for j in jobs:
        j.result()

# The pydantic route: client.chat.completions.parse.
class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=6)
    legs: int = Field(ge=0, le=8)


class Owner(BaseModel):
    name: str = Field(max_length=8)
    pets: List[Pet] = Field(max_length=2)
    verified: bool


p = client.chat.completions.parse(model=model, messages=msgs, max_tokens=MAX, temperature=0.7, seed=3, response_format=Owner)
owner = p.choices[0].message.parsed
assert isinstance(owner, Owner) and len(owner.pets) <= 2, p

# json_object, and a completion with json_schema, streamed: the text adds up to valid JSON.
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=MAX, temperature=0, response_format={"type": "json_object"})
obj = json.loads(r.choices[0].message.content) if r.choices[0].finish_reason == "stop" else {}
assert isinstance(obj, dict), r
schema = bounded(SCHEMAS[0])
text = "".join(
    ch.choices[0].text
    for ch in client.completions.create(
        model=model, prompt="JSON:", max_tokens=MAX, temperature=0.9, seed=5, stream=True,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}},
    )
    if ch.choices
)
jsonschema.validate(json.loads(text), schema)

# Invalid constraints: a 400 naming the field.
for bad, param in [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "response_format.json_schema.schema"),
    ({"type": "xml"}, "response_format.type"),
]:
    try:
        client.chat.completions.create(model=model, messages=msgs, max_tokens=8, response_format=bad)
        raise AssertionError(f"accepted {bad}")
    except openai.BadRequestError as e:
        assert param in str(e), (param, e)


def generate(sp, status=200):
    body = json.dumps({"text": "Answer:", "sampling_params": sp}).encode()
    req = urllib.request.Request(base + "/generate", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as f:
            assert status == 200, sp
            return json.load(f)
    except urllib.error.HTTPError as e:
        assert e.code == status, (e.code, e.read())
        return json.loads(e.read() or b"{}")


# /generate: regex, EBNF, json_schema (a string, as SGLang takes it).
for seed in range(5):
    g = generate({"regex": r"(yes|no), [0-9]{1,3} (apples|pears)", "max_new_tokens": 64, "temperature": 1.0, "sampling_seed": seed})
    assert re.fullmatch(r"(yes|no), [0-9]{1,3} (apples|pears)", g["text"]), g
    g = generate({"ebnf": 'root ::= "(" num ("," num)* ")"\nnum ::= [1-9] [0-9]?', "max_new_tokens": 64, "temperature": 1.0, "sampling_seed": seed})
    assert re.fullmatch(r"\([1-9][0-9]?(,[1-9][0-9]?)*\)", g["text"]) or g["meta_info"]["finish_reason"]["type"] == "length", g
g = generate({"json_schema": json.dumps(bounded(SCHEMAS[4])), "max_new_tokens": MAX, "temperature": 0})
jsonschema.validate(json.loads(g["text"]), bounded(SCHEMAS[4]))
e = generate({"regex": "a(b", "max_new_tokens": 8}, status=400)
assert "sampling_params.regex" in json.dumps(e), e
e = generate({"ebnf": "root ::= missing", "max_new_tokens": 8}, status=400)
assert "sampling_params.ebnf" in json.dumps(e), e
e = generate({"regex": "a", "json_schema": "{}", "max_new_tokens": 8}, status=400)
print("structured outputs: ok")
