//! What every route of a kind shares in the API document, added in one place: the answers
//! it can give and the form of its `Idempotency-Key` header.
//!
//! Each handler's `#[utoipa::path]` lists what is particular to it (its success, its 404 and
//! 409 with their reasons, its 422 naming its fields). What follows from the layers a route
//! sits behind is the same for all of them, so it is added here, after the routes are
//! collected, as references to shared `components.responses`: a route with a bearer token can
//! answer 401, and 503 while the database is unreachable; a route with a JSON body can answer
//! 400, 413, 415 and 422; a route that writes can answer 409 when a concurrent change or a
//! request with the same Idempotency-Key got there first, and one taking an `Idempotency-Key`
//! answers 422 for a malformed or reused key; any route but liveness and this document can
//! answer 500. Where the handler lists such a status already, its description gets the shared
//! reason appended, so the document states every status each route can answer. The
//! `Idempotency-Key` header is given the form the idempotency layer takes: 1 to 255 printable
//! ASCII characters (without the spaces HTTP strips from either end). And the answer of a
//! `POST` that creates a resource links to the operations on `{collection}/{id}` with the
//! `id` it answers, so a client (and Schemathesis' stateful phase) can follow it.

use std::collections::BTreeMap;

use control_api::problem::PROBLEM_JSON;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// A shared answer: its status, its name under `components.responses`, why it happens, and
/// what to append to a route's own description of the status (if anything).
struct Shared {
    status: &'static str,
    name: &'static str,
    why: &'static str,
    also: Option<&'static str>,
}

const MALFORMED: Shared = Shared {
    status: "400",
    name: "MalformedJson",
    why: "The body is not JSON (the problem names `body`).",
    also: None,
};
const UNAUTHORIZED: Shared = Shared {
    status: "401",
    name: "Unauthorized",
    why: "No `Authorization: Bearer` token, or one that is unknown or revoked.",
    also: None,
};
const CONFLICT: Shared = Shared {
    status: "409",
    name: "Conflict",
    why: "A concurrent change got there first (retry the request), or a request with the same \
          `Idempotency-Key` is still being processed.",
    also: Some(
        "Also when a concurrent change got there first (retry), or a request with the same `Idempotency-Key` is still being processed.",
    ),
};
const TOO_LARGE: Shared = Shared {
    status: "413",
    name: "TooLarge",
    why: "The body is larger than this route takes: 64 KiB for the dashboard's routes, 16 KiB \
          for vm-agent's.",
    also: None,
};
const MEDIA_TYPE: Shared = Shared {
    status: "415",
    name: "UnsupportedMediaType",
    why: "The body is not sent as `Content-Type: application/json`.",
    also: None,
};
const INVALID: Shared = Shared {
    status: "422",
    name: "InvalidInput",
    why: "Invalid input, naming the field in `errors[].field`: a missing, unknown or mistyped \
          field, an array where an object is documented, a number outside its documented range, \
          or a malformed or reused `Idempotency-Key` (a key names one request: 1 to 255 \
          printable ASCII characters).",
    also: Some(
        "Also for an array where an object is documented, a number outside its documented range, or a malformed or reused `Idempotency-Key`.",
    ),
};
const INTERNAL: Shared = Shared {
    status: "500",
    name: "Internal",
    why: "An internal error; it was logged with the request id the problem carries.",
    also: None,
};
const UNAVAILABLE: Shared = Shared {
    status: "503",
    name: "Unavailable",
    why: "The database is unreachable; retry shortly.",
    also: Some("Also when the database is unreachable."),
};

/// Adds the shared answers to every operation of `document` that can give them.
pub(super) fn complete(document: &mut OpenApi) {
    let components = document.components.get_or_insert_with(Default::default);
    for shared in [
        &MALFORMED,
        &UNAUTHORIZED,
        &CONFLICT,
        &TOO_LARGE,
        &MEDIA_TYPE,
        &INVALID,
        &INTERNAL,
        &UNAVAILABLE,
    ] {
        components.responses.insert(
            shared.name.to_owned(),
            RefOr::T(problem_response(shared.why)),
        );
    }
    link_created_resources(document);
    for item in document.paths.paths.values_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (operation, writes) in operations {
            if let Some(operation) = operation.as_mut() {
                complete_operation(operation, writes);
            }
        }
    }
}

