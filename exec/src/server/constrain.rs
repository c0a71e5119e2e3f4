//! Structured-output fields: OpenAI's `response_format`, SGLang's `json_schema` / `regex` /
//! `ebnf` sampling parameters, compiled into the request's constraint (docs/structured.md).

use super::error::ApiError;
use super::params::{kind, Fields, GenParams};
use super::AppState;
use crate::constraint::{ConstraintError, ConstraintSpec, StructuralTag, Structure};
use doppel_core::ConstraintHandle;
use serde_json::Value;

/// A constraint read from a request, with the field that stated it (errors name it).
#[derive(Clone, Debug, PartialEq)]
pub struct Requested {
    /// Qualified field name (`response_format.json_schema.schema`, `sampling_params.regex`).
    pub field: String,
    /// What the output must follow.
    pub spec: ConstraintSpec,
}

/// Read the constraint fields of `f`; at most one may be set (`response_format` of type
/// `text` counts as none).
pub fn read(f: &Fields) -> Result<Option<Requested>, ApiError> {
    let mut found: Vec<Requested> = Vec::new();
    for k in ["json_schema", "regex", "ebnf"] {
        let Some(text) = f.str(k)? else { continue };
        let field = f.name(k);
        let spec = match k {
            "json_schema" => {
                ConstraintSpec::JsonSchema(serde_json::from_str(text).map_err(|e| {
                    ApiError::field(&field, format!("`{field}` is not valid JSON: {e}"))
                })?)
            }
            "regex" => ConstraintSpec::Regex(text.to_string()),
            _ => ConstraintSpec::Ebnf(text.to_string()),
        };
        found.push(Requested { field, spec });
    }
    if let Some(rf) = f.object("response_format")? {
        if let Some(r) = response_format(&Fields::new(rf, &f.name("response_format")))? {
            found.push(r);
        }
    }
    if let Some(v) = f.get("structural_tag") {
        found.push(structural_tag_field(f, v)?);
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|r| r.field.as_str()).collect();
        return Err(ApiError::field(
            &found[1].field,
            format!(
                "only one of json_schema, regex, ebnf and response_format may be set, got {}",
                names.join(" and ")
            ),
        ));
    }
    Ok(found.pop())
}

fn response_format(f: &Fields) -> Result<Option<Requested>, ApiError> {
    let ty = f.str("type")?.ok_or_else(|| {
        ApiError::field(&f.name("type"), format!("`{}` is required", f.name("type")))
    })?;
    match ty {
        "text" => Ok(None),
        "json_object" => Ok(Some(Requested {
            field: f.name("type"),
            spec: ConstraintSpec::JsonObject,
        })),
        "json_schema" => {
            let inner = f.object("json_schema")?.ok_or_else(|| {
                let n = f.name("json_schema");
                ApiError::field(&n, format!("`{n}` is required with type json_schema"))
            })?;
            let js = Fields::new(inner, &f.name("json_schema"));
            // `strict` asks that the output follow the schema exactly, which every constraint
            // here does; `name` and `description` only label it.
            js.bool("strict")?;
            js.str("name")?;
            js.str("description")?;
            let schema = match js.get("schema") {
                // OpenAI allows a schema-less json_schema: any JSON object.
                None => ConstraintSpec::JsonObject,
                Some(v @ (Value::Object(_) | Value::Bool(_))) => {
                    ConstraintSpec::JsonSchema(v.clone())
                }
                Some(v) => {
                    let n = js.name("schema");
                    return Err(ApiError::field(
                        &n,
                        format!("`{n}` must be a JSON schema (an object), got {}", kind(v)),
                    ));
                }
            };
            Ok(Some(Requested {
                field: js.name("schema"),
                spec: schema,
            }))
        }
        "structural_tag" => Ok(Some(Requested {
            field: f.name("structures"),
            spec: ConstraintSpec::StructuralTag(structural(f)?),
        })),
        other => {
            let n = f.name("type");
            Err(ApiError::field(
                &n,
                format!(
                    "`{n}` must be text, json_object, json_schema or structural_tag, got {other:?}"
                ),
            ))
        }
    }
}

/// SGLang's `structural_tag` sampling parameter: the tag as a JSON string (or an object).
fn structural_tag_field(f: &Fields, v: &Value) -> Result<Requested, ApiError> {
    let n = f.name("structural_tag");
    let parsed: Value = match v {
        Value::String(t) => serde_json::from_str(t)
            .map_err(|e| ApiError::field(&n, format!("`{n}` is not valid JSON: {e}")))?,
        other => other.clone(),
    };
    let Some(m) = parsed.as_object() else {
        return Err(ApiError::field(
            &n,
            format!("`{n}` must be an object with `structures` and `triggers`"),
        ));
    };
    Ok(Requested {
        field: n.clone(),
        spec: ConstraintSpec::StructuralTag(structural(&Fields::new(m, &n))?),
    })
}

