//! SGLang launch options that change how the served model is loaded: the tokenizer directory,
//! a chat template file and the weight format.

use super::config::{ServerConfig, ServerError};
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// Where the weights come from (SGLang's `--load-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadFormat {
    /// The checkpoint's safetensors.
    #[default]
    Auto,
    /// Random weights of the config's shapes: benchmark without downloading weights.
    Dummy,
}

impl LoadFormat {
    /// Parse SGLang's spelling (`auto`, `safetensors`, `dummy`).
    pub fn parse(s: &str) -> Option<LoadFormat> {
        match s {
            "auto" | "safetensors" => Some(LoadFormat::Auto),
            "dummy" => Some(LoadFormat::Dummy),
            _ => None,
        }
    }
}

/// The tokenizer: `cfg.tokenizer` if given, else the one in `dir`, with `cfg.chat_template`
/// replacing its chat template.
pub fn load_tokenizer(cfg: &ServerConfig, dir: &Path) -> Result<Tokenizer, ServerError> {
    let dir = cfg.tokenizer.as_deref().unwrap_or(dir);
    let mut tok = Tokenizer::load(dir).map_err(|e| ServerError::Load(e.to_string()))?;
    if let Some(t) = &cfg.chat_template {
        tok.set_chat_template_file(t)
            .map_err(|e| ServerError::Load(format!("--chat-template: {e}")))?;
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_formats_parse_sglang_spellings() {
        assert_eq!(LoadFormat::parse("dummy"), Some(LoadFormat::Dummy));
        assert_eq!(LoadFormat::parse("auto"), Some(LoadFormat::Auto));
        assert_eq!(LoadFormat::parse("gguf"), None);
    }
}
