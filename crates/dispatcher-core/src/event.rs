//! Message bodies on the broker and the webhook payload sent to clients.
//!
//! Each body has a JSON Schema under `proto-schemas/`; the end-to-end tests validate real messages
//! against them, so a change here must be made there too.

use crate::{DispatchError, DispatchStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Outcome event types, also the AMQP routing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "dispatch.requested")]
    DispatchRequested,
    #[serde(rename = "dispatch.completed")]
    DispatchCompleted,
    #[serde(rename = "dispatch.failed")]
    DispatchFailed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DispatchRequested => "dispatch.requested",
            EventType::DispatchCompleted => "dispatch.completed",
            EventType::DispatchFailed => "dispatch.failed",
        }
    }

    /// The outcome event a finished dispatch emits.
    pub fn for_outcome(status: DispatchStatus) -> Option<EventType> {
        match status {
            DispatchStatus::Completed => Some(EventType::DispatchCompleted),
            DispatchStatus::Failed => Some(EventType::DispatchFailed),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        [
            EventType::DispatchRequested,
            EventType::DispatchCompleted,
            EventType::DispatchFailed,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

/// `dispatch.requested`: a dispatch was accepted and waits for a worker. The body carries ids only;
/// the worker reads the dispatch from Postgres, which stays the single source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchRequested {
    pub message_id: Uuid,
    pub dispatch_id: Uuid,
    pub account_id: Uuid,
    pub queued_at: DateTime<Utc>,
}

/// `dispatch.completed` / `dispatch.failed` on the broker: the webhook payload plus routing data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutcomeEvent {
    /// Unique per outcome; together with the endpoint it fixes the `webhook-id`.
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub dispatch_id: Uuid,
    /// The dispatch's own callback URL, carried so the deliverer need not read the dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub payload: WebhookPayload,
}

/// A retry of one delivery, re-published through a delay queue. The delivery row in Postgres holds
/// the payload and endpoint; the message only says which delivery and which attempt comes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryTask {
    pub delivery_id: Uuid,
    pub attempt: u32,
}

/// The body POSTed to callback URLs (Standard Webhooks shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPayload {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: DateTime<Utc>,
    pub data: WebhookData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookData {
    pub dispatch_id: Uuid,
    pub status: DispatchStatus,
    pub completed_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DispatchError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// The `webhook-id` of one event to one endpoint: stable across retries (it is derived, not random),
/// different for each endpoint, so receivers can deduplicate.
pub fn webhook_message_id(event_id: Uuid, endpoint: &str) -> String {
    format!(
        "msg_{}",
        Uuid::new_v5(&event_id, endpoint.as_bytes()).simple()
    )
}

/// The delivery row id of one event to one endpoint, derived so a redelivered event finds its row.
pub fn delivery_id(event_id: Uuid, endpoint: &str) -> Uuid {
    Uuid::new_v5(&event_id, endpoint.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn webhook_ids_are_stable_per_endpoint() {
        let ev = Uuid::new_v4();
        assert_eq!(
            webhook_message_id(ev, "https://a.example/hook"),
            webhook_message_id(ev, "https://a.example/hook")
        );
        assert_ne!(
            webhook_message_id(ev, "https://a.example/hook"),
            webhook_message_id(ev, "https://b.example/hook")
        );
        assert_ne!(
            webhook_message_id(ev, "https://a.example/hook"),
            webhook_message_id(Uuid::new_v4(), "https://a.example/hook")
        );
        assert!(webhook_message_id(ev, "x").starts_with("msg_"));
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let p = WebhookPayload {
            event_type: EventType::DispatchFailed,
            timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
            data: WebhookData {
                dispatch_id: Uuid::nil(),
                status: DispatchStatus::Failed,
                completed_at: "2026-01-02T03:04:05Z".parse().unwrap(),
                result_url: None,
                error: Some(DispatchError::new(ErrorCode::TemplateRenderError, "boom")),
                metadata: None,
            },
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "dispatch.failed");
        assert_eq!(v["data"]["status"], "failed");
        assert_eq!(v["data"]["error"]["code"], "template_render_error");
        assert!(v["data"].get("resultUrl").is_none());
        let back: WebhookPayload = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn event_types_parse() {
        assert_eq!(
            EventType::parse("dispatch.completed"),
            Some(EventType::DispatchCompleted)
        );
        assert_eq!(EventType::parse("nope"), None);
        assert_eq!(
            EventType::for_outcome(DispatchStatus::Queued),
            None,
            "only finished dispatches emit outcomes"
        );
    }
}

/// What a provider reports about a dispatch it was handed (inbound provider callbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProviderEventType {
    Accepted,
    Delivered,
    Bounced,
    Failed,
}

impl ProviderEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderEventType::Accepted => "accepted",
            ProviderEventType::Delivered => "delivered",
            ProviderEventType::Bounced => "bounced",
            ProviderEventType::Failed => "failed",
        }
    }
}

/// The body a provider POSTs to `/v1/providers/{provider}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundProviderEvent {
    /// The provider's id for this event (1 to 200 characters, no NUL); a repeated id is a duplicate.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")
    )]
    pub event_id: String,
    pub dispatch_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: ProviderEventType,
    pub occurred_at: DateTime<Utc>,
}

/// `provider.event` on the broker: a stored provider event waiting to be applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderEventMessage {
    pub provider: String,
    pub event_id: String,
}
