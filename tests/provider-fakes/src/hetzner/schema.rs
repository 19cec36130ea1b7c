//! Checks the fake's answers against Hetzner's own OpenAPI document, so that any test using the
//! fake (this crate's and control's) can end with [`assert_answers_match_spec`] and know every
//! answer it got had Hetzner's exact shape.
//!
//! `specs/hetzner-cloud-openapi.json` is a verbatim copy of Hetzner's public OpenAPI 3.0.3 document
//! (the copy kept in the project's shared/specs/ folder, published at
//! <https://docs.hetzner.cloud/cloud.spec.json>). It is translated to JSON Schema here: `$ref`s
//! to `#/components/schemas/*` are inlined, `nullable: true` becomes `anyOf [null, …]`, and every
//! object with `properties` gets `additionalProperties: false`, so a key the spec does not know
//! fails as surely as a missing one. This module must never loosen a schema to make an answer pass,
//! beyond the sourced list in [`NEWER_THAN_SPEC`].

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value, json};

use super::lock;
use super::{Answer, Control};

/// Keys the live API returns that this copy of the spec predates, found when Hetzner's own client
/// refused answers without them: (schema, key, its definition). Keep this list short and sourced.
pub const NEWER_THAN_SPEC: &[(&str, &str, &str)] = &[
    // hcloud-python 2.27's `ServerTypeLocation` requires both.
    (
        "server_type_location",
        "available",
        r#"{"type": "boolean"}"#,
    ),
    (
        "server_type_location",
        "recommended",
        r#"{"type": "boolean"}"#,
    ),
];

const SPEC_TEXT: &str = include_str!("../../specs/hetzner-cloud-openapi.json");

/// The spec, parsed and patched once per process.
fn spec() -> Result<&'static Value, String> {
    static SPEC: OnceLock<Result<Value, String>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec: Value = serde_json::from_str(SPEC_TEXT)
            .map_err(|e| format!("the spec copy is not JSON: {e}"))?;
        for (schema, key, definition) in NEWER_THAN_SPEC {
            let properties = &mut spec["components"]["schemas"][schema]["properties"];
            if !properties.is_object() {
                return Err(format!("the spec has no schema {schema}"));
            }
            properties[key] =
                serde_json::from_str(definition).map_err(|e| format!("{schema}.{key}: {e}"))?;
        }
        Ok(spec)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// An OpenAPI 3.0 schema as JSON Schema (2020-12), `$ref`s inlined; `strict` refuses unknown keys.
pub fn convert(node: &Value, strict: bool) -> Result<Value, String> {
    convert_at(spec()?, node, strict, 0)
}

