//! SGLang's structural tag (`response_format: {type: structural_tag, structures, triggers}`):
//! free text in which each trigger opens one of the structures, `begin` + JSON following the
//! structure's schema + `end`, after which free text goes on. Compiled to an llguidance Lark
//! grammar: a lazy lexeme of text up to a trigger, the rest of `begin`, `%json {schema}`, `end`
//! (llguidance's documented tool-calling pattern, which its own `StructTag` compiles to).

use super::{compact, ConstraintError};
use serde_json::Value;

/// One structure: `begin`, then JSON valid under `schema`, then `end`.
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    /// Opening text; starts with one of the triggers.
    pub begin: String,
    /// JSON schema of the content.
    pub schema: Value,
    /// Closing text.
    pub end: String,
}

/// Structures and the triggers that open them.
#[derive(Clone, Debug, PartialEq)]
pub struct StructuralTag {
    /// The structures.
    pub structures: Vec<Structure>,
    /// Texts that, once generated, must continue as one of the structures they begin.
    pub triggers: Vec<String>,
}

/// A Lark string literal (JSON's escapes, which Lark reads the same way).
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl StructuralTag {
    /// The Lark grammar; an error names the structure whose `begin` no trigger starts.
    pub fn to_lark(&self) -> Result<String, ConstraintError> {
        if self.structures.is_empty() || self.triggers.is_empty() {
            return Err(ConstraintError::Invalid(
                "a structural tag needs at least one structure and one trigger".into(),
            ));
        }
        if let Some(t) = self.triggers.iter().position(String::is_empty) {
            return Err(ConstraintError::Invalid(format!("triggers[{t}] is empty")));
        }
        let mut rules = vec!["TEXT: /(.|\\n)*/".to_string()];
        let mut tags = Vec::new();
        let mut used = vec![false; self.triggers.len()];
        for (i, s) in self.structures.iter().enumerate() {
            // The longest trigger that starts `begin` opens it.
            let t = (0..self.triggers.len())
                .filter(|&t| s.begin.starts_with(&self.triggers[t]))
                .max_by_key(|&t| self.triggers[t].len())
                .ok_or_else(|| {
                    ConstraintError::Invalid(format!(
                        "structures[{i}].begin {:?} starts with none of the triggers",
                        s.begin
                    ))
                })?;
            if !s.schema.is_object() && !s.schema.is_boolean() {
                return Err(ConstraintError::Invalid(format!(
                    "structures[{i}].schema must be a JSON schema (an object)"
                )));
            }
            used[t] = true;
            let mut body = vec![format!("hd_{t}")];
            let rest = &s.begin[self.triggers[t].len()..];
            if !rest.is_empty() {
                body.push(lit(rest));
            }
            body.push(format!("%json {}", compact(s.schema.clone())));
            if !s.end.is_empty() {
                body.push(lit(&s.end));
            }
            rules.push(format!("tag_{i}: {}", body.join(" ")));
            tags.push(format!("tag_{i}"));
        }
        for (t, trigger) in self.triggers.iter().enumerate() {
            if used[t] {
                rules.push(format!("hd_{t}[lazy]: TEXT {}", lit(trigger)));
            }
        }
        Ok(format!(
            "start: ({})* TEXT\n{}\n",
            tags.join(" | "),
            rules.join("\n")
        ))
    }
}
