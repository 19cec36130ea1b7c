//! Shared by the fake's integration tests: a small HTTP client, polling, and the check that every
//! answer the fake gave matches Hetzner's OpenAPI schemas.
//!
//! `specs/hetzner-cloud-openapi.json` is a verbatim copy of Hetzner's public OpenAPI 3.0.3 document
//! (the copy kept in the project's shared/specs/ folder, taken from
//! <https://docs.hetzner.cloud/cloud.spec.json>). The check translates it to JSON Schema: `$ref`s to
//! `#/components/schemas/*` are inlined, `nullable: true` becomes `anyOf [null, …]`, and objects
//! with `properties` get `additionalProperties: false`, so a key the spec does not know fails too.

// Test code: a failed expectation is the test failing, so unwrap and expect are what we want.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use provider_fakes::hetzner::{Answer, Control, HetznerFake, Options};
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

pub async fn start(action_delay: Duration) -> HetznerFake {
    HetznerFake::start(Options {
        action_delay,
        ..Options::default()
    })
    .await
    .expect("fake starts")
}

/// A bare client: what any of Hetzner's clients sends, no retries, no cleverness.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub fn new(fake: &HetznerFake) -> Api {
        Api::with_token(fake, fake.token())
    }

    pub fn with_token(fake: &HetznerFake, token: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Api {
            http,
            base: fake.url(),
            token: token.to_owned(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None)
            .await
            .unwrap()
    }

    /// Polls an action until it leaves `running` (at most 5 s).
    pub async fn wait_action(&self, id: u64) -> Value {
        for _ in 0..250 {
            let reply = self.get(&format!("/actions/{id}")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if reply.body["action"]["status"] != "running" {
                return reply.body["action"].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("action {id} still running after 5 s");
    }

    /// Polls a server until it has `status` (at most 5 s).
    pub async fn wait_status(&self, id: u64, status: &str) {
        for _ in 0..250 {
            let reply = self.get(&format!("/servers/{id}")).await;
            if reply.body["server"]["status"] == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server {id} never reached {status}");
    }

    pub async fn create_server(&self, name: &str, labels: Value) -> Reply {
        self.post("/servers", json!({"name": name, "server_type": "cx22", "image": "debian-12", "location": "fsn1", "labels": labels})).await
    }
}

pub fn id(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

/// Keys the live API returns that this copy of the spec predates, found when Hetzner's own client
/// refused answers without them: (schema, key, its definition). Keep this list short and sourced.
const NEWER_THAN_SPEC: &[(&str, &str, &str)] = &[
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

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec: Value =
            serde_json::from_str(include_str!("../../specs/hetzner-cloud-openapi.json"))
                .expect("the spec copy is JSON");
        for (schema, key, definition) in NEWER_THAN_SPEC {
            let properties = &mut spec["components"]["schemas"][schema]["properties"];
            assert!(properties.is_object(), "the spec has no schema {schema}");
            properties[key] = serde_json::from_str(definition).expect("a JSON schema");
        }
        spec
    })
}

/// OpenAPI 3.0 schema → JSON Schema (2020-12), `$ref`s inlined.
pub fn convert(node: &Value, strict: bool, depth: usize) -> Value {
    assert!(depth < 64, "schema nests too deep (a recursive $ref?)");
    let Value::Object(map) = node else {
        return node.clone();
    };
    if let Some(Value::String(reference)) = map.get("$ref") {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
        let target = &spec()["components"]["schemas"][name];
        assert!(!target.is_null(), "dangling $ref {reference}");
        return convert(target, strict, depth + 1);
    }
    let mut out = Map::new();
    let mut nullable = false;
    for (key, value) in map {
        match key.as_str() {
            "nullable" => nullable = value == &Value::Bool(true),
            "example" | "examples" | "deprecated" | "discriminator" | "xml" | "externalDocs" => {}
            "properties" | "patternProperties" => {
                let props = value.as_object().expect("properties is an object");
                let props = props
                    .iter()
                    .map(|(k, v)| (k.clone(), convert(v, strict, depth + 1)))
                    .collect();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" | "not" => {
                out.insert(key.clone(), convert(value, strict, depth + 1));
            }
            "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), convert(value, strict, depth + 1));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let members = value.as_array().expect("a list of schemas");
                // Several members of an allOf each see only their own keys: no strictness there.
                let strict = strict && (key != "allOf" || members.len() == 1);
                out.insert(
                    key.clone(),
                    Value::Array(
                        members
                            .iter()
                            .map(|m| convert(m, strict, depth + 1))
                            .collect(),
                    ),
                );
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if strict && out.contains_key("properties") && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    let schema = Value::Object(out);
    if nullable {
        json!({"anyOf": [{"type": "null"}, schema]})
    } else {
        schema
    }
}

/// The response object the spec gives for this call and status (exact, then `4xx`/`5xx`).
fn response_spec(answer: &Answer) -> Result<&'static Value, String> {
    let path = answer
        .template
        .strip_prefix("/v1")
        .ok_or("route outside /v1")?;
    let operation = &spec()["paths"][path][answer.method.to_lowercase()];
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

/// Checks one answer against the spec; the error says what and where.
pub fn check_answer(
    answer: &Answer,
    cache: &mut HashMap<String, jsonschema::Validator>,
) -> Result<(), String> {
    let response = response_spec(answer)?;
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
    if !cache.contains_key(&key) {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&convert(schema, true, 0))
            .map_err(|e| format!("the converted schema does not compile: {e}"))?;
        cache.insert(key.clone(), validator);
    }
    let errors: Vec<String> = cache[&key]
        .iter_errors(&body)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n    "))
    }
}

/// Every answer this fake gave, checked against the spec; panics listing every mismatch. Answers
/// whose body an injected crash withheld are skipped (they are not Hetzner answers).
pub fn assert_answers_match_spec(control: &Control) -> usize {
    let mut cache = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for answer in control.answers() {
        if answer.injected && answer.body.is_empty() {
            continue;
        }
        checked += 1;
        if let Err(e) = check_answer(&answer, &mut cache) {
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
    assert!(
        failures.is_empty(),
        "{} answer(s) out of {checked} break the OpenAPI schemas:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked > 0,
        "no answer was recorded: is record_answers off?"
    );
    checked
}
