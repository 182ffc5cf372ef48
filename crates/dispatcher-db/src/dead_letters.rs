//! Messages no consumer could handle, kept with the reason instead of being requeued forever.

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub queue: String,
    pub message_id: Option<String>,
    pub reason: String,
    pub body: Vec<u8>,
}

pub async fn insert_batch(pool: &Pool, rows: &[NewDeadLetter]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO dead_letters (queue, message_id, reason, body)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])",
        )
        .await?;
    let queues: Vec<&str> = rows.iter().map(|r| r.queue.as_str()).collect();
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.message_id.as_deref()).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    client
        .execute(&stmt, &[&queues, &ids, &reasons, &bodies])
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub queue: String,
    pub message_id: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

pub async fn list(pool: &Pool, limit: i64) -> Result<Vec<DeadLetter>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query(
            "SELECT id, queue, message_id, reason, created_at FROM dead_letters
             ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            queue: r.get(1),
            message_id: r.get(2),
            reason: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}
