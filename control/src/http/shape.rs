//! The two rules of a request body's documented schema that serde's derive does not keep:
//! an object is an object, and an integer is within its documented range.
//!
//! A struct deserialized by serde's derive also accepts a JSON array of its fields in order
//! (`["dev-box"]` for `{"name": "dev-box"}`), and an unsigned field takes any value of its Rust
//! type, even one the database cannot hold. So before a body is deserialized, its JSON is
//! read along the schema the API document gives for it (the same document `/api/openapi.json`
//! serves): wherever the document says `object`, anything else is refused; wherever it gives a
//! `minimum` or `maximum`, a number outside is refused. Both name the field. Everything else
//! (types, required and unknown fields, formats) stays serde's and the services' to check; this
//! reading is no general JSON Schema validator and must not grow into one.
//!
//! The reading streams: the document's schemas are compiled once into [`Shape`]s, and the body
//! is walked by a `serde` visitor that builds nothing (a key is borrowed from the body unless it
//! has escapes). Every heartbeat goes through here, so it must cost little next to serving the
//! request at all.
//!
//! So a body is read once when it can be: [`read`] deserializes `T` through a deserializer
//! that wraps `serde_json`'s (as `serde_path_to_error` does) and holds each value to its shape
//! when `T`'s own `Deserialize` reads it, with the same [`Guard`] as [`check`]; what `T`
//! ignores is read in full by that guard. It answers only when [`check`] and `serde_json`
//! would both accept the body with the same value, and gives up on anything else, errors
//! included: [`check`] and then `serde_json` read the body again and name the error, 400 before
//! 422 as ever. The one pass must never answer where the two would not; a property test holds
//! the two to each other.

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use serde::de::{
    self, Deserialize, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor,
};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema, SchemaType, Type};

/// A value that breaks its schema: the field and what it must be.
pub(super) type Violation = (String, String);

/// What the body's reading found, when it was not a syntax error.
pub(super) enum Found {
    /// A value that breaks its schema.
    Violation(Violation),
    /// Not JSON at all (`serde_json`'s error).
    Malformed(serde_json::Error),
}

/// Reads `body` along the schema the document names `name`, if it has one.
///
/// Every value is read in full, even one no schema covers (an unknown member): a string that is
/// not UTF-8 or holds a lone surrogate, or a number no float holds, is malformed JSON wherever
/// it is, as it was when the whole document was parsed first.
pub(super) fn check(name: &str, body: &[u8]) -> Result<(), Found> {
    let shapes = shapes();
    let found = RefCell::new(None);
    let read = |shape| {
        let mut reader = serde_json::Deserializer::from_slice(body);
        Guard {
            shapes,
            shape,
            at: &At::Body,
            found: &found,
        }
        .deserialize(&mut reader)
        .and_then(|()| reader.end())
    };
    match read(shapes.named.get(name).copied().unwrap_or(ANY)) {
        Ok(()) => Ok(()),
        Err(error) => match found.take() {
            // A syntax error further on comes first: 400 before 422, as when the whole
            // document was parsed before it was looked at.
            Some(violation) => match read(ANY) {
                Ok(()) => Err(Found::Violation(violation)),
                Err(error) => Err(Found::Malformed(error)),
            },
            None => Err(Found::Malformed(error)),
        },
    }
}

/// Deserializes `T` from `body` in one pass, holding every value to the shape [`check`] holds
/// it to while `T`'s own `Deserialize` reads it; members `T` ignores are read in full as
/// `check` reads them.
///
/// `Some` only when the two passes (`check`, then `serde_json`) would accept `body` with the
/// same value: the caller returns it without reading the body again. `None` for anything else:
/// a syntax error, a broken schema, a value `T` refuses, or a body this reading cannot decide
/// alone (see [`undecided`]); the caller then runs the two passes, which find the exact error
/// and the field to name. A valid heartbeat so costs one reading instead of two.
pub(super) fn read<T: DeserializeOwned>(name: &str, body: &[u8]) -> Option<T> {
    let shapes = shapes();
    let found = RefCell::new(None);
    let guard = Guard {
        shapes,
        shape: shapes.named.get(name).copied().unwrap_or(ANY),
        at: &At::Body,
        found: &found,
    };
    let mut reader = serde_json::Deserializer::from_slice(body);
    let value = T::deserialize(Reading {
        inner: &mut reader,
        with: guard,
    })
    .ok()?;
    reader.end().ok()?;
    // A value the guard refused is refused even if `T` swallowed the error (a field that
    // falls back to its default on a bad value): the two passes would answer 422.
    if found.into_inner().is_some() {
        return None;
    }
    Some(value)
}

