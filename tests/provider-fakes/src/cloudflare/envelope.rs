//! Cloudflare's v4 envelope: `{"success", "errors": [{"code", "message"}], "messages", "result"}`
//! on every answer, `result_info` on lists, and the status each error has at Cloudflare. Every
//! refusal of the fake goes through [`ApiError`], so none can leave without the envelope.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// `(code, message)`, as many as Cloudflare gives.
    pub errors: Vec<(u32, String)>,
    /// Cloudflare's `error_chain` under the first error (DNS validation details).
    pub chain: Vec<(u32, String)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            errors: vec![(code, message.into())],
            chain: Vec::new(),
        }
    }

    /// A wrong or missing token. (Cloudflare answers a malformed `Authorization` header with 400
    /// and code 6003/6111; the fake does not distinguish.)
    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, 10000, "Authentication error")
    }

    /// A valid token used on an account or zone it does not reach.
    pub(crate) fn forbidden() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, 10000, "Authentication error")
    }

    /// The limit of requests per window is spent.
    pub(crate) fn rate_limited(limit: u32, window_secs: u64) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            971,
            format!(
                "More than {limit} requests per {window_secs} seconds reached. Please wait and \
                 consider throttling your request speed"
            ),
        )
    }

    /// A path whose identifiers cannot be routed, or a path the API does not have.
    pub(crate) fn no_route(path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            errors: vec![
                (
                    7003,
                    format!(
                        "Could not route to {path}, perhaps your object identifier is invalid?"
                    ),
                ),
                (7000, "No route for that URI".to_owned()),
            ],
            chain: Vec::new(),
        }
    }

    /// A request body that is not JSON, or not of the expected shape.
    pub(crate) fn bad_body(detail: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            9207,
            format!("Request body is invalid. {detail}"),
        )
    }

    pub(crate) fn tunnel_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, 1003, "Tunnel not found")
    }

    /// A tunnel request Cloudflare refuses as a bad request (code 1001, a guess).
    pub(crate) fn tunnel_bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, 1001, message)
    }

    pub(crate) fn record_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, 81044, "Record does not exist.")
    }

    /// DNS validation: 1004 with the reason in `error_chain`.
    pub(crate) fn dns_invalid(code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            errors: vec![(1004, "DNS Validation Error".to_owned())],
            chain: vec![(code, message.into())],
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let chain: Vec<Value> = self
            .chain
            .iter()
            .map(|(code, message)| json!({"code": code, "message": message}))
            .collect();
        let errors: Vec<Value> = self
            .errors
            .iter()
            .enumerate()
            .map(|(i, (code, message))| {
                if i == 0 && !chain.is_empty() {
                    json!({"code": code, "message": message, "error_chain": chain})
                } else {
                    json!({"code": code, "message": message})
                }
            })
            .collect();
        let body = json!({"success": false, "errors": errors, "messages": [], "result": null});
        (self.status, Json(body)).into_response()
    }
}

/// A successful answer: 200 and the envelope around `result`.
pub(crate) fn ok(result: Value) -> Response {
    let mut body = json!({"success": true, "errors": [], "messages": []});
    body["result"] = result;
    Json(body).into_response()
}

/// A successful page of a list: the envelope with `result_info`.
pub(crate) fn ok_page(result: Vec<Value>, info: Value) -> Response {
    let mut body = json!({"success": true, "errors": [], "messages": []});
    body["result"] = Value::Array(result);
    body["result_info"] = info;
    Json(body).into_response()
}

/// `page` and `per_page` of a list query, and the `result_info` of the page cut out.
pub(crate) struct Paging {
    pub page: u64,
    pub per_page: u64,
}

impl Paging {
    /// Reads `page` (from 1) and `per_page` (`default` when absent, at most `max`).
    pub(crate) fn parse(
        pairs: &[(String, String)],
        default: u64,
        max: u64,
        invalid: impl Fn(&str) -> ApiError,
    ) -> Result<Paging, ApiError> {
        let mut paging = Paging {
            page: 1,
            per_page: default,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "page" => {
                    paging.page = value
                        .parse::<u64>()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| invalid("page must be a number, at least 1"))?;
                }
                "per_page" => {
                    paging.per_page = value
                        .parse::<u64>()
                        .ok()
                        .filter(|p| (1..=max).contains(p))
                        .ok_or_else(|| invalid(&format!("per_page must be between 1 and {max}")))?;
                }
                _ => {}
            }
        }
        Ok(paging)
    }

    /// Cuts the page out of `rows` and says where it is.
    pub(crate) fn cut<T>(&self, rows: Vec<T>) -> (Vec<T>, Value) {
        let total = rows.len() as u64;
        let skip =
            usize::try_from((self.page - 1).saturating_mul(self.per_page)).unwrap_or(usize::MAX);
        let take = usize::try_from(self.per_page).unwrap_or(usize::MAX);
        let items: Vec<T> = rows.into_iter().skip(skip).take(take).collect();
        let info = json!({
            "page": self.page,
            "per_page": self.per_page,
            "count": items.len(),
            "total_count": total,
            "total_pages": total.div_ceil(self.per_page),
        });
        (items, info)
    }
}

/// The query string as ordered pairs.
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Parses a request body: bad JSON or a wrong shape is 400 with the envelope.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_body(&format!("It is not valid JSON: {e}")))?
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_body(&format!("{path}: {}", e.into_inner()))
    })
}
