//! Structured outputs: JSON schemas, regular expressions and grammars compiled with `llguidance`
//! into token masks over the model's vocabulary.
//!
//! The server compiles a request's [`ConstraintSpec`] once ([`Grammars::compile`]) into a
//! [`ConstraintHandle`] the core carries opaquely in the sampling parameters; a backend opens a
//! [`TokenMatcher`] per request from it, asks it for the mask of the next output token
//! ([`TokenMatcher::fill_mask`]), and advances it on the sampled token. See docs/structured.md.

mod gbnf;
mod structural;
mod synth;

pub use gbnf::gbnf_to_lark;
pub use structural::{StructuralTag, Structure};
pub use synth::Synthesized;

use crate::tokenizer::Tokenizer;
use doppel_core::{ConstraintHandle, TokenId};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What went wrong compiling or following a constraint.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The token vocabulary could not be turned into the matcher's byte trie.
    #[error("tokenizer not usable for constrained decoding: {0}")]
    Tokenizer(String),
    /// The schema, regex or grammar is invalid (the message says where).
    #[error("{0}")]
    Invalid(String),
    /// The matcher refused a token or failed while computing a mask.
    #[error("constraint matcher: {0}")]
    Matcher(String),
}

/// A constraint as a client states it, before compilation.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstraintSpec {
    /// Output is JSON valid under this JSON schema.
    JsonSchema(Value),
    /// Output is any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// Output matches this regular expression (Rust `regex` syntax).
    Regex(String),
    /// Output follows this GBNF/EBNF grammar (`root ::= ...`, as SGLang's `ebnf`).
    Ebnf(String),
    /// Output follows this grammar in llguidance's Lark syntax.
    Lark(String),
    /// Free text in which each trigger opens one of the structures (SGLang's structural tag).
    StructuralTag(StructuralTag),
}

impl ConstraintSpec {
    /// A JSON schema constraint (the entry point for tool calls and response formats).
    pub fn json_schema(schema: Value) -> ConstraintSpec {
        ConstraintSpec::JsonSchema(schema)
    }

    fn grammar(&self) -> Result<TopLevelGrammar, ConstraintError> {
        Ok(match self {
            ConstraintSpec::JsonSchema(v) => {
                if !v.is_object() && !v.is_boolean() {
                    return Err(ConstraintError::Invalid(format!(
                        "a JSON schema must be an object or a boolean, got {v}"
                    )));
                }
                TopLevelGrammar::from_json_schema(compact(v.clone()))
            }
            ConstraintSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            ConstraintSpec::Regex(rx) => {
                // llguidance rewrites the regex into Lark; check it first so the error names regex
                // syntax rather than the rewritten grammar.
                regex_syntax::Parser::new()
                    .parse(rx)
                    .map_err(|e| ConstraintError::Invalid(format!("invalid regex: {e}")))?;
                TopLevelGrammar::from_regex(rx)
            }
            ConstraintSpec::Ebnf(g) => TopLevelGrammar::from_lark(gbnf_to_lark(g)?),
            ConstraintSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            ConstraintSpec::StructuralTag(t) => TopLevelGrammar::from_lark(t.to_lark()?),
        })
    }
}

/// JSON without optional whitespace (`{"a":1,"b":[2,3]}`), unless the schema sets llguidance's
/// own `x-guidance` options: flexible whitespace lets a weak model pad forever.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(m) = &mut schema {
        m.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"}),
        );
    }
    schema
}

/// Mask computations and their total time, over every matcher of the process (the benchmark
/// reports mask time per token from these).
static MASKS: AtomicU64 = AtomicU64::new(0);
static MASK_NS: AtomicU64 = AtomicU64::new(0);

/// (masks computed, nanoseconds spent computing them) since the process started.
pub fn mask_stats() -> (u64, u64) {
    (
        MASKS.load(Ordering::Relaxed),
        MASK_NS.load(Ordering::Relaxed),
    )
}

