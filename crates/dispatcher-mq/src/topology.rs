//! Exchange and queue names (all under the configured prefix) and their idempotent declaration.
//!
//! ```text
//!                        ┌── dispatch.requested ──► {p}.dispatch.requested  (dispatch-worker)
//! {p}.events (topic) ────┼── dispatch.completed ─┐
//!                        │   dispatch.failed ────┤
//!                        │   endpoint.*, ────────┴► {p}.webhook.events      (webhook-deliverer)
//!                        │   delivery.exhausted
//!                        ├── webhook.delay.{ms} ──► {p}.webhook.delay.{ms}  (TTL, no consumer)
//!                        │                              └─ expires ─► webhook.retry
//!                        ├── webhook.retry ───────► {p}.webhook.retry       (webhook-deliverer)
//!                        └── dispatch.delay.{ms} ─► {p}.dispatch.delay.{ms} (TTL, no consumer)
//!                                                       └─ expires ─► dispatch.requested
//! work queues past x-delivery-limit ──► {p}.dead (fanout) ──► {p}.dead
//! ```

use dispatcher_core::event::EVENT_TYPES;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use std::collections::BTreeSet;
use std::time::Duration;

/// Routing key of retry tasks once their delay expired.
pub const RETRY_KEY: &str = "webhook.retry";
/// A message redelivered this many times (consumer crashes, nacks) is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 20;
/// Retry delays are these multiples of the scheduled delay (±20 % jitter, and up to 2x for a
/// receiver's Retry-After), one delay queue each, because a queue's TTL is fixed and per-message
/// TTLs only expire at the head of a queue.
pub use dispatcher_core::retry::DELAY_FACTORS as JITTER_STEPS;

/// Jitter for a dispatch's provider retries (fewer steps than webhooks': they are rarer).
pub const DISPATCH_JITTER_STEPS: [f64; 3] = [0.8, 1.0, 1.2];

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delays_ms: BTreeSet<u64>,
    dispatch_delays_ms: BTreeSet<u64>,
}

impl Topology {
    pub fn new(prefix: &str, retry_schedule: &[Duration]) -> Self {
        let delays_ms = retry_schedule
            .iter()
            .flat_map(|d| JITTER_STEPS.iter().map(move |f| jittered_ms(*d, *f)))
            .collect();
        Self {
            prefix: prefix.to_owned(),
            delays_ms,
            dispatch_delays_ms: BTreeSet::new(),
        }
    }

    /// Adds a delay queue for every provider retry delay (each with [`DISPATCH_JITTER_STEPS`]).
    pub fn with_dispatch_retries(mut self, schedule: &[Duration]) -> Self {
        self.dispatch_delays_ms = schedule
            .iter()
            .flat_map(|d| {
                DISPATCH_JITTER_STEPS
                    .iter()
                    .map(move |f| jittered_ms(*d, *f))
            })
            .collect();
        self
    }

