//! A batched, reconnecting consumer loop.
//!
//! Messages arrive under a bounded prefetch window; whatever is already buffered (up to
//! `batch_max`) is handed to the handler as one batch, and the whole batch is acknowledged with a
//! single multiple-ack after the handler's database commit. If the handler cannot reach the
//! database, the batch is retried with backoff while the messages stay unacknowledged (the broker
//! keeps them; nothing is requeued in a loop, so delivery limits are not burned by an outage).

use crate::{Backoff, Topology};
use dispatcher_config::Settings;
use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::{DbError, Pool};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One received message.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub delivery_tag: u64,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub redelivered: bool,
    pub data: Vec<u8>,
    /// String-valued headers (e.g. the broker's `x-first-death-reason`).
    pub headers: Vec<(String, String)>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency could not be reached and nothing was committed: the same batch is retried
    /// after a backoff, for as long as it takes.
    #[error("transient: {0}")]
    Transient(String),
    /// The batch was refused in a way that repeats (the database rejected a value in it). The
    /// consumer takes the batch apart: each message is handled on its own, and one that is
    /// refused [`QUARANTINE_AFTER`] times is stored as a dead letter with this reason and
    /// acknowledged, while the rest of the batch goes on.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl From<DbError> for HandlerError {
    fn from(e: DbError) -> Self {
        if e.is_deterministic() {
            HandlerError::Rejected(e.to_string())
        } else {
            HandlerError::Transient(e.to_string())
        }
    }
}

/// Times one message is refused, on its own, before it is quarantined.
pub const QUARANTINE_AFTER: u32 = 3;

/// A message with what its handler read from its body.
#[derive(Debug)]
pub struct Received<B> {
    pub message: Incoming,
    pub body: B,
}

impl<B> std::ops::Deref for Received<B> {
    type Target = Incoming;

    fn deref(&self) -> &Incoming {
        &self.message
    }
}

pub trait BatchHandler: Send + Sync + 'static {
    /// A message's body as the handler reads it.
    type Body: Send + Sync;

    /// What a message of this queue is called in a dead letter's reason
    /// (`unparseable dispatch.requested: ...`).
    const KIND: &'static str;

    /// Reads a message's body, once, when it arrives. A body that cannot be read is stored as a
    /// dead letter with this error and acknowledged with its batch; it never reaches `handle`.
    fn read(&self, message: &Incoming) -> Result<Self::Body, String>;

    /// Processes a batch and commits its effects. `Ok` means every message in it is done (handled,
    /// skipped as a duplicate, or stored as a dead letter) and may be acknowledged.
    fn handle(
        &self,
        batch: &[Received<Self::Body>],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The items a message carries, counted against `batch_max` when a batch is filled: 1, or
    /// more for a message that holds several (a batch of requests).
    fn weight(&self, _body: &Self::Body) -> usize {
        1
    }

    /// What a quarantined message is stored as: itself, `(message id, body)`, or one dead letter
    /// per item for a message that holds several, so each item can be replayed on its own.
    fn dead_letter_bodies(&self, message: &Received<Self::Body>) -> Vec<(Option<String>, Vec<u8>)> {
        vec![(message.message_id.clone(), message.data.clone())]
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("consumer stream closed by the broker")]
    Closed,
}

pub struct ConsumerConfig {
    pub name: String,
    pub queue: String,
    pub batch_max: usize,
    /// Unacknowledged messages the consumer may hold (`amqp.prefetch`, or fewer where each
    /// message carries several items).
    pub prefetch: u16,
    /// Where messages that keep being refused are quarantined (`dead_letters`).
    pub dead_letters: Pool,
}

