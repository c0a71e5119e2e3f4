//! Reading request JSON field by field, so every error names the field and the value.

use super::error::ApiError;
use doppel_core::TokenId;
use serde_json::{Map, Value};

/// Parse a request body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad(format!(
            "request body must be a JSON object, got {}",
            kind(&other)
        ))),
    }
}

/// The JSON kind of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 60 {
        return s;
    }
    let mut cut = 60;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

/// Typed access to the fields of one JSON object; `prefix` qualifies names in errors.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    /// Fields of `map`, named `prefix.key` in errors (no prefix at top level).
    pub fn new(map: &'a Map<String, Value>, prefix: &str) -> Fields<'a> {
        Fields {
            map,
            prefix: prefix.to_string(),
        }
    }

    /// The qualified name of a field.
    pub fn name(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }

    /// A field's value; null counts as absent.
    pub fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn wrong(&self, k: &str, want: &str, v: &Value) -> ApiError {
        ApiError::field(
            &self.name(k),
            format!(
                "`{}` must be {want}, got {} {}",
                self.name(k),
                kind(v),
                show(v)
            ),
        )
    }

    /// A range error for a field.
    pub fn range(&self, k: &str, want: &str, v: impl std::fmt::Display) -> ApiError {
        ApiError::field(
            &self.name(k),
            format!("`{}` must be {want}, got {v}", self.name(k)),
        )
    }

    /// A number.
    pub fn f64(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(k, "a number", v)),
        }
    }

    /// An integer (a float with no fraction is accepted).
    pub fn i64(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => {
                if let Some(i) = v.as_i64() {
                    return Ok(Some(i));
                }
                match v.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                    _ => Err(self.wrong(k, "an integer", v)),
                }
            }
        }
    }

    /// An integer within `lo..=hi`.
    pub fn int_in(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        match self.i64(k)? {
            Some(i) if i < lo || i > hi => {
                Err(self.range(k, &format!("an integer in [{lo}, {hi}]"), i))
            }
            x => Ok(x),
        }
    }

    /// A boolean.
    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(k, "a boolean", v)),
        }
    }

    /// A string.
    pub fn str(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(k, "a string", v)),
        }
    }

    /// An object.
    pub fn object(&self, k: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.wrong(k, "an object", v)),
        }
    }

    /// A string or a list of strings (stop sequences).
    pub fn strings(&self, k: &str) -> Result<Vec<String>, ApiError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::field(
                            &self.name(k),
                            format!(
                                "`{}[{i}]` must be a string, got {} {}",
                                self.name(k),
                                kind(v),
                                show(v)
                            ),
                        )
                    })
                })
                .collect(),
            Some(v) => Err(self.wrong(k, "a string or a list of strings", v)),
        }
    }

    /// A list of token ids below `vocab`.
    pub fn token_ids(&self, k: &str, vocab: usize) -> Result<Vec<TokenId>, ApiError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(v) => token_list(v, &self.name(k), vocab),
        }
    }
}

/// A JSON list of token ids, each below `vocab`.
pub fn token_list(v: &Value, name: &str, vocab: usize) -> Result<Vec<TokenId>, ApiError> {
    let Some(a) = v.as_array() else {
        return Err(ApiError::field(
            name,
            format!(
                "`{name}` must be a list of token ids, got {} {}",
                kind(v),
                show(v)
            ),
        ));
    };
    a.iter()
        .enumerate()
        .map(|(i, t)| match t.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(id as TokenId),
            _ => Err(ApiError::field(
                name,
                format!(
                    "`{name}[{i}]` must be a token id in [0, {vocab}), got {}",
                    show(t)
                ),
            )),
        })
        .collect()
}
