//! `tool_choice: "required"` and a named function: the answer is constrained to the calls' JSON
//! (SGLang's schemas), then read back into `tool_calls`, whole or as it streams
//! (docs/structured.md).

use super::toolcall::ToolCall;
use serde_json::{json, Value};

/// A tool choice that forces calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forced {
    /// The output is this function's arguments object.
    Named(String),
    /// The output is a list of `{"name", "parameters"}` calls.
    Required,
}

/// The `parameters` schema of the function `t`; a function without one takes any object.
fn parameters(t: &Value) -> Value {
    match t.pointer("/function/parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => json!({"type": "object"}),
    }
}

fn name(t: &Value) -> &str {
    t.pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl Forced {
    /// The JSON schema the output must follow, over the request's `tools` (already checked by
    /// `chat::read`); one call unless `parallel`.
    pub fn schema(&self, tools: &[Value], parallel: bool) -> Value {
        match self {
            Forced::Named(n) => tools
                .iter()
                .find(|t| name(t) == n)
                .map(parameters)
                .unwrap_or_else(|| json!({"type": "object"})),
            Forced::Required => {
                let calls: Vec<Value> = tools
                    .iter()
                    .map(|t| {
                        json!({
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "enum": [name(t)]},
                                "parameters": parameters(t),
                            },
                            "required": ["name", "parameters"],
                            "additionalProperties": false,
                        })
                    })
                    .collect();
                let mut s = json!({"type": "array", "minItems": 1, "items": {"anyOf": calls}});
                if !parallel {
                    s["maxItems"] = json!(1);
                }
                s
            }
        }
    }

    /// The calls in a whole output; None when it is not the forced JSON (cut by `max_tokens`).
    pub fn parse(&self, text: &str) -> Option<Vec<ToolCall>> {
        let v: Value = serde_json::from_str(text).ok()?;
        match self {
            Forced::Named(n) => v.is_object().then(|| {
                vec![ToolCall {
                    name: n.clone(),
                    arguments: v.to_string(),
                }]
            }),
            Forced::Required => v
                .as_array()?
                .iter()
                .map(|c| {
                    Some(ToolCall {
                        name: c.get("name")?.as_str()?.to_string(),
                        arguments: c.get("parameters")?.to_string(),
                    })
                })
                .collect(),
        }
    }
}

/// A piece of a forced call as it is generated: the first piece of a call names it, the rest
/// add argument text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPart {
    /// The call's index in the answer.
    pub index: usize,
    /// The function, on the call's first piece only.
    pub name: Option<String>,
    /// Argument text (JSON, in pieces).
    pub arguments: String,
}

/// Reads a forced answer as it is generated and cuts it into [`CallPart`]s: a named function's
/// output is its arguments; a `required` list is scanned (JSON strings, depth, the keys of each
/// item) so each item's `"parameters"` text streams as arguments once its `"name"` is known.
pub struct ForcedStream {
    forced: Forced,
    /// Calls named so far.
    named: usize,
    depth: u32,
    in_str: bool,
    esc: bool,
    /// The string being read at item level (a key or the name), and the last key.
    text: String,
    key: String,
    /// Inside an item's `"parameters"` value.
    in_params: bool,
    /// A key's value follows (after its ':').
    value_next: bool,
    name: Option<String>,
    /// Argument text of the current item before its name is known.
    held: String,
}

impl ForcedStream {
    /// A scanner for `forced`.
    pub fn new(forced: Forced) -> ForcedStream {
        ForcedStream {
            forced,
            named: 0,
            depth: 0,
            in_str: false,
            esc: false,
            text: String::new(),
            key: String::new(),
            in_params: false,
            value_next: false,
            name: None,
            held: String::new(),
        }
    }

    /// The parts `text` adds.
    pub fn push(&mut self, text: &str) -> Vec<CallPart> {
        let mut out = Vec::new();
        if let Forced::Named(n) = &self.forced {
            if self.named == 0 {
                self.named = 1;
                out.push(CallPart {
                    index: 0,
                    name: Some(n.clone()),
                    arguments: String::new(),
                });
            }
            add_args(&mut out, 0, text);
            return out;
        }
        for c in text.chars() {
            self.scan(c, &mut out);
        }
        out
    }

