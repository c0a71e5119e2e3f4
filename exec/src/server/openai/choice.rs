//! The answer's envelope, choices, logprobs and usage, shared by the whole and streamed forms.

use super::Kind;
use crate::server::gen::{Chunk, End, Finish};
use crate::server::AppState;
use doppel_core::{TokenId, TokenLogprob};
use serde_json::{json, Value};

/// What every choice and chunk of one answer shares.
pub(super) struct Head {
    pub(super) id: String,
    pub(super) kind: Kind,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) n: usize,
    pub(super) logprobs: bool,
    pub(super) prompt_tokens: Vec<usize>,
    /// Prompt ids per prompt, when echoed with logprobs.
    pub(super) echo_ids: Vec<Vec<TokenId>>,
}

/// Token counts summed over the choices.
#[derive(Default)]
pub(super) struct Usage {
    pub(super) completion: usize,
    pub(super) cached: usize,
}

impl Usage {
    pub(super) fn add(&mut self, e: &End) {
        self.completion += e.completion_tokens;
        self.cached += e.cached_tokens;
    }

    pub(super) fn json(&self, h: &Head) -> Value {
        // Prompt tokens count once per prompt, not per choice (as SGLang and OpenAI do).
        let prompt: usize = h.prompt_tokens.iter().sum();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.completion,
            "total_tokens": prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

impl Head {
    pub(super) fn envelope(&self, chunk: bool) -> Value {
        let object = match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model})
    }

    /// The echoed prompt's entries among choice `i`'s logprobs in chunk `c`, `sent` of them
    /// sent before: the first prompt token (no logprob) opens them.
    pub(super) fn prompt_entries<'c>(&self, i: usize, sent: usize, c: &'c Chunk) -> Entries<'c> {
        let Some(ids) = self.echo_ids.get(i / self.n) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if sent == 0 {
            out.push((ids[0], None));
        }
        let at = sent.max(1);
        out.extend(
            ids[at..]
                .iter()
                .zip(&c.prompt_logprobs)
                .map(|(t, l)| (*t, Some(l))),
        );
        out
    }

    pub(super) fn logprobs(&self, s: &AppState, c: &Chunk, prompt: &Entries<'_>) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let lps: Entries<'_> = prompt
            .iter()
            .copied()
            .chain(
                c.tokens.iter().copied().zip(
                    c.logprobs
                        .iter()
                        .map(Option::as_ref)
                        .chain(std::iter::repeat(None)),
                ),
            )
            .collect();
        match self.kind {
            Kind::Completion => {
                let mut tokens = Vec::new();
                let mut token_lps = Vec::new();
                let mut tops = Vec::new();
                let mut offsets = Vec::new();
                let mut at = 0;
                for (t, l) in &lps {
                    let text = s.codec.token_text(*t);
                    offsets.push(at);
                    at += text.len();
                    tokens.push(text);
                    token_lps.push(l.map(|l| l.logprob));
                    // The echoed prompt's first token has no logprob and no alternatives.
                    tops.push(l.map_or(Value::Null, |l| {
                        let mut top = serde_json::Map::new();
                        for (tt, p) in &l.top {
                            top.insert(s.codec.token_text(*tt), json!(p));
                        }
                        Value::Object(top)
                    }));
                }
                json!({"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets})
            }
            Kind::Chat => {
                let entry = |t: TokenId, p: Option<f32>| {
                    let text = s.codec.token_text(t);
                    json!({"token": text, "logprob": p, "bytes": text.as_bytes()})
                };
                let content: Vec<Value> = lps
                    .iter()
                    .map(|(t, l)| {
                        let mut e = entry(*t, l.map(|l| l.logprob));
                        e["top_logprobs"] = Value::Array(
                            l.map(|l| l.top.iter().map(|(tt, p)| entry(*tt, Some(*p))).collect())
                                .unwrap_or_default(),
                        );
                        e
                    })
                    .collect();
                json!({"content": content})
            }
        }
    }

    pub(super) fn choice(
        &self,
        s: &AppState,
        index: usize,
        (c, prompt): (&Chunk, &Entries<'_>),
        finish: Option<&Finish>,
        body: Part,
    ) -> Value {
        let calls = match &body {
            Part::Message(_, n) | Part::Delta(_, n) => *n,
            Part::Text => 0,
        };
        let finish_reason = finish.map(|f| match f {
            Finish::StopToken(_) | Finish::StopString(_) if calls > 0 => "tool_calls",
            f => f.openai(),
        });
        let matched = match finish {
            Some(Finish::StopString(m)) => json!(m),
            Some(Finish::StopToken(t)) => json!(t),
            _ => Value::Null,
        };
        let mut v = json!({
            "index": index,
            "logprobs": self.logprobs(s, c, prompt),
            "finish_reason": finish_reason,
            "matched_stop": matched,
        });
        match body {
            Part::Text => v["text"] = json!(c.delta),
            Part::Message(m, _) => v["message"] = m,
            Part::Delta(d, _) => v["delta"] = d,
        }
        v
    }
}

/// Tokens with their logprobs (None: the echoed prompt's first token).
pub(super) type Entries<'a> = Vec<(TokenId, Option<&'a TokenLogprob>)>;

/// What a choice carries besides logprobs and the finish reason.
pub(super) enum Part {
    /// Completions: the chunk's text.
    Text,
    /// A chat message, and the number of tool calls in it.
    Message(Value, usize),
    /// A chat delta, and the number of tool calls so far.
    Delta(Value, usize),
}
