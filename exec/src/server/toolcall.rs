//! Tool calls parsed from model output per model family (`--tool-call-parser`, SGLang's names),
//! streamed: text that is certainly not part of a call goes out at once, a call goes out whole
//! when its text is complete.
//!
//! Written here rather than taken from the smg `tool-parser` crate: it pulls in a Python parser
//! (rustpython-parser) and turns on serde_json's `preserve_order` for the whole workspace, which
//! would reorder every JSON answer the server writes.

use super::reasoning::partial_suffix;
use serde_json::Value;

/// Output formats of tool calls (`--tool-call-parser`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// Qwen2.5 / Qwen3 (hermes): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
    Hermes,
    /// Llama 3.1 / 3.2: `<|python_tag|>` (optional) then `{"name": ..., "parameters": {...}}`,
    /// several separated by `;`.
    Llama3,
    /// Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`.
    Mistral,
}

impl ToolFormat {
    /// SGLang's parser name.
    pub fn parse(name: &str) -> Option<ToolFormat> {
        match name {
            "qwen25" | "qwen" => Some(ToolFormat::Hermes),
            "llama3" => Some(ToolFormat::Llama3),
            "mistral" => Some(ToolFormat::Mistral),
            _ => None,
        }
    }

    /// The accepted names, for messages.
    pub const NAMES: &'static str = "qwen25 (alias qwen), llama3, mistral";

    /// SGLang's name of this format.
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "qwen25",
            ToolFormat::Llama3 => "llama3",
            ToolFormat::Mistral => "mistral",
        }
    }

    /// Markers that open the call section in prefix-decided formats.
    fn openers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &[],
            ToolFormat::Llama3 => &["<|python_tag|>", "{"],
            // `[TOOL_CALLS]` is a special token, gone when special tokens are skipped.
            ToolFormat::Mistral => &["[TOOL_CALLS]", "["],
        }
    }
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// Function name (one of the request's tools).
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// Output of one step: plain text and completed calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolStep {
    /// Text that is not a call.
    pub content: String,
    /// Calls completed in this step.
    pub calls: Vec<ToolCall>,
}

/// A call object `{"name": ..., "arguments" | "parameters": {...}}` naming one of `names`.
pub fn call_from_json(v: &Value, names: &[String]) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        // Some models write the arguments as a JSON string.
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|a| a.is_object()) => s,
        a @ Value::Object(_) => a.to_string(),
        _ => return None,
    };
    Some(ToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// JSON values one after another, separated by whitespace or `;` (Llama's separator).
fn json_values(text: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if rest.is_empty() {
            return Some(out);
        }
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        let used = it.byte_offset();
        out.push(v);
        rest = &rest[used..];
    }
}

/// Calls in a complete call section (after the opener), or None if it is not one.
fn parse_section(format: ToolFormat, text: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let values = json_values(text)?;
    let objects: Vec<&Value> = match (format, values.as_slice()) {
        (ToolFormat::Mistral, [Value::Array(a)]) => a.iter().collect(),
        (_, vs) => vs.iter().collect(),
    };
    if objects.is_empty() {
        return None;
    }
    objects.iter().map(|v| call_from_json(v, names)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Hermes, between blocks.
    Outside,
    /// Hermes, inside `<tool_call>`.
    Inside,
    /// Prefix-decided formats, before the first visible character.
    Undecided,
    /// Plain text: passed through.
    Text,
    /// The call section: held to the end.
    Section,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Streaming tool-call parser for one generation.
#[derive(Clone, Debug)]
pub struct ToolStream {
    format: ToolFormat,
    names: Vec<String>,
    mode: Mode,
    held: String,
    /// Whitespace after a call, emitted only if more text follows.
    gap: String,
    calls: usize,
}

impl ToolStream {
    /// A parser for `format`, accepting calls to `names`.
    pub fn new(format: ToolFormat, names: Vec<String>) -> ToolStream {
        let mode = match format {
            ToolFormat::Hermes => Mode::Outside,
            _ => Mode::Undecided,
        };
        ToolStream {
            format,
            names,
            mode,
            held: String::new(),
            gap: String::new(),
            calls: 0,
        }
    }

    fn text(&mut self, out: &mut ToolStep, t: &str) {
        if t.is_empty() {
            return;
        }
        if self.calls > 0 && t.trim().is_empty() {
            self.gap.push_str(t);
            return;
        }
        out.content.push_str(&std::mem::take(&mut self.gap));
        out.content.push_str(t);
    }

    /// Add text; returns what is certain now.
    pub fn push(&mut self, text: &str) -> ToolStep {
        self.held.push_str(text);
        let mut out = ToolStep::default();
        loop {
            match self.mode {
                Mode::Outside => {
                    if let Some(i) = self.held.find(OPEN) {
                        let before: String = self.held.drain(..i + OPEN.len()).collect();
                        self.text(&mut out, &before[..i]);
                        self.mode = Mode::Inside;
                        continue;
                    }
                    let cut = self.held.len() - partial_suffix(&self.held, OPEN);
                    let t: String = self.held.drain(..cut).collect();
                    self.text(&mut out, &t);
                    return out;
                }
                Mode::Inside => {
                    let Some(j) = self.held.find(CLOSE) else {
                        return out;
                    };
                    let block: String = self.held.drain(..j + CLOSE.len()).collect();
                    self.block(&mut out, &block[..j], true);
                    self.mode = Mode::Outside;
                }
                Mode::Undecided => {
                    let t = self.held.trim_start();
                    let openers = self.format.openers();
                    if t.is_empty()
                        || openers
                            .iter()
                            .any(|o| o.len() > t.len() && o.starts_with(t))
                    {
                        return out; // could still become a longer marker
                    } else if let Some(o) = openers.iter().find(|o| t.starts_with(**o)) {
                        // The marker is dropped; a bare `{` / `[` is part of the JSON.
                        let keep = if o.len() == 1 { 0 } else { o.len() };
                        self.held = t[keep..].to_string();
                        self.mode = Mode::Section;
                    } else {
                        self.mode = Mode::Text;
                    }
                }
                Mode::Text => {
                    let t = std::mem::take(&mut self.held);
                    self.text(&mut out, &t);
                    return out;
                }
                Mode::Section => return out,
            }
        }
    }

    /// A finished Hermes block (or the unterminated last one).
    fn block(&mut self, out: &mut ToolStep, body: &str, closed: bool) {
        match serde_json::from_str::<Value>(body.trim())
            .ok()
            .and_then(|v| call_from_json(&v, &self.names))
        {
            Some(c) => {
                self.calls += 1;
                self.gap.clear();
                out.calls.push(c);
            }
            None => {
                let close = if closed { CLOSE } else { "" };
                self.text(out, &format!("{OPEN}{body}{close}"));
            }
        }
    }

    /// The generation ended: held text, and the calls of a held section.
    pub fn finish(&mut self) -> ToolStep {
        let mut out = ToolStep::default();
        let held = std::mem::take(&mut self.held);
        match self.mode {
            Mode::Inside => self.block(&mut out, &held, false),
            Mode::Section => match parse_section(self.format, &held, &self.names) {
                Some(calls) => {
                    self.calls += calls.len();
                    out.calls = calls;
                }
                None => self.text(&mut out, &held),
            },
            Mode::Outside | Mode::Undecided | Mode::Text => self.text(&mut out, &held),
        }
        out
    }
}

#[cfg(test)]
mod tests;