/// The shape of a value held to nothing: read in full all the same.
const ANY: usize = 0;

/// A schema compiled for reading: only what the two rules need.
enum Shape {
    /// Nothing to hold the value to.
    Any,
    /// A schema with a type: `object` (with its members' shapes), `integer` (with its range),
    /// `null` allowed or not.
    Typed {
        null: bool,
        object: Option<Members>,
        integer: Option<(Option<utoipa::Number>, Option<utoipa::Number>)>,
    },
    /// An array whose items have a shape.
    Array(usize),
    /// `Option<T>` of a named `T` is `oneOf: [T, null]`: a non-null value is held to `T`.
    OneOf(Option<usize>),
    /// A named schema that is only a reference to another.
    Alias(usize),
}

struct Members {
    named: Vec<(String, usize)>,
    other: Option<usize>,
}

/// Every named schema of the document, compiled; shapes refer to each other by index.
struct Shapes {
    named: HashMap<String, usize>,
    all: Vec<Shape>,
}

fn shapes() -> &'static Shapes {
    static SHAPES: std::sync::OnceLock<Shapes> = std::sync::OnceLock::new();
    SHAPES.get_or_init(|| {
        let schemas = super::served_openapi()
            .components
            .as_ref()
            .map(|components| &components.schemas);
        let mut shapes = Shapes {
            named: HashMap::new(),
            all: vec![Shape::Any], // ANY
        };
        for name in schemas.into_iter().flat_map(|schemas| schemas.keys()) {
            shapes.named.insert(name.clone(), shapes.all.len());
            shapes.all.push(Shape::Any);
        }
        for (name, schema) in schemas.into_iter().flatten() {
            let index = shapes.named[name];
            shapes.all[index] = match schema {
                RefOr::T(schema) => shapes.compile(schema),
                RefOr::Ref(_) => Shape::Alias(shapes.index(schema)),
            };
        }
        shapes
    })
}

impl Shapes {
    /// The index of `schema`'s shape, compiling it when it is not a named one.
    fn index(&mut self, schema: &RefOr<Schema>) -> usize {
        match schema {
            RefOr::Ref(reference) => {
                let name = reference
                    .ref_location
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_default();
                self.named.get(name).copied().unwrap_or(ANY)
            }
            RefOr::T(schema) => {
                let shape = self.compile(schema);
                self.add(shape)
            }
        }
    }

    fn add(&mut self, shape: Shape) -> usize {
        self.all.push(shape);
        self.all.len() - 1
    }

    fn compile(&mut self, schema: &Schema) -> Shape {
        match schema {
            Schema::Object(object) => {
                let has = |wanted: &Type| match &object.schema_type {
                    SchemaType::Type(single) => single == wanted,
                    SchemaType::Array(several) => several.contains(wanted),
                    SchemaType::AnyValue => false,
                };
                let members = has(&Type::Object).then(|| Members {
                    named: object
                        .properties
                        .iter()
                        .map(|(key, member)| (key.clone(), self.index(member)))
                        .collect(),
                    other: match object.additional_properties.as_deref() {
                        Some(AdditionalProperties::RefOr(other)) => Some(self.index(other)),
                        _ => None,
                    },
                });
                Shape::Typed {
                    null: has(&Type::Null),
                    object: members,
                    integer: has(&Type::Integer)
                        .then(|| (object.minimum.clone(), object.maximum.clone())),
                }
            }
            Schema::Array(array) => match &array.items {
                ArrayItems::RefOrSchema(items) => Shape::Array(self.index(items)),
                ArrayItems::False => Shape::Any,
            },
            Schema::OneOf(one_of) => Shape::OneOf(
                one_of
                    .items
                    .iter()
                    .find(|item| !is_null_type(item))
                    .map(|item| self.index(item)),
            ),
            // No request schema of the document has these (a test keeps it so): a streaming
            // reading could not hold one value to several schemas.
            _ => Shape::Any,
        }
    }

