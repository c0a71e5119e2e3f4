//! Text side of a checkpoint: tokenizer.json through `tokenizers`, the chat template of
//! tokenizer_config.json (or chat_template.jinja) rendered with minijinja, generation_config.json,
//! and streaming detokenization with stop strings.

use crate::model::config::token_ids;
use doppel_core::{SamplingParams, TokenId};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The text side of a checkpoint could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("{path}: cannot read: {why}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file is malformed.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Codec(String),
    /// The checkpoint has no chat template.
    #[error("{0}: no chat template (tokenizer_config.json has no chat_template and there is no chat_template.jinja)")]
    NoChatTemplate(PathBuf),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant", ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A checkpoint's tokenizer with its chat template and special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub(crate) dir: PathBuf,
    pub(crate) chat_template: Option<String>,
    pub(crate) bos_token: Option<String>,
    eos_token: Option<String>,
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|e| TokenizerError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// A special token entry: a string or {"content": "..."}.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Load `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json` and `dir/chat_template.jinja`.
    pub fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            return Err(TokenizerError::Io {
                path: tj,
                why: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| TokenizerError::Format {
            path: tj.clone(),
            why: e.to_string(),
        })?;
        let mut tok = Tokenizer {
            inner,
            dir: dir.to_path_buf(),
            chat_template: None,
            bos_token: None,
            eos_token: None,
        };
        let tc = dir.join("tokenizer_config.json");
        if tc.exists() {
            let v: Value =
                serde_json::from_str(&read(&tc)?).map_err(|e| TokenizerError::Format {
                    path: tc.clone(),
                    why: format!("invalid JSON: {e}"),
                })?;
            tok.bos_token = token_str(v.get("bos_token"));
            tok.eos_token = token_str(v.get("eos_token"));
            tok.chat_template = match v.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                Some(other) => {
                    return Err(TokenizerError::Format {
                        path: tc,
                        why: format!("chat_template is neither a string nor a list: {other}"),
                    })
                }
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if tok.chat_template.is_none() && jinja.exists() {
            tok.chat_template = Some(read(&jinja)?);
        }
        Ok(tok)
    }

    /// Replace the chat template with the Jinja file `path` (SGLang's `--chat-template`).
    pub fn set_chat_template_file(&mut self, path: &Path) -> Result<(), TokenizerError> {
        self.chat_template = Some(read(path)?);
        Ok(())
    }

    /// Ids of the ordinary (non-special) tokens whose text is whole on its own (not empty, not
    /// a piece of a UTF-8 sequence), ascending: what a synthetic generator may emit so that
    /// every token has readable text.
    pub fn ordinary_ids(&self) -> Vec<TokenId> {
        let special: std::collections::BTreeSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        (0..self.vocab_size() as u32)
            .filter(|id| !special.contains(id) && self.inner.id_to_token(*id).is_some())
            .filter(|&id| {
                self.inner
                    .decode(&[id], false)
                    .is_ok_and(|t| !t.is_empty() && !t.contains('\u{FFFD}'))
            })
            .collect()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string.
    pub fn token_to_id(&self, s: &str) -> Option<TokenId> {
        self.inner.token_to_id(s)
    }

    /// The EOS token string of tokenizer_config.json.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Encode text; `add_special_tokens` applies the post-processor (e.g. a BOS).
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenId>, TokenizerError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Decode ids to text.
    pub fn decode(
        &self,
        ids: &[TokenId],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Whether a chat template is available.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }
}

/// Defaults from generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    /// EOS ids (one or several).
    pub eos_token_ids: Vec<TokenId>,
    /// BOS id.
    pub bos_token_id: Option<TokenId>,
    /// Whether the model card samples by default.
    pub do_sample: Option<bool>,
    /// Default temperature.
    pub temperature: Option<f32>,
    /// Default top_p.
    pub top_p: Option<f32>,
    /// Default top_k.
    pub top_k: Option<i32>,
    /// Default min_p.
    pub min_p: Option<f32>,
    /// Default repetition penalty.
    pub repetition_penalty: Option<f32>,
}

impl GenerationConfig {
    /// Read `dir/generation_config.json`; Ok(None) when the file does not exist.
    pub fn load(dir: &Path) -> Result<Option<GenerationConfig>, TokenizerError> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(None);
        }
        Self::parse(&read(&path)?, &path).map(Some)
    }

    /// Parse the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<GenerationConfig, TokenizerError> {
        let v: Value = serde_json::from_str(text).map_err(|e| TokenizerError::Format {
            path: path.to_path_buf(),
            why: format!("invalid JSON: {e}"),
        })?;
        let bad = |field: &str, val: &Value| TokenizerError::Format {
            path: path.to_path_buf(),
            why: format!("field `{field}` = {val}: expected a number"),
        };
        let num = |field: &str| -> Result<Option<f64>, TokenizerError> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(Some)
                    .ok_or_else(|| bad(field, x)),
            }
        };
        let ids = |field: &str| {
            token_ids(v.get(field)).map_err(|val| TokenizerError::Format {
                path: path.to_path_buf(),
                why: format!("field `{field}` = {val}: expected a token id or a list of token ids"),
            })
        };
        Ok(GenerationConfig {
            eos_token_ids: ids("eos_token_id")?,
            bos_token_id: ids("bos_token_id")?.first().copied(),
            do_sample: v.get("do_sample").and_then(Value::as_bool),
            temperature: num("temperature")?.map(|x| x as f32),
            top_p: num("top_p")?.map(|x| x as f32),
            top_k: num("top_k")?.map(|x| x as i32),
            min_p: num("min_p")?.map(|x| x as f32),
            repetition_penalty: num("repetition_penalty")?.map(|x| x as f32),
        })
    }

    /// Fill the sampling defaults (as SGLang does with the model's generation config); an explicit
    /// `do_sample: false` means greedy.
    pub fn apply_defaults(&self, p: &mut SamplingParams) {
        if self.do_sample == Some(false) {
            p.temperature = 0.0;
            return;
        }
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(t) = self.top_p {
            p.top_p = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(m) = self.min_p {
            p.min_p = m;
        }
        if let Some(r) = self.repetition_penalty {
            p.repetition_penalty = r;
        }
    }
}