/// The compiler of constraints for one tokenizer and vocabulary.
#[derive(Clone)]
pub struct Grammars {
    factory: Arc<ParserFactory>,
    vocab: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grammars {{ vocab: {} }}", self.vocab)
    }
}

impl Grammars {
    /// Grammars over `tokenizer`'s tokens, with masks `vocab` wide (the model's logits, at least
    /// the tokenizer's size) and `eos` the ids that end a request.
    pub fn new(
        tokenizer: &Tokenizer,
        vocab: usize,
        eos: &[TokenId],
    ) -> Result<Grammars, ConstraintError> {
        let terr = |e: anyhow::Error| ConstraintError::Tokenizer(e.to_string());
        let mut bt =
            toktrie_hf_tokenizers::ByteTokenizer::from_tokenizer(tokenizer.inner().clone())
                .map_err(terr)?;
        if !eos.is_empty() {
            bt.set_eos_tokens(eos);
        }
        let env = bt.into_tok_env(Some(vocab)).map_err(terr)?;
        Grammars::from_env(env, vocab)
    }

    /// Grammars where token id `b` < 256 is the byte `b` and `eos` ends a request (the
    /// simulated backend's synthetic codec).
    pub fn bytes(vocab: usize, eos: TokenId) -> Result<Grammars, ConstraintError> {
        Grammars::from_env(Arc::new(ByteEnv::new(vocab, eos)?), vocab)
    }

    fn from_env(env: TokEnv, vocab: usize) -> Result<Grammars, ConstraintError> {
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Tokenizer(e.to_string()))?;
        factory.quiet();
        Ok(Grammars {
            factory: Arc::new(factory),
            vocab,
        })
    }

    /// Mask width in tokens.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The token that ends a constrained request (allowed where the grammar accepts).
    pub fn eos(&self) -> TokenId {
        self.factory.tok_env().tok_trie().eos_token()
    }

    /// Compile `spec`; an invalid schema, regex or grammar is an [`ConstraintError::Invalid`].
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<ConstraintHandle, ConstraintError> {
        let grammar = spec.grammar()?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Invalid(e.to_string()))?;
        let template = Matcher::new(Ok(parser));
        if let Some(e) = template.get_error() {
            return Err(ConstraintError::Invalid(e));
        }
        Ok(ConstraintHandle(Arc::new(Compiled {
            template,
            vocab: self.vocab,
        })))
    }
}

/// A compiled constraint: a matcher in its start state, cloned for each request.
struct Compiled {
    template: Matcher,
    vocab: usize,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compiled constraint over {} tokens", self.vocab)
    }
}

