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
    /// An endpoint's breaker opened: it failed `circuit_breaker_threshold` times in a row.
    #[serde(rename = "endpoint.failing")]
    EndpointFailing,
    /// A success closed an endpoint's open breaker.
    #[serde(rename = "endpoint.recovered")]
    EndpointRecovered,
    /// A subscription was disabled: its endpoint answered `410 Gone`, or failed for too long.
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
    /// A delivery ran out of retries and went dead.
    #[serde(rename = "delivery.exhausted")]
    DeliveryExhausted,
    /// A provider reported on a dispatch it was handed.
    #[serde(rename = "provider.accepted")]
    ProviderAccepted,
    #[serde(rename = "provider.delivered")]
    ProviderDelivered,
    #[serde(rename = "provider.bounced")]
    ProviderBounced,
    #[serde(rename = "provider.failed")]
    ProviderFailed,
}

/// Every event type, in a stable order.
pub const EVENT_TYPES: [EventType; 11] = [
    EventType::DispatchRequested,
    EventType::DispatchCompleted,
    EventType::DispatchFailed,
    EventType::EndpointFailing,
    EventType::EndpointRecovered,
    EventType::EndpointDisabled,
    EventType::DeliveryExhausted,
    EventType::ProviderAccepted,
    EventType::ProviderDelivered,
    EventType::ProviderBounced,
    EventType::ProviderFailed,
];

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DispatchRequested => "dispatch.requested",
            EventType::DispatchCompleted => "dispatch.completed",
            EventType::DispatchFailed => "dispatch.failed",
            EventType::EndpointFailing => "endpoint.failing",
            EventType::EndpointRecovered => "endpoint.recovered",
            EventType::EndpointDisabled => "endpoint.disabled",
            EventType::DeliveryExhausted => "delivery.exhausted",
            EventType::ProviderAccepted => "provider.accepted",
            EventType::ProviderDelivered => "provider.delivered",
            EventType::ProviderBounced => "provider.bounced",
            EventType::ProviderFailed => "provider.failed",
        }
    }

    /// The `provider.<type>` event forwarding a provider's report.
    pub fn for_provider(t: ProviderEventType) -> EventType {
        match t {
            ProviderEventType::Accepted => EventType::ProviderAccepted,
            ProviderEventType::Delivered => EventType::ProviderDelivered,
            ProviderEventType::Bounced => EventType::ProviderBounced,
            ProviderEventType::Failed => EventType::ProviderFailed,
        }
    }

    /// The subscription filter that takes every event of this one's family: `provider.*` for
    /// `provider.delivered`.
    pub fn family_filter(self) -> String {
        let s = self.as_str();
        format!("{}.*", &s[..s.find('.').unwrap_or(s.len())])
    }

    /// Events about delivery itself rather than about a dispatch. A subscription to `*` does not
    /// receive them (they are subscribed to by name), and a delivery of one never emits another
    /// `delivery.exhausted`, so a failing endpoint cannot feed itself events.
    pub fn is_operational(self) -> bool {
        matches!(
            self,
            EventType::EndpointFailing
                | EventType::EndpointRecovered
                | EventType::EndpointDisabled
                | EventType::DeliveryExhausted
        )
    }

    /// The event types sent to clients as webhooks.
    pub fn is_webhook(self) -> bool {
        self != EventType::DispatchRequested
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
        EVENT_TYPES.into_iter().find(|e| e.as_str() == s)
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
    /// How many provider tries this message follows (0 for the first): a retry after a transient
    /// provider failure carries the dispatch's count, and a message whose count no longer matches
    /// the dispatch's (a redelivered original after its retry was scheduled) is acknowledged
    /// untouched.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub provider_attempts: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A webhook event on the broker (`dispatch.completed`, `dispatch.failed` and the operational
/// events): the webhook payload plus routing data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutcomeEvent {
    /// Unique per outcome; together with the endpoint it fixes the `webhook-id`.
    pub event_id: Uuid,
    pub account_id: Uuid,
    /// The dispatch the event is about; for an operational event, the dispatch whose delivery
    /// attempt caused it.
    pub dispatch_id: Uuid,
    /// The dispatch's own callback URL, carried so the deliverer need not read the dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub payload: WebhookPayload,
}

