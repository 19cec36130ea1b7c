//! The one pass ([`super::read`]) held to the two passes ([`super::check`], then `serde_json`),
//! on request bodies of the API, valid and broken in the ways that matter to either: the one
//! pass answers exactly when the two passes accept, and with the same value. Were it to answer
//! where they refuse, a broken body would be taken; were it to give up where they accept, the
//! body would only be read twice.

use std::fmt::Debug;

use control_api::accounts::{CreateAccount, CreateToken};
use control_api::agent::{Heartbeat, RegisterRequest};
use control_api::agents::{CloneAgent, ImportAgent, ProvisionAgent, TransferAgent};
use control_api::images::{RegisterImage, SetCurrentImage};
use control_api::plain_vms::{FirewallRules, ProvisionPlainVm, TransferPlainVm};
use control_api::vault::AddVaultKey;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::super::extract::{parse_json, parse_json_two_pass};

/// Reads `body` both ways and holds them to each other; `parse_json` answers as the two passes.
fn agree<T>(body: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + ToSchema + PartialEq + Debug,
{
    let text = String::from_utf8_lossy(body);
    match (
        super::read::<T>(&T::name(), body),
        parse_json_two_pass::<T>(body),
    ) {
        (Some(one), Ok(two)) => prop_assert_eq!(one, two, "{}", text),
        (None, Err(_)) => {}
        (Some(one), Err(error)) => {
            prop_assert!(
                false,
                "one pass took {text} as {one:?}; two passes: {error:?}"
            );
        }
        (None, Ok(two)) => {
            prop_assert!(false, "one pass gave up on {text}; two passes took {two:?}");
        }
    }
    let answer = |result: Result<T, _>| result.map_err(|error| format!("{error:?}"));
    prop_assert_eq!(
        answer(parse_json::<T>(body)),
        answer(parse_json_two_pass::<T>(body)),
        "{}",
        text
    );
    Ok(())
}

/// Text as it comes: escapes, non-ASCII, but no `"`, `{` or `:`, so that the edits below find
/// keys and objects in the serialized body by looking at its bytes.
fn text() -> impl Strategy<Value = Value> {
    "[a-z0-9 _./\\\\\n\t\u{e9}\u{1F600}-]{0,10}".prop_map(Value::String)
}

/// A count up to `max`, its edges often.
fn count(max: u64) -> impl Strategy<Value = Value> {
    prop_oneof![Just(0_u64), Just(1), Just(max), 0..=max].prop_map(Value::from)
}

const I64_MAX: u64 = i64::MAX.unsigned_abs();
const U32_MAX: u64 = u32::MAX as u64;

/// A member of an `Option` type: absent, `null`, or a value.
fn optional<S: Strategy<Value = Value>>(value: S) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![Just(None), Just(Some(Value::Null)), value.prop_map(Some)]
}

/// A member with a default: absent or a value.
fn defaulted<S: Strategy<Value = Value>>(value: S) -> impl Strategy<Value = Option<Value>> {
    prop::option::of(value)
}

fn object(members: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        members
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_owned(), value?)))
            .collect(),
    )
}

fn one_of(names: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::sample::select(names).prop_map(Value::from)
}

fn instant() -> impl Strategy<Value = Value> {
    one_of(&[
        "2026-05-01T12:00:00Z",
        "2026-05-01T12:00:00.123+02:00",
        "not an instant",
    ])
}

/// The `cloudflared` part of a heartbeat.
fn tunnel() -> impl Strategy<Value = Value> {
    (
        one_of(&[
            "starting", "ready", "unready", "backoff", "failed", "stopping",
        ]),
        count(U32_MAX),
        count(U32_MAX),
        any::<bool>(),
        optional(count(255)),
        optional(instant()),
    )
        .prop_map(|(state, ready, restarts, crash_loop, last_exit, since)| {
            object(vec![
                ("state", Some(state)),
                ("ready_connections", Some(ready)),
                ("restarts", Some(restarts)),
                ("crash_loop", Some(Value::Bool(crash_loop))),
                ("last_exit", last_exit),
                ("since", since),
            ])
        })
}