fn complete_operation(operation: &mut Operation, writes: bool) {
    let public = operation
        .tags
        .as_ref()
        .is_some_and(|tags| tags.iter().any(|tag| tag == "health"));
    if public {
        return;
    }
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter
            && parameter.parameter_in == ParameterIn::Header
            && parameter.name.eq_ignore_ascii_case("Idempotency-Key")
        {
            parameter.schema = Some(idempotency_key_schema());
        }
    }
    let has_param = |place: ParameterIn, name: Option<&str>| {
        operation.parameters.iter().flatten().any(|parameter| {
            matches!(parameter, RefOr::T(p) if p.parameter_in == place
                && name.is_none_or(|name| p.name.eq_ignore_ascii_case(name)))
        })
    };
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let keyed = has_param(ParameterIn::Header, Some("Idempotency-Key"));
    let queried = has_param(ParameterIn::Query, None);
    let body = operation.request_body.is_some();
    let responses = &mut operation.responses.responses;
    if authenticated {
        add(responses, &UNAUTHORIZED);
    }
    if body {
        add(responses, &MALFORMED);
        add(responses, &MEDIA_TYPE);
    }
    if body || keyed {
        add(responses, &TOO_LARGE);
    }
    if body || keyed || queried {
        add(responses, &INVALID);
    }
    if writes {
        add(responses, &CONFLICT);
    }
    add(responses, &INTERNAL);
    add(responses, &UNAVAILABLE);
}

/// Adds `shared` as a reference, or appends its reason to the route's own description.
fn add(responses: &mut BTreeMap<String, RefOr<Response>>, shared: &Shared) {
    match responses.get_mut(shared.status) {
        None => {
            responses.insert(
                shared.status.to_owned(),
                RefOr::Ref(Ref::from_response_name(shared.name)),
            );
        }
        Some(RefOr::T(own)) => {
            if let Some(also) = shared.also.filter(|also| !own.description.contains(also)) {
                let own_text = own.description.trim_end().trim_end_matches('.');
                own.description = format!("{own_text}. {also}");
            }
        }
        Some(_) => {}
    }
}

fn problem_response(why: &str) -> Response {
    ResponseBuilder::new()
        .description(why)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// What the idempotency layer takes as a key (see `http::idempotency`).
fn idempotency_key_schema() -> RefOr<utoipa::openapi::Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some("^[!-~]([ -~]*[!-~])?$"))
        .into()
}

/// Links the success answer of each `POST {collection}` to the operations on
/// `{collection}/{id}…`, with the created resource's `id`.
fn link_created_resources(document: &mut OpenApi) {
    let mut targets: Vec<(String, String)> = Vec::new();
    for (path, item) in &document.paths.paths {
        let Some(collection) = path.find("/{id}").map(|at| &path[..at]) else {
            continue;
        };
        let operations = [&item.get, &item.put, &item.post, &item.delete];
        for operation in operations.into_iter().flatten() {
            if let Some(id) = &operation.operation_id {
                targets.push((collection.to_owned(), id.clone()));
            }
        }
    }
    for (path, item) in &mut document.paths.paths {
        let Some(create) = item.post.as_mut() else {
            continue;
        };
        let created = create
            .responses
            .responses
            .iter_mut()
            .find(|(status, _)| status.as_str() == "201" || status.as_str() == "202");
        let Some((_, RefOr::T(response))) = created else {
            continue;
        };
        for (collection, operation_id) in &targets {
            if collection == path {
                let link = utoipa::openapi::link::LinkBuilder::new()
                    .operation_id(operation_id.clone())
                    .parameter("id", "$response.body#/id")
                    .build();
                response.links.insert(operation_id.clone(), RefOr::T(link));
            }
        }
    }
}