/// Incremental detokenizer: turns a stream of ids into text pieces, never splitting a UTF-8
/// character and keeping the spacing a whole-sequence decode would give.
pub struct Detokenizer {
    ids: Vec<TokenId>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl Detokenizer {
    /// A detokenizer; `context` are ids before the output (e.g. the prompt's last few) that
    /// condition spacing but are not emitted.
    pub fn new(context: &[TokenId], skip_special_tokens: bool) -> Detokenizer {
        Detokenizer {
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
            skip_special_tokens,
        }
    }

    /// Add a token; returns the text that is now certain (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (an incomplete character at the end of the stream).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(
            if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
                full[prefix.len()..].to_string()
            } else {
                String::new()
            },
        )
    }
}

/// What one piece of text did to a stop-string matcher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text safe to show now.
    pub emit: String,
    /// The stop string that matched; the request should end.
    pub stopped: Option<String>,
}

/// Holds back text that could be the start of a stop string; finds the earliest stop string.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    include_stop: bool,
    held: String,
    done: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored); `include_stop` keeps the stop string in the output.
    pub fn new(stops: &[String], include_stop: bool) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            include_stop,
            held: String::new(),
            done: false,
        }
    }

    /// Feed text. With `armed` false (fewer than min_new_tokens so far) nothing can stop the request.
    pub fn push(&mut self, text: &str, armed: bool) -> StopStep {
        if self.done {
            return StopStep::default();
        }
        self.held.push_str(text);
        if !armed || self.stops.is_empty() {
            return StopStep {
                emit: std::mem::take(&mut self.held),
                stopped: None,
            };
        }
        // Earliest match; on a tie at the same position the longest stop string.
        let mut best: Option<(usize, &String)> = None;
        for s in &self.stops {
            if let Some(i) = self.held.find(s.as_str()) {
                if best.is_none_or(|(j, b)| i < j || (i == j && s.len() > b.len())) {
                    best = Some((i, s));
                }
            }
        }
        if let Some((i, s)) = best {
            let end = if self.include_stop { i + s.len() } else { i };
            let step = StopStep {
                emit: self.held[..end].to_string(),
                stopped: Some(s.clone()),
            };
            self.held.clear();
            self.done = true;
            return step;
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > keep && self.held.ends_with(&s[..k]) {
                    keep = k;
                }
            }
        }
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopStep {
            emit,
            stopped: None,
        }
    }

    /// The request ended for another reason: release the held text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Detokenizer plus stop strings: what a server or CLI needs per request.
