//! The transactional outbox table. Rows are inserted by the statements that change state (see
//! `dispatches`, `deliveries`). On the hot paths the writer hands the rows it committed to its own
//! process's relay in memory ([`OutboxWake::hand_over`]): the relay in `dispatcher-mq` publishes
//! them with confirms and then deletes them by id ([`delete_sent`]). Every other row, and any
//! handed-over row its process did not publish within [`HANDOFF_GRACE`], is taken by a relay's
//! sweep ([`take_batch`]), which deletes a batch, publishes it and commits the deletion only once
//! the broker confirmed it.

use crate::pool::AsyncCommitPool;
use crate::DbError;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use uuid::Uuid;

/// How long a row handed over in memory is left to its own process's relay before the sweep of
/// any relay may take it. The relay publishes a handed-over row only within the first half of
/// it ([`OutboxWake::take_handed`]), leaving the other half for the broker's confirms, so a row
/// is published twice only when a confirm takes seconds (duplicates are harmless: consumers are
/// idempotent). It is also how long a crash or a lost broker connection delays those rows.
pub const HANDOFF_GRACE: Duration = Duration::from_secs(5);

/// Rows kept in memory for the relay at most; past it a hand-over is left to the sweep.
const MAX_HANDED: usize = 20_000;

/// Wakes this process's relay after a commit that wrote outbox rows, and hands it the rows.
///
/// The process that wrote a row relays it: waking every relay of the deployment (a NOTIFY per
/// inserting transaction) cost each commit a cluster-wide notification lock and each of the other
/// relays an empty round. A permit is kept when the relay is busy, so a commit during a drain
/// leads to one more drain and no wake-up is lost. Rows whose writer cannot relay them (its broker
/// connection is down, or it crashed after committing) are taken by the relays' sweep.
#[derive(Debug, Clone, Default)]
pub struct OutboxWake(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    notify: Notify,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Rows handed over, in commit order, with when.
    handed: VecDeque<(Instant, OutboxRow)>,
    /// Rows were committed without a hand-over: the relay sweeps the table.
    sweep: bool,
}

impl OutboxWake {
    /// Call after the commit of rows written without [`Self::hand_over`]: the relay sweeps the
    /// table. Never before the commit: the relay must find the rows.
    pub fn committed(&self) {
        self.pending().sweep = true;
        self.0.notify.notify_one();
    }

    /// Call after the commit of rows written with `relay_after` [`HANDOFF_GRACE`] ahead (see
    /// [`handed_over_sql`]): the relay publishes them from memory. Past [`MAX_HANDED`] rows
    /// waiting (a relay without a broker) they are left to the sweep.
    pub fn hand_over(&self, mut rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        // A statement returns its rows in no particular order; publish in insertion order.
        rows.sort_unstable_by_key(|r| r.id);
        {
            let mut p = self.pending();
            if p.handed.len() + rows.len() <= MAX_HANDED {
                let now = Instant::now();
                p.handed.extend(rows.into_iter().map(|r| (now, r)));
            }
        }
        self.0.notify.notify_one();
    }

    /// Up to `limit` handed-over rows, oldest first, with `age_seconds` set to their time in
    /// memory. Rows handed over more than half [`HANDOFF_GRACE`] ago are dropped: the sweep will
    /// take them, and publishing them here too could race it.
    pub fn take_handed(&self, limit: usize) -> Vec<OutboxRow> {
        self.take_handed_younger_than(limit, HANDOFF_GRACE / 2)
    }

    fn take_handed_younger_than(&self, limit: usize, max_age: Duration) -> Vec<OutboxRow> {
        let mut p = self.pending();
        let now = Instant::now();
        let mut out = Vec::with_capacity(limit.min(p.handed.len()));
        while out.len() < limit {
            let Some((at, mut row)) = p.handed.pop_front() else {
                break;
            };
            let age = now.saturating_duration_since(at);
            if age < max_age {
                row.age_seconds = age.as_secs_f64();
                out.push(row);
            }
        }
        out
    }

    /// Drops every handed-over row (the relay lost its broker): the sweep takes them.
    pub fn forget_handed(&self) {
        self.pending().handed.clear();
    }

    /// Whether a sweep was asked for since the last call.
    pub fn take_sweep(&self) -> bool {
        std::mem::take(&mut self.pending().sweep)
    }

