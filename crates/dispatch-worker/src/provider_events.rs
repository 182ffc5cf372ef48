//! Applies stored provider callbacks to their dispatches (newest report wins).

use dispatcher_core::event::provider_event_id;
use dispatcher_core::{
    EventData, EventType, OutcomeEvent, ProviderEventData, ProviderEventMessage, ProviderEventType,
    WebhookPayload,
};
use dispatcher_db::outbox::{NewMessage, OutboxWake};
use dispatcher_db::{provider_events, Pool};
use dispatcher_mq::{BatchHandler, HandlerError, Incoming, Received};

pub struct ProviderEventHandler {
    pool: Pool,
    /// The forwarded events are outbox rows: this process's relay is woken after they commit.
    outbox_wake: OutboxWake,
}

impl ProviderEventHandler {
    pub fn new(pool: Pool, outbox_wake: OutboxWake) -> Self {
        Self { pool, outbox_wake }
    }
}

/// The `provider.<type>` webhook event of a newly applied provider event. Its event id is derived
/// from the provider's, so even a report applied twice (it cannot be, but a redelivered message
/// could race) reaches each endpoint once with one `webhook-id`.
fn forward(a: &provider_events::Applied) -> Option<NewMessage> {
    let Ok(kind) = serde_json::from_value::<ProviderEventType>(serde_json::Value::String(
        a.event_type.clone(),
    )) else {
        tracing::warn!(event_type = %a.event_type, "stored provider event has an unknown type; not forwarded");
        return None;
    };
    let event_type = EventType::for_provider(kind);
    let event = OutcomeEvent {
        event_id: provider_event_id(&a.provider, &a.event_id),
        account_id: a.account_id,
        dispatch_id: a.dispatch_id,
        callback_url: a.callback_url.clone(),
        payload: WebhookPayload {
            event_type,
            timestamp: chrono::Utc::now(),
            data: EventData::Provider(ProviderEventData {
                dispatch_id: a.dispatch_id,
                provider: a.provider.clone(),
                event_id: a.event_id.clone(),
                event_type: kind,
                occurred_at: a.occurred_at,
                metadata: a.metadata.clone(),
            }),
        },
    };
    Some(NewMessage {
        message_id: event.event_id,
        routing_key: event_type.as_str().to_owned(),
        payload: serde_json::to_vec(&event).expect("event serializes"),
    })
}

impl BatchHandler for ProviderEventHandler {
    type Body = ProviderEventMessage;
    const KIND: &'static str = "provider.event";

    fn read(&self, message: &Incoming) -> Result<Self::Body, String> {
        serde_json::from_slice(&message.data).map_err(|e| e.to_string())
    }

    async fn handle(&self, batch: &[Received<Self::Body>]) -> Result<(), HandlerError> {
        let keys: Vec<(String, String)> = batch
            .iter()
            .map(|m| (m.body.provider.clone(), m.body.event_id.clone()))
            .collect();
        if !keys.is_empty() {
            let applied = provider_events::apply(&self.pool, &keys, forward)
                .await
                .map_err(HandlerError::from)?;
            if !applied.is_empty() {
                self.outbox_wake.committed();
                metrics::counter!("dispatcher_provider_events_forwarded_total")
                    .increment(applied.len() as u64);
            }
        }
        Ok(())
    }
}