/// The `slice` part of a heartbeat.
fn slice() -> impl Strategy<Value = Value> {
    (
        one_of(&[
            "mounted",
            "missing",
            "read_only",
            "wrong_owner",
            "nearly_full",
        ]),
        optional(count(I64_MAX)),
        optional(count(I64_MAX)),
        optional(count(I64_MAX)),
        optional(count(I64_MAX)),
    )
        .prop_map(|(state, free, total, free_inodes, total_inodes)| {
            object(vec![
                ("state", Some(state)),
                ("free_bytes", free),
                ("total_bytes", total),
                ("free_inodes", free_inodes),
                ("total_inodes", total_inodes),
            ])
        })
}

/// The `host` part of a heartbeat.
fn host() -> impl Strategy<Value = Value> {
    (
        count(U32_MAX),
        prop::collection::vec(count(U32_MAX), 3),
        count(I64_MAX),
        count(I64_MAX),
        count(I64_MAX),
        count(I64_MAX),
    )
        .prop_map(|(cpus, load, total, available, root_free, uptime)| {
            object(vec![
                ("cpus", Some(cpus)),
                ("load_centi", Some(Value::Array(load))),
                ("memory_total_bytes", Some(total)),
                ("memory_available_bytes", Some(available)),
                ("root_free_bytes", Some(root_free)),
                ("uptime_s", Some(uptime)),
            ])
        })
}

/// The `clone` part of a heartbeat.
fn clone_report() -> impl Strategy<Value = Value> {
    (
        text(),
        one_of(&["waiting", "copying", "done", "failed"]),
        defaulted(count(I64_MAX)),
        optional(count(I64_MAX)),
        defaulted(count(I64_MAX)),
        optional(count(I64_MAX)),
        optional(text()),
    )
        .prop_map(
            |(source, state, files_done, files_total, bytes_done, bytes_total, error)| {
                object(vec![
                    ("source_agent", Some(source)),
                    ("state", Some(state)),
                    ("files_done", files_done),
                    ("files_total", files_total),
                    ("bytes_done", bytes_done),
                    ("bytes_total", bytes_total),
                    ("error", error),
                ])
            },
        )
}

/// A heartbeat whose every range edge comes up often.
fn heartbeat() -> impl Strategy<Value = Value> {
    let sequence = prop_oneof![Just(1), Just(I64_MAX), 1..1000_u64].prop_map(Value::from);
    (
        optional(text()),
        (text(), sequence, text(), text(), count(I64_MAX)),
        tunnel(),
        slice(),
        host(),
        optional(clone_report()),
    )
        .prop_map(
            |(agent_id, (boot_id, sequence, agent, image, uptime), tunnel, slice, host, clone)| {
                object(vec![
                    ("agent_id", agent_id),
                    ("boot_id", Some(boot_id)),
                    ("sequence", Some(sequence)),
                    ("agent_version", Some(agent)),
                    ("image_version", Some(image)),
                    ("agent_uptime_s", Some(uptime)),
                    ("cloudflared", Some(tunnel)),
                    ("slice", Some(slice)),
                    ("host", Some(host)),
                    ("clone", clone),
                ])
            },
        )
}

fn transfer_agent() -> impl Strategy<Value = Value> {
    text().prop_map(|to| json!({ "to_account": to }))
}

fn firewall_rules() -> impl Strategy<Value = Value> {
    let rule = (
        text(),
        one_of(&["tcp", "udp", "icmp"]),
        optional(text()),
        defaulted(prop::collection::vec(text(), 0..3).prop_map(Value::Array)),
        defaulted(prop::collection::vec(text(), 0..2).prop_map(Value::Array)),
        optional(text()),
    )
        .prop_map(
            |(direction, protocol, port, sources, destinations, about)| {
                object(vec![
                    ("direction", Some(direction)),
                    ("protocol", Some(protocol)),
                    ("port", port),
                    ("source_ips", sources),
                    ("destination_ips", destinations),
                    ("description", about),
                ])
            },
        );
    prop::collection::vec(rule, 0..4).prop_map(|rules| json!({ "rules": rules }))
}

