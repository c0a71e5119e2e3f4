//! A chat answer's text turned into OpenAI's message parts: reasoning split off first, then tool
//! calls parsed from the rest; the same state machine makes the streamed deltas and the
//! non-streamed message.

use super::forced::{add_args, CallPart, Forced, ForcedStream};
use super::reasoning::{ReasoningFormat, ReasoningSplit, Split};
use super::toolcall::{ToolCall, ToolFormat, ToolStep, ToolStream};
use serde_json::{json, Value};

/// How to read one request's output.
#[derive(Clone, Debug, Default)]
pub struct OutConfig {
    /// Split reasoning off (None: all text is content).
    pub reasoning: Option<ReasoningFormat>,
    /// The prompt ends inside an open `<think>` block.
    pub prompt_opened: bool,
    /// Parse tool calls in this format, naming these functions.
    pub tools: Option<(ToolFormat, Vec<String>)>,
    /// The answer is constrained to calls (`tool_choice` required or named): read them from
    /// the whole text.
    pub forced: Option<Forced>,
    /// Keep more than the first call.
    pub parallel_tool_calls: bool,
    /// Stream reasoning as it comes (else in one piece when the block closes).
    pub stream_reasoning: bool,
}

/// New output parts of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Reasoning text.
    pub reasoning: String,
    /// Answer text.
    pub content: String,
    /// Completed calls with their index in the answer.
    pub calls: Vec<(usize, ToolCall)>,
    /// Pieces of forced calls as they are generated (streamed answers only).
    pub parts: Vec<CallPart>,
}

impl Delta {
    /// Nothing new.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty()
            && self.content.is_empty()
            && self.calls.is_empty()
            && self.parts.is_empty()
    }

    /// Append a later delta.
    pub fn add(&mut self, other: Delta) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
        self.calls.extend(other.calls);
        for p in other.parts {
            match p.name {
                None => add_args(&mut self.parts, p.index, &p.arguments),
                Some(_) => self.parts.push(p),
            }
        }
    }
}

/// Output state of one choice.
pub struct ChatOut {
    reasoning: Option<ReasoningSplit>,
    tools: Option<ToolStream>,
    forced: Option<Forced>,
    /// Forced-call text held until the answer is whole (non-streamed answers).
    held_calls: String,
    /// Forced calls cut into pieces as they stream (None for a whole answer).
    forced_stream: Option<ForcedStream>,
    parallel: bool,
    stream_reasoning: bool,
    held_reasoning: String,
    calls: usize,
    call_prefix: String,
}

impl ChatOut {
    /// Output state for the generation with request id `rid`.
    pub fn new(cfg: &OutConfig, rid: &str) -> ChatOut {
        ChatOut {
            reasoning: cfg
                .reasoning
                .map(|f| ReasoningSplit::new(f, cfg.prompt_opened)),
            tools: cfg
                .tools
                .as_ref()
                .map(|(f, names)| ToolStream::new(*f, names.clone())),
            forced: cfg.forced.clone(),
            held_calls: String::new(),
            forced_stream: cfg.forced.clone().map(ForcedStream::new),
            parallel: cfg.parallel_tool_calls,
            stream_reasoning: cfg.stream_reasoning,
            held_reasoning: String::new(),
            calls: 0,
            call_prefix: format!("call_{rid}_"),
        }
    }

    /// Calls emitted so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Add generated text.
    pub fn push(&mut self, text: &str) -> Delta {
        let split = match &mut self.reasoning {
            Some(r) => r.push(text),
            None => Split {
                reasoning: String::new(),
                content: text.to_string(),
            },
        };
        self.step(split, false)
    }

    /// The generation ended.
    pub fn finish(&mut self) -> Delta {
        let split = match &mut self.reasoning {
            Some(r) => r.finish(),
            None => Split::default(),
        };
        self.step(split, true)
    }

