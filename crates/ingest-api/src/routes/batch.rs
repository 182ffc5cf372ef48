//! `POST /v1/dispatches/batch`: up to 1 000 dispatches in one request, always asynchronous.
//!
//! Each item is checked exactly as `POST /v1/dispatches` checks a body. The accepted ones and
//! their outbox rows are written in one transaction; a refused item gets its error in its place
//! in the answer and affects no other. An `Idempotency-Key` covers the whole batch: it is stored
//! in the same transaction, with the answer a repeat gets (when at least one item was accepted).
//! Batch keys and single-submission keys are kept apart: the same key on both endpoints names
//! two different requests.

use super::dispatches::{idempotency_key, key_reused, prepare, Accepted, Idempotency, SubmitBody};
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dispatcher_db::dispatches::{self, BatchKey};
use dispatcher_http::error::doc::{
    BadRequest, Conflict, InternalError, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use dispatcher_http::error::{ErrorBody, ErrorDetail};
use dispatcher_http::{ApiError, ApiJson, AuthAccount};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

pub const MAX_ITEMS: usize = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// 1 to 1 000 dispatch bodies, each as `POST /v1/dispatches` takes it.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<SubmitBody>)]
    items: Vec<serde_json::Value>,
}

/// One item's answer: its 202 body, or the error that refused it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchItem {
    Accepted(Accepted),
    Refused(ErrorBody),
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BatchAccepted {
    /// One entry per item, in request order.
    data: Vec<BatchItem>,
}

/// Submit many dispatches at once.
///
/// Always asynchronous. Every item is checked as `POST /v1/dispatches` checks a body; the
/// accepted ones are written in one transaction and queued, the refused ones are answered with
/// their error in place. With an `Idempotency-Key`, a repeat with the same body gets the original
/// answer, and with another body 409.
#[utoipa::path(
    post,
    path = "/v1/dispatches/batch",
    tag = "dispatches",
    operation_id = "submitDispatchBatch",
    security(("basicAuth" = [])),
    params(
        (
            "Idempotency-Key" = Option<String>,
            Header,
            description = "Makes retries of the whole batch safe: 1 to 255 visible ASCII characters.",
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = "^[!-~]+$",
        ),
    ),
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "One entry per item, in order: its 202 body, or its error.", body = BatchAccepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn submit_batch(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let text = raw.to_string();
    let request_hash: Vec<u8> = Sha256::digest(text.as_bytes()).to_vec();
    // No item may be larger than `POST /v1/dispatches` accepts; only a batch larger than that
    // limit can hold one.
    let max_item = s.settings.ingest.max_body_bytes;
    let check_item_sizes = text.len() > max_item;
    if let Some(key) = &key {
        if let Some(hit) = dispatches::find_batch_by_key(&s.pool, account, key).await? {
            return replay(hit, &request_hash);
        }
    }
    if let Some(wait) = s.estimator.overloaded() {
        return Err(ApiError::Overloaded(wait));
    }
    // Behind more work than `ingest.pace_target` plus a batch's burst, new work waits its turn.
    s.estimator.wait_batch_turn().await;
    let req: BatchRequest = serde_path_to_error::deserialize(raw).map_err(|e| {
        ApiError::unprocessable("invalid_field", format!("{}: {}", e.path(), e.inner()))
    })?;
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!(
                "items: must hold 1 to {MAX_ITEMS} dispatches, not {}",
                req.items.len()
            ),
        ));
    }

    let mut rows = Vec::with_capacity(req.items.len());
    let mut answers = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.into_iter().enumerate() {
        if check_item_sizes && item.to_string().len() > max_item {
            answers.push(BatchItem::Refused(ErrorBody {
                error: ErrorDetail {
                    code: "payload_too_large".into(),
                    message: format!(
                        "items[{i}]: a dispatch body may be at most {max_item} bytes, as in POST /v1/dispatches"
                    ),
                },
            }));
            continue;
        }
        match prepare(&s, account, item).await {
            Ok(p) => {
                let unkeyed = Idempotency {
                    key: None,
                    request_hash: Vec::new(),
                };
                let (row, accepted) = p.into_row(&s, account, unkeyed, false);
                rows.push(row);
                answers.push(BatchItem::Accepted(accepted));
            }
            Err(e) => match e.item_error() {
                Some(mut body) => {
                    body.error.message = format!("items[{i}]: {}", body.error.message);
                    answers.push(BatchItem::Refused(body));
                }
                // Not the item's fault (the database is unreachable, say): the batch fails.
                None => return Err(e),
            },
        }
    }
    let answer = BatchAccepted { data: answers };
    let response = serde_json::to_value(&answer).expect("answer serializes");
    let traceparent = dispatcher_telemetry::current_traceparent();
    // A key is kept only with accepted work, as for a single submission: a batch refused item
    // by item can be corrected and sent again under the same key.
    let key = key.filter(|_| !rows.is_empty());
    let traceparents = vec![traceparent; rows.len()];
    let written = dispatches::insert_submission(
        &s.pool,
        account,
        &rows,
        &traceparents,
        s.settings.ingest.requests_per_message,
        key.as_deref().map(|k| BatchKey {
            key: k,
            request_hash: &request_hash,
            response: &response,
        }),
    )
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let Some(outbox) = written else {
        // A concurrent request with the same key committed first: answer as its repeat.
        let key = key.expect("only a keyed batch can conflict");
        let hit = dispatches::find_batch_by_key(&s.pool, account, &key)
            .await?
            .ok_or_else(|| ApiError::Internal("batch key conflict without a row".into()))?;
        return replay(hit, &request_hash);
    };
    s.outbox_wake.hand_over(outbox);
    metrics::counter!("dispatcher_dispatches_accepted_total", "mode" => "batch")
        .increment(rows.len() as u64);
    metrics::histogram!("dispatcher_ingest_submission_items").record(answer.data.len() as f64);
    // The stored copy answers repeats; this one keeps the fields in their documented order.
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

fn replay(hit: (Vec<u8>, serde_json::Value), request_hash: &[u8]) -> Result<Response, ApiError> {
    let (stored_hash, response) = hit;
    if stored_hash != request_hash {
        return Err(key_reused());
    }
    Ok((StatusCode::ACCEPTED, Json(response)).into_response())
}
