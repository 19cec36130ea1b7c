//! The two rules of a request body's documented schema that serde's derive does not keep:
//! an object is an object, and an integer is within its documented range.
//!
//! A struct deserialized by serde's derive also accepts a JSON array of its fields in order
//! (`["dev-box"]` for `{"name": "dev-box"}`), and an unsigned field takes any value of its Rust
//! type, even one the database cannot hold. So before a body is deserialized, its JSON is
//! walked along the schema the API document gives for it (the same document `/api/openapi.json`
//! serves): wherever the document says `object`, anything else is refused; wherever it gives a
//! `minimum` or `maximum`, a number outside is refused. Both name the field. Everything else
//! (types, required and unknown fields, formats) stays serde's and the services' to check; this
//! walk is no general JSON Schema validator and must not grow into one.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema, SchemaType, Type};

/// The document's named schemas.
fn components() -> &'static BTreeMap<String, RefOr<Schema>> {
    static EMPTY: BTreeMap<String, RefOr<Schema>> = BTreeMap::new();
    super::served_openapi()
        .components
        .as_ref()
        .map_or(&EMPTY, |components| &components.schemas)
}

/// Where in the body a value is, as `serde_path_to_error` prints it (`rules[2].port`).
#[derive(Default)]
struct Location(String);

impl Location {
    fn key(&self, key: &str) -> Self {
        if self.0.is_empty() {
            Self(key.to_owned())
        } else {
            Self(format!("{}.{key}", self.0))
        }
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The field an error names: the body itself is `body`.
    fn field(self) -> String {
        if self.0.is_empty() {
            "body".to_owned()
        } else {
            self.0
        }
    }
}

/// A value that breaks its schema: the field and what it must be.
pub(super) type Violation = (String, String);

/// Checks `value` against the schema the document names `name`, if it has one.
pub(super) fn check(name: &str, value: &Value) -> Result<(), Violation> {
    match components().get(name) {
        Some(schema) => walk(value, schema, Location::default(), 0),
        None => Ok(()),
    }
}

/// Deeper than any request type nests: a guard against a schema that refers to itself.
const MAX_DEPTH: usize = 32;

fn walk(
    value: &Value,
    schema: &RefOr<Schema>,
    at: Location,
    depth: usize,
) -> Result<(), Violation> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let schema = match schema {
        RefOr::T(schema) => schema,
        RefOr::Ref(reference) => {
            let name = reference
                .ref_location
                .strip_prefix("#/components/schemas/")
                .unwrap_or_default();
            return match components().get(name) {
                Some(schema) => walk(value, schema, at, depth + 1),
                None => Ok(()),
            };
        }
    };
    match schema {
        Schema::Object(object) => {
            let types = types(&object.schema_type);
            if value.is_null() && types.contains(&Type::Null) {
                return Ok(());
            }
            if types.contains(&Type::Object) {
                let Some(members) = value.as_object() else {
                    return Err((at.field(), "must be a JSON object".to_owned()));
                };
                for (key, member) in members {
                    let member_schema = object.properties.get(key).or(
                        match object.additional_properties.as_deref() {
                            Some(AdditionalProperties::RefOr(schema)) => Some(schema),
                            _ => None,
                        },
                    );
                    if let Some(member_schema) = member_schema {
                        walk(member, member_schema, at.key(key), depth + 1)?;
                    }
                }
            }
            if types.contains(&Type::Integer)
                && let Some(number) = value.as_number()
            {
                in_range(number, object.minimum.as_ref(), object.maximum.as_ref())
                    .map_err(|message| (at.field(), message))?;
            }
            Ok(())
        }
        Schema::Array(array) => match (value.as_array(), &array.items) {
            (Some(items), ArrayItems::RefOrSchema(item_schema)) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, item_schema, at.index(index), depth + 1)?;
                }
                Ok(())
            }
            _ => Ok(()),
        },
        // `Option<T>` of a named `T` is `oneOf: [T, null]`: a non-null value is held to `T`.
        Schema::OneOf(one_of) if !value.is_null() => {
            match one_of.items.iter().find(|item| !is_null_type(item)) {
                Some(item) => walk(value, item, at, depth + 1),
                None => Ok(()),
            }
        }
        Schema::AllOf(all_of) => {
            for item in &all_of.items {
                walk(value, item, Location(at.0.clone()), depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn types(schema_type: &SchemaType) -> Vec<Type> {
    match schema_type {
        SchemaType::Type(single) => vec![single.clone()],
        SchemaType::Array(several) => several.clone(),
        SchemaType::AnyValue => Vec::new(),
    }
}

fn is_null_type(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(object))
        if matches!(&object.schema_type, SchemaType::Type(Type::Null)))
}

/// Whether `number` is within `[minimum, maximum]`; the message says the range otherwise.
fn in_range(
    number: &serde_json::Number,
    minimum: Option<&utoipa::Number>,
    maximum: Option<&utoipa::Number>,
) -> Result<(), String> {
    let below = |bound: &utoipa::Number| compare(number, bound).is_some_and(Ordering::is_lt);
    let above = |bound: &utoipa::Number| compare(number, bound).is_some_and(Ordering::is_gt);
    if !(minimum.is_some_and(below) || maximum.is_some_and(above)) {
        return Ok(());
    }
    let range = match (minimum.map(show), maximum.map(show)) {
        (Some(low), Some(high)) => format!("from {low} to {high}"),
        (Some(low), None) => format!("at least {low}"),
        (None, Some(high)) => format!("at most {high}"),
        (None, None) => String::new(),
    };
    Err(format!("must be {range}, got {number}"))
}

/// How `number` compares with `bound`: exactly for integers, as floats otherwise.
#[allow(clippy::cast_precision_loss)] // only a float (or a float bound) is compared as one
fn compare(number: &serde_json::Number, bound: &utoipa::Number) -> Option<Ordering> {
    let exact = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from));
    let exact_bound = match *bound {
        utoipa::Number::Int(int) => i128::try_from(int).ok(),
        utoipa::Number::UInt(uint) => i128::try_from(uint).ok(),
        utoipa::Number::Float(_) => None,
    };
    if let (Some(value), Some(bound)) = (exact, exact_bound) {
        return Some(value.cmp(&bound));
    }
    let bound = match *bound {
        utoipa::Number::Int(int) => int as f64,
        utoipa::Number::UInt(uint) => uint as f64,
        utoipa::Number::Float(float) => float,
    };
    number.as_f64()?.partial_cmp(&bound)
}