    fn step(&mut self, split: Split, last: bool) -> Delta {
        let mut out = Delta::default();
        self.held_reasoning.push_str(&split.reasoning);
        if self.stream_reasoning || last || !split.content.is_empty() {
            out.reasoning = std::mem::take(&mut self.held_reasoning);
        }
        if let Some(fs) = &mut self.forced_stream {
            // Streamed: the call's name first, then its arguments as they are generated; an
            // answer cut by max_tokens ends with partial arguments (finish reason `length`).
            for p in fs.push(&split.content) {
                self.calls += usize::from(p.name.is_some());
                out.parts.push(p);
            }
            return out;
        }
        let steps = if let Some(forced) = &self.forced {
            self.held_calls.push_str(&split.content);
            if !last {
                return out;
            }
            let text = std::mem::take(&mut self.held_calls);
            match forced.parse(&text) {
                Some(calls) => ToolStep {
                    content: String::new(),
                    calls,
                },
                // Cut short (max_tokens): the partial JSON is the answer's text.
                None => ToolStep {
                    content: text,
                    calls: Vec::new(),
                },
            }
        } else if let Some(tools) = &mut self.tools {
            let mut steps = tools.push(&split.content);
            if last {
                let f = tools.finish();
                steps.content.push_str(&f.content);
                steps.calls.extend(f.calls);
            }
            steps
        } else {
            out.content = split.content;
            return out;
        };
        out.content = steps.content;
        for c in steps.calls {
            // Without parallel calls only the first one is the answer.
            if self.parallel || self.calls == 0 {
                out.calls.push((self.calls, c));
                self.calls += 1;
            }
        }
        out
    }

    /// The whole answer at once (non-streamed).
    pub fn whole(&mut self, text: &str) -> Delta {
        self.forced_stream = None;
        let mut d = self.push(text);
        d.add(self.finish());
        d
    }

    fn call_json(&self, index: usize, c: &ToolCall, stream: bool) -> Value {
        let mut v = json!({
            "id": format!("{}{index}", self.call_prefix),
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        });
        if stream {
            v["index"] = json!(index);
        }
        v
    }

    /// A streamed `delta` object (empty when nothing is new).
    pub fn delta_json(&self, d: &Delta) -> Value {
        let mut v = json!({});
        if !d.reasoning.is_empty() {
            v["reasoning_content"] = json!(d.reasoning);
        }
        if !d.content.is_empty() {
            v["content"] = json!(d.content);
        }
        if !d.calls.is_empty() {
            v["tool_calls"] = d
                .calls
                .iter()
                .map(|(i, c)| self.call_json(*i, c, true))
                .collect();
        }
        if !d.parts.is_empty() {
            v["tool_calls"] = d.parts.iter().map(|p| self.part_json(p)).collect();
        }
        v
    }

    /// A streamed piece of a forced call: the first names it (with its id), the rest carry
    /// argument text only.
    fn part_json(&self, p: &CallPart) -> Value {
        match &p.name {
            Some(name) => json!({
                "index": p.index,
                "id": format!("{}{}", self.call_prefix, p.index),
                "type": "function",
                "function": {"name": name, "arguments": p.arguments},
            }),
            None => json!({"index": p.index, "function": {"arguments": p.arguments}}),
        }
    }

