//! `/zones/{zone_id}/dns_records…` of the fake's one zone: create (relative names completed with
//! the zone; A/AAAA and CNAME cannot share a name), list by `name`, `type`, `content`, get and
//! delete. Deleting a tunnel does not touch the records that point at it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::envelope::{ApiError, Paging, ok, ok_page, parse_body, query_pairs};
use super::state::{DnsRecord, State as Zone, timestamp};

const DEFAULT_PER_PAGE: u64 = 100;
const MAX_PER_PAGE: u64 = 5_000_000;
const TYPES: &[&str] = &[
    "A", "AAAA", "CAA", "CNAME", "HTTPS", "MX", "NS", "PTR", "SRV", "SVCB", "TXT",
];

#[derive(Deserialize)]
pub(crate) struct CreateRecord {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    content: Option<String>,
    proxied: Option<bool>,
    ttl: Option<u64>,
    comment: Option<String>,
    tags: Option<Vec<String>>,
}

fn proxiable(kind: &str) -> bool {
    matches!(kind, "A" | "AAAA" | "CNAME")
}

pub(crate) fn render(r: &DnsRecord) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "type": r.kind,
        "content": r.content,
        "proxiable": proxiable(&r.kind),
        "proxied": r.proxied,
        "ttl": r.ttl,
        "settings": {},
        "meta": {},
        "comment": r.comment,
        "tags": r.tags,
        "created_on": timestamp(r.created),
        "modified_on": timestamp(r.created),
    })
}

/// A record name as Cloudflare keeps it: lower case, fully qualified within the zone (`@` and
/// relative names are completed with the zone's name).
fn qualify(name: &str, zone: &str) -> String {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name == "@" || name == zone {
        zone.to_owned()
    } else if name.ends_with(&format!(".{zone}")) {
        name
    } else {
        format!("{name}.{zone}")
    }
}

fn valid_hostname(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            !label.is_empty()
                && label.len() <= 63
                && (label == "*" && i == 0
                    || label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Path(zone_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.zone(&zone_id, uri.path())?;
    let req: CreateRecord = parse_body(&body)?;
    let kind = req.kind.unwrap_or_default().to_ascii_uppercase();
    if !TYPES.contains(&kind.as_str()) {
        return Err(ApiError::dns_invalid(9000, "DNS record type is invalid."));
    }
    let raw_name = req.name.unwrap_or_default();
    if raw_name.trim().is_empty() {
        return Err(ApiError::dns_invalid(9005, "DNS record name is required."));
    }
    let name = qualify(&raw_name, &shared.zone_name);
    if !valid_hostname(&name) {
        return Err(ApiError::dns_invalid(9005, "DNS record name is invalid."));
    }
    let content = req.content.unwrap_or_default().trim().to_owned();
    let content_ok = match kind.as_str() {
        "A" => content.parse::<Ipv4Addr>().is_ok(),
        "AAAA" => content.parse::<Ipv6Addr>().is_ok(),
        "CNAME" => valid_hostname(content.trim_end_matches('.')),
        _ => !content.is_empty(),
    };
    if !content_ok {
        return Err(ApiError::dns_invalid(
            9007,
            format!("Content for {kind} record is invalid."),
        ));
    }
    let proxied = req.proxied.unwrap_or(false);
    if proxied && !proxiable(&kind) {
        return Err(ApiError::dns_invalid(
            9004,
            "This record type cannot be proxied.",
        ));
    }
    // 1 is "automatic"; a proxied record's TTL is always automatic.
    let ttl = req.ttl.unwrap_or(1);
    if ttl != 1 && !(30..=86_400).contains(&ttl) {
        return Err(ApiError::dns_invalid(
            9021,
            "Invalid TTL. Must be between 30 and 86400 seconds, or 1 for Automatic.",
        ));
    }
    let ttl = if proxied { 1 } else { ttl };
    shared.with(|state, now| {
        let same_name = || state.records.values().filter(|r| r.name == name);
        if kind == "CNAME" && same_name().any(|r| proxiable(&r.kind)) {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                81053,
                "An A, AAAA, or CNAME record with that host already exists.",
            ));
        }
        if matches!(kind.as_str(), "A" | "AAAA") && same_name().any(|r| r.kind == "CNAME") {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                81054,
                "A CNAME record with that host already exists.",
            ));
        }
        // A CNAME meets the conflicts above first, whatever its content.
        if same_name().any(|r| r.kind == kind && r.content == content) {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                81058,
                "An identical record already exists.",
            ));
        }
        let seq = state.next_seq();
        let record = DnsRecord {
            id: state.tag(),
            name,
            kind,
            content,
            proxied,
            ttl,
            comment: req.comment,
            tags: req.tags.unwrap_or_default(),
            created: state.clock.wall(now),
        };
        let result = render(&record);
        state.records.insert(seq, record);
        Ok(ok(result))
    })
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Path(zone_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    shared.zone(&zone_id, uri.path())?;
    let pairs = query_pairs(raw.as_deref());
    let paging = Paging::parse(&pairs, DEFAULT_PER_PAGE, MAX_PER_PAGE, |m| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, 1004, m.to_owned())
    })?;
    let get = |keys: &[&str]| {
        pairs
            .iter()
            .find(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let name = get(&["name", "name.exact"]).map(|n| qualify(&n, &shared.zone_name));
    let kind = get(&["type"]).map(|t| t.to_ascii_uppercase());
    let content = get(&["content", "content.exact"]);
    let proxied = get(&["proxied"]).map(|p| p == "true");
    shared.with(|state, _| {
        let rows: Vec<&DnsRecord> = state
            .records
            .values()
            .filter(|r| name.as_ref().is_none_or(|n| *n == r.name))
            .filter(|r| kind.as_ref().is_none_or(|k| *k == r.kind))
            .filter(|r| content.as_ref().is_none_or(|c| *c == r.content))
            .filter(|r| proxied.is_none_or(|p| p == r.proxied))
            .collect();
        let (page, info) = paging.cut(rows);
        Ok(ok_page(page.into_iter().map(render).collect(), info))
    })
}

/// The record with this id and its key (its creation sequence), or 81044.
fn find<'a>(state: &'a Zone, record_id: &str) -> Result<(u64, &'a DnsRecord), ApiError> {
    state
        .records
        .iter()
        .find(|(_, r)| r.id == record_id)
        .map(|(seq, r)| (*seq, r))
        .ok_or_else(ApiError::record_not_found)
}

pub(crate) async fn get_one(
    State(shared): State<Arc<Shared>>,
    Path((zone_id, record_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    shared.zone(&zone_id, uri.path())?;
    shared.with(|state, _| {
        let (_, record) = find(state, &record_id)?;
        Ok(ok(render(record)))
    })
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((zone_id, record_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    shared.zone(&zone_id, uri.path())?;
    shared.with(|state, _| {
        let (seq, _) = find(state, &record_id)?;
        state.records.remove(&seq);
        Ok(ok(json!({"id": record_id})))
    })
}