    /// `index`'s shape, through aliases (a bounded number: a guard against a cycle).
    fn get(&self, mut index: usize) -> &Shape {
        for _ in 0..MAX_ALIASES {
            match &self.all[index] {
                Shape::Alias(target) => index = *target,
                shape => return shape,
            }
        }
        &Shape::Any
    }
}

const MAX_ALIASES: usize = 32;

fn is_null_type(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(object))
        if matches!(&object.schema_type, SchemaType::Type(Type::Null)))
}

/// Where in the body a value is; printed as `serde_path_to_error` prints it (`rules[2].port`).
enum At<'a> {
    Body,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Body => Ok(()),
            At::Key(At::Body, key) => write!(f, "{key}"),
            At::Key(parent, key) => write!(f, "{parent}.{key}"),
            At::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

impl At<'_> {
    /// The field an error names: the body itself is `body`.
    fn field(&self) -> String {
        match self {
            At::Body => "body".to_owned(),
            at => at.to_string(),
        }
    }
}

/// Reads one value along its shape; records the first violation in `found`.
#[derive(Clone, Copy)]
struct Guard<'a> {
    shapes: &'a Shapes,
    shape: usize,
    at: &'a At<'a>,
    found: &'a RefCell<Option<Violation>>,
}

impl<'a> Guard<'a> {
    fn refuse<E: de::Error>(&self, message: String) -> E {
        *self.found.borrow_mut() = Some((self.at.field(), message));
        E::custom("the body breaks its schema")
    }

    /// The shape without `OneOf`'s wrapper (a non-null value is held to the inner shape).
    fn holding(self) -> Option<Self> {
        match self.shapes.get(self.shape) {
            Shape::OneOf(Some(inner)) => Some(Self {
                shape: *inner,
                ..self
            }),
            Shape::OneOf(None) => None,
            _ => Some(self),
        }
    }

