//! `tool_choice: "required"` and a named function: the answer is constrained to the calls' JSON
//! (SGLang's schemas), then read back into `tool_calls` (docs/structured.md).

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
}
