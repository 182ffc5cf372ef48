//! The transactional outbox table. Rows are inserted by the statements that change state (see
//! `dispatches`, `deliveries`); the relay in `dispatcher-mq` locks a batch, publishes it with
//! confirms and deletes it in the same transaction.

use crate::{DbError, Pool};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub message_id: Uuid,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// W3C trace context to carry in the AMQP headers.
    pub traceparent: Option<String>,
}

/// Locks up to `limit` unsent rows, skipping rows another relay holds, so replicas never publish
/// the same row concurrently.
pub async fn lock_batch(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, message_id, routing_key, payload, headers->>'traceparent' FROM outbox
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&limit])
        .await?
        .iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            message_id: r.get(1),
            routing_key: r.get(2),
            payload: r.get(3),
            traceparent: r.get(4),
        })
        .collect())
}

/// Removes published rows, in the locking transaction, once the broker confirmed them.
pub async fn mark_sent(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[i64],
) -> Result<(), DbError> {
    let stmt = tx
        .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
        .await?;
    tx.execute(&stmt, &[&ids]).await?;
    Ok(())
}

/// Unsent rows and the age in seconds of the oldest one.
pub async fn backlog(pool: &Pool) -> Result<(i64, f64), DbError> {
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