    /// The members of the object this guard holds a map to; `None` when it holds it to no
    /// object (every member is then held to nothing).
    fn members(self) -> Option<&'a Members> {
        let guard = self.holding()?;
        match guard.shapes.get(guard.shape) {
            Shape::Typed {
                object: Some(members),
                ..
            } => Some(members),
            _ => None,
        }
    }

    /// The shape of a sequence's items; where the document says object, a sequence is refused.
    fn items<E: de::Error>(self) -> Result<usize, E> {
        let Some(guard) = self.holding() else {
            return Ok(ANY);
        };
        match guard.shapes.get(guard.shape) {
            Shape::Typed {
                object: Some(_), ..
            } => Err(guard.refuse("must be a JSON object".to_owned())),
            Shape::Array(items) => Ok(*items),
            _ => Ok(ANY),
        }
    }

    /// Whether the value must be an object: an enum's variant (a string, or an object of one
    /// member) is then left to the two passes, which say which.
    fn wants_an_object(self) -> bool {
        self.holding().is_some_and(|guard| {
            matches!(
                guard.shapes.get(guard.shape),
                Shape::Typed {
                    object: Some(_),
                    ..
                }
            )
        })
    }

    /// A value that is neither an object nor an array.
    fn scalar<E: de::Error>(self, number: Option<serde_json::Number>) -> Result<(), E> {
        let Some(guard) = self.holding() else {
            return Ok(());
        };
        if let Shape::Typed {
            object, integer, ..
        } = guard.shapes.get(guard.shape)
        {
            if object.is_some() {
                return Err(guard.refuse("must be a JSON object".to_owned()));
            }
            if let (Some((minimum, maximum)), Some(number)) = (integer, number) {
                in_range(&number, minimum.as_ref(), maximum.as_ref())
                    .map_err(|message| guard.refuse(message))?;
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Guard<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Guard<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        let members = self.members();
        while let Some(Key(key)) = map.next_key()? {
            map.next_value_seed(Guard {
                shape: member(members, &key),
                at: &At::Key(self.at, &key),
                ..self
            })?;
        }
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        let items = self.items::<S::Error>()?;
        let mut index = 0;
        loop {
            let more = seq
                .next_element_seed(Guard {
                    shape: items,
                    at: &At::Index(self.at, index),
                    ..self
                })?
                .is_some();
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.shapes.get(self.shape) {
            Shape::Typed {
                null: false,
                object: Some(_),
                ..
            } => Err(self.refuse("must be a JSON object".to_owned())),
            _ => Ok(()),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar(None)
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<(), E> {
        self.scalar(Some(number.into()))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<(), E> {
        self.scalar(Some(number.into()))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<(), E> {
        self.scalar(serde_json::Number::from_f64(number))
    }
}

/// The shape of the member named `key` of an object with `members`: its own, else the one of
/// every other member, else none.
fn member(members: Option<&Members>, key: &str) -> usize {
    members
        .and_then(|members| {
            members
                .named
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, shape)| *shape)
                .or(members.other)
        })
        .unwrap_or(ANY)
}

/// A member's name, borrowed from the body when it can be.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The error that leaves a body to the two passes: [`read`] met something whose answer it
/// cannot be sure of alone (bytes read raw, 128-bit integers, a raw value, a key it did not see
/// as a string, an enum where the document says object). Bodies of the API's request types
/// never need it; a body that does is only read twice.
fn undecided<E: de::Error>() -> E {
    E::custom("left to the two passes")
}

/// Forwards `Deserializer` methods to `inner`, the visitor wrapped in `$visit` with `with`: the
/// inner deserializer is asked exactly what `T` asks, so `T` gets the value `serde_json` alone
/// would give it.
macro_rules! forward {
    ($visit:ident: $($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.inner.$method($($arg,)* $visit { visitor, with: self.with })
        }
    )*};
}

/// Every `Deserializer` method [`forward`]ed, but for `deserialize_newtype_struct` and
/// `deserialize_ignored_any`, which [`Reading`] answers itself and [`KeyReading`] forwards.
macro_rules! forward_all_but_newtypes_and_ignored {
    ($visit:ident) => {
        forward! { $visit:
            deserialize_any() deserialize_bool()
            deserialize_i8() deserialize_i16() deserialize_i32() deserialize_i64()
            deserialize_u8() deserialize_u16() deserialize_u32() deserialize_u64()
            deserialize_f32() deserialize_f64() deserialize_char()
            deserialize_str() deserialize_string() deserialize_bytes() deserialize_byte_buf()
            deserialize_option() deserialize_unit() deserialize_unit_struct(name: &'static str)
            deserialize_seq() deserialize_tuple(len: usize)
            deserialize_tuple_struct(name: &'static str, len: usize) deserialize_map()
            deserialize_struct(name: &'static str, fields: &'static [&'static str])
            deserialize_enum(name: &'static str, variants: &'static [&'static str])
            deserialize_identifier()
        }
    };
}

/// Scalar `Visitor` methods of [`Visit`]: the guard sees the value first, then `T`'s visitor.
macro_rules! held {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
            Visitor::$method::<E>(self.with, value)?;
            self.visitor.$method(value)
        }
    )*};
}

/// A deserializer of one value that holds it to `with`'s shape (the one `check` gives it).
struct Reading<'a, D> {
    inner: D,
    with: Guard<'a>,
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for Reading<'_, D> {
    type Error = D::Error;

    forward_all_but_newtypes_and_ignored! { Visit }

    /// `serde_json`'s raw value is a newtype with a private name, read without validating its
    /// strings: left to the two passes.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if name.starts_with("$serde_json::") {
            return Err(undecided());
        }
        self.inner.deserialize_newtype_struct(
            name,
            Visit {
                visitor,
                with: self.with,
            },
        )
    }

    /// A member `T` ignores: `serde_json` would skip it without validating its strings or
    /// numbers, but `check` reads it in full, so it is read by `check`'s own guard.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        DeserializeSeed::deserialize(self.with, self.inner)?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// `T`'s visitor, told of a value only after the value keeps its shape; what it reads further
/// (an object's members, an array's items, an option's content) is read through [`Reading`].
struct Visit<'a, V> {
    visitor: V,
    with: Guard<'a>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    held! { visit_bool(bool) visit_i64(i64) visit_u64(u64) visit_f64(f64) }

    /// `serde_json` parses an `f32` on its own when asked for one, rounded otherwise than the
    /// `f64` `check` holds to a range: undecided.
    fn visit_f32<E: de::Error>(self, _: f32) -> Result<V::Value, E> {
        Err(undecided())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<V::Value, E> {
        Visitor::visit_str::<E>(self.with, value)?;
        self.visitor.visit_str(value)
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<V::Value, E> {
        Visitor::visit_str::<E>(self.with, value)?;
        self.visitor.visit_borrowed_str(value)
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        Visitor::visit_unit::<E>(self.with)?;
        self.visitor.visit_unit()
    }

    /// `null` read as an absent `Option`: `check` reads it as any `null`.
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        Visitor::visit_unit::<E>(self.with)?;
        self.visitor.visit_none()
    }

    /// The content of an `Option` keeps the same guard: `check` sees no wrapper around it, and
    /// the guard unwraps `oneOf: [T, null]` itself when it holds the value.
    fn visit_some<D: de::Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Reading {
            inner,
            with: self.with,
        })
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        inner: D,
    ) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Reading {
            inner,
            with: self.with,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let items = self.with.items::<A::Error>()?;
        self.visitor.visit_seq(Items {
            inner: seq,
            items: Guard {
                shape: items,
                ..self.with
            },
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(Entries {
            inner: map,
            object: self.with,
            members: self.with.members(),
            value: None,
        })
    }

    /// A variant: a string, or an object of one member whose value `check` holds to nothing
    /// (where the document says object, the two passes decide).
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        if self.with.wants_an_object() {
            return Err(undecided());
        }
        self.visitor.visit_enum(Variant {
            inner: data,
            with: Guard {
                shape: ANY,
                ..self.with
            },
        })
    }
}

/// A seed whose value is read through [`Reading`].
struct Seed<'a, S> {
    seed: S,
    with: Guard<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Reading {
            inner,
            with: self.with,
        })
    }
}