/// Several outcome events of one type in one broker message (`dispatch.completed` or
/// `dispatch.failed`, from one worker batch): a message, a confirm, a delivery and an ack per
/// batch instead of per dispatch. Each event keeps its own trace context, which a single event
/// carries in the AMQP headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBatch {
    pub events: Vec<BatchedOutcome>,
}

/// One event of an [`OutcomeBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchedOutcome {
    pub event: OutcomeEvent,
    /// W3C trace context of the work that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The events in an outcome message: a single [`OutcomeEvent`] (whose trace context is in the
/// message's headers, so `traceparent` is `None` here) or an [`OutcomeBatch`].
pub fn parse_outcomes(body: &[u8]) -> Result<Vec<BatchedOutcome>, serde_json::Error> {
    one_or_many(
        body,
        "events",
        |event| BatchedOutcome {
            event,
            traceparent: None,
        },
        |batch: OutcomeBatch| batch.events,
    )
}

/// Several `dispatch.requested` requests in one broker message: the dispatches one ingest
/// transaction accepted (up to `ingest.requests_per_message`), so a message, a confirm, a
/// delivery and an ack serve many dispatches. Each request keeps its own trace context, which a
/// single request carries in the AMQP headers. Provider retries are always single requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBatch {
    pub requests: Vec<BatchedRequest>,
}

/// One request of a [`RequestBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchedRequest {
    pub request: DispatchRequested,
    /// W3C trace context of the submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The requests in a `dispatch.requested` message: a single [`DispatchRequested`] (trace context
/// in the headers, so `traceparent` is `None` here) or a [`RequestBatch`].
pub fn parse_requests(body: &[u8]) -> Result<Vec<BatchedRequest>, serde_json::Error> {
    one_or_many(
        body,
        "requests",
        |request| BatchedRequest {
            request,
            traceparent: None,
        },
        |batch: RequestBatch| batch.requests,
    )
}

/// A message body holding one item (`T`) or a batch of them (`B`, an object whose first key is
/// `key`). An empty batch is refused rather than taken as nothing, and an error names the
/// problem of the shape the body was meant to have.
fn one_or_many<T, B, I>(
    body: &[u8],
    key: &str,
    one: impl FnOnce(T) -> I,
    items: impl FnOnce(B) -> Vec<I>,
) -> Result<Vec<I>, serde_json::Error>
where
    T: serde::de::DeserializeOwned,
    B: serde::de::DeserializeOwned,
{
    let single = match serde_json::from_slice::<T>(body) {
        Ok(item) => return Ok(vec![one(item)]),
        Err(e) => e,
    };
    match serde_json::from_slice::<B>(body).map(items) {
        Ok(batch) if batch.is_empty() => Err(serde::de::Error::custom(format!(
            "a batch holds at least one item (`{key}` is empty)"
        ))),
        Ok(batch) => Ok(batch),
        Err(batched) if first_key_is(body, key) => Err(batched),
        Err(_) => Err(single),
    }
}

/// Whether a body is a JSON object whose first key is `key`.
fn first_key_is(body: &[u8], key: &str) -> bool {
    let body = body.trim_ascii_start();
    body.strip_prefix(b"{")
        .and_then(|rest| rest.trim_ascii_start().strip_prefix(b"\""))
        .and_then(|rest| rest.strip_prefix(key.as_bytes()))
        .is_some_and(|rest| rest.starts_with(b"\""))
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
    pub data: EventData,
}

/// A webhook's `data`, by event type. Each shape has fields the others lack, so the untagged form
/// reads back unambiguously.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventData {
    /// `dispatch.completed`, `dispatch.failed`.
    Dispatch(WebhookData),
    /// `delivery.exhausted`.
    Delivery(DeliveryEventData),
    /// `provider.*`.
    Provider(ProviderEventData),
    /// `endpoint.failing`, `endpoint.recovered`, `endpoint.disabled`.
    Endpoint(EndpointEventData),
}

