//! Chat tools, template kwargs and reasoning through the HTTP server (tiny random-weight Qwen3 on
//! the CPU, a Qwen-style template that renders tools), fields that are honoured or refused by
//! name, priority reaching the scheduler, and the endpoints clients and routers probe.

mod server_common;

use doppel_exec::chat_template::{strftime, ChatInput};
use doppel_exec::server::client::{get, post_json};
use doppel_exec::tokenizer::Tokenizer;
use serde_json::{json, Value};
use server_common::{assert_no_leak, idle_info, sse_events, start};
use std::path::Path;

/// A Qwen-like template: tools in a system turn, assistant tool calls and tool results,
/// `enable_thinking: false` closes an empty think block, `open_think` opens one, `show_date`
/// prints the date.
const TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
{% if show_date is defined %}Today is {{ strftime_now("%Y-%m-%d") }}.
{% endif %}# Tools
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% elif open_think is defined %}<think>
{% endif %}{% endif %}"#;

fn use_template(dir: &Path) {
    let p = dir.join("tokenizer_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["chat_template"] = json!(TEMPLATE);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Prompt tokens the template gives for this input.
fn count(tok: &Tokenizer, messages: Value, tools: Option<Value>, kwargs: Value) -> usize {
    let input = ChatInput {
        messages: messages.as_array().unwrap().clone(),
        tools: tools.map(|t| t.as_array().unwrap().clone()),
        kwargs: kwargs.as_object().cloned().unwrap_or_default(),
        add_generation_prompt: true,
    };
    tok.encode(&tok.render_chat(&input).unwrap(), false)
        .unwrap()
        .len()
}

async fn prompt_tokens(addr: &str, body: Value) -> u64 {
    let r = post_json(addr, "/v1/chat/completions", &body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    r.json()["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_tool_calls_and_template_kwargs_reach_the_template() {
    let mut dir = None;
    let srv = start(|c| {
        let d = c.model.clone().unwrap();
        use_template(&d);
        dir = Some(d);
    })
    .await;
    let tok = Tokenizer::load(&dir.unwrap()).unwrap();
    let a = srv.addr.as_str();
    let tools = json!([weather_tool()]);
    let base = json!({"messages": user("Weather in Paris?"), "max_tokens": 2});
    let plain = count(&tok, user("Weather in Paris?"), None, json!({}));
    let with_tools = count(
        &tok,
        user("Weather in Paris?"),
        Some(tools.clone()),
        json!({}),
    );
    assert!(with_tools > plain + 10);
    let mut b = base.clone();
    b["tools"] = tools.clone();
    assert_eq!(prompt_tokens(a, b.clone()).await, with_tools as u64);
    // tool_choice "none" keeps the tools out of the prompt, as SGLang does.
    b["tool_choice"] = json!("none");
    assert_eq!(prompt_tokens(a, b).await, plain as u64);
    // An assistant turn with a call (arguments as a JSON string) and the tool's result.
    let history = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]);
    // The server hands the template the arguments as an object (as SGLang does), so `tojson`
    // prints them as JSON rather than as a quoted string.
    let mut seen = history.clone();
    seen[1]["content"] = json!("");
    seen[1]["tool_calls"][0]["function"]["arguments"] = json!({"city": "Paris"});
    let want = count(&tok, seen, Some(tools.clone()), json!({}));
    let body = json!({"messages": history, "tools": tools, "max_tokens": 2});
    assert_eq!(prompt_tokens(a, body).await, want as u64);
    // chat_template_kwargs become template variables.
    let kw = json!({"enable_thinking": false});
    let want = count(&tok, user("Weather in Paris?"), None, kw.clone());
    assert!(want > plain);
    let mut b = base.clone();
    b["chat_template_kwargs"] = kw;
    assert_eq!(prompt_tokens(a, b).await, want as u64);
    // strftime_now prints today's date.
    let input = ChatInput {
        messages: user("x").as_array().unwrap().clone(),
        tools: Some(vec![weather_tool()]),
        kwargs: json!({"show_date": true}).as_object().unwrap().clone(),
        add_generation_prompt: true,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let text = tok.render_chat(&input).unwrap();
    assert!(
        text.contains(&format!("Today is {}.", strftime("%Y-%m-%d", now))),
        "{text}"
    );
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_splits_from_content_streamed_and_not() {
    let srv = start(|c| {
        use_template(c.model.as_deref().unwrap());
        c.reasoning_parser = Some("qwen3".into());
    })
    .await;
    let a = srv.addr.as_str();
    let body = |extra: Value| {
        let mut b = json!({"messages": user("Think first."), "max_tokens": 12, "temperature": 0,
            "ignore_eos": true, "chat_template_kwargs": {"open_think": true}});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Unsplit, the whole text is content.
    let r = post_json(
        a,
        "/v1/chat/completions",
        &body(json!({"separate_reasoning": false})),
    )
    .await
    .unwrap()
    .json();
    let text = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert_eq!(r["choices"][0]["message"]["reasoning_content"], Value::Null);
    // The template opened the think block and the output never closes it: all reasoning.
    let r = post_json(a, "/v1/chat/completions", &body(json!({})))
        .await
        .unwrap()
        .json();
    let m = &r["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], json!(text), "{r}");
    assert_eq!(m["content"], "", "{r}");
    for stream_reasoning in [true, false] {
        let events = sse_events(
            a,
            "/v1/chat/completions",
            &body(json!({"stream": true, "stream_reasoning": stream_reasoning})),
        )
        .await;
        let mut reasoning = String::new();
        let mut pieces = 0;
        for e in &events {
            let d = &e["choices"][0]["delta"];
            assert!(d.get("content").is_none_or(|c| c == ""), "{e}");
            if let Some(r) = d["reasoning_content"].as_str() {
                reasoning.push_str(r);
                pieces += 1;
            }
        }
        assert_eq!(reasoning, text);
        if !stream_reasoning {
            assert_eq!(pieces, 1, "{events:?}");
        }
    }
    // With the think block closed by the template the output is the answer.
    let r = post_json(
        a,
        "/v1/chat/completions",
        &body(json!({"chat_template_kwargs": {"enable_thinking": false}})),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(r["choices"][0]["message"]["reasoning_content"], "", "{r}");
    assert!(!r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_takes_effect_or_is_refused_by_name() {
    let srv = start(|_| {}).await;
    let a = srv.addr.as_str();
    let chat = |extra: Value| {
        let mut b = json!({"messages": user("hi"), "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let tools = json!([weather_tool()]);
    let refused: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/chat/completions",
            chat(json!({"tools": "get_weather"})),
            "tools",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": [{"type": "function"}]})),
            "tools",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tool_choice": "auto"})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "sometimes"})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "nope"}}})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stream": true, "stream_options": {"include_usage": "yes"}})),
            "stream_options.include_usage",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stream_options": {"include_usage": true}})),
            "stream_options",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"lora_path": "adapter"})),
            "lora_path",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"priority": 3})),
            "priority",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"chat_template_kwargs": {"messages": []}})),
            "chat_template_kwargs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"chat_template_kwargs": 3})),
            "chat_template_kwargs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"reasoning_effort": "high"})),
            "reasoning_effort",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"modalities": ["text", "audio"]})),
            "modalities",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"return_hidden_states": true})),
            "return_hidden_states",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{oops"}}]}]})),
            "messages[0].tool_calls",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "lora_path": "a"}),
            "lora_path",
        ),
        (
            "/generate",
            json!({"text": "x", "logprob_start_len": 0}),
            "logprob_start_len",
        ),
        (
            "/generate",
            json!({"text": "x", "lora_path": "a"}),
            "lora_path",
        ),
        ("/generate", json!({"text": "x", "priority": 1}), "priority"),
        (
            "/generate",
            json!({"text": "x", "image_data": "http://x/y.png"}),
            "image_data",
        ),
    ];
    for (path, body, field) in refused {
        let r = post_json(a, path, &body).await.unwrap();
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["param"], field, "{path} {body}: {e}");
    }
    // Any model name is served; neutral values of refused fields are accepted.
    let accepted: Vec<(&str, Value)> = vec![
        (
            "/v1/chat/completions",
            chat(json!({"model": "some-other-name", "tools": tools})),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"return_hidden_states": false, "modalities": ["text"]})),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o", "prompt": "x", "max_tokens": 2, "echo": true}),
        ),
        (
            "/generate",
            json!({"text": "x", "logprob_start_len": -1, "sampling_params": {"max_new_tokens": 2}}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x y", "echo": true, "logprobs": 1, "max_tokens": 2}),
        ),
        (
            "/generate",
            json!({"text": "x y", "logprob_start_len": 0, "return_logprob": true,
                   "sampling_params": {"max_new_tokens": 2}}),
        ),
    ];
    for (path, body) in accepted {
        let r = post_json(a, path, &body).await.unwrap();
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
    }
    // return_text_in_logprobs puts each token's text in the third slot.
    let r = post_json(
        a,
        "/generate",
        &json!({"text": "x", "return_logprob": true, "top_logprobs_num": 2,
                "return_text_in_logprobs": true, "sampling_params": {"max_new_tokens": 3}}),
    )
    .await
    .unwrap()
    .json();
    let meta = &r["meta_info"];
    for e in meta["output_token_logprobs"].as_array().unwrap() {
        assert!(e[2].is_string(), "{e}");
    }
    assert!(meta["output_top_logprobs"][0][1][2].is_string(), "{meta}");
    assert_no_leak(&idle_info(a).await);
    srv.shutdown().await;
}

