//! Prompt text to token ids with bounded work: a prompt that cannot fit the context is refused
//! from its byte length, or from the tokens of its first part, before the whole of it is
//! tokenized; tokenizing runs off the async workers, and the heap it used is given back.

use super::codec::Codec;
use crate::chat_template::ChatInput;
use doppel_core::TokenId;
use std::ops::Deref;

/// Prompts longer than this many bytes per context token are counted window by window before
/// being tokenized whole (real text has 3-5 bytes per token).
const WINDOWED_ABOVE_BYTES_PER_TOKEN: usize = 8;
/// Bytes per window: the count stops within a window of where the context is exceeded.
const WINDOW: usize = 64 << 10;
/// Texts at least this large are tokenized off the async worker and the heap trimmed after.
const BIG_TEXT: usize = 64 << 10;

/// The server's codec with the prompt bound; every other method is the inner [`Codec`]'s.
pub struct PromptCodec {
    inner: Codec,
    context_len: usize,
    /// Most bytes of text one token stands for.
    max_token_bytes: usize,
}

impl Deref for PromptCodec {
    type Target = Codec;

    fn deref(&self) -> &Codec {
        &self.inner
    }
}

/// The longest text any single token decodes to, in bytes.
fn longest_token(c: &Codec) -> usize {
    match c {
        Codec::Synthetic => 1,
        Codec::Hf(t) => {
            let n = t.vocab_size() as TokenId;
            (0..n)
                .map(|id| t.decode(&[id], false).map_or(0, |s| s.len()))
                .max()
                .unwrap_or(1)
                .max(1)
        }
    }
}

impl PromptCodec {
    /// Wrap `inner` for a model whose context holds `context_len` tokens.
    pub fn new(inner: Codec, context_len: usize) -> PromptCodec {
        let max_token_bytes = longest_token(&inner);
        PromptCodec {
            inner,
            context_len,
            max_token_bytes,
        }
    }

    /// Encode a plain prompt; one that cannot fit the context is refused without tokenizing it all.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>, String> {
        self.refuse_by_bytes(text.len())?;
        off_worker(text.len(), || {
            self.refuse_by_windows(text)?;
            self.inner.encode(text)
        })
    }

    /// Render a chat request with the template and encode it, bounded like [`Self::encode`];
    /// returns the ids and the rendered text.
    pub fn encode_chat(&self, input: &ChatInput) -> Result<(Vec<TokenId>, String), String> {
        let contents: Vec<&str> = input
            .messages
            .iter()
            .filter_map(|m| m.get("content").and_then(|c| c.as_str()))
            .collect();
        let bytes: usize = contents.iter().map(|c| c.len()).sum();
        self.refuse_by_bytes(bytes)?;
        off_worker(bytes, || {
            if bytes > self.windowed_above() {
                self.refuse_by_windows(&contents.concat())?;
            }
            self.inner.encode_chat(input)
        })
    }

    /// Refuse text that must be longer than the context whatever its content: no token stands
    /// for more than `max_token_bytes` bytes (twice that for normalizers that shorten text).
    fn refuse_by_bytes(&self, bytes: usize) -> Result<(), String> {
        let margin = if matches!(self.inner, Codec::Synthetic) {
            1
        } else {
            2
        };
        let most = self.context_len * self.max_token_bytes * margin;
        if bytes >= most.max(1) {
            return Err(format!(
                "the prompt is {bytes} bytes, more than fits in the context length of {} tokens \
                 (no token covers more than {} bytes)",
                self.context_len, self.max_token_bytes
            ));
        }
        Ok(())
    }

    fn windowed_above(&self) -> usize {
        self.context_len * WINDOWED_ABOVE_BYTES_PER_TOKEN
    }

    /// For a long text, count tokens window by window and stop as soon as the context is
    /// exceeded, so the work is bounded by what fills the context, not by the text's length.
    /// Each window may count a token too many where its cut splits one, and one for the special
    /// tokens the tokenizer adds to it (a BOS), hence the allowance of two per window.
    fn refuse_by_windows(&self, text: &str) -> Result<(), String> {
        if text.len() <= self.windowed_above() || matches!(self.inner, Codec::Synthetic) {
            return Ok(());
        }
        let (mut at, mut tokens, mut windows) = (0, 0usize, 0usize);
        while at < text.len() {
            let mut end = (at + WINDOW).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            tokens += self.inner.encode(&text[at..end])?.len();
            windows += 1;
            at = end;
            if tokens > self.context_len + 2 * windows {
                return Err(format!(
                    "the prompt has more tokens than the context length of {} (at least {} in \
                     its first {at} of {} bytes)",
                    self.context_len,
                    tokens - 2 * windows,
                    text.len()
                ));
            }
        }
        Ok(())
    }
}

/// Run `f` (tokenizing `bytes` of text) so it does not hold up the other requests on this async
/// worker: a big text runs with the worker handed over to another thread (`block_in_place`; the
/// call sites stay synchronous), and malloc's free lists are trimmed after it.
fn off_worker<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if bytes < BIG_TEXT {
        return f();
    }
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    let out = if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    };
    super::wire::trim_heap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_prompts_at_the_context_length_are_refused_from_their_bytes() {
        let c = PromptCodec::new(Codec::Synthetic, 100);
        assert_eq!(c.encode(&"a".repeat(99)).unwrap().len(), 99);
        let e = c.encode(&"a".repeat(100)).unwrap_err();
        assert!(
            e.contains("100 bytes") && e.contains("context length of 100"),
            "{e}"
        );
        let input = ChatInput {
            messages: vec![serde_json::json!({"role": "user", "content": "b".repeat(200)})],
            ..Default::default()
        };
        assert!(c
            .encode_chat(&input)
            .unwrap_err()
            .contains("context length"));
    }
}
