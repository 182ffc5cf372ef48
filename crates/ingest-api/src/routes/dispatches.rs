//! `POST /v1/dispatches`: validate, write (batched), then answer 202 at once (async) or wait for
//! the outcome (sync).

use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::netpolicy::check_url;
use dispatcher_core::{DispatchRequested, TemplateFormat};
use dispatcher_db::dispatches::{self, NewDispatch};
use dispatcher_http::views::{status_url, DispatchBody};
use dispatcher_http::{ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DispatchRequest {
    template_id: Option<Uuid>,
    template: Option<InlineTemplate>,
    data: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    provider: Option<Provider>,
    callback_url: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineTemplate {
    format: TemplateFormat,
    body: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Provider {
    Store,
    Http { url: String },
}

#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    #[serde(rename = "async", default)]
    is_async: Option<String>,
}

/// The 202 body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    dispatch_id: Uuid,
    status: &'static str,
    queued_at: DateTime<Utc>,
    estimated_completion_time: DateTime<Utc>,
    status_url: String,
}

fn parse_async(q: &SubmitQuery) -> Result<bool, ApiError> {
    match q.is_async.as_deref() {
        None => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "async must be true or false, not `{}`",
                other.chars().take(50).collect::<String>()
            ),
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty()
        || s.len() > MAX_IDEMPOTENCY_KEY
        || !s.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

pub async fn submit(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiQuery(q): ApiQuery<SubmitQuery>,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let is_async = parse_async(&q)?;
    let key = idempotency_key(&headers)?;
    let request_hash: Vec<u8> = Sha256::digest(raw.to_string().as_bytes()).to_vec();

    if let Some(key) = &key {
        if let Some(hit) = dispatches::find_by_idempotency_key(&s.pool, account, key).await? {
            return replay(&s, account, hit, &request_hash, is_async).await;
        }
    }

    let req: DispatchRequest = serde_path_to_error::deserialize(raw)
        .map_err(|e| ApiError::unprocessable("invalid_field", describe_path_error(&e)))?;
    let (template_id, format, body) = resolve_template(&s, account, &req).await?;
    let provider = req.provider.unwrap_or(Provider::Store);
    if let Provider::Http { url } = &provider {
        check_url(
            url,
            s.settings.delivery.allow_http,
            &s.settings.delivery.allow_hosts,
        )
        .map_err(|e| {
            ApiError::unprocessable("invalid_provider_url", format!("provider.url: {e}"))
        })?;
    }
    if let Some(url) = &req.callback_url {
        check_url(
            url,
            s.settings.delivery.allow_http,
            &s.settings.delivery.allow_hosts,
        )
        .map_err(|e| {
            ApiError::unprocessable("invalid_callback_url", format!("callbackUrl: {e}"))
        })?;
    }

    let id = Uuid::now_v7();
    let queued_at = Utc::now();
    let accepted = Accepted {
        dispatch_id: id,
        status: "queued",
        queued_at,
        estimated_completion_time: queued_at
            + chrono::Duration::from_std(s.estimator.current()).unwrap_or_default(),
        status_url: status_url(s.settings.public_base(), id),
    };
    let message = DispatchRequested {
        message_id: Uuid::now_v7(),
        dispatch_id: id,
        account_id: account,
        queued_at,
    };
    let row = NewDispatch {
        id,
        account_id: account,
        template_id,
        template_format: format,
        template_body: body,
        data: serde_json::Value::Object(req.data),
        provider: serde_json::to_value(&provider).expect("provider serializes"),
        callback_url: req.callback_url,
        metadata: req.metadata.map(serde_json::Value::Object),
        idempotency_key: key.clone(),
        request_hash: key.as_ref().map(|_| request_hash.clone()),
        idempotency_response: key
            .as_ref()
            .map(|_| serde_json::to_value(&accepted).expect("body serializes")),
        notify_on_finish: !is_async,
        queued_at,
        message_id: message.message_id,
        message: serde_json::to_vec(&message).expect("message serializes"),
    };

    // Register before writing so a fast worker's notification cannot be missed.
    let waiter = (!is_async).then(|| s.waiters.register(id));
    let inserted = s
        .writer
        .write(row)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !inserted {
        // Lost a race with a concurrent request carrying the same key: answer as its replay.
        drop(waiter);
        s.waiters.unregister(id);
        let key = key.expect("only keyed rows can conflict");
        let hit = dispatches::find_by_idempotency_key(&s.pool, account, &key)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency conflict without a row".into()))?;
        return replay(&s, account, hit, &request_hash, is_async).await;
    }
    metrics::counter!("dispatcher_dispatches_accepted_total", "mode" => if is_async { "async" } else { "sync" })
        .increment(1);
    match waiter {
        None => Ok((StatusCode::ACCEPTED, Json(accepted)).into_response()),
        Some(w) => {
            let out = wait_for_outcome(&s, account, id, w, Json(accepted).into_response()).await;
            s.waiters.unregister(id);
            out
        }
    }
}

/// A repeated Idempotency-Key: the same body gets the original answer, another body 409.
async fn replay(
    s: &AppState,
    account: Uuid,
    hit: dispatches::IdempotentHit,
    request_hash: &[u8],
    is_async: bool,
) -> Result<Response, ApiError> {
    if hit.request_hash.as_deref() != Some(request_hash) {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was used with a different request body".into(),
        });
    }
    let original = hit.response.unwrap_or(serde_json::Value::Null);
    if is_async {
        return Ok((StatusCode::ACCEPTED, Json(original)).into_response());
    }
    let waiter = s.waiters.register(hit.id);
    let out = wait_for_outcome(s, account, hit.id, waiter, Json(original).into_response()).await;
    s.waiters.unregister(hit.id);
    out
}