impl From<WebhookData> for EventData {
    fn from(d: WebhookData) -> Self {
        EventData::Dispatch(d)
    }
}

/// `delivery.exhausted`: a delivery that will not be attempted again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryEventData {
    pub delivery_id: Uuid,
    pub dispatch_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<Uuid>,
    pub url: String,
    /// The event the delivery carried.
    pub event_type: String,
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `provider.*`: a provider's report on a dispatch, forwarded once per endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderEventData {
    pub dispatch_id: Uuid,
    pub provider: String,
    /// The provider's id of the event.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: ProviderEventType,
    pub occurred_at: DateTime<Utc>,
    /// The dispatch's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// The event id of a forwarded provider event: derived from the provider and its id, so a
/// repeated report is the same event and reaches each endpoint once, with one `webhook-id`.
pub fn provider_event_id(provider: &str, provider_event_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_3c2a_8e4b_4f7a_9c1d_2b3e_4f5a_6b7c);
    Uuid::new_v5(
        &NAMESPACE,
        format!("{provider}\u{0}{provider_event_id}").as_bytes(),
    )
}

/// `endpoint.*`: a subscription's endpoint changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointEventData {
    pub webhook_id: Uuid,
    pub url: String,
    pub consecutive_failures: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why a subscription was disabled (`endpoint.disabled` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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

    fn outcome(event_type: EventType) -> OutcomeEvent {
        OutcomeEvent {
            event_id: Uuid::now_v7(),
            account_id: Uuid::now_v7(),
            dispatch_id: Uuid::now_v7(),
            callback_url: Some("https://a.example/hook".into()),
            payload: WebhookPayload {
                event_type,
                timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
                data: WebhookData {
                    dispatch_id: Uuid::nil(),
                    status: DispatchStatus::Completed,
                    completed_at: "2026-01-02T03:04:05Z".parse().unwrap(),
                    result_url: None,
                    error: None,
                    metadata: None,
                }
                .into(),
            },
        }
    }

    #[test]
    fn an_outcome_message_holds_one_event_or_a_batch() {
        let one = outcome(EventType::DispatchCompleted);
        let parsed = parse_outcomes(&serde_json::to_vec(&one).unwrap()).unwrap();
        assert_eq!(
            parsed,
            vec![BatchedOutcome {
                event: one.clone(),
                traceparent: None
            }]
        );

        let batch = OutcomeBatch {
            events: vec![
                BatchedOutcome {
                    event: one,
                    traceparent: Some(
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    ),
                },
                BatchedOutcome {
                    event: outcome(EventType::DispatchCompleted),
                    traceparent: None,
                },
            ],
        };
        let body = serde_json::to_vec(&batch).unwrap();
        assert!(body.starts_with(b"{\"events\":["));
        assert_eq!(parse_outcomes(&body).unwrap(), batch.events);
    }

    #[test]
    fn a_broken_outcome_message_says_what_is_wrong_with_it() {
        // An empty batch is refused rather than acknowledged as nothing.
        let e = parse_outcomes(br#"{"events": []}"#).unwrap_err();
        assert!(e.to_string().contains("at least one item"), "{e}");
        // A broken batch reports the batch's problem, a broken event the event's.
        let e = parse_outcomes(br#" { "events": [{"traceparent": "x", "extra": 1}]}"#).unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        let e = parse_outcomes(br#"{"eventId": "not a uuid"}"#).unwrap_err();
        assert!(
            e.to_string().contains("UUID") || e.to_string().contains("uuid"),
            "{e}"
        );
        assert!(parse_outcomes(b"not json").is_err());
    }

    #[test]
    fn a_requests_message_holds_one_request_or_a_batch() {
        let queued_at = Utc::now();
        let request = |n: u128| DispatchRequested {
            message_id: Uuid::from_u128(n),
            dispatch_id: Uuid::from_u128(n + 1),
            account_id: Uuid::from_u128(7),
            queued_at,
            provider_attempts: 0,
        };
        let one = serde_json::to_vec(&request(1)).unwrap();
        let parsed = parse_requests(&one).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].request, request(1));
        assert_eq!(parsed[0].traceparent, None);

        let batch = RequestBatch {
            requests: vec![
                BatchedRequest {
                    request: request(10),
                    traceparent: Some("00-aa-bb-01".into()),
                },
                BatchedRequest {
                    request: request(20),
                    traceparent: None,
                },
            ],
        };
        let body = serde_json::to_vec(&batch).unwrap();
        assert_eq!(parse_requests(&body).unwrap(), batch.requests);

        assert!(parse_requests(br#"{"requests": []}"#)
            .unwrap_err()
            .to_string()
            .contains("at least one item"));
        let e = parse_requests(br#"{"requests": [{"request": {}, "x": 1}]}"#).unwrap_err();
        assert!(
            e.to_string().contains("x") || e.to_string().contains("missing"),
            "{e}"
        );
        // A key that only starts like the batch's is not the batch: the error is a single
        // request's.
        let e = parse_requests(br#"{"requestsX": [1, 2]}"#).unwrap_err();
        assert!(e.to_string().contains("requestsX"), "{e}");
        assert!(parse_requests(b"not json").is_err());
    }

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
            }
            .into(),
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
    fn operational_payloads_read_back_as_their_own_shape() {
        let endpoint = WebhookPayload {
            event_type: EventType::EndpointFailing,
            timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
            data: EventData::Endpoint(EndpointEventData {
                webhook_id: Uuid::nil(),
                url: "https://a.example/hook".into(),
                consecutive_failures: 10,
                failing_since: Some("2026-01-02T03:00:00Z".parse().unwrap()),
                last_error: Some("endpoint answered 500".into()),
                reason: None,
            }),
        };
        let exhausted = WebhookPayload {
            event_type: EventType::DeliveryExhausted,
            timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
            data: EventData::Delivery(DeliveryEventData {
                delivery_id: Uuid::nil(),
                dispatch_id: Uuid::nil(),
                webhook_id: None,
                url: "https://a.example/hook".into(),
                event_type: "dispatch.completed".into(),
                attempts: 8,
                last_error: None,
            }),
        };
        for p in [endpoint, exhausted] {
            let json = serde_json::to_vec(&p).unwrap();
            let back: WebhookPayload = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn provider_events_read_back_and_have_stable_ids() {
        let p = WebhookPayload {
            event_type: EventType::ProviderBounced,
            timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
            data: EventData::Provider(ProviderEventData {
                dispatch_id: Uuid::nil(),
                provider: "acme".into(),
                event_id: "ev-1".into(),
                event_type: ProviderEventType::Bounced,
                occurred_at: "2026-01-02T03:00:00Z".parse().unwrap(),
                metadata: Some(serde_json::json!({"orderId": "A-1"})),
            }),
        };
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(serde_json::from_slice::<WebhookPayload>(&json).unwrap(), p);
        assert_eq!(
            provider_event_id("acme", "ev-1"),
            provider_event_id("acme", "ev-1")
        );
        assert_ne!(
            provider_event_id("acme", "ev-1"),
            provider_event_id("acme2", "ev-1")
        );
        assert_ne!(
            provider_event_id("ac", "me-ev-1"),
            provider_event_id("acme", "-ev-1")
        );
        assert_eq!(EventType::ProviderBounced.family_filter(), "provider.*");
        assert_eq!(
            EventType::for_provider(ProviderEventType::Delivered).as_str(),
            "provider.delivered"
        );
    }

    #[test]
    fn only_operational_events_are_operational() {
        let operational: Vec<_> = EVENT_TYPES
            .into_iter()
            .filter(|e| e.is_operational())
            .map(EventType::as_str)
            .collect();
        assert_eq!(
            operational,
            [
                "endpoint.failing",
                "endpoint.recovered",
                "endpoint.disabled",
                "delivery.exhausted"
            ]
        );
        for e in EVENT_TYPES {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
        }
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
