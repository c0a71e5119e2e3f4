//! SGLang launch options that change how the served model is loaded: the tokenizer directory,
//! a chat template file, the context length and the weight format.

use super::setup::{ServerConfig, ServerError};
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

/// The context length served: `cfg.context_length` if given (at most the model's, as SGLang
/// requires without its override variable), else the model's.
pub fn context_len(cfg: &ServerConfig, model_max: usize) -> Result<usize, ServerError> {
    match cfg.context_length {
        None => Ok(model_max),
        Some(0) => Err(ServerError::Config(
            "--context-length 0: must be at least 1".into(),
        )),
        Some(n) if n > model_max => Err(ServerError::Config(format!(
            "--context-length {n} is longer than the model's {model_max} positions"
        ))),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_may_shorten_but_not_lengthen() {
        let cfg = |c| ServerConfig {
            context_length: c,
            ..Default::default()
        };
        assert_eq!(context_len(&cfg(None), 4096).unwrap(), 4096);
        assert_eq!(context_len(&cfg(Some(1024)), 4096).unwrap(), 1024);
        let e = context_len(&cfg(Some(8192)), 4096).unwrap_err().to_string();
        assert!(
            e.contains("--context-length 8192") && e.contains("4096"),
            "{e}"
        );
        assert!(context_len(&cfg(Some(0)), 4096).is_err());
    }

    #[test]
    fn load_formats_parse_sglang_spellings() {
        assert_eq!(LoadFormat::parse("dummy"), Some(LoadFormat::Dummy));
        assert_eq!(LoadFormat::parse("auto"), Some(LoadFormat::Auto));
        assert_eq!(LoadFormat::parse("gguf"), None);
    }
}
