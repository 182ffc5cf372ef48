//! `/v1/webhooks`: the account's subscriptions, and signing-secret rotation.

use crate::AppState;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::health::Health;
use dispatcher_db::{accounts, endpoint_health, subscriptions};
use dispatcher_http::commands::EVENTS;
use dispatcher_http::error::doc::{
    BadRequest, InternalError, NotFound, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use dispatcher_http::{cursor, ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::ToSchema;
use uuid::Uuid;

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
    /// Requests per second the endpoint receives at most, from each deliverer (1 to 10 000).
    /// Deliveries beyond it wait their turn; none is dropped.
    #[schema(minimum = 1, maximum = 10000)]
    rate_limit: Option<u32>,
}

/// The events a subscription receives: one event type, a family (`provider.*`), or `*` for every
/// dispatch and provider event (operational events, `endpoint.*` and `delivery.exhausted`, are
/// subscribed to by name or family).
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
    /// Set when the subscription was disabled (its endpoint answered `410 Gone`, or failed for
    /// longer than the deployment allows): no more deliveries go to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    disabled_at: Option<DateTime<Utc>>,
    /// Why it was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1, maximum = 10000)]
    rate_limit: Option<i32>,
    /// The endpoint's health (`GET /v1/webhooks/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    health: Option<EndpointHealth>,
}

/// An endpoint's health, from the attempts every deliverer recorded.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealth {
    /// Share of recent attempts that succeeded (weighted towards the last 50); null before the
    /// first attempt.
    #[schema(required, minimum = 0, maximum = 1)]
    success_rate: Option<f64>,
    #[schema(required)]
    last_success_at: Option<DateTime<Utc>>,
    #[schema(required)]
    last_error_at: Option<DateTime<Utc>>,
    #[schema(required)]
    last_error: Option<String>,
    consecutive_failures: i32,
    /// `open` after `circuit_breaker_threshold` failures in a row: deliveries are held back;
    /// `half_open` once a probe is due; `closed` again after a success.
    #[schema(value_type = String, example = "closed")]
    breaker: &'static str,
}

impl EndpointHealth {
    fn new(h: Option<Health>, cooldown: std::time::Duration) -> Self {
        let h = h.unwrap_or_default();
        Self {
            success_rate: (h.attempts > 0).then_some(h.success_rate),
            last_success_at: h.last_success_at,
            last_error_at: h.last_error_at,
            consecutive_failures: h.consecutive_failures,
            breaker: h.breaker(Utc::now(), cooldown).as_str(),
            last_error: h.last_error,
        }
    }
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
            disabled_reason: s.disabled_reason,
            rate_limit: s.rate_limit,
            health: None,
        }
    }
}

/// Subscribe an endpoint to events.
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
    let sub = dispatcher_http::commands::create_webhook(
        &s.pool,
        &s.settings.delivery,
        account,
        dispatcher_http::commands::NewWebhook {
            event: &req.event,
            callback_url: &req.callback_url,
            description: req.description.as_deref(),
            rate_limit: req.rate_limit,
        },
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
        (status = 200, description = "The subscription, with its endpoint's health.", body = WebhookBody),
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
    let sub = subscriptions::get(&s.pool, account, id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let health = endpoint_health::get(&s.pool, account, id).await?;
    let mut body = WebhookBody::from(sub);
    body.health = Some(EndpointHealth::new(
        health,
        s.settings.delivery.circuit_breaker_cooldown,
    ));
    Ok(Json(body))
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