fn register_image() -> impl Strategy<Value = Value> {
    let refs = prop::collection::btree_map(
        prop::sample::select(vec!["hetzner", "fly", "local", "other"]).prop_map(str::to_owned),
        text(),
        0..4,
    );
    let env = prop::collection::btree_map("[A-Z_]{1,6}", text(), 0..4);
    (
        text(),
        text(),
        text(),
        refs,
        defaulted(env.prop_map(|env| json!(env))),
    )
        .prop_map(|(version, agent, digest, refs, env)| {
            object(vec![
                ("version", Some(version)),
                ("agent_version", Some(agent)),
                ("manifest_digest", Some(digest)),
                ("refs", Some(json!(refs))),
                ("env", env),
            ])
        })
}

fn provision_plain_vm() -> impl Strategy<Value = Value> {
    (
        text(),
        optional(text()),
        optional(text()),
        defaulted(prop::collection::vec(text(), 0..3).prop_map(Value::Array)),
        defaulted(any::<bool>().prop_map(Value::Bool)),
        optional(text()),
    )
        .prop_map(|(name, hostname, image, keys, password, account)| {
            object(vec![
                ("name", Some(name)),
                ("hostname", hostname),
                ("image", image),
                ("vault_key_ids", keys),
                ("one_time_password", password),
                ("account_id", account),
            ])
        })
}

/// Values a node is replaced with: other types, and numbers at and past every documented range.
fn odd_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!(null),
        json!("x"),
        json!(5),
        json!(true),
        json!([]),
        json!({}),
        json!(u64::MAX),
        json!(I64_MAX + 1),
        json!(I64_MAX),
        json!(U32_MAX + 1),
        json!(0),
        json!(-1),
        json!(256),
        json!(1e30),
        json!(1.5),
        json!(["ready", 4]),
        json!({"ready": null}),
    ])
}

/// Raw JSON (or not) for a member no schema covers, or a key given twice: strings that are not
/// UTF-8 or hold a lone surrogate, numbers no float holds, and well-formed values.
const RAW: &[&[u8]] = &[
    b"\"\\ud800\"",
    b"\"\\udc00x\"",
    b"\"\\ud83d\\ude00\"",
    b"\"\\u0000\"",
    b"\"\xff\"",
    b"\"\xc3\"",
    b"\"\xed\xa0\x80\"",
    b"\"a\tb\"",
    b"\"\\q\"",
    b"1e400",
    b"-1e400",
    b"1e30",
    b"18446744073709551616",
    b"-0",
    b"01",
    b"[\"\\ud800\"]",
    b"{\"k\": [1, {\"j\": \"\\udfff\"}]}",
    b"[1,]",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"ok\"",
    b"\"\\u00e9\"",
    b"1",
];

/// Bytes after a document: white space, or not.
const TRAILING: &[&[u8]] = &[b" ", b"\n", b" [", b"x", b"{}", b"0", b"\x00"];

/// Names for an added member: unknown, with escapes, or one a schema knows (so given twice).
const KEYS: &[&str] = &[
    "extra",
    "ext\\u0072a",
    "sequence",
    "sequ\\u0065nce",
    "state",
    "\\u0073tate",
    "free_bytes",
    "rules",
    "hetzner",
];

