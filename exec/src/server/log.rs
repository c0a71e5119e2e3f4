//! Minimal leveled logging to stderr, with seconds since the process's first log call.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Log levels, most verbose first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Per-request detail.
    Debug = 0,
    /// Batch lines and lifecycle.
    Info = 1,
    /// Recoverable problems.
    Warning = 2,
    /// Failures.
    Error = 3,
    /// Only what stops the server (SGLang's `critical`: start-up lines are not shown).
    Critical = 4,
}

impl Level {
    /// Parse SGLang's spelling (debug, info, warning, error, critical).
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warning" | "warn" => Some(Level::Warning),
            "error" => Some(Level::Error),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static START: OnceLock<Instant> = OnceLock::new();

/// Set the process-wide level.
pub fn set_level(l: Level) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

fn emit(l: Level, tag: &str, msg: &str) {
    if (l as u8) < LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:>10.3}s] {tag} {msg}");
}

/// Debug line.
pub fn debug(msg: &str) {
    emit(Level::Debug, "DEBUG", msg);
}

/// Info line.
pub fn info(msg: &str) {
    emit(Level::Info, "INFO", msg);
}

/// Warning line.
pub fn warn(msg: &str) {
    emit(Level::Warning, "WARNING", msg);
}

/// Error line.
pub fn error(msg: &str) {
    emit(Level::Error, "ERROR", msg);
}
