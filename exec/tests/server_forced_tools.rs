//! `tool_choice: "required"` and a named function on the tiny random-weight Qwen3: the answer is
//! constrained to the calls' JSON, so even random weights give calls that follow the tools'
//! schemas, in `tool_calls` with finish reason `tool_calls`, streamed and not.

mod server_common;

use doppel_exec::server::client::post_json;
use serde_json::{json, Value};
use server_common::{assert_no_leak, idle_info, sse_events, start};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                           "op": {"enum": ["plus", "minus"]}},
            "required": ["a", "op"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object",
            "properties": {}, "additionalProperties": false}}},
    ])
}

fn body(choice: Value, extra: Value) -> Value {
    let mut b = json!({"messages": [{"role": "user", "content": "Add 2 and 3"}],
        "tools": tools(), "tool_choice": choice, "max_tokens": 256, "seed": 5});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Each call names a tool and its arguments follow that tool's schema.
fn check_call(c: &Value) -> String {
    assert_eq!(c["type"], "function", "{c}");
    assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
    let name = c["function"]["name"].as_str().unwrap().to_string();
    let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
    let o = args.as_object().unwrap();
    match name.as_str() {
        "add" => {
            assert_eq!(o.len(), 2, "{args}");
            assert!((0..=9).contains(&o["a"].as_i64().unwrap()), "{args}");
            assert!(o["op"] == "plus" || o["op"] == "minus", "{args}");
        }
        "now" => assert!(o.is_empty(), "{args}"),
        other => panic!("unknown function {other}"),
    }
    name
}

async fn whole(addr: &str, b: &Value) -> Vec<String> {
    let r = post_json(addr, "/v1/chat/completions", b).await.unwrap();
    assert_eq!(r.status, 200, "{b}: {}", r.text());
    let v = r.json();
    let ch = &v["choices"][0];
    assert_eq!(ch["finish_reason"], "tool_calls", "{v}");
    assert!(ch["message"]["content"].is_null(), "{v}");
    let calls = ch["message"]["tool_calls"].as_array().unwrap();
    calls.iter().map(check_call).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_choice_gives_schema_valid_calls_streamed_and_not() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    let named = json!({"type": "function", "function": {"name": "add"}});
    for seed in 0..4 {
        let b = body(named.clone(), json!({"seed": seed}));
        assert_eq!(whole(a, &b).await, ["add"]);
        let b = body(
            json!("required"),
            json!({"seed": seed, "parallel_tool_calls": false}),
        );
        assert_eq!(whole(a, &b).await.len(), 1);
        let b = body(json!("required"), json!({"seed": seed}));
        assert!(!whole(a, &b).await.is_empty());
    }
    // Streamed: no content; each call's first delta names it (with its id), later ones add
    // argument text; joined they are the whole answer's calls; finish reason tool_calls.
    for (choice, extra) in [
        (named.clone(), json!({"seed": 1})),
        (json!("required"), json!({"seed": 2})),
        (
            json!("required"),
            json!({"seed": 3, "parallel_tool_calls": false}),
        ),
    ] {
        let b = body(choice, extra);
        let r = post_json(a, "/v1/chat/completions", &b)
            .await
            .unwrap()
            .json();
        let want = &r["choices"][0]["message"]["tool_calls"];
        let mut sb = b.clone();
        sb["stream"] = json!(true);
        let evs = sse_events(a, "/v1/chat/completions", &sb).await;
        let deltas: Vec<&Value> = evs.iter().map(|e| &e["choices"][0]["delta"]).collect();
        // The role chunk carries an empty content, as OpenAI's does; no text follows.
        assert!(
            deltas
                .iter()
                .all(|d| d.get("content").is_none_or(|c| c == "")),
            "{evs:?}"
        );
        let mut calls: Vec<Value> = Vec::new();
        for d in deltas.iter().filter_map(|d| d.get("tool_calls")) {
            for t in d.as_array().unwrap() {
                let i = t["index"].as_u64().unwrap() as usize;
                if i == calls.len() {
                    assert!(
                        t["id"].is_string() && t["function"]["name"].is_string(),
                        "{t}"
                    );
                    calls.push(t.clone());
                } else {
                    assert!(
                        t.get("id").is_none() && t["function"].get("name").is_none(),
                        "{t}"
                    );
                    let more = t["function"]["arguments"].as_str().unwrap();
                    let args = calls[i]["function"]["arguments"]
                        .as_str()
                        .unwrap()
                        .to_string()
                        + more;
                    calls[i]["function"]["arguments"] = json!(args);
                }
            }
        }
        assert_eq!(calls.len(), want.as_array().unwrap().len(), "{evs:?}");
        for (c, w) in calls.iter().zip(want.as_array().unwrap()) {
            assert_eq!(check_call(c), w["function"]["name"]);
            let (x, y): (Value, Value) = (
                serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap(),
                serde_json::from_str(w["function"]["arguments"].as_str().unwrap()).unwrap(),
            );
            assert_eq!(x, y, "streamed arguments join to the whole answer's");
        }
        let last = &evs.last().unwrap()["choices"][0];
        assert_eq!(last["finish_reason"], "tool_calls", "{evs:?}");
    }
    assert_no_leak(&idle_info(a).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_choice_with_a_response_format_is_refused_by_name() {
    let srv = start(|_| {}).await;
    let b = body(
        json!("required"),
        json!({"response_format": {"type": "json_object"}}),
    );
    let r = post_json(&srv.addr, "/v1/chat/completions", &b)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("response_format") && msg.contains("tool_choice"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structural_tag_forces_the_structure_after_each_trigger() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    // A strong bias makes the model write the trigger, so the structure must follow it.
    let t = post_json(
        a,
        "/tokenize",
        &json!({"prompt": "<", "add_special_tokens": false}),
    )
    .await
    .unwrap()
    .json();
    let lt = t["tokens"][0].as_u64().unwrap();
    let schema = tools()[0]["function"]["parameters"].clone();
    let rf = json!({"type": "structural_tag", "triggers": ["<"],
        "structures": [{"begin": "<f=add>", "schema": schema, "end": "</f>"}]});
    let mut b = body(
        json!("none"),
        json!({"response_format": rf, "max_tokens": 60}),
    );
    b["logit_bias"] = json!({lt.to_string(): 100});
    b.as_object_mut().unwrap().remove("tools");
    b.as_object_mut().unwrap().remove("tool_choice");
    let r = post_json(a, "/v1/chat/completions", &b).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let rest = text
        .strip_prefix("<f=add>")
        .unwrap_or_else(|| panic!("{text:?}"));
    let json_end = rest.find("</f>").unwrap_or_else(|| panic!("{text:?}"));
    let args: Value = serde_json::from_str(&rest[..json_end]).unwrap();
    assert!((0..=9).contains(&args["a"].as_i64().unwrap()), "{args}");
    assert!(args["op"] == "plus" || args["op"] == "minus", "{args}");
    // The same through /generate's sampling parameter (a JSON string, as SGLang takes it).
    let g = post_json(
        a,
        "/generate",
        &json!({"text": "x", "sampling_params": {"max_new_tokens": 40, "logit_bias": {lt.to_string(): 100},
            "structural_tag": rf.to_string()}}),
    )
    .await
    .unwrap();
    assert_eq!(g.status, 200, "{}", g.text());
    assert!(g.json()["text"].as_str().unwrap().starts_with("<f=add>{"));
    // A structure no trigger opens is a 400 naming it.
    let mut bad = b.clone();
    bad["response_format"]["structures"][0]["begin"] = json!("g>");
    let r = post_json(a, "/v1/chat/completions", &bad).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "response_format.structures");
    assert!(r.text().contains("structures[0].begin"), "{}", r.text());
    assert_no_leak(&idle_info(a).await);
}
