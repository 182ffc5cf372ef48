//! Retention: finished dispatches older than a cut-off are deleted with everything that hangs off
//! them (document, deliveries, attempts, dead-delivery marks, provider events), a small batch per
//! transaction so no lock is held for long and ingest is not slowed.
//!
//! Documents kept in an object store (`storage.url`) are not in Postgres: a purge hands their
//! keys to the caller once the rows are deleted, and the caller deletes the objects.
//!
//! Dispatch ids are UUIDv7: their first 48 bits are the submission time in milliseconds, so "older
//! than" is a range of the primary key and needs no index of its own.

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    pub dispatches: i64,
    pub deliveries: i64,
    pub attempts: i64,
    pub provider_events: i64,
    pub dead_letters: i64,
    pub batch_submissions: i64,
    /// Documents deleted from the object store (`storage.url`).
    pub result_objects: i64,
}

impl std::ops::AddAssign for Purged {
    fn add_assign(&mut self, o: Self) {
        self.dispatches += o.dispatches;
        self.deliveries += o.deliveries;
        self.attempts += o.attempts;
        self.provider_events += o.provider_events;
        self.dead_letters += o.dead_letters;
        self.batch_submissions += o.batch_submissions;
        self.result_objects += o.result_objects;
    }
}

impl Purged {
    pub fn total(&self) -> i64 {
        self.dispatches
            + self.deliveries
            + self.attempts
            + self.provider_events
            + self.dead_letters
            + self.batch_submissions
            + self.result_objects
    }
}

/// The smallest UUIDv7 of the millisecond `t`: every id made before `t` sorts below it.
pub fn v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis().max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70;
    b[8] = 0x80;
    Uuid::from_bytes(b)
}

/// What one batch deleted, and the object-store keys of the documents of its dispatches (to be
/// deleted now that the rows are gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgedBatch {
    pub purged: Purged,
    pub result_keys: Vec<String>,
}

/// Deletes up to `limit` finished dispatches submitted before `before`, with their rows in the
/// other tables, in one transaction; also up to `limit` dead letters and batch replies older than
/// it. A dispatch with a delivery still being retried (redelivered lately) is kept for now.
pub async fn purge_batch(
    pool: &Pool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<PurgedBatch, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH doomed AS (
                 SELECT d.id FROM dispatches d
                 WHERE d.id < $1 AND d.status IN ('completed', 'failed')
                   AND NOT EXISTS (SELECT 1 FROM deliveries p
                                   WHERE p.dispatch_id = d.id AND p.status = 'pending')
                 ORDER BY d.id LIMIT $3
                 FOR UPDATE SKIP LOCKED
             ), att AS (
                 DELETE FROM delivery_attempts a USING doomed
                 WHERE a.dispatch_id = doomed.id RETURNING a.delivery_id
             ), del AS (
                 DELETE FROM deliveries x USING doomed
                 WHERE x.dispatch_id = doomed.id RETURNING x.id
             ), dead AS (
                 DELETE FROM dead_deliveries x USING del WHERE x.delivery_id = del.id
             ), pe AS (
                 DELETE FROM provider_events x USING doomed
                 WHERE x.dispatch_id = doomed.id RETURNING 1
             ), dis AS (
                 DELETE FROM dispatches x USING doomed WHERE x.id = doomed.id
                 RETURNING x.result_key
             ), dl AS (
                 DELETE FROM dead_letters WHERE id IN (
                     SELECT id FROM dead_letters WHERE created_at < $2 ORDER BY created_at
                     LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING 1
             ), bs AS (
                 DELETE FROM batch_submissions WHERE (account_id, idempotency_key) IN (
                     SELECT account_id, idempotency_key FROM batch_submissions
                     WHERE created_at < $2 ORDER BY created_at
                     LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM dis), (SELECT count(*) FROM del),
                    (SELECT count(*) FROM att), (SELECT count(*) FROM pe),
                    (SELECT count(*) FROM dl), (SELECT count(*) FROM bs),
                    ARRAY(SELECT result_key FROM dis WHERE result_key IS NOT NULL)",
        )
        .await?;
    let row = client
        .query_one(&stmt, &[&v7_floor(before), &before, &limit])
        .await?;
    Ok(PurgedBatch {
        purged: Purged {
            dispatches: row.get(0),
            deliveries: row.get(1),
            attempts: row.get(2),
            provider_events: row.get(3),
            dead_letters: row.get(4),
            batch_submissions: row.get(5),
            result_objects: 0,
        },
        result_keys: row.get(6),
    })
}

/// Purges in batches until a batch comes back short, pausing between batches so the deletes
/// share the database with the traffic. Stops early (returning what was done) when `stop` fires.
///
/// After each batch has committed, `delete_objects` gets the object-store keys of the documents
/// of the dispatches it deleted, and answers how many objects it deleted (best effort: an object
/// it could not delete is left behind, never a row without its document).
pub async fn purge<F, Fut>(
    pool: &Pool,
    before: DateTime<Utc>,
    batch: i64,
    pause: std::time::Duration,
    stop: &tokio_util::sync::CancellationToken,
    mut delete_objects: F,
) -> Result<Purged, DbError>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let mut total = Purged::default();
    loop {
        let PurgedBatch {
            purged: mut got,
            result_keys,
        } = purge_batch(pool, before, batch).await?;
        if !result_keys.is_empty() {
            got.result_objects = delete_objects(result_keys).await;
        }
        total += got;
        let full =
            got.dispatches >= batch || got.dead_letters >= batch || got.batch_submissions >= batch;
        if !full || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(total),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_sorts_between_ids_of_earlier_and_later_milliseconds() {
        let t: DateTime<Utc> = "2026-11-28T02:00:00.500Z".parse().unwrap();
        let floor = v7_floor(t);
        assert_eq!(floor.get_version_num(), 7);
        let ts = |u: Uuid| u.get_timestamp().unwrap().to_unix();
        assert_eq!(ts(floor), (t.timestamp() as u64, 500_000_000));
        let earlier = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64,
            499_999_999,
        ));
        let same_ms = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64,
            500_000_001,
        ));
        assert!(earlier < floor);
        assert!(same_ms >= floor, "an id of the cut-off millisecond is kept");
    }
}