    /// One character of a `required` list (items sit at depth 2).
    fn scan(&mut self, c: char, out: &mut Vec<CallPart>) {
        if self.in_params {
            self.params_char(c, out);
            return;
        }
        if self.in_str {
            match (self.esc, c) {
                (true, _) => self.esc = false,
                (false, '\\') => self.esc = true,
                (false, '"') => {
                    self.in_str = false;
                    return self.string_done(out);
                }
                _ => {}
            }
            self.text.push(c);
            return;
        }
        if self.value_next && self.depth == 2 && self.key == "parameters" && !c.is_whitespace() {
            self.value_next = false;
            self.in_params = true;
            return self.params_char(c, out);
        }
        match c {
            '"' if self.depth == 2 => {
                self.in_str = true;
                self.text.clear();
            }
            ':' if self.depth == 2 => self.value_next = true,
            ',' if self.depth == 2 => self.value_next = false,
            '{' | '[' => {
                self.depth += 1;
                if self.depth == 2 {
                    self.name = None;
                    self.held.clear();
                }
            }
            '}' | ']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
    }

    /// A string at item level ended: a key, or the value of `"name"`.
    fn string_done(&mut self, out: &mut Vec<CallPart>) {
        let text = std::mem::take(&mut self.text);
        if !self.value_next {
            self.key = text;
            return;
        }
        self.value_next = false;
        if self.key == "name" && self.name.is_none() {
            // The text between the quotes, unescaped (tool names need no escapes in practice).
            let name = serde_json::from_str::<String>(&format!("\"{text}\"")).unwrap_or(text);
            self.name = Some(name.clone());
            let index = self.named;
            self.named += 1;
            out.push(CallPart {
                index,
                name: Some(name),
                arguments: std::mem::take(&mut self.held),
            });
        }
    }

    /// One character of an item's `"parameters"` value (started at item level, depth 2).
    fn params_char(&mut self, c: char, out: &mut Vec<CallPart>) {
        let mut end = false;
        if self.in_str {
            match (self.esc, c) {
                (true, _) => self.esc = false,
                (false, '\\') => self.esc = true,
                (false, '"') => self.in_str = false,
                _ => {}
            }
        } else {
            match c {
                '"' => self.in_str = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' if self.depth == 2 => {
                    // The item closes: a primitive value ended just before.
                    self.depth -= 1;
                    self.in_params = false;
                    return;
                }
                '}' | ']' => {
                    self.depth -= 1;
                    end = self.depth == 2;
                }
                ',' if self.depth == 2 => {
                    self.in_params = false;
                    return;
                }
                _ => {}
            }
        }
        match self.name {
            Some(_) => add_args(out, self.named - 1, &c.to_string()),
            None => self.held.push(c),
        }
        if end {
            self.in_params = false;
        }
    }
}

/// Append argument text for call `index`, merging into the last part when it is the same call.
pub fn add_args(out: &mut Vec<CallPart>, index: usize, text: &str) {
    if text.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(p) if p.index == index => p.arguments.push_str(text),
        _ => out.push(CallPart {
            index,
            name: None,
            arguments: text.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "add",
                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}),
            json!({"type": "function", "function": {"name": "now"}}),
        ]
    }

    #[test]
    fn a_named_function_is_constrained_to_its_parameters() {
        let f = Forced::Named("add".into());
        assert_eq!(
            f.schema(&tools(), false),
            tools()[0]["function"]["parameters"]
        );
        assert_eq!(
            Forced::Named("now".into()).schema(&tools(), false),
            json!({"type": "object"})
        );
        let calls = f.parse(r#" {"a": 1} "#).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("add", r#"{"a":1}"#)
        );
        assert!(f.parse(r#"{"a": 1"#).is_none());
        assert!(f.parse("[1]").is_none());
    }

    #[test]
    fn required_is_a_list_of_named_calls_one_unless_parallel() {
        let s = Forced::Required.schema(&tools(), false);
        assert_eq!(s["maxItems"], 1);
        assert_eq!(
            s["items"]["anyOf"][1]["properties"]["name"]["enum"],
            json!(["now"])
        );
        assert!(Forced::Required
            .schema(&tools(), true)
            .get("maxItems")
            .is_none());
        let calls = Forced::Required
            .parse(
                r#"[{"name": "add", "parameters": {"a": 2}}, {"name": "now", "parameters": {}}]"#,
            )
            .unwrap();
        let got: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(got, [("add", r#"{"a":2}"#), ("now", "{}")]);
        assert!(Forced::Required.parse(r#"[{"name": "add"}]"#).is_none());
    }

    /// Feed `text` in pieces of `step` chars; the parts joined per call: (name, arguments).
    fn streamed(f: Forced, text: &str, step: usize) -> Vec<(String, String)> {
        let mut st = ForcedStream::new(f);
        let mut parts = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(step) {
            parts.extend(st.push(&c.iter().collect::<String>()));
        }
        let mut calls: Vec<(String, String)> = Vec::new();
        for p in parts {
            match p.name {
                Some(n) => {
                    assert_eq!(p.index, calls.len(), "calls are named in order");
                    calls.push((n, p.arguments));
                }
                None => calls[p.index].1.push_str(&p.arguments),
            }
        }
        calls
    }

    #[test]
    fn streamed_calls_join_to_the_whole_answers_calls() {
        let list = r#"[{"name": "add", "parameters": {"a": 2, "s": "x}\"y", "l": [1, {"b": []}]}}, {"parameters": {}, "name": "now"}]"#;
        let whole = Forced::Required.parse(list).unwrap();
        for step in [1, 3, 1000] {
            let got = streamed(Forced::Required, list, step);
            assert_eq!(got.len(), 2, "step {step}: {got:?}");
            for (g, w) in got.iter().zip(&whole) {
                assert_eq!(g.0, w.name);
                let (a, b): (Value, Value) = (
                    serde_json::from_str(&g.1).unwrap(),
                    serde_json::from_str(&w.arguments).unwrap(),
                );
                assert_eq!(a, b, "step {step}");
            }
        }
        let got = streamed(Forced::Named("add".into()), r#"{"a":1}"#, 2);
        assert_eq!(got, [("add".to_string(), r#"{"a":1}"#.to_string())]);
        // The name goes out before any argument text, even with nothing generated yet.
        let mut st = ForcedStream::new(Forced::Named("add".into()));
        let first = st.push("");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name.as_deref(), Some("add"));
    }
}
