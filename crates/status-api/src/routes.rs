use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dispatcher_core::DispatchStatus;
use dispatcher_db::{deliveries, dispatches};
use dispatcher_http::error::doc::{
    BadRequest, Conflict, InternalError, NotFound, PayloadTooLarge, ServiceUnavailable,
    TooManyRequests, Unauthorized, UnprocessableEntity,
};
use dispatcher_http::views::DispatchBody;
use dispatcher_http::{cursor, ApiError, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// The API routes, each registered together with its OpenAPI description (`#[utoipa::path]`), so
/// the document cannot list a route the service does not serve or miss one it does.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(result))
        .routes(routes!(attempts))
        .routes(routes!(redeliver))
}

pub fn router(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    router.with_state(state)
}

/// A malformed or undecodable id is simply a dispatch that does not exist.
fn parse_id(id: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound("dispatch"));
    };
    id.parse().map_err(|_| ApiError::NotFound("dispatch"))
}

/// The `{id}` path parameter of the dispatch routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct DispatchId {
    /// The dispatch's id; anything else answers 404.
    id: Uuid,
}

/// One webhook delivery of a dispatch, as shown in its status body.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DeliveryBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    webhook_id: Option<Uuid>,
    url: String,
    #[schema(schema_with = delivery_status_schema)]
    status: String,
    attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_attempt_at: Option<DateTime<Utc>>,
}

/// The values the `deliveries.status` column allows.
fn delivery_status_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["pending", "succeeded", "failed", "dead"]))
        .build()
}

/// A dispatch's state and the state of each of its webhook deliveries.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DispatchWithDeliveries {
    #[serde(flatten)]
    dispatch: DispatchBody,
    deliveries: Vec<DeliveryBody>,
}

/// Get a dispatch.
#[utoipa::path(
    get,
    path = "/v1/dispatches/{id}",
    tag = "dispatches",
    operation_id = "getDispatch",
    security(("basicAuth" = [])),
    params(DispatchId),
    responses(
        (status = 200, description = "The dispatch.", body = DispatchWithDeliveries),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
async fn get_one(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DispatchWithDeliveries>, ApiError> {
    let id = parse_id(id)?;
    // From the replica only when it already shows the dispatch finished (see `reads`); the
    // deliveries come from the same database as the dispatch.
    let (view, pool) = s
        .dispatch(account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    let deliveries = deliveries::states_for_dispatch(&pool, account, id)
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

/// Which deliveries to send again.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedeliverRequest {
    /// Only the delivery to this subscription.
    webhook_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Redelivered {
    dispatch_id: Uuid,
    /// How many deliveries were queued again.
    #[schema(minimum = 0)]
    deliveries: usize,
}

/// Send a finished dispatch's outcome again.
///
/// Enqueues the dispatch's outcome event again to its callbacks (or to one subscription). The body
/// is optional and read as JSON whatever its `Content-Type`.
#[utoipa::path(
    post,
    path = "/v1/dispatches/{id}/redeliver",
    tag = "dispatches",
    operation_id = "redeliverDispatch",
    security(("basicAuth" = [])),
    params(DispatchId),
    request_body(
        content = Option<RedeliverRequest>,
        content_type = "application/json",
        description = "Optional; empty, `null` or `{}` means every callback of the dispatch.",
    ),
    responses(
        (status = 202, description = "Queued again.", body = Redelivered),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
async fn redeliver(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Redelivered>), ApiError> {
    let id = parse_id(id)?;
    let body = body?;
    // An empty body or `null` asks for every callback, as `{}` does.
    let req: Option<RedeliverRequest> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable("invalid_field", e.to_string()))?
    };
    let req = req.unwrap_or(RedeliverRequest { webhook_id: None });
    let ids = dispatcher_http::commands::redeliver(&s.pool, account, id, req.webhook_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Redelivered {
            dispatch_id: id,
            deliveries: ids.len(),
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only dispatches in this state.
    #[param(value_type = Option<DispatchStatus>)]
    status: Option<String>,
    /// `nextCursor` of the previous page (opaque; any other value answers 400).
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// A page of dispatches, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DispatchList {
    data: Vec<DispatchBody>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required)]
    next_cursor: Option<String>,
}

/// List dispatches, newest first.
#[utoipa::path(
    get,
    path = "/v1/dispatches",
    tag = "dispatches",
    operation_id = "listDispatches",
    security(("basicAuth" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of dispatches.", body = DispatchList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
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
    let (before, limit) = cursor::page(q.cursor.as_deref(), q.limit)?;
    let rows = s
        .lagging_read(|pool| async move {
            dispatches::list(&pool, account, status, before, limit).await
        })
        .await?;
    let next_cursor = cursor::next(&rows, limit, |d| (d.queued_at, d.id));
    let base = s.settings.public_base();
    Ok(Json(DispatchList {
        data: rows
            .into_iter()
            .map(|v| DispatchBody::new(v, base))
            .collect(),
        next_cursor,
    }))
}

/// Get a dispatch's rendered document.
///
/// Served with the content type of the template's format. 404 until the dispatch has a result
/// (and for failed dispatches).
#[utoipa::path(
    get,
    path = "/v1/dispatches/{id}/result",
    tag = "dispatches",
    operation_id = "getDispatchResult",
    security(("basicAuth" = [])),
    params(DispatchId),
    responses(
        (
            status = 200,
            description = "The rendered document.",
            content(
                (String = "text/html"),
                (String = "text/plain"),
                (String = "text/markdown"),
                (serde_json::Value = "application/json"),
                (String = "text/csv"),
            ),
        ),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
async fn result(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let doc = dispatcher_http::documents::open(&s.pool, s.store.as_ref(), account, id).await?;
    let mut resp = (StatusCode::OK, doc.body).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&doc.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(size) = doc.size {
        h.insert(header::CONTENT_LENGTH, size.into());
    }
    Ok(resp)
}

/// One webhook delivery attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct AttemptBody {
    attempt_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    webhook_id: Option<Uuid>,
    url: String,
    /// 1 for the first attempt of a delivery.
    attempt: i32,
    #[schema(schema_with = attempt_status_schema)]
    status: String,
    /// The endpoint's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    response_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<String>,
    duration_ms: i32,
    attempted_at: DateTime<Utc>,
    /// When the next attempt is scheduled, after a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_attempt_at: Option<DateTime<Utc>>,
}

/// The values the `delivery_attempts.status` column allows.
fn attempt_status_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["succeeded", "failed"]))
        .build()
}

/// Every delivery attempt of a dispatch.
#[derive(Serialize, ToSchema)]
struct AttemptList {
    data: Vec<AttemptBody>,
}

/// List a dispatch's webhook delivery attempts.
#[utoipa::path(
    get,
    path = "/v1/dispatches/{id}/attempts",
    tag = "dispatches",
    operation_id = "listDispatchAttempts",
    security(("basicAuth" = [])),
    params(DispatchId),
    responses(
        (status = 200, description = "Every attempt so far.", body = AttemptList),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
async fn attempts(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<AttemptList>, ApiError> {
    let id = parse_id(id)?;
    // 404 for a dispatch that is not this account's, even if it has no attempts yet.
    let (_, pool) = s
        .dispatch(account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    let rows = deliveries::list_attempts(&pool, account, id).await?;
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