/// An array's items, each held to `items`.
struct Items<'a, A> {
    inner: A,
    items: Guard<'a>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Items<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        self.inner.next_element_seed(Seed {
            seed,
            with: self.items,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// An object's members, each value held to its member's shape: the key is seen as `T` reads it
/// (unescaped), and `value` keeps the shape it names until the value is read.
struct Entries<'a, A> {
    inner: A,
    object: Guard<'a>,
    members: Option<&'a Members>,
    value: Option<Guard<'a>>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Entries<'_, A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        self.value = None;
        self.inner.next_key_seed(KeySeed {
            seed,
            with: Capture {
                object: self.object,
                members: self.members,
                value: &mut self.value,
            },
        })
    }

    /// A value whose key was not seen as a string has no shape to be held to: undecided.
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let with = self.value.take().ok_or_else(undecided::<A::Error>)?;
        self.inner.next_value_seed(Seed { seed, with })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// Where a key, as `T` reads it, leaves the guard of its member's value.
struct Capture<'a, 'm> {
    object: Guard<'a>,
    members: Option<&'a Members>,
    value: &'m mut Option<Guard<'a>>,
}

impl Capture<'_, '_> {
    fn keep(self, key: &str) {
        *self.value = Some(Guard {
            shape: member(self.members, key),
            ..self.object
        });
    }
}

/// A key's seed, whose deserializer tells [`Capture`] the key.
struct KeySeed<'a, 'm, S> {
    seed: S,
    with: Capture<'a, 'm>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, '_, S> {
    type Value = S::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(KeyReading {
            inner,
            with: self.with,
        })
    }
}

