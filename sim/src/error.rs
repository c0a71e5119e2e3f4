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
    /// Wrap a serde_yaml error with its location.
    pub fn yaml(file: &str, e: &serde_yaml::Error) -> SimError {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        SimError::Yaml {
            file: file.to_string(),
            line,
            column,
            message: e.to_string(),
        }
    }
}