    /// The non-streamed `message` object.
    pub fn message_json(&self, d: &Delta) -> Value {
        let mut v = json!({
            "role": "assistant",
            "content": if d.content.is_empty() && !d.calls.is_empty() { Value::Null } else { json!(d.content) },
            "reasoning_content": if self.reasoning.is_some() { json!(d.reasoning) } else { Value::Null },
        });
        if !d.calls.is_empty() {
            v["tool_calls"] = d
                .calls
                .iter()
                .map(|(i, c)| self.call_json(*i, c, false))
                .collect();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutConfig {
        OutConfig {
            reasoning: Some(ReasoningFormat::Qwen3),
            prompt_opened: false,
            tools: Some((ToolFormat::Hermes, vec!["add".into()])),
            forced: None,
            parallel_tool_calls: true,
            stream_reasoning: true,
        }
    }

    const ANSWER: &str = "<think>\nadd them\n</think>\n\nOK.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n</tool_call>";

    fn streamed(cfg: &OutConfig, text: &str) -> (Delta, usize) {
        let mut o = ChatOut::new(cfg, "r");
        let mut acc = Delta::default();
        let mut chunks = 0;
        for c in text.chars() {
            let d = o.push(&c.to_string());
            chunks += usize::from(!d.is_empty());
            acc.add(d);
        }
        acc.add(o.finish());
        (acc, chunks)
    }

    #[test]
    fn reasoning_then_tool_calls_streamed_equal_the_whole_message() {
        let c = cfg();
        let whole = ChatOut::new(&c, "r").whole(ANSWER);
        assert_eq!(whole.reasoning, "\nadd them\n");
        assert_eq!(whole.content, "OK.\n");
        assert_eq!(whole.calls.len(), 2);
        assert_eq!(whole.calls[1].0, 1);
        assert_eq!(streamed(&c, ANSWER).0, whole);
        let o = ChatOut::new(&c, "r");
        let m = o.message_json(&whole);
        assert_eq!(m["tool_calls"][1]["id"], "call_r_1");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        let d = o.delta_json(&whole);
        assert_eq!(d["tool_calls"][1]["index"], 1);
    }

    #[test]
    fn without_parallel_calls_only_the_first_call_is_kept() {
        let c = OutConfig {
            parallel_tool_calls: false,
            ..cfg()
        };
        let whole = ChatOut::new(&c, "r").whole(ANSWER);
        assert_eq!(whole.calls.len(), 1);
        assert_eq!(whole.calls[0].1.arguments, "{\"a\":1}");
    }

    #[test]
    fn reasoning_not_streamed_arrives_in_one_piece() {
        let c = OutConfig {
            stream_reasoning: false,
            tools: None,
            ..cfg()
        };
        let mut o = ChatOut::new(&c, "r");
        let mut pieces = Vec::new();
        for c in ANSWER.chars() {
            let d = o.push(&c.to_string());
            if !d.reasoning.is_empty() {
                pieces.push(d.reasoning);
            }
        }
        assert_eq!(pieces, vec!["\nadd them\n".to_string()]);
    }

    #[test]
    fn plain_output_is_all_content() {
        let c = OutConfig::default();
        let whole = ChatOut::new(&c, "r").whole(ANSWER);
        assert_eq!(whole.content, ANSWER);
        let m = ChatOut::new(&c, "r").message_json(&whole);
        assert_eq!(m["reasoning_content"], Value::Null);
        assert!(m.get("tool_calls").is_none());
    }

    #[test]
    fn forced_calls_stream_their_arguments_and_are_whole_in_a_message() {
        let c = OutConfig {
            forced: Some(Forced::Named("add".into())),
            tools: None,
            reasoning: None,
            ..cfg()
        };
        let mut o = ChatOut::new(&c, "r");
        let d = o.push("{\"a\":");
        assert_eq!(d.parts.len(), 1);
        assert_eq!(d.parts[0].name.as_deref(), Some("add"));
        let json = o.delta_json(&d);
        assert_eq!(json["tool_calls"][0]["id"], "call_r_0");
        assert_eq!(json["tool_calls"][0]["function"]["arguments"], "{\"a\":");
        let d = o.push(" 1}");
        let json = o.delta_json(&d);
        assert!(json["tool_calls"][0].get("id").is_none());
        assert_eq!(json["tool_calls"][0]["function"]["arguments"], " 1}");
        assert!(o.finish().is_empty());
        assert_eq!(o.calls(), 1);
        // Whole: the parsed call; cut short by max_tokens, the partial JSON is the text.
        let d = ChatOut::new(&c, "r").whole("{\"a\": 1}");
        assert_eq!(d.content, "");
        assert_eq!(
            (d.calls[0].1.name.as_str(), d.calls[0].1.arguments.as_str()),
            ("add", "{\"a\":1}")
        );
        let d = ChatOut::new(&c, "r").whole("{\"a\": 1");
        assert_eq!((d.content.as_str(), d.calls.len()), ("{\"a\": 1", 0));
    }
}
