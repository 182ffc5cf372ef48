//! `POST /v1/providers/{provider}/events`: provider callbacks, verified by HMAC over the raw body,
//! stored durably (with their outbox message) and answered at once; a worker applies them.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::Utc;
use dispatcher_core::signing::verify_hex_sha256;
use dispatcher_core::{InboundProviderEvent, ProviderEventMessage};
use dispatcher_db::provider_events::{self, NewProviderEvent};
use dispatcher_http::ApiError;
use serde_json::json;
use uuid::Uuid;

pub async fn receive(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(cfg) = s.settings.providers.get(&provider) else {
        return Err(ApiError::NotFound("provider"));
    };
    let signature = headers
        .get("x-provider-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Verify before parsing or storing anything.
    if !verify_hex_sha256(cfg.secret.expose().as_bytes(), &body, signature) {
        return Err(ApiError::InvalidSignature);
    }
    let event: InboundProviderEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unprocessable("invalid_field", e.to_string()))?;
    if event.event_id.is_empty() || event.event_id.len() > 200 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "eventId: 1 to 200 characters",
        ));
    }
    let window = chrono::Duration::from_std(s.settings.ingest.provider_event_window)
        .unwrap_or_else(|_| chrono::Duration::minutes(5));
    if (Utc::now() - event.occurred_at).abs() > window {
        return Err(ApiError::unprocessable(
            "stale_event",
            "occurredAt is outside the accepted window (replayed or badly timed event)",
        ));
    }
    let message = ProviderEventMessage {
        provider: provider.clone(),
        event_id: event.event_id.clone(),
    };
    let new = provider_events::store(
        &s.pool,
        &NewProviderEvent {
            provider,
            event_id: event.event_id,
            dispatch_id: event.dispatch_id,
            event_type: event.event_type.as_str().to_owned(),
            occurred_at: event.occurred_at,
            body: body.to_vec(),
            message_id: Uuid::now_v7(),
            message: serde_json::to_vec(&message).expect("message serializes"),
        },
    )
    .await?;
    Ok(Json(json!({"received": true, "duplicate": !new})))
}
