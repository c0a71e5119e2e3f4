//! Text in and out: the checkpoint's tokenizer, or a synthetic byte codec for the simulated
//! backend served without a tokenizer.

use crate::chat_template::ChatInput;
use crate::tokenizer::{StopMatcher, StopStep, TextStream, Tokenizer};
use doppel_core::TokenId;
use std::sync::Arc;

/// Token ids below this are bytes in the synthetic codec.
const SYNTH_BYTES: u32 = 256;

/// How text becomes token ids and back.
#[derive(Clone)]
pub enum Codec {
    /// A Hugging Face tokenizer with its chat template.
    Hf(Arc<Tokenizer>),
    /// Prompt text as one token per UTF-8 byte; generated ids shown as " t<id>" (the simulator's
    /// tokens mean nothing, so their text only has to be stable and readable).
    Synthetic,
}

impl Codec {
    /// Encode a plain prompt (with the tokenizer's special tokens, e.g. a BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>, String> {
        match self {
            Codec::Hf(t) => t.encode(text, true).map_err(|e| e.to_string()),
            Codec::Synthetic => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// Render a chat request with the template and encode it (the template holds the special
    /// tokens); returns the ids and the rendered text.
    pub fn encode_chat(&self, input: &ChatInput) -> Result<(Vec<TokenId>, String), String> {
        match self {
            Codec::Hf(t) => {
                let text = t.render_chat(input).map_err(|e| e.to_string())?;
                let ids = t.encode(&text, false).map_err(|e| e.to_string())?;
                Ok((ids, text))
            }
            Codec::Synthetic => {
                let mut text = String::new();
                for m in &input.messages {
                    let field = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                    text.push_str(&format!("{}: {}\n", field("role"), field("content")));
                }
                if let Some(tools) = &input.tools {
                    text.push_str(&format!(
                        "tools: {}\n",
                        serde_json::Value::from(tools.clone())
                    ));
                }
                text.push_str("assistant:");
                Ok((text.bytes().map(u32::from).collect(), text))
            }
        }
    }

    /// Text of ids with the special tokens kept or skipped (/detokenize).
    pub fn decode_with(
        &self,
        ids: &[TokenId],
        skip_special_tokens: bool,
    ) -> Result<String, String> {
        match self {
            Codec::Hf(t) => t
                .decode(ids, skip_special_tokens)
                .map_err(|e| e.to_string()),
            Codec::Synthetic => Ok(ids.iter().map(|&i| synth_piece(i)).collect()),
        }
    }

    /// Encode text with or without the tokenizer's special tokens (/tokenize).
    pub fn encode_with(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenId>, String> {
        match self {
            Codec::Hf(t) => t
                .encode(text, add_special_tokens)
                .map_err(|e| e.to_string()),
            Codec::Synthetic => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// Text of a token sequence (special tokens dropped).
    pub fn decode(&self, ids: &[TokenId]) -> String {
        match self {
            Codec::Hf(t) => t.decode(ids, true).unwrap_or_default(),
            Codec::Synthetic => ids.iter().map(|&i| synth_piece(i)).collect(),
        }
    }

    /// Text of one token (for logprob listings).
    pub fn token_text(&self, id: TokenId) -> String {
        match self {
            Codec::Hf(t) => t.decode(&[id], false).unwrap_or_default(),
            Codec::Synthetic => synth_piece(id),
        }
    }

    /// A streaming detokenizer with stop strings for one request.
    pub fn stream(
        &self,
        stops: &[String],
        include_stop: bool,
        min_new_tokens: usize,
        skip_special_tokens: bool,
    ) -> OutStream {
        match self {
            Codec::Hf(t) => OutStream::Hf(
                TextStream::new(stops, include_stop, min_new_tokens, skip_special_tokens),
                t.clone(),
            ),
            Codec::Synthetic => OutStream::Synth {
                stop: StopMatcher::new(stops, include_stop),
                min_new_tokens,
                tokens: 0,
            },
        }
    }
}

fn synth_piece(id: TokenId) -> String {
    if id < SYNTH_BYTES {
        char::from(id as u8).to_string()
    } else {
        format!(" t{id}")
    }
}

/// Per-request detokenizer state.
pub enum OutStream {
    /// Through the tokenizer.
    Hf(TextStream, Arc<Tokenizer>),
    /// Synthetic pieces.
    Synth {
        /// Stop strings.
        stop: StopMatcher,
        /// Stop strings are ignored until this many tokens exist.
        min_new_tokens: usize,
        /// Tokens so far.
        tokens: usize,
    },
}

impl OutStream {
    /// Add a generated token.
    pub fn push(&mut self, id: TokenId) -> Result<StopStep, String> {
        match self {
            OutStream::Hf(s, t) => s.push(t, id).map_err(|e| e.to_string()),
            OutStream::Synth {
                stop,
                min_new_tokens,
                tokens,
            } => {
                *tokens += 1;
                Ok(stop.push(&synth_piece(id), *tokens >= *min_new_tokens))
            }
        }
    }

    /// The request ended: held-back text.
    pub fn finish(&mut self) -> Result<String, String> {
        match self {
            OutStream::Hf(s, t) => s.finish(t).map_err(|e| e.to_string()),
            OutStream::Synth { stop, .. } => Ok(stop.finish()),
        }
    }
}
