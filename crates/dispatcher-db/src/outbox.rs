//! The transactional outbox table. Rows are inserted by the statements that change state (see
//! `dispatches`, `deliveries`); the relay in `dispatcher-mq` deletes a batch, publishes it with
//! confirms and commits the deletion only once the broker confirmed it.

use crate::pool::AsyncCommitPool;
use crate::DbError;
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// Wakes this process's relay after a commit that wrote outbox rows.
///
/// The process that wrote a row relays it: waking every relay of the deployment (a NOTIFY per
/// inserting transaction) cost each commit a cluster-wide notification lock and each of the other
/// relays an empty round. A permit is kept when the relay is busy, so a commit during a drain
/// leads to one more drain and no wake-up is lost. Rows whose writer cannot relay them (its broker
/// connection is down, or it crashed after committing) are taken by the relays' fallback poll.
#[derive(Debug, Clone, Default)]
pub struct OutboxWake(Arc<Notify>);

impl OutboxWake {
    /// Call after the commit, never before: the relay must find the rows.
    pub fn committed(&self) {
        self.0.notify_one();
    }

    /// Resolves after the next (or an already pending) `committed`.
    pub async fn wait(&self) {
        self.0.notified().await;
    }
}

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub message_id: Uuid,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// W3C trace context to carry in the AMQP headers.
    pub traceparent: Option<String>,
    /// Seconds since the row's transaction began, when it was taken.
    pub age_seconds: f64,
    /// Times the broker refused (nacked) this row before.
    pub publish_failures: i32,
}

/// Takes up to `limit` unsent rows, oldest first, by deleting them in the caller's transaction:
/// the relay publishes them and commits only once the broker confirmed every one, so a failed
/// publish rolls the rows back. `SKIP LOCKED` lets any number of relays (in any replica) share
/// the table without publishing the same row concurrently. One statement and one row write per
/// message, where locking and then deleting took two of each.
pub async fn take_batch(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, message_id, routing_key, payload, headers->>'traceparent',
                       EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8,
                       publish_failures",
        )
        .await?;
    let mut rows: Vec<OutboxRow> = tx
        .query(&stmt, &[&limit])
        .await?
        .iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            message_id: r.get(1),
            routing_key: r.get(2),
            payload: r.get(3),
            traceparent: r.get(4),
            age_seconds: r.get(5),
            publish_failures: r.get(6),
        })
        .collect();
    // RETURNING follows no particular order; publish in commit order.
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

/// Puts rows the broker refused back, in the relay's transaction, with one more refusal
/// counted: they keep their place (id) and their age, and are published again next round.
pub async fn put_back(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[&OutboxRow],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO outbox (id, message_id, routing_key, payload, headers, created_at,
                                 publish_failures)
             SELECT id, m, k, p,
                    CASE WHEN tp IS NULL THEN NULL ELSE jsonb_build_object('traceparent', tp) END,
                    clock_timestamp() - make_interval(secs => age), f + 1
             FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::bytea[], $5::text[],
                         $6::float8[], $7::int4[]) AS t(id, m, k, p, tp, age, f)",
        )
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let msg: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.routing_key.as_str()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.traceparent.as_deref()).collect();
    let ages: Vec<f64> = rows.iter().map(|r| r.age_seconds).collect();
    let failures: Vec<i32> = rows.iter().map(|r| r.publish_failures).collect();
    tx.execute(
        &stmt,
        &[&ids, &msg, &keys, &payloads, &traces, &ages, &failures],
    )
    .await?;
    Ok(())
}

/// A message to publish once the caller's transaction commits.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message_id: Uuid,
    pub routing_key: String,
    pub payload: Vec<u8>,
}

/// Adds messages in the caller's transaction (call [`OutboxWake::committed`] after the commit).
pub async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    msgs: &[NewMessage],
) -> Result<(), DbError> {
    if msgs.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO outbox (message_id, routing_key, payload)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])",
        )
        .await?;
    let ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();
    let keys: Vec<&str> = msgs.iter().map(|m| m.routing_key.as_str()).collect();
    let payloads: Vec<&[u8]> = msgs.iter().map(|m| m.payload.as_slice()).collect();
    tx.execute(&stmt, &[&ids, &keys, &payloads]).await?;
    Ok(())
}

/// Unsent rows and the age in seconds of the oldest one (a read, on the relay's own pool).
pub async fn backlog(pool: &AsyncCommitPool) -> Result<(i64, f64), DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
             FROM outbox",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::OutboxWake;
    use std::time::Duration;

    #[tokio::test]
    async fn a_commit_while_the_relay_is_busy_is_not_lost() {
        let wake = OutboxWake::default();
        // The relay is draining, not waiting, when the writer commits.
        wake.clone().committed();
        tokio::time::timeout(Duration::from_secs(5), wake.wait())
            .await
            .expect("the pending commit wakes the relay");
    }

    #[tokio::test]
    async fn no_commit_no_wake() {
        let wake = OutboxWake::default();
        let woke = tokio::time::timeout(Duration::from_millis(50), wake.wait()).await;
        assert!(woke.is_err());
    }
}
