//! `POST /v1/providers/{provider}/events`: provider callbacks, verified by HMAC over the raw body,
//! stored durably (with their outbox message) and answered at once; a worker applies them.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::Utc;
use dispatcher_core::signing::verify_hex_sha256;
use dispatcher_core::{InboundProviderEvent, ProviderEventMessage};
use dispatcher_db::provider_events::{self, NewProviderEvent};
use dispatcher_http::error::doc::{
    BadRequest, InternalError, InvalidSignature, NotFound, PayloadTooLarge, ServiceUnavailable,
    UnprocessableEntity,
};
use dispatcher_http::ApiError;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The name of the security scheme for the `X-Provider-Signature` header.
pub const PROVIDER_SIGNATURE: &str = "providerSignature";

#[derive(Serialize, ToSchema)]
pub struct Received {
    /// Always true: the event is stored and will be applied.
    received: bool,
    /// True when this `eventId` had already been received (nothing new was stored).
    duplicate: bool,
}

/// Receive a provider's event about a dispatch.
///
/// Signed by the provider, not by an account: `X-Provider-Signature: sha256=<hex>`, the
/// HMAC-SHA256 of the raw body with the provider's configured secret. The event is stored and
/// answered at once, and applied to the dispatch by a worker; duplicates and out-of-order events
/// are harmless.
#[utoipa::path(
    post,
    path = "/v1/providers/{provider}/events",
    tag = "providers",
    operation_id = "receiveProviderEvent",
    security(("providerSignature" = [])),
    params(("provider" = String, Path, description = "The provider's configured name.")),
    request_body(content = InboundProviderEvent, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or already stored).", body = Received),
        (status = 400, response = BadRequest),
        (status = 401, response = InvalidSignature),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = UnprocessableEntity),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn receive(
    State(s): State<AppState>,
    provider: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Received>, ApiError> {
    let Path(provider) = provider?;
    let Some(cfg) = s.settings.providers.get(&provider) else {
        return Err(ApiError::NotFound("provider"));
    };
    let body = body?;
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
    if event.event_id.is_empty() || event.event_id.chars().count() > 200 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "eventId: 1 to 200 characters",
        ));
    }
    super::reject_nul_str(&event.event_id, "eventId")?;
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
    if new {
        s.outbox_wake.committed();
    }
    Ok(Json(Received {
        received: true,
        duplicate: !new,
    }))
}