fn show(bound: &utoipa::Number) -> String {
    match *bound {
        utoipa::Number::Int(int) => int.to_string(),
        utoipa::Number::UInt(uint) => uint.to_string(),
        utoipa::Number::Float(float) => float.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use control_api::agent::Heartbeat;
    use control_api::agents::TransferAgent;
    use control_api::plain_vms::FirewallRules;
    use serde_json::json;

    use super::super::extract::parse_json;

    fn refused<T: serde::de::DeserializeOwned + utoipa::ToSchema>(
        body: &serde_json::Value,
    ) -> (u16, String, String) {
        let Err(error) = parse_json::<T>(body.to_string().as_bytes()) else {
            panic!("{body} was accepted");
        };
        let first = &error.errors[0];
        (
            error.status.as_u16(),
            first.field.clone(),
            first.message.clone(),
        )
    }

    fn beat() -> serde_json::Value {
        json!({
            "boot_id": "b", "sequence": 1, "agent_version": "1", "image_version": "1",
            "agent_uptime_s": 5,
            "cloudflared": {"state": "ready", "ready_connections": 4, "restarts": 0, "crash_loop": false},
            "slice": {"state": "mounted", "free_bytes": 1},
            "host": {"cpus": 2, "load_centi": [1, 2, 3], "memory_total_bytes": 4,
                     "memory_available_bytes": 2, "root_free_bytes": 9, "uptime_s": 100},
        })
    }

    #[test]
    fn objects_must_be_objects() {
        assert_eq!(
            refused::<TransferAgent>(&json!(["acc_x"])),
            (422, "body".to_owned(), "must be a JSON object".to_owned())
        );
        assert_eq!(refused::<TransferAgent>(&json!("acc_x")).1, "body");
        assert_eq!(refused::<TransferAgent>(&json!(null)).1, "body");
        let mut nested = beat();
        nested["cloudflared"] = json!(["ready", 4, 0, false]);
        assert_eq!(refused::<Heartbeat>(&nested).1, "cloudflared");
        let mut optional = beat();
        optional["clone"] = json!(["agt_x", "copying"]);
        assert_eq!(refused::<Heartbeat>(&optional).1, "clone");
        optional["clone"] = json!(null);
        assert!(parse_json::<Heartbeat>(optional.to_string().as_bytes()).is_ok());
        let rules = json!({"rules": [["in", "tcp", "22"]]});
        assert_eq!(refused::<FirewallRules>(&rules).1, "rules[0]");
    }

    #[test]
    fn integers_stay_in_their_documented_range() {
        assert!(parse_json::<Heartbeat>(beat().to_string().as_bytes()).is_ok());
        for (pointer, value, field) in [
            ("/sequence", json!(u64::MAX), "sequence"),
            ("/sequence", json!(i64::MAX as u64 + 1), "sequence"),
            ("/sequence", json!(0), "sequence"),
            ("/sequence", json!(1e30), "sequence"),
            ("/agent_uptime_s", json!(u64::MAX), "agent_uptime_s"),
            ("/slice/free_bytes", json!(u64::MAX), "slice.free_bytes"),
            ("/host/load_centi/1", json!(-1), "host.load_centi[1]"),
            (
                "/cloudflared/ready_connections",
                json!(-1),
                "cloudflared.ready_connections",
            ),
        ] {
            let mut body = beat();
            *body.pointer_mut(pointer).unwrap() = value;
            let (status, named, message) = refused::<Heartbeat>(&body);
            assert_eq!(
                (status, named.as_str()),
                (422, field),
                "{pointer}: {message}"
            );
        }
        let mut body = beat();
        body["sequence"] = json!(u64::MAX);
        assert_eq!(
            refused::<Heartbeat>(&body).2,
            "must be from 1 to 9223372036854775807, got 18446744073709551615"
        );
        body["sequence"] = json!(i64::MAX);
        assert!(parse_json::<Heartbeat>(body.to_string().as_bytes()).is_ok());
    }
}
