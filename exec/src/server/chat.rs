//! The chat-specific fields of /v1/chat/completions: messages (with tool calls and tool results),
//! tools and tool_choice, chat_template_kwargs and the reasoning switches.

use super::error::ApiError;
use super::params::{self, Fields};
use crate::chat_template::{ChatInput, RESERVED_KWARGS};
use serde_json::{Map, Value};

/// How the model may call tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tools (none given, or `tool_choice: "none"`).
    None,
    /// The model decides.
    Auto,
    /// At least one call.
    Required,
    /// Exactly this function.
    Named(String),
}

/// A chat request's prompt-side settings.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// What the template renders.
    pub input: ChatInput,
    /// The tool choice.
    pub tool_choice: ToolChoice,
    /// Names of the request's functions.
    pub tool_names: Vec<String>,
    /// More than one call per answer allowed.
    pub parallel_tool_calls: bool,
    /// Split reasoning from content (SGLang's `separate_reasoning`, default true).
    pub separate_reasoning: bool,
    /// Stream reasoning as it comes (SGLang's `stream_reasoning`, default true); false sends it
    /// in one piece once the block closes.
    pub stream_reasoning: bool,
}

fn content_text(mf: &Fields, name: &str) -> Result<Value, ApiError> {
    Ok(match mf.get("content") {
        None => Value::Null,
        Some(Value::String(c)) => Value::String(c.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::field(
                            &mf.name("content"),
                            format!("`{name}.content[{j}]`: only {{\"type\": \"text\", \"text\": ...}} parts are supported"),
                        ))
                    }
                }
            }
            Value::String(text)
        }
        Some(c) => {
            return Err(ApiError::field(
                &mf.name("content"),
                format!(
                    "`{name}.content` must be a string or a list of text parts, got {}",
                    params::kind(c)
                ),
            ))
        }
    })
}

/// An assistant message's tool calls, with string arguments parsed to objects (templates print
/// them with `tojson`, as SGLang prepares them).
fn tool_calls(v: &Value, name: &str) -> Result<Value, ApiError> {
    let bad = |why: String| ApiError::field(&format!("{name}.tool_calls"), why);
    let Some(list) = v.as_array() else {
        return Err(bad(format!(
            "`{name}.tool_calls` must be a list, got {}",
            params::kind(v)
        )));
    };
    let mut out = Vec::with_capacity(list.len());
    for (k, c) in list.iter().enumerate() {
        let mut c = c.clone();
        let Some(f) = c.get_mut("function").and_then(Value::as_object_mut) else {
            return Err(bad(format!(
                "`{name}.tool_calls[{k}].function` must be an object"
            )));
        };
        if !f.get("name").is_some_and(Value::is_string) {
            return Err(bad(format!(
                "`{name}.tool_calls[{k}].function.name` must be a string"
            )));
        }
        if let Some(Value::String(a)) = f.get("arguments") {
            let parsed: Value = serde_json::from_str(a).map_err(|e| {
                bad(format!(
                    "`{name}.tool_calls[{k}].function.arguments` is not JSON: {e}"
                ))
            })?;
            f.insert("arguments".into(), parsed);
        }
        out.push(c);
    }
    Ok(Value::Array(out))
}

