//! Publishing with publisher confirms, a whole batch in flight at once.
//!
//! Waiting for each confirm before the next publish caps a channel at a few hundred messages per
//! second; sending the batch and then awaiting all confirms together keeps the broker busy.

use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub message_id: Uuid,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// W3C trace context, sent as the `traceparent` header.
    pub traceparent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused {0} message(s)")]
    Nacked(usize),
    #[error("{0} message(s) had no queue bound to their routing key")]
    Unroutable(usize),
    #[error("the broker did not confirm the batch within {0:?}")]
    ConfirmTimeout(std::time::Duration),
}

/// What the broker said about one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Stored in every queue bound to its routing key.
    Stored,
    /// Refused (a queue full with `reject-publish`, or the broker failing to store it).
    Nacked,
    /// No queue is bound to its routing key: publishing it again cannot help.
    Unroutable,
}

/// A channel in confirm mode publishing persistent messages to one exchange.
pub struct Publisher {
    channel: Channel,
    exchange: String,
    app_id: String,
}

impl Publisher {
    pub async fn new(
        conn: &Connection,
        exchange: String,
        app_id: &str,
    ) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange,
            app_id: app_id.to_owned(),
        })
    }

    /// Publishes every message and returns once the broker confirmed all of them. An error means
    /// some may not have been stored; callers keep the source rows and publish again (consumers
    /// are idempotent, so a duplicate is harmless, a loss would not be).
    pub async fn publish_batch(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let outcomes = self.publish_each(messages, None).await?;
        let count = |c| outcomes.iter().filter(|o| **o == c).count();
        match (count(Confirmed::Nacked), count(Confirmed::Unroutable)) {
            (0, 0) => Ok(()),
            (0, n) => Err(PublishError::Unroutable(n)),
            (n, _) => Err(PublishError::Nacked(n)),
        }
    }

    /// Publishes every message and returns what the broker said about each one, in order, once
    /// it confirmed them all. With `timeout`, a batch not confirmed within it is an error (its
    /// messages may or may not be stored).
    pub async fn publish_each(
        &self,
        messages: &[OutgoingMessage],
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<Confirmed>, PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        let now = chrono::Utc::now().timestamp() as u64;
        for m in messages {
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(m.message_id.to_string().into())
                .with_timestamp(now)
                .with_app_id(self.app_id.clone().into());
            if let Some(tp) = &m.traceparent {
                let mut headers = lapin::types::FieldTable::default();
                headers.insert(
                    "traceparent".into(),
                    lapin::types::AMQPValue::LongString(tp.clone().into()),
                );
                props = props.with_headers(headers);
            }
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.clone().into(),
                    m.routing_key.clone().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.payload,
                    props,
                )
                .await?;
            pending.push(confirm);
        }
        let confirms = join_all(pending);
        let results = match timeout {
            Some(limit) => tokio::time::timeout(limit, confirms)
                .await
                .map_err(|_| PublishError::ConfirmTimeout(limit))?,
            None => confirms.await,
        };
        let mut outcomes = Vec::with_capacity(messages.len());
        for (m, result) in messages.iter().zip(results) {
            let outcome = match result? {
                Confirmation::Ack(Some(_)) => Confirmed::Unroutable,
                Confirmation::Ack(None) | Confirmation::NotRequested => Confirmed::Stored,
                Confirmation::Nack(_) => Confirmed::Nacked,
            };
            if outcome == Confirmed::Stored {
                metrics::counter!("dispatcher_messages_published_total", "routing_key" => m.routing_key.clone())
                    .increment(1);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}