/// Consumes `cfg.queue` until `cancel`, reconnecting as needed. On cancel the current batch is
/// finished and acknowledged; prefetched messages not yet handled go back to the queue when the
/// channel closes.
pub async fn run_consumer<H: BatchHandler>(
    settings: Arc<Settings>,
    cfg: ConsumerConfig,
    handler: Arc<H>,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let topology = Topology::from_settings(&settings);
    let mut backoff = Backoff::default();
    while !cancel.is_cancelled() {
        let result = session(
            &settings,
            &cfg,
            &topology,
            handler.as_ref(),
            &ready,
            &cancel,
            &mut backoff,
        )
        .await;
        ready.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(consumer = %cfg.name, error = %e, ?delay, "consumer lost the broker; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    info!(consumer = %cfg.name, "consumer stopped");
}

async fn session<H: BatchHandler>(
    settings: &Settings,
    cfg: &ConsumerConfig,
    topology: &Topology,
    handler: &H,
    ready: &AtomicBool,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let conn = crate::connect_any(&settings.amqp, &cfg.name).await?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            cfg.queue.clone().into(),
            format!("{}-{}", cfg.name, uuid::Uuid::new_v4().simple()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    ready.store(true, Ordering::Relaxed);
    backoff.reset();
    info!(consumer = %cfg.name, queue = %cfg.queue, "consuming");

    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            d = consumer.next() => d,
        };
        let Some(first) = first else {
            return Err(SessionError::Closed);
        };
        let mut batch = Batch::default();
        batch.take(handler, cfg, to_incoming(first?));
        // Take whatever else is already buffered, without waiting for more.
        while batch.weight < cfg.batch_max {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.take(handler, cfg, to_incoming(d?)),
                _ => break,
            }
        }
        metrics::counter!("dispatcher_messages_consumed_total", "queue" => cfg.queue.clone())
            .increment(batch.count() as u64);

        let done = settle(handler, &batch, cfg, cancel).await;
        if !done {
            // Cancelled while the batch could not be committed: hand it back to the broker for
            // another consumer.
            ch.basic_nack(
                batch.last_tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
            metrics::counter!("dispatcher_messages_nacked_total", "queue" => cfg.queue.clone())
                .increment(batch.count() as u64);
            let _ = ch.close(200, "shutdown".into()).await;
            let _ = conn.close(200, "shutdown".into()).await;
            return Ok(());
        }
        ch.basic_ack(batch.last_tag, BasicAckOptions { multiple: true })
            .await?;
        // One ack frame covers the whole batch: frames against messages is what batching saves.
        metrics::counter!("dispatcher_ack_frames_total", "queue" => cfg.queue.clone()).increment(1);
        metrics::counter!("dispatcher_messages_acked_total", "queue" => cfg.queue.clone())
            .increment(batch.count() as u64);
    }
    let _ = ch.close(200, "shutdown".into()).await;
    let _ = conn.close(200, "shutdown".into()).await;
    Ok(())
}

/// The messages taken for one round, acknowledged together up to `last_tag`.
struct Batch<B> {
    read: Vec<Received<B>>,
    /// Messages whose bodies could not be read, as the dead letters they become.
    unreadable: Vec<NewDeadLetter>,
    /// Items in `read` (see [`BatchHandler::weight`]), and 1 for each unreadable message.
    weight: usize,
    last_tag: u64,
}

impl<B> Default for Batch<B> {
    fn default() -> Self {
        Self {
            read: Vec::new(),
            unreadable: Vec::new(),
            weight: 0,
            last_tag: 0,
        }
    }
}

impl<B> Batch<B> {
    /// Messages taken, read or not.
    fn count(&self) -> usize {
        self.read.len() + self.unreadable.len()
    }

    fn take<H: BatchHandler<Body = B>>(&mut self, handler: &H, cfg: &ConsumerConfig, m: Incoming) {
        self.last_tag = m.delivery_tag;
        match handler.read(&m) {
            Ok(body) => {
                self.weight += handler.weight(&body);
                self.read.push(Received { message: m, body });
            }
            Err(e) => {
                warn!(consumer = %cfg.name, message_id = ?m.message_id, error = %e, "unreadable message quarantined");
                self.weight += 1;
                self.unreadable.push(NewDeadLetter {
                    queue: cfg.queue.clone(),
                    message_id: m.message_id,
                    reason: format!("unparseable {}: {e}", H::KIND),
                    body: m.data,
                });
            }
        }
    }
}

/// Stores the batch's unreadable messages as dead letters and handles the rest. Returns whether
/// every message is done, false when cancelled first.
async fn settle<H: BatchHandler>(
    handler: &H,
    batch: &Batch<H::Body>,
    cfg: &ConsumerConfig,
    cancel: &CancellationToken,
) -> bool {
    if !batch.unreadable.is_empty() {
        if !store_dead_letters(&batch.unreadable, cfg, cancel).await {
            return false;
        }
        metrics::counter!("dispatcher_messages_dead_lettered_total", "queue" => cfg.queue.clone())
            .increment(batch.unreadable.len() as u64);
    }
    if batch.read.is_empty() {
        return true;
    }
    match handle_retrying(handler, &batch.read, cfg, cancel).await {
        Ok(()) => true,
        Err(HandlerError::Rejected(reason)) => {
            warn!(consumer = %cfg.name, error = %reason, size = batch.read.len(), "batch refused; handling its messages one by one");
            isolate(handler, &batch.read, cfg, cancel).await
        }
        Err(HandlerError::Transient(_)) => false,
    }
}

/// Handles `batch`, retrying transient failures with backoff. Returns `Ok` once it is handled,
/// the first `Rejected`, or `Transient` when cancelled before the batch could be handled.
async fn handle_retrying<H: BatchHandler>(
    handler: &H,
    batch: &[Received<H::Body>],
    cfg: &ConsumerConfig,
    cancel: &CancellationToken,
) -> Result<(), HandlerError> {
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match handler.handle(batch).await {
            Err(HandlerError::Transient(e)) => {
                let delay = retry.next_delay();
                warn!(consumer = %cfg.name, error = %e, ?delay, size = batch.len(), "batch not committed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(HandlerError::Transient(e)),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other,
        }
    }
}

/// Handles each message of a refused batch on its own. A message refused
/// [`QUARANTINE_AFTER`] times is stored as a dead letter. Returns false when cancelled first.
async fn isolate<H: BatchHandler>(
    handler: &H,
    batch: &[Received<H::Body>],
    cfg: &ConsumerConfig,
    cancel: &CancellationToken,
) -> bool {
    for m in batch {
        let mut refusals = 0;
        loop {
            match handle_retrying(handler, std::slice::from_ref(m), cfg, cancel).await {
                Ok(()) => break,
                Err(HandlerError::Transient(_)) => return false,
                Err(HandlerError::Rejected(reason)) => {
                    refusals += 1;
                    if refusals < QUARANTINE_AFTER {
                        continue;
                    }
                    warn!(consumer = %cfg.name, message_id = ?m.message_id, error = %reason, "message quarantined");
                    let reason = format!("refused {refusals} times: {reason}");
                    let rows: Vec<NewDeadLetter> = handler
                        .dead_letter_bodies(m)
                        .into_iter()
                        .map(|(message_id, body)| NewDeadLetter {
                            queue: cfg.queue.clone(),
                            message_id,
                            reason: reason.clone(),
                            body,
                        })
                        .collect();
                    if !store_dead_letters(&rows, cfg, cancel).await {
                        return false;
                    }
                    metrics::counter!("dispatcher_messages_quarantined_total", "queue" => cfg.queue.clone())
                        .increment(1);
                    break;
                }
            }
        }
    }
    true
}

/// Stores dead letters, retrying until they are stored. Returns false when cancelled first.
async fn store_dead_letters(
    rows: &[NewDeadLetter],
    cfg: &ConsumerConfig,
    cancel: &CancellationToken,
) -> bool {
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while let Err(e) = dead_letters::insert_batch(&cfg.dead_letters, rows).await {
        warn!(consumer = %cfg.name, error = %e, "cannot store a dead letter; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(retry.next_delay()) => {}
        }
    }
    true
}

fn to_incoming(d: lapin::message::Delivery) -> Incoming {
    let headers = d
        .properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        lapin::types::AMQPValue::LongString(s) => s.to_string(),
                        lapin::types::AMQPValue::ShortString(s) => s.to_string(),
                        lapin::types::AMQPValue::LongLongInt(n) => n.to_string(),
                        lapin::types::AMQPValue::LongInt(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((k.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    Incoming {
        headers,
        delivery_tag: d.delivery_tag,
        routing_key: d.routing_key.to_string(),
        message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
        redelivered: d.redelivered,
        data: d.data,
    }
}
