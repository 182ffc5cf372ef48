//! The two consumers: new outcome events, and retries coming back from the delay queues.

use crate::attempt::Deliverer;
use dispatcher_core::event::{delivery_id, webhook_message_id};
use dispatcher_core::{parse_outcomes, BatchedOutcome, DeliveryTask, EventType, OutcomeEvent};
use dispatcher_db::deliveries::{self, Delivery, NewDelivery};
use dispatcher_db::subscriptions::{self, Targets};
use dispatcher_mq::{BatchHandler, HandlerError, Incoming, Received};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub struct EventHandler {
    deliverer: Arc<Deliverer>,
    /// Events handled together (`deliverer.batch_max`): a message may carry a whole worker
    /// batch of them, so a batch of messages is delivered in parts of this size.
    events_max: usize,
}

impl EventHandler {
    pub fn new(deliverer: Arc<Deliverer>, events_max: usize) -> Self {
        Self {
            deliverer,
            events_max: events_max.max(1),
        }
    }
}

/// An event with the trace context of the work that produced it.
type Traced<'a> = (&'a OutcomeEvent, Option<String>);

impl BatchHandler for EventHandler {
    type Body = Vec<BatchedOutcome>;
    const KIND: &'static str = "outcome event";

    fn read(&self, message: &Incoming) -> Result<Self::Body, String> {
        parse_outcomes(&message.data).map_err(|e| e.to_string())
    }

    async fn handle(&self, batch: &[Received<Self::Body>]) -> Result<(), HandlerError> {
        let events: Vec<Traced<'_>> = batch
            .iter()
            .flat_map(|m| {
                m.body.iter().map(|b| {
                    // A single event's context is in its message's headers.
                    let traceparent = b
                        .traceparent
                        .clone()
                        .or_else(|| m.header("traceparent").map(str::to_owned));
                    (&b.event, traceparent)
                })
            })
            .collect();
        // Each part commits its own deliveries; the messages are acknowledged after the last.
        // A part done again after a crash finds its deliveries written and skips them.
        for part in events.chunks(self.events_max) {
            self.deliver(part).await?;
        }
        Ok(())
    }
}

impl EventHandler {
    async fn deliver(&self, events: &[Traced<'_>]) -> Result<(), HandlerError> {
        // Where each event goes: its dispatch's own callback URL (carried in the event) and the
        // account's matching subscriptions. They are read in one statement with the accounts'
        // signing secrets and the deliveries an earlier copy of these events wrote.
        let mut accounts: Vec<uuid::Uuid> = events.iter().map(|(e, _)| e.account_id).collect();
        accounts.sort_unstable();
        accounts.dedup();
        let wanted: Vec<(uuid::Uuid, EventType)> = events
            .iter()
            .map(|(e, _)| (e.account_id, e.payload.event_type))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let dispatch_ids: Vec<uuid::Uuid> = events.iter().map(|(e, _)| e.dispatch_id).collect();
        let event_ids: Vec<uuid::Uuid> = events.iter().map(|(e, _)| e.event_id).collect();
        let Targets {
            subscriptions: subscribed,
            secrets,
            existing,
        } = subscriptions::targets(
            &self.deliverer.pool,
            &accounts,
            &wanted,
            &dispatch_ids,
            &event_ids,
        )
        .await
        .map_err(HandlerError::from)?;
        let mut rows: Vec<(NewDelivery, Option<i32>)> = Vec::new();
        let mut seen = HashSet::new();
        for (e, traceparent) in events {
            let payload = serde_json::to_vec(&e.payload).expect("payload serializes");
            let own = e.callback_url.clone().map(|url| (None, url, None));
            let key = (e.account_id, e.payload.event_type);
            let subs = subscribed
                .get(&key)
                .into_iter()
                .flatten()
                .map(|t| (Some(t.webhook_id), t.url.clone(), t.rate_limit));
            for (webhook, url, rate_limit) in own.into_iter().chain(subs) {
                // The endpoint key: the subscription for subscribed deliveries, else the URL.
                let endpoint = webhook
                    .map(|w| format!("webhook:{w}"))
                    .unwrap_or_else(|| url.clone());
                let id = delivery_id(e.event_id, &endpoint);
                // The same event twice in one batch is delivered once.
                if !seen.insert(id) {
                    continue;
                }
                rows.push((
                    NewDelivery {
                        id,
                        account_id: e.account_id,
                        dispatch_id: e.dispatch_id,
                        event_id: e.event_id,
                        webhook_id: webhook,
                        url,
                        msg_id: webhook_message_id(e.event_id, &endpoint),
                        event_type: e.payload.event_type.as_str().to_owned(),
                        payload: payload.clone(),
                        traceparent: traceparent.clone(),
                    },
                    rate_limit,
                ));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        // Refused as the database would refuse it, before anything is sent: the batch is then
        // handled message by message and the culprit quarantined.
        if let Some(reason) = rows.iter().find_map(|(n, _)| n.unstorable()) {
            return Err(HandlerError::Rejected(reason));
        }
        // A delivery is written with its first attempt. One that exists already came from an
        // earlier copy of this event: only one never attempted (held) is attempted here; one
        // with attempts has its retry scheduled (the same commit wrote it), or is finished.
        let todo = rows
            .into_iter()
            .filter_map(|(n, rate_limit)| {
                let stored = existing.get(&n.id);
                if stored.is_some_and(|(status, attempts)| status != "pending" || *attempts > 0) {
                    return None;
                }
                Some(Delivery::first_attempt(n, rate_limit, stored.is_some()))
            })
            .collect();
        self.deliverer
            .attempt_all(todo, secrets)
            .await
            .map_err(HandlerError::from)
    }
}

pub struct RetryHandler {
    deliverer: Arc<Deliverer>,
}

impl RetryHandler {
    pub fn new(deliverer: Arc<Deliverer>) -> Self {
        Self { deliverer }
    }
}

impl BatchHandler for RetryHandler {
    type Body = DeliveryTask;
    const KIND: &'static str = "delivery retry";

    fn read(&self, message: &Incoming) -> Result<Self::Body, String> {
        serde_json::from_slice(&message.data).map_err(|e| e.to_string())
    }

    async fn handle(&self, batch: &[Received<Self::Body>]) -> Result<(), HandlerError> {
        let tasks: HashMap<uuid::Uuid, u32> = batch
            .iter()
            .map(|m| (m.body.delivery_id, m.body.attempt))
            .collect();
        let ids: Vec<_> = tasks.keys().copied().collect();
        let current = deliveries::get_many(&self.deliverer.pool, &ids)
            .await
            .map_err(HandlerError::from)?;
        // A stale or duplicated task (its attempt already made) is acknowledged without action.
        let todo = current
            .into_iter()
            .filter(|d| {
                d.status == "pending" && tasks.get(&d.id) == Some(&((d.attempts + 1) as u32))
            })
            .collect();
        self.deliverer
            .attempt_all(todo, HashMap::new())
            .await
            .map_err(HandlerError::from)
    }
}
