//! `/v1/webhooks`: the account's subscriptions, and signing-secret rotation.

use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::netpolicy::check_url;
use dispatcher_db::{accounts, subscriptions};
use dispatcher_http::{cursor, ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    event: String,
    callback_url: String,
    description: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    webhook_id: Uuid,
    event: String,
    callback_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    created_at: DateTime<Utc>,
    /// Set when the endpoint answered `410 Gone`: no more deliveries go to it.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    if req.description.as_ref().is_some_and(|d| d.len() > 500) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "description: at most 500 characters",
        ));
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

pub async fn get(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<Json<WebhookBody>, ApiError> {
    let id = super::parse_id(&id, "webhook")?;
    subscriptions::get(&s.pool, account, id)
        .await?
        .map(|w| Json(w.into()))
        .ok_or(ApiError::NotFound("webhook"))
}

#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookList {
    data: Vec<WebhookBody>,
    next_cursor: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let limit = cursor::limit(q.limit)?;
    let before = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let rows = subscriptions::list(&s.pool, account, before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|w| cursor::encode(w.created_at, w.id)))
        .flatten();
    Ok(Json(WebhookList {
        data: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

pub async fn delete(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = super::parse_id(&id, "webhook")?;
    if subscriptions::delete(&s.pool, account, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    /// Shown once; deliveries are signed with it from now on.
    webhook_secret: String,
    /// Until then deliveries also carry a signature with the previous secret.
    previous_secret_expires_at: DateTime<Utc>,
}

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
