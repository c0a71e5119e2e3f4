//! Parsers on crafted model output: each case whole and streamed one character at a time.

use super::*;

fn names() -> Vec<String> {
    vec!["get_weather".into(), "add".into()]
}

fn call(name: &str, args: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: args.into(),
    }
}

fn whole(f: ToolFormat, text: &str) -> ToolStep {
    let mut s = ToolStream::new(f, names());
    let mut a = s.push(text);
    let b = s.finish();
    a.content.push_str(&b.content);
    a.calls.extend(b.calls);
    a
}

fn by_chars(f: ToolFormat, text: &str) -> ToolStep {
    let mut s = ToolStream::new(f, names());
    let mut acc = ToolStep::default();
    for c in text.chars() {
        let d = s.push(&c.to_string());
        acc.content.push_str(&d.content);
        acc.calls.extend(d.calls);
    }
    let d = s.finish();
    acc.content.push_str(&d.content);
    acc.calls.extend(d.calls);
    acc
}

fn check(f: ToolFormat, text: &str, content: &str, calls: &[ToolCall]) {
    for (how, got) in [("whole", whole(f, text)), ("streamed", by_chars(f, text))] {
        assert_eq!(got.content, content, "{f:?} {how}: {text:?}");
        assert_eq!(got.calls, calls, "{f:?} {how}: {text:?}");
    }
}

#[test]
fn hermes_calls_parse_whole_and_streamed_alike() {
    let w = call("get_weather", r#"{"city":"Paris"}"#);
    let a = call("add", r#"{"a":1,"b":2}"#);
    let h = ToolFormat::Hermes;
    check(
        h,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "",
        std::slice::from_ref(&w),
    );
    check(
        h,
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n",
        "Let me check.\n",
        &[w.clone(), a.clone()],
    );
    // Unterminated last block (EOS right after the JSON).
    check(
        h,
        "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}",
        "",
        std::slice::from_ref(&a),
    );
    // Not a call: unknown tool, bad JSON, plain text with a lookalike.
    let bad = "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>";
    check(h, bad, bad, &[]);
    check(
        h,
        "<tool_call>{oops</tool_call>",
        "<tool_call>{oops</tool_call>",
        &[],
    );
    check(h, "a <tool_ b", "a <tool_ b", &[]);
    // Arguments given as a JSON string are kept as that string.
    check(
        h,
        "<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
        "",
        &[call("add", "{\"a\": 1}")],
    );
}

#[test]
fn llama3_calls_parse_whole_and_streamed_alike() {
    let l = ToolFormat::Llama3;
    let w = call("get_weather", r#"{"city":"Paris"}"#);
    check(
        l,
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        "",
        std::slice::from_ref(&w),
    );
    check(
        l,
        " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"add\", \"parameters\": {\"a\": 1}}",
        "",
        &[w, call("add", r#"{"a":1}"#)],
    );
    check(l, "The answer is 4.", "The answer is 4.", &[]);
    check(l, "{\"not\": \"a call\"}", "{\"not\": \"a call\"}", &[]);
    check(l, "<|py", "<|py", &[]);
}

#[test]
fn mistral_calls_parse_whole_and_streamed_alike() {
    let m = ToolFormat::Mistral;
    let two = [
        call("get_weather", r#"{"city":"Paris"}"#),
        call("add", r#"{"a":1,"b":2}"#),
    ];
    check(
        m,
        "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}]",
        "",
        &two,
    );
    // With special tokens skipped the marker is gone; the JSON list still parses.
    check(
        m,
        "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
        "",
        &two[..1],
    );
    check(m, "Sure: [1, 2]", "Sure: [1, 2]", &[]);
    check(m, "[1, 2]", "[1, 2]", &[]);
}

#[test]
fn parser_names_are_sglangs() {
    assert_eq!(ToolFormat::parse("qwen25"), Some(ToolFormat::Hermes));
    assert_eq!(ToolFormat::parse("qwen"), Some(ToolFormat::Hermes));
    assert_eq!(ToolFormat::parse("llama3"), Some(ToolFormat::Llama3));
    assert_eq!(ToolFormat::parse("mistral"), Some(ToolFormat::Mistral));
    assert_eq!(ToolFormat::parse("pythonic"), None);
}
