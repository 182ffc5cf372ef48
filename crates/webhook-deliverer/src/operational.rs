//! Operational events: what the deliverer tells an account about its endpoints and deliveries
//! (`endpoint.failing`, `endpoint.recovered`, `endpoint.disabled`, `delivery.exhausted`). They are
//! written to the outbox in the commit that records the attempts which caused them, and come back
//! through the events queue to be delivered like any other event.

use crate::attempt::Made;
use chrono::Utc;
use dispatcher_core::health::{Health, Observed};
use dispatcher_core::{
    DeliveryEventData, EndpointEventData, EventData, EventType, OutcomeEvent, WebhookPayload,
};
use dispatcher_db::deliveries::Recorded;
use dispatcher_db::outbox::NewMessage;
use std::collections::BTreeMap;
use uuid::Uuid;

/// One subscription's attempts in a batch.
pub struct Seen {
    pub account_id: Uuid,
    /// The dispatch of the latest attempt: an operational event names the dispatch that caused it.
    dispatch_id: Uuid,
    url: String,
    pub attempts: Vec<Observed>,
}

impl Seen {
    pub fn event(
        &self,
        event_type: EventType,
        webhook_id: Uuid,
        health: &Health,
        reason: Option<String>,
    ) -> OutcomeEvent {
        let data = EndpointEventData {
            webhook_id,
            url: self.url.clone(),
            consecutive_failures: health.consecutive_failures,
            failing_since: health.failing_since,
            last_error: health.last_error.clone(),
            reason,
        };
        event(
            self.account_id,
            self.dispatch_id,
            event_type,
            EventData::Endpoint(data),
        )
    }
}

fn event(
    account_id: Uuid,
    dispatch_id: Uuid,
    event_type: EventType,
    data: EventData,
) -> OutcomeEvent {
    OutcomeEvent {
        event_id: Uuid::now_v7(),
        account_id,
        dispatch_id,
        callback_url: None,
        payload: WebhookPayload {
            event_type,
            timestamp: Utc::now(),
            data,
        },
    }
}

/// The attempts to subscriptions' endpoints, by subscription, each in the order made.
pub fn observed_by_webhook(made: &[Made]) -> BTreeMap<Uuid, Seen> {
    let mut by: BTreeMap<Uuid, Seen> = BTreeMap::new();
    let mut sorted: Vec<&Made> = made.iter().filter(|m| m.webhook_id.is_some()).collect();
    sorted.sort_by_key(|m| m.record.attempted_at);
    for m in sorted {
        let webhook = m.webhook_id.expect("filtered");
        let seen = by.entry(webhook).or_insert_with(|| Seen {
            account_id: m.record.account_id,
            dispatch_id: m.record.dispatch_id,
            url: m.url.clone(),
            attempts: Vec::new(),
        });
        seen.dispatch_id = m.record.dispatch_id;
        seen.attempts.push(Observed {
            at: m.record.attempted_at,
            succeeded: m.record.succeeded,
            error: m.record.error.clone(),
        });
    }
    by
}

/// `delivery.exhausted` for each delivery this commit moved to dead. A delivery of an
/// operational event emits none, so an endpoint that fails everything is not sent an endless
/// chain of reports about the reports.
pub fn exhausted(made: &[Made], recorded: &Recorded) -> Vec<OutcomeEvent> {
    made.iter()
        .filter(|m| {
            m.record.new_status == "dead" && recorded.applied.contains(&m.record.delivery_id)
        })
        .filter(|m| EventType::parse(&m.event_type).is_some_and(|t| !t.is_operational()))
        .map(|m| {
            let data = DeliveryEventData {
                delivery_id: m.record.delivery_id,
                dispatch_id: m.record.dispatch_id,
                webhook_id: m.webhook_id,
                url: m.url.clone(),
                event_type: m.event_type.clone(),
                attempts: m.record.attempt,
                last_error: m.record.error.clone(),
            };
            event(
                m.record.account_id,
                m.record.dispatch_id,
                EventType::DeliveryExhausted,
                EventData::Delivery(data),
            )
        })
        .collect()
}

/// The outbox row of an event: published under its type, with its id as the message id.
pub fn message(e: &OutcomeEvent) -> NewMessage {
    NewMessage {
        message_id: e.event_id,
        routing_key: e.payload.event_type.as_str().to_owned(),
        payload: serde_json::to_vec(e).expect("event serializes"),
    }
}