/// Poll /get_load until `want(requests, waiting)` holds.
async fn wait_for_load(a: &str, what: &str, want: impl Fn(u64, u64) -> bool) {
    for _ in 0..2000 {
        let load = get(a, "/get_load").await.unwrap().json();
        let (n, w) = (
            load[0]["num_reqs"].as_u64(),
            load[0]["num_waiting_reqs"].as_u64(),
        );
        if want(n.unwrap(), w.unwrap()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("never {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_orders_the_waiting_queue() {
    let srv = start(|c| {
        c.policy = doppel_core::Policy::Priority;
        c.max_running_requests = Some(1);
    })
    .await;
    let a = srv.addr.clone();
    // A long request holds the only running slot until both others wait behind it, then is
    // aborted: no sleep decides the order (the tiny model can finish 1,500 tokens in 250 ms).
    let long = tokio::spawn({
        let a = a.clone();
        async move {
            post_json(
                &a,
                "/generate",
                &json!({"text": "hold", "priority": 0, "rid": "hold",
                "sampling_params": {"max_new_tokens": 2000, "ignore_eos": true}}),
            )
            .await
            .unwrap()
        }
    });
    wait_for_load(&a, "running the long request", |n, w| n == 1 && w == 0).await;
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // The low-priority request arrives first.
    for (waiting, name, prio) in [(1, "low", -5), (2, "high", 5)] {
        let (a2, order) = (a.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let r = post_json(
                &a2,
                "/generate",
                &json!({"text": name, "priority": prio,
                "sampling_params": {"max_new_tokens": 4, "ignore_eos": true}}),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            order.lock().unwrap().push(name);
        }));
        wait_for_load(&a, &format!("{waiting} waiting"), |_, w| w == waiting).await;
    }
    let r = post_json(&a, "/abort_request", &json!({"rid": "hold"}))
        .await
        .unwrap();
    assert_eq!(r.json()["aborted"], 1, "{}", r.text());
    for t in tasks {
        t.await.unwrap();
    }
    let long = long.await.unwrap();
    assert_eq!(long.status, 200);
    assert_eq!(long.json()["meta_info"]["finish_reason"]["type"], "abort");
    assert_eq!(*order.lock().unwrap(), vec!["high", "low"]);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_endpoints_answer_like_sglang() {
    let mut dir = None;
    let srv = start(|c| dir = c.model.clone()).await;
    let tok = Tokenizer::load(&dir.unwrap()).unwrap();
    let a = srv.addr.as_str();
    let want = tok.encode("hello world", true).unwrap();
    for path in ["/tokenize", "/v1/tokenize"] {
        let r = post_json(a, path, &json!({"model": "x", "prompt": "hello world"}))
            .await
            .unwrap()
            .json();
        assert_eq!(r["tokens"], json!(want), "{r}");
        assert_eq!(r["count"], want.len());
        assert_eq!(r["max_model_len"], 2048);
    }
    let r = post_json(
        a,
        "/tokenize",
        &json!({"prompt": ["a b", "c"], "add_special_tokens": false}),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(r["tokens"][1], json!(tok.encode("c", false).unwrap()));
    for path in ["/detokenize", "/v1/detokenize"] {
        let r = post_json(a, path, &json!({"tokens": want}))
            .await
            .unwrap()
            .json();
        assert_eq!(r["text"], tok.decode(&want, false).unwrap());
    }
    let r = post_json(a, "/detokenize", &json!({"tokens": [[999999]]}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "tokens[0]");
    assert_eq!(
        get(a, "/v1/models/tiny").await.unwrap().json()["id"],
        "tiny"
    );
    assert_eq!(get(a, "/v1/models/other").await.unwrap().status, 404);
    let r = get(a, "/v1/models/org/other").await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (404, json!("model"))
    );
    assert_eq!(
        get(a, "/model_info").await.unwrap().json()["served_model_name"],
        "tiny"
    );
    let info = get(a, "/server_info").await.unwrap().json();
    assert_eq!(
        (info["dp_size"].clone(), info["tool_call_parser"].clone()),
        (json!(1), json!("qwen25"))
    );
    let load = get(a, "/get_load").await.unwrap().json();
    assert_eq!(load[0]["num_tokens"], 0, "{load}");
    assert_eq!(load[0]["num_reqs"], 0, "{load}");
    let r = get(a, "/ready").await.unwrap();
    assert_eq!(r.status, 200);
    srv.shutdown().await;
}