/// `structures` (each `{begin, schema, end}`) and `triggers` of a structural tag.
fn structural(f: &Fields) -> Result<StructuralTag, ApiError> {
    let list = |k: &str| match f.get(k) {
        Some(Value::Array(a)) if !a.is_empty() => Ok(a),
        Some(v) => Err(f.range(k, "a non-empty list", kind(v))),
        None => Err(ApiError::field(
            &f.name(k),
            format!("`{}` is required for a structural tag", f.name(k)),
        )),
    };
    let mut structures = Vec::new();
    for (i, v) in list("structures")?.iter().enumerate() {
        let name = format!("{}[{i}]", f.name("structures"));
        let Some(o) = v.as_object() else {
            return Err(ApiError::field(
                &name,
                format!("`{name}` must be an object with begin, schema and end"),
            ));
        };
        let sf = Fields::new(o, &name);
        let text = |k: &str| {
            sf.str(k)?.map(str::to_string).ok_or_else(|| {
                ApiError::field(&sf.name(k), format!("`{}` is required", sf.name(k)))
            })
        };
        let schema = match sf.get("schema") {
            Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
            Some(v) => return Err(sf.range("schema", "a JSON schema (an object)", kind(v))),
            None => return Err(sf.range("schema", "a JSON schema (an object)", "nothing")),
        };
        structures.push(Structure {
            begin: text("begin")?,
            schema,
            end: text("end")?,
        });
    }
    let mut triggers = Vec::new();
    for (i, v) in list("triggers")?.iter().enumerate() {
        match v.as_str() {
            Some(t) if !t.is_empty() => triggers.push(t.to_string()),
            _ => {
                let name = format!("{}[{i}]", f.name("triggers"));
                return Err(ApiError::field(
                    &name,
                    format!("`{name}` must be a non-empty string"),
                ));
            }
        }
    }
    Ok(StructuralTag {
        structures,
        triggers,
    })
}

/// Compile the constraint `gp` asked for, if any, into its sampling parameters.
pub fn attach(s: &AppState, gp: &mut GenParams) -> Result<(), ApiError> {
    if let Some(r) = &gp.constraint {
        gp.sampling.constraint = Some(compile(s, r)?);
        // The grammar's EOS ends the request even where the engine knows no EOS (the simulator).
        if let Ok(g) = &s.grammars {
            if !gp.sampling.stop_token_ids.contains(&g.eos()) {
                gp.sampling.stop_token_ids.push(g.eos());
            }
        }
    }
    Ok(())
}

/// Compile a requested constraint for this server's tokenizer; a 400 naming the field if it is
/// invalid or the server cannot constrain.
pub fn compile(s: &AppState, r: &Requested) -> Result<ConstraintHandle, ApiError> {
    let g = s.grammars.as_ref().map_err(|why| {
        ApiError::field(
            &r.field,
            format!(
                "`{}`: constrained decoding is not available: {why}",
                r.field
            ),
        )
    })?;
    g.compile(&r.spec).map_err(|e| {
        let why = match e {
            ConstraintError::Invalid(m) => m,
            other => other.to_string(),
        };
        ApiError::field(&r.field, format!("`{}` is invalid: {why}", r.field))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rd(v: Value, prefix: &str) -> Result<Option<Requested>, ApiError> {
        let m = v.as_object().unwrap().clone();
        read(&Fields::new(&m, prefix))
    }

    #[test]
    fn each_field_maps_to_its_constraint() {
        let r = rd(json!({"regex": "a+"}), "sampling_params")
            .unwrap()
            .unwrap();
        assert_eq!(r.field, "sampling_params.regex");
        assert_eq!(r.spec, ConstraintSpec::Regex("a+".into()));
        let r = rd(
            json!({"json_schema": "{\"type\":\"integer\"}"}),
            "sampling_params",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.spec,
            ConstraintSpec::JsonSchema(json!({"type": "integer"}))
        );
        let r = rd(
            json!({"response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "strict": true, "schema": {"type": "object"}}}}),
            "",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.field, "response_format.json_schema.schema");
        assert_eq!(
            r.spec,
            ConstraintSpec::JsonSchema(json!({"type": "object"}))
        );
        let r = rd(json!({"response_format": {"type": "json_object"}}), "")
            .unwrap()
            .unwrap();
        assert_eq!(r.spec, ConstraintSpec::JsonObject);
        assert!(rd(json!({"response_format": {"type": "text"}}), "")
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let e = rd(json!({"json_schema": "{nope"}), "sampling_params").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("sampling_params.json_schema"));
        let e = rd(
            json!({"regex": "a", "ebnf": "root ::= \"a\""}),
            "sampling_params",
        )
        .unwrap_err();
        assert!(e.message.contains("only one"), "{}", e.message);
        let e = rd(json!({"response_format": {"type": "yaml"}}), "").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format.type"));
        let e = rd(
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
            "",
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        let e = rd(
            json!({"response_format": {"type": "json_schema", "json_schema": {"strict": "yes"}}}),
            "",
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.json_schema.strict")
        );
        let e = rd(json!({"structural_tag": "{}"}), "").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("structural_tag.structures"));
        let e = rd(
            json!({"response_format": {"type": "structural_tag", "triggers": ["<f"],
                   "structures": [{"begin": "<f>", "schema": {}}]}}),
            "",
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.structures[0].end")
        );
    }
}