fn messages(f: &Fields) -> Result<Vec<Value>, ApiError> {
    let Some(v) = f.get("messages") else {
        return Err(ApiError::field("messages", "`messages` is required"));
    };
    let Some(list) = v.as_array() else {
        return Err(ApiError::field(
            "messages",
            format!("`messages` must be a list, got {}", params::kind(v)),
        ));
    };
    if list.is_empty() {
        return Err(ApiError::field("messages", "`messages` is an empty list"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let name = format!("messages[{i}]");
        let Some(obj) = m.as_object() else {
            return Err(ApiError::field(
                &name,
                format!("`{name}` must be an object, got {}", params::kind(m)),
            ));
        };
        let mf = Fields::new(obj, &name);
        mf.str("role")?.ok_or_else(|| {
            ApiError::field(&mf.name("role"), format!("`{name}.role` is required"))
        })?;
        for k in ["name", "tool_call_id", "reasoning_content"] {
            mf.str(k)?;
        }
        let mut msg = obj.clone();
        let content = content_text(&mf, &name)?;
        // Templates expect a string; an assistant turn with only tool calls has none.
        msg.insert(
            "content".into(),
            if content.is_null() {
                Value::String(String::new())
            } else {
                content
            },
        );
        if let Some(tc) = mf.get("tool_calls") {
            msg.insert("tool_calls".into(), tool_calls(tc, &name)?);
        }
        out.push(Value::Object(msg));
    }
    Ok(out)
}

/// Tools as given, and their function names.
type Tools = (Vec<Value>, Vec<String>);

/// The request's tools and their function names.
fn tools(f: &Fields) -> Result<Option<Tools>, ApiError> {
    let Some(v) = f.get("tools") else {
        return Ok(None);
    };
    let Some(list) = v.as_array() else {
        return Err(ApiError::field(
            "tools",
            format!("`tools` must be a list, got {}", params::kind(v)),
        ));
    };
    let mut names: Vec<String> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let bad = |why: &str| ApiError::field("tools", format!("`tools[{i}]`: {why}"));
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("`type` must be \"function\""));
        }
        let Some(func) = t.get("function").and_then(Value::as_object) else {
            return Err(bad("`function` must be an object"));
        };
        let Some(name) = func.get("name").and_then(Value::as_str) else {
            return Err(bad("`function.name` must be a string"));
        };
        if name.is_empty() || names.iter().any(|n| n == name) {
            return Err(bad(&format!(
                "`function.name` {name:?} is empty or repeated"
            )));
        }
        match func.get("parameters") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(p) => {
                return Err(bad(&format!(
                    "`function.parameters` must be a JSON schema object, got {}",
                    params::kind(p)
                )))
            }
        }
        names.push(name.to_string());
    }
    if list.is_empty() {
        return Ok(None);
    }
    Ok(Some((list.clone(), names)))
}

fn tool_choice(f: &Fields, names: &[String]) -> Result<ToolChoice, ApiError> {
    let has = !names.is_empty();
    let named = |v: &Value| -> Option<String> {
        (v.get("type")?.as_str()? == "function")
            .then(|| v.get("function")?.get("name")?.as_str().map(str::to_string))?
    };
    let choice = match f.get("tool_choice") {
        None if has => ToolChoice::Auto,
        None => ToolChoice::None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("`tool_choice` must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {other:?}"),
                ))
            }
        },
        Some(v) => match named(v) {
            Some(n) if names.contains(&n) => ToolChoice::Named(n),
            Some(n) => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("`tool_choice` names {n:?}, which is not among `tools`"),
                ))
            }
            None => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("`tool_choice` must be a string or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {v}"),
                ))
            }
        },
    };
    if !has && !matches!(choice, ToolChoice::None) {
        return Err(ApiError::field(
            "tool_choice",
            "`tool_choice` needs a non-empty `tools` list",
        ));
    }
    Ok(choice)
}

fn kwargs(f: &Fields) -> Result<Map<String, Value>, ApiError> {
    let Some(k) = f.object("chat_template_kwargs")? else {
        return Ok(Map::new());
    };
    if let Some(r) = RESERVED_KWARGS.iter().find(|r| k.contains_key(**r)) {
        return Err(ApiError::field(
            "chat_template_kwargs",
            format!("`chat_template_kwargs.{r}` is set by the server; pass it as a request field"),
        ));
    }
    Ok(k.clone())
}

/// Read the chat fields of a request.
pub fn read(f: &Fields) -> Result<ChatRequest, ApiError> {
    let messages = messages(f)?;
    let (tool_list, names) = tools(f)?.unwrap_or_default();
    let tool_choice = tool_choice(f, &names)?;
    let parallel_tool_calls = f.bool("parallel_tool_calls")?.unwrap_or(true);
    let kwargs = kwargs(f)?;
    // As SGLang: with tool_choice "none" the tools do not reach the template.
    let tools = (!matches!(tool_choice, ToolChoice::None)).then_some(tool_list);
    Ok(ChatRequest {
        input: ChatInput {
            messages,
            tools,
            kwargs,
            add_generation_prompt: true,
        },
        tool_choice,
        tool_names: names,
        parallel_tool_calls,
        separate_reasoning: f.bool("separate_reasoning")?.unwrap_or(true),
        stream_reasoning: f.bool("stream_reasoning")?.unwrap_or(true),
    })
}
