//! `/v1/webhooks`: the account's subscriptions, and signing-secret rotation.

use crate::AppState;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::netpolicy::check_url;
use dispatcher_db::{accounts, subscriptions};
use dispatcher_http::error::doc::{
    BadRequest, InternalError, NotFound, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use dispatcher_http::{cursor, ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::ToSchema;
use uuid::Uuid;

const MAX_DESCRIPTION: usize = 500;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(schema_with = event_filter_schema)]
    event: String,
    /// Receives the matching events. `https://` (unless the deployment allows `http://`) and not
    /// a loopback, private, link-local or metadata address.
    #[schema(format = "uri")]
    callback_url: String,
    /// At most 500 characters.
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
}

/// The events a subscription receives: one outcome type, or `*` for all.
fn event_filter_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(EVENTS))
        .build()
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    webhook_id: Uuid,
    #[schema(schema_with = event_filter_schema)]
    event: String,
    callback_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    description: Option<String>,
    created_at: DateTime<Utc>,
    /// Set when the endpoint answered `410 Gone`: no more deliveries go to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    disabled_at: Option<DateTime<Utc>>,
}

impl From<subscriptions::Subscription> for WebhookBody {
    fn from(s: subscriptions::Subscription) -> Self {
        Self {
            webhook_id: s.id,
            event: s.event,
            callback_url: s.callback_url,
            description: s.description,
            created_at: s.created_at,
            disabled_at: s.disabled_at,
        }
    }
}

const EVENTS: [&str; 3] = ["dispatch.completed", "dispatch.failed", "*"];

/// Subscribe an endpoint to outcome events.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "createWebhook",
    security(("basicAuth" = [])),
    request_body(content = CreateWebhook, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = WebhookBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn create(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookBody>), ApiError> {
    if !EVENTS.contains(&req.event.as_str()) {
        return Err(ApiError::unprocessable(
            "invalid_event",
            format!("event: must be one of {}", EVENTS.join(", ")),
        ));
    }
    let d = &s.settings.delivery;
    check_url(&req.callback_url, d.allow_http, &d.allow_hosts).map_err(|e| {
        ApiError::unprocessable("invalid_callback_url", format!("callbackUrl: {e}"))
    })?;
    super::reject_nul_str(&req.callback_url, "callbackUrl")?;
    if let Some(description) = &req.description {
        super::reject_nul_str(description, "description")?;
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("description: at most {MAX_DESCRIPTION} characters"),
            ));
        }
    }
    let sub = subscriptions::insert(
        &s.pool,
        account,
        &req.event,
        &req.callback_url,
        req.description.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(sub.into())))
}

/// Get a subscription.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "getWebhook",
    security(("basicAuth" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id; anything else answers 404.")),
    responses(
        (status = 200, description = "The subscription.", body = WebhookBody),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn get(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<WebhookBody>, ApiError> {
    let Path(id) = id?;
    let id = super::parse_id(&id, "webhook")?;
    subscriptions::get(&s.pool, account, id)
        .await?
        .map(|w| Json(w.into()))
        .ok_or(ApiError::NotFound("webhook"))
}

/// A page of subscriptions, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookList {
    data: Vec<WebhookBody>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required)]
    next_cursor: Option<String>,
}

/// List subscriptions, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "listWebhooks",
    security(("basicAuth" = [])),
    params(cursor::PageQuery),
    responses(
        (status = 200, description = "A page of subscriptions.", body = WebhookList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn list(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiQuery(q): ApiQuery<cursor::PageQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let (before, limit) = cursor::page(q.cursor.as_deref(), q.limit)?;
    let rows = subscriptions::list(&s.pool, account, before, limit).await?;
    let next_cursor = cursor::next(&rows, limit, |r| (r.created_at, r.id));
    Ok(Json(WebhookList {
        data: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Delete a subscription.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "deleteWebhook",
    security(("basicAuth" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id; anything else answers 404.")),
    responses(
        (status = 204, description = "Deleted; no more deliveries go to it."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn delete(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let id = super::parse_id(&id, "webhook")?;
    if subscriptions::delete(&s.pool, account, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    /// Shown once; deliveries are signed with it from now on.
    webhook_secret: String,
    /// Until then deliveries also carry a signature with the previous secret.
    previous_secret_expires_at: DateTime<Utc>,
}

/// Rotate the account's webhook signing secret.
///
/// Deliveries are signed with the new secret at once, and also with the previous one until
/// `previousSecretExpiresAt`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/secret/rotate",
    tag = "webhooks",
    operation_id = "rotateWebhookSecret",
    security(("basicAuth" = [])),
    responses(
        (status = 200, description = "The new secret (shown only now).", body = RotatedSecret),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn rotate_secret(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
) -> Result<Json<RotatedSecret>, ApiError> {
    let (webhook_secret, until) = accounts::rotate_webhook_secret(
        &s.pool,
        account,
        s.settings.delivery.secret_rotation_grace,
    )
    .await?;
    Ok(Json(RotatedSecret {
        webhook_secret,
        previous_secret_expires_at: until,
    }))
}
