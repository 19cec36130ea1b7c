//! Operator endpoints: accounts, tokens and image releases.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use control_api::accounts::{Account, CreateAccount, CreateToken, CreatedToken};
use control_api::images::{Image, ImageList, RegisterImage, SetCurrentImage};
use control_api::problem::Problem;

use super::error::Answer;
use super::extract::{ApiJson, Idempotency, Operator};
use crate::app::App;
use crate::{accounts, images};

/// Create an account (operators only).
#[utoipa::path(
    post, path = "/api/accounts", operation_id = "create_account", tag = "accounts",
    request_body = CreateAccount,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer")),
    responses(
        (status = 201, description = "Created", body = Account),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, naming the field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_account(
    State(app): State<App>,
    _operator: Operator,
    Idempotency(idem): Idempotency,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Answer<Account> {
    let account = accounts::create(&app, &body, idem.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

/// Create an API token for an account (operators only). The secret is in this answer only.
#[utoipa::path(
    post, path = "/api/accounts/{id}/tokens", operation_id = "create_account_token", tag = "accounts",
    request_body = CreateToken,
    params(
        ("id" = String, Path, description = "Account id"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry is told the token exists; the secret is never shown twice"),
    ),
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = CreatedToken),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Replayed Idempotency-Key: the token exists already", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_token(
    State(app): State<App>,
    _operator: Operator,
    Idempotency(idem): Idempotency,
    Path(account_id): Path<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Answer<CreatedToken> {
    let token = accounts::create_token(&app, Some(&account_id), &body, idem.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Register a platform image release (operators only). New Agents use it once it is current.
#[utoipa::path(
    post, path = "/api/images", operation_id = "register_image", tag = "images",
    request_body = RegisterImage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer")),
    responses(
        (status = 201, description = "Registered", body = Image),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version already registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, naming the field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn register_image(
    State(app): State<App>,
    _operator: Operator,
    Idempotency(idem): Idempotency,
    ApiJson(body): ApiJson<RegisterImage>,
) -> Answer<Image> {
    let image = images::register(&app, &body, idem.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(image)))
}

/// Every registered release, newest first (operators only).
#[utoipa::path(
    get, path = "/api/images", operation_id = "list_images", tag = "images",
    responses(
        (status = 200, description = "Releases", body = ImageList),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_images(State(app): State<App>, _operator: Operator) -> Answer<ImageList> {
    Ok((StatusCode::OK, Json(images::list(&app).await?)))
}

/// Select the release new Agents are provisioned on (operators only). Existing Agents keep
/// theirs.
#[utoipa::path(
    put, path = "/api/images/current", operation_id = "set_current_image", tag = "images",
    request_body = SetCurrentImage,
    responses(
        (status = 200, description = "Now current", body = Image),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown release, naming `image_id`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set_current_image(
    State(app): State<App>,
    _operator: Operator,
    ApiJson(body): ApiJson<SetCurrentImage>,
) -> Answer<Image> {
    Ok((
        StatusCode::OK,
        Json(images::set_current(&app, &body).await?),
    ))
}
