//! The outbox relay: moves committed outbox rows to RabbitMQ.
//!
//! Rows its own process's writers hand over after their commit (`OutboxWake::hand_over`, the
//! hot paths: accepted dispatches, outcome events, retries) are published from memory with
//! confirms, and the confirmed ones are deleted by id afterwards, many rounds' worth in one
//! statement: no transaction and no locking read per round. Until that deletion a row stays in
//! the table, so a crash, a failed publish or a lost broker connection leaves it to the sweep.
//!
//! The sweep takes every other row, and a handed-over row once `outbox::HANDOFF_GRACE` has
//! passed: each round deletes a batch inside a transaction (`FOR UPDATE SKIP LOCKED`, so any
//! number of relays, in any service replica, share the table without publishing the same row
//! concurrently), publishes it with confirms and only then commits. A failed publish rolls the
//! deletion back; a crash between publish and commit publishes the batch again later.
//! Duplicates are possible on both paths, losses are not, and consumers are idempotent.
//!
//! The relay sleeps until its own process hands rows over or commits rows without a hand-over
//! (then it sweeps), a NOTIFY from a process that runs no relay (requeues from the status API
//! or the CLI), or the fallback poll that sweeps rows whose writer could not relay them.

use crate::publisher::{Confirmed, OutgoingMessage, PublishError, Publisher};
use crate::{Backoff, Topology};
use dispatcher_config::{OutboxSettings, Settings};
use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::outbox::{self, OutboxRow, OutboxWake};
use dispatcher_db::pool::AsyncCommitPool;
use dispatcher_db::DbError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Batches a lane publishes from memory before it looks at sweeps, gauges, its connection and
/// shutdown again.
const HANDED_BATCHES_PER_TURN: usize = 4;

/// How often the backlog gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// Shortest time between two deletions of published handed-over rows. Deleting after every
/// relay round cost a statement per round (0.17 per dispatch at 16 closed-loop clients); the
/// rows wait a little longer in the table instead, which only the backlog gauge sees.
const DELETE_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("broker connection closed")]
    Disconnected,
}

/// Batches a relay may have in flight at once, each on its own channel and transaction.
///
/// With one, rows committed while a batch waited for its confirms (a quorum queue confirms
/// after its log write) waited a whole further round; at 1 000 dispatches/s that was most of
/// each hop's latency. `SKIP LOCKED` keeps the lanes' batches disjoint.
pub const LANES: usize = 2;

/// Connections a relay takes from its pool at once: one per lane and the deleter's, so a
/// deletion never waits for a lane's sweep to finish publishing.
pub const CONNECTIONS: usize = LANES + 1;

/// One publishing loop of a relay.
struct Lane<'a> {
    settings: &'a Settings,
    pool: &'a AsyncCommitPool,
    conn: &'a lapin::Connection,
    publisher: &'a Publisher,
    local: &'a OutboxWake,
    /// Ids of handed-over rows the broker confirmed, for the deleter.
    sent: &'a mpsc::UnboundedSender<Vec<i64>>,
    cancel: &'a CancellationToken,
    name: &'a str,
    /// One lane refreshes the backlog gauges.
    keeps_gauges: bool,
}