/// A key's deserializer: asked what `T` asks, it only listens to the answer.
struct KeyReading<'a, 'm, D> {
    inner: D,
    with: Capture<'a, 'm>,
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for KeyReading<'_, '_, D> {
    type Error = D::Error;

    forward_all_but_newtypes_and_ignored! { KeyVisit }
    forward! { KeyVisit:
        deserialize_newtype_struct(name: &'static str) deserialize_ignored_any()
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A key's visitor: a key given as a string is kept; any other answer (a key read as a number
/// or as raw bytes) is refused, and so undecided.
struct KeyVisit<'a, 'm, V> {
    visitor: V,
    with: Capture<'a, 'm>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisit<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<V::Value, E> {
        self.with.keep(key);
        self.visitor.visit_str(key)
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<V::Value, E> {
        self.with.keep(key);
        self.visitor.visit_borrowed_str(key)
    }

    fn visit_string<E: de::Error>(self, key: String) -> Result<V::Value, E> {
        self.with.keep(&key);
        self.visitor.visit_string(key)
    }
}

/// An enum's variant: its name and its content read through [`Reading`], held to nothing as
/// `check` holds them (see [`Visit::visit_enum`]).
struct Variant<'a, A> {
    inner: A,
    with: Guard<'a>,
}

impl<'de, 'a, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Variant<'a, A> {
    type Error = A::Error;
    type Variant = Variant<'a, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Seed {
            seed,
            with: self.with,
        })?;
        Ok((
            value,
            Variant {
                inner: variant,
                with: self.with,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    /// `serde_json` reads a unit variant's content as `null` and nothing else.
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            seed,
            with: self.with,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            Visit {
                visitor,
                with: self.with,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            Visit {
                visitor,
                with: self.with,
            },
        )
    }
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
mod one_pass_tests;

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
    fn malformed_json_comes_before_a_broken_schema() {
        let body = br#"{"boot_id": "b", "cloudflared": ["ready"], "sequence": }"#;
        let error = parse_json::<Heartbeat>(body).unwrap_err();
        assert_eq!(error.status.as_u16(), 400, "{error:?}");
        assert_eq!(error.errors[0].field, "body");
        assert!(
            error.errors[0].message.starts_with("malformed JSON"),
            "{error:?}"
        );
        let trailing = br#"{"account_id": "acc_x"} ["#;
        assert_eq!(
            parse_json::<TransferAgent>(trailing)
                .unwrap_err()
                .status
                .as_u16(),
            400
        );
    }

    #[test]
    fn a_value_no_schema_covers_is_still_read_in_full() {
        let beat = beat().to_string();
        let (head, tail) = beat.split_at(1);
        for member in [
            r#""extra": "\ud800","#,
            r#""extra": 1e400,"#,
            r#""extra": ["\ud800"],"#,
        ] {
            let body = format!("{head}{member}{tail}");
            let error = parse_json::<Heartbeat>(body.as_bytes()).unwrap_err();
            assert_eq!(error.status.as_u16(), 400, "{body}: {error:?}");
        }
        let mut body = beat.into_bytes();
        body.splice(1..1, b"\"extra\": \"\xff\",".iter().copied());
        assert_eq!(
            parse_json::<Heartbeat>(&body).unwrap_err().status.as_u16(),
            400,
            "a string that is not UTF-8"
        );
    }

    #[test]
    fn a_key_with_escapes_is_still_its_field() {
        let mut body = beat().to_string();
        body = body.replacen(
            r#""sequence":1"#,
            r#""sequ\u0065nce":18446744073709551615"#,
            1,
        );
        let error = parse_json::<Heartbeat>(body.as_bytes()).unwrap_err();
        assert_eq!(
            (error.status.as_u16(), error.errors[0].field.as_str()),
            (422, "sequence"),
            "{body}"
        );
    }

    /// A streaming reading holds a value to one schema at a time: `allOf` and `anyOf` would
    /// be read as anything. None is in the document; this keeps it so.
    #[test]
    fn the_document_has_no_schema_this_reading_would_skip() {
        let document = super::super::served_openapi().to_json().unwrap();
        for keyword in ["\"allOf\"", "\"anyOf\"", "\"not\""] {
            assert!(
                !document.contains(keyword),
                "the API document uses {keyword}: teach http/shape.rs to read it"
            );
        }
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
