use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dispatcher_core::DispatchStatus;
use dispatcher_db::{deliveries, dispatches};
use dispatcher_http::views::DispatchBody;
use dispatcher_http::{cursor, ApiError, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/dispatches", get(list))
        .route("/v1/dispatches/{id}", get(get_one))
        .route("/v1/dispatches/{id}/result", get(result))
        .route("/v1/dispatches/{id}/attempts", get(attempts))
        .route("/v1/dispatches/{id}/redeliver", post(redeliver))
        .with_state(state)
}

fn parse_id(s: &str) -> Result<Uuid, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound("dispatch"))
}

/// One webhook delivery of a dispatch, as shown in its status body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_id: Option<Uuid>,
    url: String,
    /// pending | succeeded | failed | dead
    status: String,
    attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DispatchWithDeliveries {
    #[serde(flatten)]
    dispatch: DispatchBody,
    deliveries: Vec<DeliveryBody>,
}

async fn get_one(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<Json<DispatchWithDeliveries>, ApiError> {
    let id = parse_id(&id)?;
    let view = dispatches::get(&s.pool, account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    let deliveries = deliveries::states_for_dispatch(&s.pool, account, id)
        .await?
        .into_iter()
        .map(|d| DeliveryBody {
            webhook_id: d.webhook_id,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
        })
        .collect();
    Ok(Json(DispatchWithDeliveries {
        dispatch: DispatchBody::new(view, s.settings.public_base()),
        deliveries,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedeliverRequest {
    webhook_id: Option<Uuid>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Redelivered {
    dispatch_id: Uuid,
    deliveries: usize,
}

/// Sends a finished dispatch's outcome event again to its callbacks (or to one subscription).
async fn redeliver(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Redelivered>), ApiError> {
    let id = parse_id(&id)?;
    let req: RedeliverRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RedeliverRequest { webhook_id: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable("invalid_field", e.to_string()))?
    };
    let view = dispatches::get(&s.pool, account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    if !view.status.is_terminal() {
        return Err(ApiError::Conflict {
            code: "dispatch_not_finished",
            message: "the dispatch has no outcome to deliver yet".into(),
        });
    }
    let ids = deliveries::requeue(
        &s.pool,
        &deliveries::RequeueFilter {
            account_id: Some(account),
            dispatch_id: Some(id),
            webhook_id: req.webhook_id,
            ..Default::default()
        },
    )
    .await?;
    if ids.is_empty() && req.webhook_id.is_some() {
        return Err(ApiError::NotFound("delivery for that webhook"));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Redelivered {
            dispatch_id: id,
            deliveries: ids.len(),
        }),
    ))
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
    ApiQuery(q): ApiQuery<ListQuery>,
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