impl doppel_core::Constraint for Compiled {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Words of a token bitmask over `vocab` tokens (bit `t % 32` of word `t / 32` allows token t).
pub fn mask_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// Set every logit whose token the mask disallows to -inf.
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (w, chunk) in mask.iter().zip(logits.chunks_mut(32)) {
        if *w == u32::MAX {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if w >> b & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// One request's position in its grammar.
pub struct TokenMatcher {
    m: Matcher,
    /// Output tokens consumed so far, by output index.
    consumed: Vec<TokenId>,
    eos: TokenId,
    vocab: usize,
}

impl TokenMatcher {
    /// A matcher at the start of `handle`'s grammar, if the handle is one of ours.
    pub fn open(handle: &ConstraintHandle) -> Option<TokenMatcher> {
        let c = handle.0.as_any().downcast_ref::<Compiled>()?;
        let eos = c
            .template
            .tok_env()
            .map(|e| e.tok_trie().eos_token())
            .unwrap_or(0);
        Some(TokenMatcher {
            m: c.template.deep_clone(),
            consumed: Vec::new(),
            eos,
            vocab: c.vocab,
        })
    }

    /// Write the allowed tokens for the next output token into `mask` ([`mask_words`] words):
    /// what the grammar allows, EOS only where it accepts, and only EOS once it is finished (or
    /// failed, so the request ends rather than running on unconstrained).
    pub fn fill_mask(&mut self, mask: &mut [u32]) {
        let start = Instant::now();
        mask.fill(0);
        match self.m.compute_mask_or_eos() {
            Ok(v) => {
                let src = v.as_slice();
                let n = src.len().min(mask.len());
                mask[..n].copy_from_slice(&src[..n]);
            }
            Err(_) => set_bit(mask, self.eos),
        }
        // Padding tokens past the vocabulary are never allowed.
        let tail = self.vocab % 32;
        if tail != 0 {
            if let Some(last) = mask.get_mut(self.vocab / 32) {
                *last &= (1u32 << tail) - 1;
            }
        }
        MASKS.fetch_add(1, Ordering::Relaxed);
        MASK_NS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Output tokens consumed so far.
    pub fn consumed(&self) -> usize {
        self.consumed.len()
    }

    /// Whether the grammar has finished (only EOS may follow).
    pub fn is_finished(&self) -> bool {
        self.m.is_stopped()
    }

    /// Record that output index `index` holds `token`: consumed if new, nothing if already
    /// consumed (a retracted request re-feeds its tokens), rolled back if it differs.
    pub fn advance(&mut self, index: usize, token: TokenId) -> Result<(), ConstraintError> {
        if index < self.consumed.len() {
            if self.consumed[index] == token {
                return Ok(());
            }
            let back = self.consumed.len() - index;
            self.m
                .rollback(back)
                .map_err(|e| ConstraintError::Matcher(e.to_string()))?;
            self.consumed.truncate(index);
        }
        if index > self.consumed.len() {
            return Err(ConstraintError::Matcher(format!(
                "output index {index} skips past {} consumed tokens",
                self.consumed.len()
            )));
        }
        self.consumed.push(token);
        if self.m.is_stopped() {
            // Past the end of the grammar only EOS comes, which the matcher need not see.
            return Ok(());
        }
        self.m
            .consume_token(token)
            .map_err(|e| ConstraintError::Matcher(e.to_string()))
    }

    /// Consume `generated[consumed..]` (tokens sampled without this matcher seeing them).
    pub fn catch_up(&mut self, generated: &[TokenId]) -> Result<(), ConstraintError> {
        for (i, &t) in generated.iter().enumerate().skip(self.consumed.len()) {
            self.advance(i, t)?;
        }
        Ok(())
    }
}

fn set_bit(mask: &mut [u32], t: TokenId) {
    if let Some(w) = mask.get_mut(t as usize / 32) {
        *w |= 1 << (t % 32);
    }
}

/// A vocabulary where ids below 256 are single bytes and the rest are special tokens.
struct ByteEnv {
    trie: TokTrie,
}

impl ByteEnv {
    fn new(vocab: usize, eos: TokenId) -> Result<ByteEnv, ConstraintError> {
        if vocab < 257 || eos as usize >= vocab || eos < 256 {
            return Err(ConstraintError::Tokenizer(format!(
                "a byte vocabulary needs at least 257 tokens and an EOS id in [256, {vocab}), got {vocab} and {eos}"
            )));
        }
        let words: Vec<Vec<u8>> = (0..vocab)
            .map(|t| {
                if t < 256 {
                    vec![t as u8]
                } else {
                    let mut name = format!(".<t{t}>").into_bytes();
                    name[0] = TokTrie::SPECIAL_TOKEN_MARKER;
                    name
                }
            })
            .collect();
        let info = llguidance::toktrie::TokRxInfo::new(vocab as u32, eos);
        Ok(ByteEnv {
            trie: TokTrie::from(&info, &words),
        })
    }
}

impl TokenizerEnv for ByteEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<llguidance::toktrie::TokenId> {
        s.iter().map(|&b| b as u32).collect()
    }
}

#[cfg(test)]
mod tests;