fn convert_at(spec: &Value, node: &Value, strict: bool, depth: usize) -> Result<Value, String> {
    if depth > 64 {
        return Err("the schema nests too deep (a recursive $ref?)".to_owned());
    }
    let Value::Object(map) = node else {
        return Ok(node.clone());
    };
    if let Some(Value::String(reference)) = map.get("$ref") {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("unsupported $ref {reference}"))?;
        let target = &spec["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("dangling $ref {reference}"));
        }
        return convert_at(spec, target, strict, depth + 1);
    }
    let mut out = Map::new();
    let mut nullable = false;
    for (key, value) in map {
        let converted = match key.as_str() {
            "nullable" => {
                nullable = value == &Value::Bool(true);
                continue;
            }
            "example" | "examples" | "deprecated" | "discriminator" | "xml" | "externalDocs" => {
                continue;
            }
            "properties" | "patternProperties" => {
                let props = value
                    .as_object()
                    .ok_or_else(|| format!("{key} is not an object"))?;
                let mut converted = Map::new();
                for (name, schema) in props {
                    converted.insert(name.clone(), convert_at(spec, schema, strict, depth + 1)?);
                }
                Value::Object(converted)
            }
            "items" | "not" => convert_at(spec, value, strict, depth + 1)?,
            "additionalProperties" if value.is_object() => {
                convert_at(spec, value, strict, depth + 1)?
            }
            "allOf" | "anyOf" | "oneOf" => {
                let members = value
                    .as_array()
                    .ok_or_else(|| format!("{key} is not a list"))?;
                // Several members of an allOf each see only their own keys: no strictness there.
                let strict = strict && (key != "allOf" || members.len() == 1);
                let members: Result<Vec<Value>, String> = members
                    .iter()
                    .map(|m| convert_at(spec, m, strict, depth + 1))
                    .collect();
                Value::Array(members?)
            }
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if strict && out.contains_key("properties") && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    let schema = Value::Object(out);
    Ok(if nullable {
        json!({"anyOf": [{"type": "null"}, schema]})
    } else {
        schema
    })
}

/// The response object the spec gives for this call and status (exact, then `4xx`/`5xx`).
fn response_spec<'s>(spec: &'s Value, answer: &Answer) -> Result<&'s Value, String> {
    let path = answer
        .template
        .strip_prefix("/v1")
        .ok_or("the route is outside /v1")?;
    let operation = &spec["paths"][path][answer.method.to_lowercase()];
    if operation.is_null() {
        return Err(format!(
            "the spec has no operation {} {path}",
            answer.method
        ));
    }
    let exact = answer.status.to_string();
    let class = format!("{}xx", answer.status / 100);
    for key in [exact.as_str(), class.as_str(), "default"] {
        let response = &operation["responses"][key];
        if !response.is_null() {
            return Ok(response);
        }
    }
    Err(format!(
        "the spec has no {} answer for {} {path}",
        answer.status, answer.method
    ))
}

/// Compiled validators, one per (method, route, status).
fn validators() -> &'static Mutex<HashMap<String, jsonschema::Validator>> {
    static CACHE: OnceLock<Mutex<HashMap<String, jsonschema::Validator>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Checks one answer against the spec; the error says what is wrong and where.
pub fn check_answer(answer: &Answer) -> Result<(), String> {
    let spec = spec()?;
    let response = response_spec(spec, answer)?;
    let schema = &response["content"]["application/json"]["schema"];
    if schema.is_null() {
        return if answer.body.is_empty() {
            Ok(())
        } else {
            Err("the spec says no body, the fake sent one".to_owned())
        };
    }
    let body: Value =
        serde_json::from_slice(&answer.body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let key = format!("{} {} {}", answer.method, answer.template, answer.status);
    let mut cache = lock(validators());
    if !cache.contains_key(&key) {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&convert(schema, true)?)
            .map_err(|e| format!("the converted schema does not compile: {e}"))?;
        cache.insert(key.clone(), validator);
    }
    let validator = cache.get(&key).ok_or("the validator vanished")?;
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n    "))
    }
}

/// Checks every recorded answer; answers whose body an injected crash withheld are skipped (they
/// are not Hetzner answers). Returns how many were checked, or a report of every mismatch.
pub fn check_answers(answers: &[Answer]) -> Result<usize, String> {
    let mut failures = Vec::new();
    let mut checked = 0;
    for answer in answers {
        if answer.injected && answer.body.is_empty() {
            continue;
        }
        checked += 1;
        if let Err(e) = check_answer(answer) {
            failures.push(format!(
                "{} {} ({}) answered {} that does not match the spec:\n    {e}\n    body: {}",
                answer.method,
                answer.path,
                answer.template,
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
    }
    if failures.is_empty() {
        Ok(checked)
    } else {
        Err(format!(
            "{} answer(s) out of {checked} break Hetzner's OpenAPI schemas:\n{}",
            failures.len(),
            failures.join("\n")
        ))
    }
}

/// For the end of a test: every answer this fake gave matches the spec.
///
/// # Panics
/// With the list of every mismatching answer, or if no answer was recorded (recording off).
pub fn assert_answers_match_spec(control: &Control) -> usize {
    match check_answers(&control.answers()) {
        Ok(0) => panic!("no answer was recorded: is Options::record_answers off?"),
        Ok(checked) => checked,
        Err(report) => panic!("{report}"),
    }
}