pub struct TextStream {
    detok: Detokenizer,
    stop: StopMatcher,
    min_new_tokens: usize,
    tokens: usize,
    text: String,
}

impl TextStream {
    /// A stream for one request.
    pub fn new(
        stops: &[String],
        include_stop: bool,
        min_new_tokens: usize,
        skip_special_tokens: bool,
    ) -> TextStream {
        TextStream {
            detok: Detokenizer::new(&[], skip_special_tokens),
            stop: StopMatcher::new(stops, include_stop),
            min_new_tokens,
            tokens: 0,
            text: String::new(),
        }
    }

    /// Add a generated token: the text to show now, and the stop string if one matched.
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> Result<StopStep, TokenizerError> {
        self.tokens += 1;
        let piece = self.detok.push(tok, id)?;
        let step = self.stop.push(&piece, self.tokens >= self.min_new_tokens);
        self.text.push_str(&step.emit);
        Ok(step)
    }

    /// The request finished: any held text.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        let tail = self.detok.flush(tok)?;
        let mut out = self.stop.push(&tail, false).emit;
        out.push_str(&self.stop.finish());
        self.text.push_str(&out);
        Ok(out)
    }

    /// All text shown so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn stop_strings_hold_back_and_trim() {
        let mut m = StopMatcher::new(&stops(&["\n\n", "END"]), false);
        assert_eq!(m.push("Hello E", true).emit, "Hello ");
        assert_eq!(m.push("N", true).emit, "");
        let s = m.push("Dless", true);
        assert_eq!(s.emit, "");
        assert_eq!(s.stopped.as_deref(), Some("END"));
        let mut m = StopMatcher::new(&stops(&["ab"]), true);
        assert_eq!(m.push("xa", true).emit, "x");
        let s = m.push("bz", true);
        assert_eq!((s.emit.as_str(), s.stopped.as_deref()), ("ab", Some("ab")));
        // Not armed yet: everything streams, nothing stops.
        let mut m = StopMatcher::new(&stops(&["ab"]), false);
        assert_eq!(
            m.push("ab", false),
            StopStep {
                emit: "ab".into(),
                stopped: None
            }
        );
        // A false start is released when the next text rules it out, and at finish.
        let mut m = StopMatcher::new(&stops(&["STOP"]), false);
        assert_eq!(m.push("ST", true).emit, "");
        assert_eq!(m.push("x", true).emit, "STx");
        assert_eq!(m.push("STO", true).emit, "");
        assert_eq!(m.finish(), "STO");
    }

    #[test]
    fn generation_config_defaults() {
        let g = GenerationConfig::parse(
            r#"{"eos_token_id": [1, 2], "temperature": 0.6, "top_k": 20, "do_sample": true}"#,
            Path::new("g.json"),
        )
        .unwrap();
        assert_eq!(g.eos_token_ids, vec![1, 2]);
        let mut p = SamplingParams::default();
        g.apply_defaults(&mut p);
        assert_eq!((p.temperature, p.top_k), (0.6, 20));
        let e =
            GenerationConfig::parse(r#"{"temperature": "hot"}"#, Path::new("g.json")).unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