/// Waits up to `sync_timeout` for the dispatch to finish: 200 with its status body, or the 202
/// `on_timeout` answer. The dispatch keeps going either way.
async fn wait_for_outcome(
    s: &AppState,
    account: Uuid,
    id: Uuid,
    mut waiter: crate::waiters::Waiter,
    on_timeout: Response,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + s.settings.ingest.sync_timeout;
    loop {
        if let Some(view) = dispatches::get(&s.pool, account, id).await? {
            if view.status.is_terminal() {
                let body = DispatchBody::new(view, s.settings.public_base());
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let mut resp = on_timeout;
                *resp.status_mut() = StatusCode::ACCEPTED;
                return Ok(resp);
            }
            _ = waiter.own.changed() => {}
            _ = waiter.all.changed() => {}
            // A notification can be lost while the listener reconnects; re-check now and then.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn resolve_template(
    s: &AppState,
    account: Uuid,
    req: &DispatchRequest,
) -> Result<(Option<Uuid>, TemplateFormat, String), ApiError> {
    match (&req.template_id, &req.template) {
        (Some(_), Some(_)) => Err(ApiError::unprocessable(
            "invalid_field",
            "give either templateId or template, not both",
        )),
        (None, None) => Err(ApiError::unprocessable(
            "invalid_field",
            "templateId or template is required",
        )),
        (None, Some(t)) => {
            super::templates::check_body(t.format, &t.body)?;
            Ok((None, t.format, t.body.clone()))
        }
        (Some(id), None) => {
            if let Some(t) = s.templates.get(account, *id) {
                return Ok((Some(*id), t.0, t.1.clone()));
            }
            let t = dispatcher_db::templates::get(&s.pool, account, *id)
                .await?
                .ok_or_else(|| {
                    ApiError::unprocessable(
                        "unknown_template",
                        format!("templateId: no template {id}"),
                    )
                })?;
            s.templates.put(account, t.id, t.format, t.body.clone());
            Ok((Some(t.id), t.format, t.body))
        }
    }
}

fn describe_path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." || path.is_empty() {
        e.inner().to_string()
    } else {
        format!("{path}: {}", e.inner())
    }
}