    /// The topology of a deployment: its prefix, with a delay queue for every retry delay and the
    /// circuit-breaker cooldown, and for every provider retry delay.
    pub fn from_settings(settings: &dispatcher_config::Settings) -> Self {
        Self::new(&settings.amqp.prefix, &settings.delivery.all_delays())
            .with_dispatch_retries(&settings.smtp.retry_schedule)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn dispatch_queue(&self) -> String {
        format!("{}.dispatch.requested", self.prefix)
    }
    pub fn webhook_events_queue(&self) -> String {
        format!("{}.webhook.events", self.prefix)
    }
    pub fn provider_events_queue(&self) -> String {
        format!("{}.provider.events", self.prefix)
    }
    pub fn webhook_retry_queue(&self) -> String {
        format!("{}.webhook.retry", self.prefix)
    }
    pub fn delay_queue(&self, ms: u64) -> String {
        format!("{}.webhook.delay.{ms}", self.prefix)
    }

    pub fn dispatch_delay_queue(&self, ms: u64) -> String {
        format!("{}.dispatch.delay.{ms}", self.prefix)
    }

    /// Routing key that parks a dispatch's provider retry for `ms` milliseconds, one of the
    /// delays of [`Topology::with_dispatch_retries`] (see [`Topology::dispatch_delay_for`]).
    pub fn dispatch_delay_key(ms: u64) -> String {
        format!("dispatch.delay.{ms}")
    }

    /// The declared provider-retry delay for `base` scaled by `factor` (one of
    /// [`DISPATCH_JITTER_STEPS`]).
    pub fn dispatch_delay_for(base: Duration, factor: f64) -> u64 {
        jittered_ms(base, factor)
    }

    /// Routing key that parks a retry for `ms` milliseconds. `ms` must be one of the declared
    /// delays; see [`Topology::delay_for`].
    pub fn delay_key(ms: u64) -> String {
        format!("webhook.delay.{ms}")
    }

    /// The declared delay for `base` scaled by `factor` (one of [`JITTER_STEPS`]).
    pub fn delay_for(base: Duration, factor: f64) -> u64 {
        jittered_ms(base, factor)
    }

    fn work_queue_args(&self) -> FieldTable {
        let mut args = quorum();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange().into()),
        );
        args
    }

    /// Each work queue with a routing key it takes from the events exchange: the keys of the
    /// messages written to the outbox (retry tasks, which come back from the delay queues, aside).
    pub fn work_bindings(&self) -> Vec<(String, &'static str)> {
        let mut b = vec![(self.dispatch_queue(), "dispatch.requested")];
        b.extend(
            EVENT_TYPES
                .into_iter()
                .filter(|e| e.is_webhook())
                .map(|e| (self.webhook_events_queue(), e.as_str())),
        );
        b.push((self.provider_events_queue(), "provider.event"));
        b
    }

    /// Declares everything. Safe to run concurrently from every replica at every start.
    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            self.events_exchange().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        declare_queue(ch, &self.dead_queue(), quorum()).await?;
        bind(ch, &self.dead_queue(), &self.dead_exchange(), "").await?;

        let events = self.events_exchange();
        for queue in [
            self.dispatch_queue(),
            self.webhook_events_queue(),
            self.provider_events_queue(),
            self.webhook_retry_queue(),
        ] {
            declare_queue(ch, &queue, self.work_queue_args()).await?;
        }
        for (queue, key) in self.work_bindings() {
            bind(ch, &queue, &events, key).await?;
        }
        bind(ch, &self.webhook_retry_queue(), &events, RETRY_KEY).await?;

        for ms in &self.delays_ms {
            let queue = self.delay_queue(*ms);
            declare_queue(ch, &queue, delay_args(*ms, &events, RETRY_KEY)).await?;
            bind(ch, &queue, &events, &Self::delay_key(*ms)).await?;
        }
        for ms in &self.dispatch_delays_ms {
            let queue = self.dispatch_delay_queue(*ms);
            declare_queue(ch, &queue, delay_args(*ms, &events, "dispatch.requested")).await?;
            bind(ch, &queue, &events, &Self::dispatch_delay_key(*ms)).await?;
        }
        Ok(())
    }

    /// Removes everything this topology declared (tests clean up after themselves with this).
    pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let mut queues = vec![
            self.dispatch_queue(),
            self.webhook_events_queue(),
            self.webhook_retry_queue(),
            self.provider_events_queue(),
            self.dead_queue(),
        ];
        queues.extend(self.delays_ms.iter().map(|ms| self.delay_queue(*ms)));
        queues.extend(
            self.dispatch_delays_ms
                .iter()
                .map(|ms| self.dispatch_delay_queue(*ms)),
        );
        for q in queues {
            ch.queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [self.events_exchange(), self.dead_exchange()] {
            ch.exchange_delete(x.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Messages ready in a queue (a passive declare), for estimates and tests.
    pub async fn depth(ch: &Channel, queue: &str) -> Result<u32, lapin::Error> {
        Ok(Self::depth_and_consumers(ch, queue).await?.0)
    }

    /// Ready messages in `queue` and the consumers it has.
    pub async fn depth_and_consumers(
        ch: &Channel,
        queue: &str,
    ) -> Result<(u32, u32), lapin::Error> {
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((q.message_count(), q.consumer_count()))
    }
}

fn jittered_ms(base: Duration, factor: f64) -> u64 {
    ((base.as_millis() as f64) * factor).round().max(1.0) as u64
}

/// A queue without consumers whose messages expire after `ms` into `exchange` with `key`.
fn delay_args(ms: u64, exchange: &str, key: &str) -> FieldTable {
    let mut args = quorum();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.to_owned().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(key.to_owned().into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn declare_queue(ch: &Channel, name: &str, args: FieldTable) -> Result<(), lapin::Error> {
    ch.queue_declare(
        ShortString::from(name.to_owned()),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    Ok(())
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    ch.queue_bind(
        queue.to_owned().into(),
        exchange.to_owned().into(),
        key.to_owned().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_is_bound_to_a_work_queue() {
        let bindings = Topology::new("t1", &[]).work_bindings();
        for t in dispatcher_core::event::EVENT_TYPES {
            assert!(
                bindings.iter().any(|(_, key)| *key == t.as_str()),
                "{}",
                t.as_str()
            );
        }
    }

    #[test]
    fn names_live_under_the_prefix() {
        let t = Topology::new("t1", &[Duration::from_secs(5)]);
        for n in [
            t.events_exchange(),
            t.dead_queue(),
            t.dispatch_queue(),
            t.webhook_events_queue(),
            t.webhook_retry_queue(),
            t.delay_queue(5000),
        ] {
            assert!(n.starts_with("t1."), "{n}");
        }
    }

    #[test]
    fn delay_queues_cover_every_jitter_step() {
        let t = Topology::new("p", &[Duration::from_secs(5), Duration::from_secs(30)]);
        assert_eq!(t.delays_ms.len(), 2 * JITTER_STEPS.len());
        for f in JITTER_STEPS {
            assert!(t
                .delays_ms
                .contains(&Topology::delay_for(Duration::from_secs(5), f)));
        }
        assert_eq!(Topology::delay_for(Duration::from_secs(5), 0.8), 4000);
        assert_eq!(Topology::delay_for(Duration::from_secs(5), 2.0), 10000);
    }

    #[test]
    fn provider_retries_get_their_own_delay_queues() {
        let t = Topology::new("p", &[Duration::from_secs(5)])
            .with_dispatch_retries(&[Duration::from_secs(5), Duration::from_secs(60)]);
        assert_eq!(t.dispatch_delays_ms.len(), 2 * DISPATCH_JITTER_STEPS.len());
        let ms = Topology::dispatch_delay_for(Duration::from_secs(60), 1.2);
        assert!(t.dispatch_delays_ms.contains(&ms));
        assert_eq!(t.dispatch_delay_queue(ms), "p.dispatch.delay.72000");
        assert_eq!(Topology::dispatch_delay_key(ms), "dispatch.delay.72000");
        assert_eq!(
            t.delays_ms.len(),
            JITTER_STEPS.len(),
            "webhook delays are apart"
        );
    }
}