impl Lane<'_> {
    async fn run(self) -> Result<(), RelayError> {
        let limits = &self.settings.outbox;
        let mut last_gauge = Instant::now() - GAUGE_EVERY;
        // Sweep at once: rows may be waiting from before this process started.
        let mut last_sweep = Instant::now() - limits.poll_interval;
        loop {
            let (n, more) = publish_handed(self.local, self.publisher, limits, self.sent).await?;
            if n > 0 {
                debug!(relay = %self.name, published = n, "handed-over rows published");
            }
            if self.local.take_sweep() || last_sweep.elapsed() >= limits.poll_interval {
                last_sweep = Instant::now();
                match drain(self.pool, self.publisher, limits).await {
                    Ok(n) if n > 0 => debug!(relay = %self.name, published = n, "outbox swept"),
                    Ok(_) => {}
                    Err(RelayError::Db(e)) => {
                        warn!(error = %e, "outbox relay cannot reach the database; retrying");
                        // Shutdown must not wait for the database to come back.
                        tokio::select! {
                            _ = self.cancel.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.keeps_gauges && last_gauge.elapsed() > GAUGE_EVERY {
                last_gauge = Instant::now();
                if let Ok((unsent, oldest)) = outbox::backlog(self.pool).await {
                    metrics::gauge!("dispatcher_outbox_backlog").set(unsent as f64);
                    metrics::gauge!("dispatcher_outbox_oldest_unsent_seconds").set(oldest);
                }
            }
            if !self.conn.status().connected() {
                return Err(RelayError::Disconnected);
            }
            if more {
                // Rows are still waiting in memory: no wake-up is owed for them.
                if self.cancel.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            let next_sweep = limits.poll_interval.saturating_sub(last_sweep.elapsed());
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                _ = self.local.wait() => {}
                _ = tokio::time::sleep(next_sweep) => {}
            }
        }
    }
}

/// Runs until `cancel`. `ready` is true while the relay holds a broker connection.
pub async fn run_relay(
    settings: Arc<Settings>,
    pool: AsyncCommitPool,
    name: String,
    local: OutboxWake,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let topology = Topology::from_settings(&settings);
    // Every relay may publish any service's outbox rows, so a replica can go a long time without
    // publishing a given key. Registering the counters at zero keeps each series present on
    // every /metrics from the start, which `rate()` and absence alerts need.
    for (_, key) in topology.work_bindings() {
        metrics::counter!("dispatcher_messages_published_total", "routing_key" => key).increment(0);
    }
    let mut wake = dispatcher_db::listen::spawn_listener(
        settings.database.clone(),
        &["dispatcher_outbox"],
        cancel.child_token(),
    );
    // Deletions outlive broker sessions: rows confirmed just before a disconnect are deleted
    // all the same.
    let (sent, confirmed) = mpsc::unbounded_channel();
    let deleter = tokio::spawn(delete_confirmed(pool.clone(), confirmed));
    let mut backoff = Backoff::default();
    while !cancel.is_cancelled() {
        let session = async {
            let conn = crate::connect_any(&settings.amqp, &name).await?;
            let ch = conn.create_channel().await?;
            topology.declare(&ch).await?;
            let mut publishers = Vec::with_capacity(LANES);
            for _ in 0..LANES {
                publishers.push(Publisher::new(&conn, topology.events_exchange(), &name).await?);
            }
            ready.store(true, Ordering::Relaxed);
            backoff.reset();
            info!(relay = %name, lanes = LANES, "outbox relay connected");
            let lanes = publishers.iter().enumerate().map(|(i, publisher)| Lane {
                settings: &settings,
                pool: &pool,
                conn: &conn,
                publisher,
                local: &local,
                sent: &sent,
                cancel: &cancel,
                name: &name,
                keeps_gauges: i == 0,
            });
            // A NOTIFY (a requeue from a process without a relay) wakes a lane like a local
            // commit does.
            let forward = async {
                while wake.recv().await.is_some() {
                    local.committed();
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                r = futures::future::try_join_all(lanes.map(Lane::run)) => r.map(|_| ()),
                _ = forward => Ok(()),
            }
        };
        match session.await {
            Ok(()) => break,
            Err(e) => {
                ready.store(false, Ordering::Relaxed);
                // What was handed over is in the table: the sweep takes it once its grace is up.
                local.forget_handed();
                let delay = backoff.next_delay();
                warn!(relay = %name, error = %e, ?delay, "outbox relay lost the broker; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    ready.store(false, Ordering::Relaxed);
    drop(sent);
    // Rows left undeleted are swept and published again: harmless, but not waited for long.
    let _ = tokio::time::timeout(Duration::from_secs(5), deleter).await;
}

/// Deletes the handed-over rows the broker confirmed, everything confirmed meanwhile in one
/// statement, at most once per [`DELETE_EVERY`], until every lane has stopped.
async fn delete_confirmed(pool: AsyncCommitPool, mut confirmed: mpsc::UnboundedReceiver<Vec<i64>>) {
    let mut next = tokio::time::Instant::now();
    while let Some(mut ids) = confirmed.recv().await {
        // A published row's deletion is on no one's path, so it can wait for others.
        tokio::time::sleep_until(next).await;
        next = tokio::time::Instant::now() + DELETE_EVERY;
        while let Ok(more) = confirmed.try_recv() {
            ids.extend(more);
        }
        for attempt in 1..=3 {
            match outbox::delete_sent(&pool, &ids).await {
                Ok(_) => break,
                // Undeleted rows are swept once their grace is up and published again.
                Err(e) if attempt == 3 => {
                    warn!(error = %e, rows = ids.len(), "published outbox rows not deleted; they will be published again")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Publishes the rows this process's writers handed over, a batch at a time, up to
/// [`HANDED_BATCHES_PER_TURN`] batches, and passes the confirmed ones' ids to the deleter. A row
/// the broker refused, or did not confirm, stays in the table for the sweep (which counts
/// refusals and quarantines). Returns the rows published and whether more may be waiting.
async fn publish_handed(
    local: &OutboxWake,
    publisher: &Publisher,
    limits: &OutboxSettings,
    sent: &mpsc::UnboundedSender<Vec<i64>>,
) -> Result<(usize, bool), RelayError> {
    let mut total = 0;
    for _ in 0..HANDED_BATCHES_PER_TURN {
        let rows = local.take_handed(limits.batch_size);
        if rows.is_empty() {
            return Ok((total, false));
        }
        let started = Instant::now();
        let outcomes = publisher
            .publish_each(&outgoing(&rows), Some(limits.confirm_timeout))
            .await?;
        let stored: Vec<i64> = rows
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == Confirmed::Stored)
            .map(|(r, _)| r.id)
            .collect();
        record(&rows, stored.len(), started);
        total += stored.len();
        let _ = sent.send(stored);
    }
    Ok((total, true))
}

/// The messages of `rows`, in order.
fn outgoing(rows: &[OutboxRow]) -> Vec<OutgoingMessage> {
    rows.iter()
        .map(|r| OutgoingMessage {
            message_id: r.message_id,
            routing_key: r.routing_key.clone(),
            payload: r.payload.clone(),
            traceparent: r.traceparent.clone(),
        })
        .collect()
}

/// The metrics of one published batch: how long its rows waited for the relay (the part of a
/// hop's latency spent before publishing), how long publishing took, and how many were stored.
fn record(rows: &[OutboxRow], stored: usize, started: Instant) {
    let waited = metrics::histogram!("dispatcher_outbox_relay_delay_seconds");
    for r in rows {
        waited.record(r.age_seconds);
    }
    metrics::histogram!("dispatcher_outbox_publish_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("dispatcher_outbox_relayed_total").increment(stored as u64);
}

/// Publishes batches until a batch comes back short. Returns rows published.
async fn drain(
    pool: &AsyncCommitPool,
    publisher: &Publisher,
    limits: &OutboxSettings,
) -> Result<usize, RelayError> {
    let mut total = 0;
    loop {
        let n = relay_once(pool, publisher, limits).await?;
        total += n;
        if n < limits.batch_size {
            return Ok(total);
        }
    }
}

async fn relay_once(
    pool: &AsyncCommitPool,
    publisher: &Publisher,
    limits: &OutboxSettings,
) -> Result<usize, RelayError> {
    let batch = limits.batch_size as i64;
    // An async-commit connection: losing this commit in a crash only means publishing the batch
    // again (consumers are idempotent), so it need not wait for the WAL flush.
    let mut client = pool.get().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let rows = outbox::take_batch(&tx, batch).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    // On error the transaction is dropped, rolling the deletion back: the rows stay unsent.
    let outcomes = publisher
        .publish_each(&outgoing(&rows), Some(limits.confirm_timeout))
        .await?;
    // A refused row does not hold its batch back: the rest are done. A row no queue is bound
    // for is quarantined at once (publishing it again cannot help); a nacked one is put back
    // and quarantined once the broker has refused it `max_publish_failures` times.
    let mut put_back = Vec::new();
    let mut quarantine = Vec::new();
    for (row, outcome) in rows.iter().zip(&outcomes) {
        match outcome {
            Confirmed::Stored => {}
            Confirmed::Unroutable => quarantine.push(dead_letter(
                row,
                format!("no queue is bound to routing key `{}`", row.routing_key),
            )),
            Confirmed::Nacked if row.publish_failures + 1 >= limits.max_publish_failures => {
                quarantine.push(dead_letter(
                    row,
                    format!("the broker refused it {} times", row.publish_failures + 1),
                ))
            }
            Confirmed::Nacked => put_back.push(row),
        }
    }
    outbox::put_back(&tx, &put_back).await?;
    dead_letters::insert_with(&tx, &quarantine).await?;
    tx.commit().await.map_err(DbError::from)?;
    if !quarantine.is_empty() {
        warn!(quarantined = quarantine.len(), "outbox rows quarantined");
        metrics::counter!("dispatcher_messages_quarantined_total", "queue" => OUTBOX_QUEUE)
            .increment(quarantine.len() as u64);
    }
    let stored = outcomes.iter().filter(|o| **o == Confirmed::Stored).count();
    record(&rows, stored, started);
    if !put_back.is_empty() {
        // Try the refused rows again after a pause rather than at once.
        return Err(RelayError::Publish(PublishError::Nacked(put_back.len())));
    }
    Ok(rows.len())
}

/// The `queue` of dead letters quarantined by a relay.
pub const OUTBOX_QUEUE: &str = "outbox";

fn dead_letter(row: &OutboxRow, reason: String) -> NewDeadLetter {
    NewDeadLetter {
        queue: OUTBOX_QUEUE.to_owned(),
        message_id: Some(row.message_id.to_string()),
        reason: format!("{reason} (routing key `{}`)", row.routing_key),
        body: row.payload.clone(),
    }
}