/// A change to the body as a value.
#[derive(Clone, Debug)]
enum Change {
    /// An object becomes the array of its values (serde's derive takes a struct so).
    Listed(Index),
    /// An object becomes another value.
    ObjectReplaced(Index, Value),
    /// A number becomes another value.
    NumberReplaced(Index, Value),
    /// Any node becomes another value.
    Replaced(Index, Value),
    /// A member is added to an object.
    Added(Index, &'static str, Value),
}

/// A change to the body as bytes.
#[derive(Clone, Debug)]
enum Edit {
    /// A member with a raw value goes first into an object.
    Inserted(Index, &'static str, &'static [u8]),
    /// A character of a key is written as a `\u` escape.
    Escaped(Index, Index),
    /// A key is given twice: first with a raw value.
    Doubled(Index, &'static [u8]),
    /// Bytes after the document.
    Trailing(&'static [u8]),
    /// The document is cut short.
    Cut(Index),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        any::<Index>().prop_map(Change::Listed),
        (any::<Index>(), odd_value()).prop_map(|(at, value)| Change::ObjectReplaced(at, value)),
        (any::<Index>(), odd_value()).prop_map(|(at, value)| Change::NumberReplaced(at, value)),
        (any::<Index>(), odd_value()).prop_map(|(at, value)| Change::Replaced(at, value)),
        (
            any::<Index>(),
            prop::sample::select(KEYS),
            prop_oneof![odd_value(), text()]
        )
            .prop_map(|(at, key, value)| Change::Added(at, key, value)),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), prop::sample::select(KEYS), prop::sample::select(RAW))
            .prop_map(|(at, key, raw)| Edit::Inserted(at, key, raw)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(at, char)| Edit::Escaped(at, char)),
        1 => (any::<Index>(), prop::sample::select(RAW)).prop_map(|(at, raw)| Edit::Doubled(at, raw)),
        1 => prop::sample::select(TRAILING)
            .prop_map(Edit::Trailing),
        1 => any::<Index>().prop_map(Edit::Cut),
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Object,
    Number,
    Other,
}

/// Every node of `value` as a JSON pointer, with its kind.
fn nodes(value: &Value, at: &str, found: &mut Vec<(String, Kind)>) {
    let kind = match value {
        Value::Object(_) => Kind::Object,
        Value::Number(_) => Kind::Number,
        _ => Kind::Other,
    };
    found.push((at.to_owned(), kind));
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                nodes(member, &format!("{at}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                nodes(item, &format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

/// The node `at` picks among those of `kind` (any kind when `None`).
fn pick(body: &mut Value, at: Index, kind: Option<Kind>) -> Option<&mut Value> {
    let mut found = Vec::new();
    nodes(body, "", &mut found);
    found.retain(|(_, found)| kind.is_none_or(|kind| kind == *found));
    if found.is_empty() {
        return None;
    }
    let pointer = found[at.index(found.len())].0.clone();
    body.pointer_mut(&pointer)
}

fn apply(body: &mut Value, change: &Change) {
    match change {
        Change::Listed(at) => {
            if let Some(node) = pick(body, *at, Some(Kind::Object)) {
                let values = node.as_object().into_iter().flat_map(|m| m.values());
                let values = values.cloned().collect();
                *node = Value::Array(values);
            }
        }
        Change::ObjectReplaced(at, value) => {
            if let Some(node) = pick(body, *at, Some(Kind::Object)) {
                *node = value.clone();
            }
        }
        Change::NumberReplaced(at, value) => {
            if let Some(node) = pick(body, *at, Some(Kind::Number)) {
                *node = value.clone();
            }
        }
        Change::Replaced(at, value) => {
            if let Some(node) = pick(body, *at, None) {
                *node = value.clone();
            }
        }
        Change::Added(at, key, value) => {
            if let Some(Value::Object(members)) = pick(body, *at, Some(Kind::Object)) {
                members.insert((*key).to_owned(), value.clone());
            }
        }
    }
}

/// Where keys start (their opening `"`) in a serialized body: a `"`, a name, `":`.
fn keys(body: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for start in 0..body.len() {
        if body[start] != b'"' {
            continue;
        }
        let name = body[start + 1..]
            .iter()
            .take_while(|byte| byte.is_ascii_alphanumeric() || **byte == b'_')
            .count();
        if name > 0 && body[start + 1 + name..].starts_with(b"\":") {
            found.push((start, name));
        }
    }
    found
}

fn edit_bytes(body: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Inserted(at, key, raw) => {
            let objects: Vec<usize> = (0..body.len()).filter(|&i| body[i] == b'{').collect();
            if objects.is_empty() {
                return;
            }
            let open = objects[at.index(objects.len())];
            let empty = body.get(open + 1) == Some(&b'}');
            let mut member = format!("\"{key}\":").into_bytes();
            member.extend_from_slice(raw);
            if !empty {
                member.push(b',');
            }
            let after = open + 1;
            body.splice(after..after, member);
        }
        Edit::Escaped(at, char) => {
            let keys = keys(body);
            if keys.is_empty() {
                return;
            }
            let (start, name) = keys[at.index(keys.len())];
            let position = start + 1 + char.index(name);
            let escape = format!("\\u{:04x}", body[position]).into_bytes();
            body.splice(position..=position, escape);
        }
        Edit::Doubled(at, raw) => {
            let keys = keys(body);
            if keys.is_empty() {
                return;
            }
            let (start, name) = keys[at.index(keys.len())];
            let mut member = body[start..start + name + 3].to_vec();
            member.extend_from_slice(raw);
            member.push(b',');
            body.splice(start..start, member);
        }
        Edit::Trailing(bytes) => body.extend_from_slice(bytes),
        Edit::Cut(at) => body.truncate(at.index(body.len() + 1)),
    }
}

/// `body` changed and edited, serialized.
fn broken(mut body: Value, changes: &[Change], edits: &[Edit]) -> Vec<u8> {
    for change in changes {
        apply(&mut body, change);
    }
    let mut bytes = body.to_string().into_bytes();
    for edit in edits {
        edit_bytes(&mut bytes, edit);
    }
    bytes
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec(change(), 0..3)
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn heartbeats_read_once_as_twice(body in heartbeat(), changes in changes(), edits in edits()) {
        agree::<Heartbeat>(&broken(body, &changes, &edits))?;
    }
}

proptest! {
    #[test]
    fn transfers_read_once_as_twice(body in transfer_agent(), changes in changes(), edits in edits()) {
        agree::<TransferAgent>(&broken(body, &changes, &edits))?;
    }

    #[test]
    fn firewall_rules_read_once_as_twice(
        body in firewall_rules(),
        changes in changes(),
        edits in edits(),
    ) {
        agree::<FirewallRules>(&broken(body, &changes, &edits))?;
    }

    #[test]
    fn images_read_once_as_twice(body in register_image(), changes in changes(), edits in edits()) {
        agree::<RegisterImage>(&broken(body, &changes, &edits))?;
    }

    #[test]
    fn plain_vms_read_once_as_twice(
        body in provision_plain_vm(),
        changes in changes(),
        edits in edits(),
    ) {
        agree::<ProvisionPlainVm>(&broken(body, &changes, &edits))?;
    }
}

/// Every request body type the API takes as JSON is read once when it is valid.
#[test]
fn every_request_body_is_read_once() {
    fn once<T: DeserializeOwned + ToSchema>(body: &Value) {
        let bytes = body.to_string();
        assert!(
            super::read::<T>(&T::name(), bytes.as_bytes()).is_some(),
            "{} was read twice: {body}",
            T::name()
        );
    }
    let account = "acc_01JABCDEFGHJKMNPQRSTVWXYZ0";
    once::<Heartbeat>(&json!({
        "agent_id": "agt_x", "boot_id": "b", "sequence": 1, "agent_version": "1",
        "image_version": "1", "agent_uptime_s": 5,
        "cloudflared": {"state": "ready", "ready_connections": 4, "restarts": 0,
                        "crash_loop": false, "last_exit": 143, "since": "2026-05-01T12:00:00Z"},
        "slice": {"state": "mounted", "free_bytes": 1, "total_bytes": 2, "free_inodes": null},
        "host": {"cpus": 2, "load_centi": [1, 2, 3], "memory_total_bytes": 4,
                 "memory_available_bytes": 2, "root_free_bytes": 9, "uptime_s": 100},
        "clone": {"source_agent": "agt_y", "state": "copying", "files_done": 3,
                  "bytes_total": null, "error": "e"},
        "from_a_newer_agent": {"x": ["\u{e9}", 1.5, null]},
    }));
    once::<RegisterRequest>(&json!({
        "agent_id": "agt_x", "bootstrap_token": "t", "boot_id": "b", "agent_version": "1",
        "image_version": "1", "later": true,
    }));
    once::<TransferAgent>(&json!({ "to_account": account }));
    once::<TransferPlainVm>(&json!({ "to_account": account }));
    once::<ProvisionAgent>(&json!({ "name": "dev", "account_id": account }));
    once::<CloneAgent>(&json!({}));
    once::<CloneAgent>(&json!({ "name": "dev-clone" }));
    once::<ImportAgent>(&json!({
        "account_id": account, "name": "dev", "app": "a", "machine_id": "m",
        "volume_id": "vol_x", "image": "r@sha256:00",
    }));
    once::<CreateAccount>(&json!({ "name": "Acme" }));
    once::<CreateToken>(&json!({ "label": null }));
    once::<RegisterImage>(&json!({
        "version": "v1", "agent_version": "1", "manifest_digest": "sha256:00",
        "refs": {"hetzner": "1", "fly": "r@sha256:00"}, "env": {"A": "b"},
    }));
    once::<SetCurrentImage>(&json!({ "image_id": "img_x" }));
    once::<ProvisionPlainVm>(&json!({
        "name": "web", "hostname": "web.example.com", "server_type": "cx22",
        "location": "fsn1", "image": "ubuntu-24.04", "vault_key_ids": ["key_x"],
        "one_time_password": true, "account_id": account,
    }));
    once::<FirewallRules>(&json!({ "rules": [
        {"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ["0.0.0.0/0"]},
        {"direction": "in", "protocol": "icmp", "destination_ips": [], "description": null},
    ]}));
    once::<AddVaultKey>(&json!({ "name": "laptop", "public_key": "ssh-ed25519 AAAA x" }));
}

/// A key written with escapes is the member it names, in the one pass too.
#[test]
fn an_escaped_key_is_its_member_in_one_pass() {
    let body = br#"{"boot_id":"b","sequ\u0065nce":7,"agent_version":"1","image_version":"1",
        "agent_uptime_s":5,"cloudflared":{"st\u0061te":"ready","ready_connections":4,
        "restarts":0,"crash_loop":false},"slice":{"state":"mounted"},"host":{"cpus":2,
        "load_centi":[1,2,3],"memory_total_bytes":4,"memory_available_bytes":2,
        "root_free_bytes":9,"uptime_s":100}}"#;
    let beat = super::read::<Heartbeat>("Heartbeat", body).unwrap();
    assert_eq!(beat.sequence, 7);
    let text = String::from_utf8_lossy(body).replace(":7,", ":18446744073709551615,");
    assert!(super::read::<Heartbeat>("Heartbeat", text.as_bytes()).is_none());
}

/// A field that falls back to its default on a bad value swallows the guard's refusal, and
/// the reading goes on; the one pass must still leave the body to the two passes, which answer
/// 422.
#[test]
fn a_refusal_a_lenient_field_swallows_still_leaves_the_body_to_the_two_passes() {
    #[derive(Debug, serde::Deserialize)]
    struct Lenient {
        #[serde(deserialize_with = "lenient")]
        sequence: u64,
    }
    #[allow(clippy::unnecessary_wraps)] // the signature `deserialize_with` asks for
    fn lenient<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        Ok(<u64 as serde::Deserialize>::deserialize(deserializer).unwrap_or_default())
    }
    let read = |body: &str| super::read::<Lenient>("Heartbeat", body.as_bytes());
    assert!(read(r#"{"sequence": 18446744073709551615}"#).is_none());
    assert_eq!(read(r#"{"sequence": 5}"#).map(|l| l.sequence), Some(5));
}
