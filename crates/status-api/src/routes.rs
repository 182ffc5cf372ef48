use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dispatcher_core::DispatchStatus;
use dispatcher_db::{deliveries, dispatches};
use dispatcher_http::views::DispatchBody;
use dispatcher_http::{cursor, ApiError, AuthAccount};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/dispatches", get(list))
        .route("/v1/dispatches/{id}", get(get_one))
        .route("/v1/dispatches/{id}/result", get(result))
        .route("/v1/dispatches/{id}/attempts", get(attempts))
        .with_state(state)
}

fn parse_id(s: &str) -> Result<Uuid, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound("dispatch"))
}

async fn get_one(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<Json<DispatchBody>, ApiError> {
    let view = dispatches::get(&s.pool, account, parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    Ok(Json(DispatchBody::new(view, s.settings.public_base())))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DispatchList {
    data: Vec<DispatchBody>,
    next_cursor: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Query(q): Query<ListQuery>,
) -> Result<Json<DispatchList>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|st| {
            st.parse::<DispatchStatus>()
                .map_err(|e| ApiError::bad_request("invalid_status", e))
        })
        .transpose()?;
    let limit = cursor::limit(q.limit)?;
    let before = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let rows = dispatches::list(&s.pool, account, status, before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|d| cursor::encode(d.queued_at, d.id)))
        .flatten();
    let base = s.settings.public_base();
    Ok(Json(DispatchList {
        data: rows
            .into_iter()
            .map(|v| DispatchBody::new(v, base))
            .collect(),
        next_cursor,
    }))
}

async fn result(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (doc, content_type) = dispatches::get_result(&s.pool, account, parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    match (doc, content_type) {
        (Some(doc), Some(ct)) => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], doc).into_response())
        }
        _ => Err(ApiError::NotFound("result")),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptBody {
    attempt_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_id: Option<Uuid>,
    url: String,
    attempt: i32,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    duration_ms: i32,
    attempted_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct AttemptList {
    data: Vec<AttemptBody>,
}

async fn attempts(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<Json<AttemptList>, ApiError> {
    let id = parse_id(&id)?;
    // 404 for a dispatch that is not this account's, even if it has no attempts yet.
    dispatches::get(&s.pool, account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    let rows = deliveries::list_attempts(&s.pool, account, id).await?;
    Ok(Json(AttemptList {
        data: rows
            .into_iter()
            .map(|a| AttemptBody {
                attempt_id: a.id,
                webhook_id: a.webhook_id,
                url: a.url,
                attempt: a.attempt,
                status: a.status,
                response_status: a.response_status,
                error: a.error,
                duration_ms: a.duration_ms,
                attempted_at: a.attempted_at,
                next_attempt_at: a.next_attempt_at,
            })
            .collect(),
    }))
}