    /// Resolves after the next (or an already pending) `committed` or `hand_over`.
    pub async fn wait(&self) {
        self.0.notify.notified().await;
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.pending.lock().expect("outbox hand-over")
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

/// The sweep: takes up to `limit` unsent rows that are due (not handed over to a relay in memory
/// in the last [`HANDOFF_GRACE`]), oldest first, by deleting them in the caller's transaction:
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
                 SELECT id FROM outbox WHERE relay_after <= now()
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
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

/// Deletes rows a relay published from memory once the broker confirmed them: one statement, on
/// an async-commit connection (a deletion lost in a crash only means the sweep publishes the row
/// again). A row the sweep took meanwhile is not found, and one a sweep holds locked is skipped
/// rather than waited for: that sweep deletes it.
pub async fn delete_sent(pool: &AsyncCommitPool, ids: &[i64]) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE id = ANY($1::int8[]) FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&ids]).await?)
}

/// Seconds of [`HANDOFF_GRACE`], the parameter of the hot paths' outbox inserts
/// (`relay_after = now() + make_interval(secs => $n)`).
pub const HANDOFF_GRACE_SECS: f64 = HANDOFF_GRACE.as_secs_f64();

/// A row a hot path's outbox insert returned for the hand-over: `id, message_id, routing_key,
/// payload, headers->>'traceparent'` from column `first` on, or `None` where they are null (a
/// row of the statement's other result).
pub fn handed_row(row: &tokio_postgres::Row, first: usize) -> Option<OutboxRow> {
    let id: Option<i64> = row.get(first);
    Some(OutboxRow {
        id: id?,
        message_id: row.get(first + 1),
        routing_key: row.get(first + 2),
        payload: row.get(first + 3),
        traceparent: row.get(first + 4),
        age_seconds: 0.0,
        publish_failures: 0,
    })
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
    use super::{OutboxRow, OutboxWake, MAX_HANDED};
    use std::time::Duration;
    use uuid::Uuid;

    fn row(id: i64) -> OutboxRow {
        OutboxRow {
            id,
            message_id: Uuid::now_v7(),
            routing_key: "dispatch.requested".into(),
            payload: vec![],
            traceparent: None,
            age_seconds: 0.0,
            publish_failures: 0,
        }
    }

    fn ids(rows: &[OutboxRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn a_commit_while_the_relay_is_busy_is_not_lost() {
        let wake = OutboxWake::default();
        // The relay is draining, not waiting, when the writer commits.
        wake.clone().committed();
        tokio::time::timeout(Duration::from_secs(5), wake.wait())
            .await
            .expect("the pending commit wakes the relay");
        assert!(
            wake.take_sweep(),
            "rows without a hand-over ask for a sweep"
        );
        assert!(!wake.take_sweep(), "once");
    }

    #[tokio::test]
    async fn no_commit_no_wake() {
        let wake = OutboxWake::default();
        let woke = tokio::time::timeout(Duration::from_millis(50), wake.wait()).await;
        assert!(woke.is_err());
    }

    #[tokio::test]
    async fn handed_over_rows_wake_the_relay_and_come_out_in_order_without_a_sweep() {
        let wake = OutboxWake::default();
        wake.hand_over(vec![row(1), row(2)]);
        wake.hand_over(vec![row(3)]);
        tokio::time::timeout(Duration::from_secs(5), wake.wait())
            .await
            .expect("a hand-over wakes the relay");
        assert!(!wake.take_sweep());
        assert_eq!(ids(&wake.take_handed(2)), [1, 2]);
        assert_eq!(ids(&wake.take_handed(10)), [3]);
        assert!(wake.take_handed(10).is_empty());
    }

    #[test]
    fn rows_past_their_time_in_memory_are_left_to_the_sweep() {
        let wake = OutboxWake::default();
        wake.hand_over(vec![row(1)]);
        std::thread::sleep(Duration::from_millis(300));
        wake.hand_over(vec![row(2)]);
        let taken = wake.take_handed_younger_than(10, Duration::from_millis(200));
        assert_eq!(ids(&taken), [2]);
        assert!(taken[0].age_seconds < 0.2);
        assert!(
            wake.take_handed(10).is_empty(),
            "the old row is gone from memory"
        );
    }

    #[test]
    fn a_relay_that_cannot_keep_up_leaves_the_rest_to_the_sweep() {
        let wake = OutboxWake::default();
        wake.hand_over((0..MAX_HANDED as i64).map(row).collect());
        wake.hand_over(vec![row(-1)]);
        let taken = wake.take_handed(MAX_HANDED + 1);
        assert_eq!(taken.len(), MAX_HANDED);
        assert!(!taken.iter().any(|r| r.id == -1));
        wake.hand_over(vec![row(7)]);
        wake.forget_handed();
        assert!(wake.take_handed(10).is_empty());
    }
}
