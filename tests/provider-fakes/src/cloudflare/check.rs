//! A check of every recorded answer against the v4 envelope and the fake's result shapes, so a
//! test (this crate's or control's) can end with "and every answer looked like Cloudflare's".

use serde_json::Value;

use super::{Answer, Control};

const TUNNEL_KEYS: &[&str] = &[
    "id",
    "account_tag",
    "created_at",
    "deleted_at",
    "name",
    "connections",
    "conns_active_at",
    "conns_inactive_at",
    "tun_type",
    "metadata",
    "status",
    "remote_config",
    "config_src",
];

const RECORD_KEYS: &[&str] = &[
    "id",
    "name",
    "type",
    "content",
    "proxiable",
    "proxied",
    "ttl",
    "settings",
    "meta",
    "comment",
    "tags",
    "created_on",
    "modified_on",
];

const CONFIG_KEYS: &[&str] = &[
    "tunnel_id",
    "account_id",
    "version",
    "config",
    "source",
    "created_at",
];

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn expect_keys(what: &str, v: &Value, expected: &[&str]) -> Result<(), String> {
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let got = keys(v);
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} has keys {got:?}, expected {want:?}"))
    }
}

/// What is wrong with one answer, if anything.
fn problem(a: &Answer) -> Result<(), String> {
    let body: Value = serde_json::from_slice(&a.body).map_err(|e| format!("not JSON: {e}"))?;
    let ok = (200..300).contains(&a.status);
    let list = a.method == "GET"
        && (a.template.ends_with("/cfd_tunnel") || a.template.ends_with("/dns_records"));
    let mut envelope = vec!["success", "errors", "messages", "result"];
    if ok && list {
        envelope.push("result_info");
    }
    expect_keys("the envelope", &body, &envelope)?;
    if body["success"] != Value::Bool(ok) {
        return Err(format!(
            "status {} with success {}",
            a.status, body["success"]
        ));
    }
    let errors = body["errors"].as_array().ok_or("errors is not a list")?;
    if errors.is_empty() != ok {
        return Err(format!("status {} with errors {errors:?}", a.status));
    }
    for e in errors {
        if !e["code"].is_u64() || !e["message"].is_string() {
            return Err(format!("malformed error {e}"));
        }
    }
    if !body["messages"].is_array() {
        return Err("messages is not a list".to_owned());
    }
    if !ok {
        return if body["result"].is_null() {
            Ok(())
        } else {
            Err("a refusal with a result".to_owned())
        };
    }
    let result = &body["result"];
    let t = a.template.as_str();
    if list {
        expect_keys(
            "result_info",
            &body["result_info"],
            &["page", "per_page", "count", "total_count", "total_pages"],
        )?;
        let items = result.as_array().ok_or("a list's result is not a list")?;
        let shape = if t.ends_with("/cfd_tunnel") {
            TUNNEL_KEYS
        } else {
            RECORD_KEYS
        };
        for item in items {
            expect_keys("a list item", item, shape)?;
        }
    } else if t.ends_with("/token") {
        if !result.is_string() {
            return Err("the token is not a bare string".to_owned());
        }
    } else if t.ends_with("/configurations") {
        expect_keys("the configuration", result, CONFIG_KEYS)?;
    } else if t.ends_with("/connections") {
        if a.method == "GET" && !result.is_array() || a.method == "DELETE" && !result.is_null() {
            return Err(format!("unexpected connections result {result}"));
        }
    } else if t.ends_with("/cfd_tunnel") {
        let mut with_secrets = TUNNEL_KEYS.to_vec();
        with_secrets.extend(["credentials_file", "token"]);
        expect_keys("a created tunnel", result, &with_secrets)?;
    } else if t.ends_with("{tunnel_id}") {
        expect_keys("a tunnel", result, TUNNEL_KEYS)?;
    } else if t.ends_with("{dns_record_id}") && a.method == "DELETE" {
        expect_keys("a deleted record", result, &["id"])?;
    } else if t.ends_with("/dns_records") || t.ends_with("{dns_record_id}") {
        expect_keys("a record", result, RECORD_KEYS)?;
    }
    Ok(())
}

/// Checks every recorded answer (those the fake made itself; injected crashes have no body to
/// check) and returns how many it checked.
///
/// # Panics
/// On the first answer that is not in Cloudflare's envelope or not of its route's shape.
pub fn assert_answers_enveloped(control: &Control) -> usize {
    let mut checked = 0;
    for a in control.answers() {
        if a.injected && a.body.is_empty() {
            continue;
        }
        if let Err(why) = problem(&a) {
            panic!(
                "{} {} answered {} with {}: {why}",
                a.method,
                a.path,
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        checked += 1;
    }
    checked
}
