//! Errors of the simulator: every one names the file, the field and the value where it can.

/// Something the simulator refuses, with enough context to fix the input.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// YAML that does not parse or does not match the format.
    #[error("{file}:{line}:{column}: {message}")]
    Yaml {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// serde_yaml's message, which names the field.
        message: String,
    },
    /// A field with a value the simulator cannot use.
    #[error("{file}{}: field `{field}` = {value}: {why}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: String,
        /// Dotted field path.
        field: String,
        /// The offending value.
        value: String,
        /// What is wrong.
        why: String,
        /// Line where the field appears, when it could be found.
        line: Option<usize>,
    },
    /// A profile name that is not shipped.
    #[error("unknown profile `{name}`; known profiles: {}", known.join(", "))]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The built-in names.
        known: Vec<String>,
    },
    /// The scheduler refused the engine configuration.
    #[error("{file}: impossible engine config: {source}")]
    Config {
        /// The trace file.
        file: String,
        /// Why.
        source: doppel_core::ConfigError,
    },
    /// The simulation could not make progress.
    #[error("simulation stalled at t={at_ns} ns: {why}")]
    Stalled {
        /// Virtual time.
        at_ns: u64,
        /// What was stuck.
        why: String,
    },
}

impl SimError {
    /// An `Invalid` error without a line: `field` of `file` holds `value`, which is wrong for
    /// the reason `why`.
    pub fn invalid(file: &str, field: &str, value: impl Into<String>, why: &str) -> SimError {
        SimError::Invalid {
            file: file.to_string(),
            field: field.to_string(),
            value: value.into(),
            why: why.to_string(),
            line: None,
        }
    }

    /// Wrap a serde_yaml error with its location.
    pub fn yaml(file: &str, e: &serde_yaml::Error) -> SimError {
        SimError::yaml_in(file, "", e)
    }

    /// Wrap a serde_yaml error, using the source `text` to locate fields that serde_yaml reports
    /// without a position (inside internally tagged sections such as `workload`).
    pub fn yaml_in(file: &str, text: &str, e: &serde_yaml::Error) -> SimError {
        let (mut line, mut column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let mut message = e.to_string();
        // serde_yaml appends the position to its message; it is already in front.
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        let quoted = |marker: &str| {
            let start = message.find(marker)? + marker.len();
            let end = start + message[start..].find('`')?;
            Some(message[start..end].to_string())
        };
        if line <= 1 && !text.is_empty() {
            if let Some(f) = quoted("unknown field `") {
                if let Some((l, c)) = locate(text, &f) {
                    (line, column) = (l, c);
                    message = format!("workload: {message}");
                }
            } else if let Some(f) = quoted("missing field `") {
                if let Some((l, c)) = locate(text, "workload") {
                    (line, column) = (l, c);
                    message = format!("workload: missing field `{f}`");
                }
            }
        }
        SimError::Yaml {
            file: file.to_string(),
            line,
            column,
            message,
        }
    }
}

/// 1-based (line, column) of the first `key:` in `text`.
pub(crate) fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let pat = format!("{key}:");
    text.lines().enumerate().find_map(|(i, l)| {
        let trimmed = l.trim_start().trim_start_matches("- ");
        if trimmed.starts_with(&pat) {
            Some((i + 1, l.len() - trimmed.len() + 1))
        } else {
            None
        }
    })
}
