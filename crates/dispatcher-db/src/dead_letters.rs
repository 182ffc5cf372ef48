//! Messages no consumer could handle, kept with the reason instead of being requeued forever.
//!
//! A message is stored once per queue: its message id (or, for a message without one, a hash of
//! its body) is unique per queue, so a batch that is retried after a crash or a failed commit
//! does not store its dead letters again.

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use dispatcher_core::DispatchRequested;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub queue: String,
    pub message_id: Option<String>,
    pub reason: String,
    pub body: Vec<u8>,
}

/// Stores dead letters; one already stored for the same queue and message is left as it is.
/// Returns how many were new.
pub async fn insert_batch(pool: &Pool, rows: &[NewDeadLetter]) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let client = pool.get().await?;
    insert_with(&client, rows).await
}

/// [`insert_batch`] on a given connection or transaction.
pub async fn insert_with(
    client: &impl GenericClient,
    rows: &[NewDeadLetter],
) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let stmt = client
        .prepare_cached(
            "INSERT INTO dead_letters (queue, message_id, reason, body)
             SELECT q, COALESCE(m, 'sha256:' || encode(sha256(b), 'hex')), r, b
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) AS t(q, m, r, b)
             ON CONFLICT (queue, message_id) DO NOTHING",
        )
        .await?;
    let queues: Vec<&str> = rows.iter().map(|r| r.queue.as_str()).collect();
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.message_id.as_deref()).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    Ok(client
        .execute(&stmt, &[&queues, &ids, &reasons, &bodies])
        .await?)
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub queue: String,
    pub message_id: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The dispatch, for a quarantined `dispatch.requested` message.
    pub dispatch_id: Option<Uuid>,
}

/// How an account's id appears in the JSON of its `dispatch.requested` messages: a prefilter for
/// Postgres, which cannot parse a body that may not be JSON at all; every match is parsed and
/// checked again before it is used.
fn account_needle(account: Uuid) -> Vec<u8> {
    format!("\"accountId\":\"{account}\"").into_bytes()
}

/// The dead-lettered `dispatch.requested` messages of `queue` that belong to `account`, newest
/// first: the dispatches that no worker could process.
pub async fn list_dispatches_for_account(
    pool: &Pool,
    queue: &str,
    account: Uuid,
    limit: i64,
) -> Result<Vec<DeadLetter>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, queue, message_id, reason, created_at, body FROM dead_letters
             WHERE queue = $1 AND position($2 in body) > 0
             ORDER BY id DESC LIMIT $3",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&queue, &account_needle(account), &limit])
        .await?
        .iter()
        .filter_map(|r| {
            let m = serde_json::from_slice::<DispatchRequested>(r.get(5)).ok()?;
            (m.account_id == account).then(|| DeadLetter {
                id: r.get(0),
                queue: r.get(1),
                message_id: r.get(2),
                reason: r.get(3),
                created_at: r.get(4),
                dispatch_id: Some(m.dispatch_id),
            })
        })
        .collect())
}

/// What [`replay`] sent again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Dead-lettered webhook deliveries started over.
    pub deliveries: Vec<Uuid>,
    /// Dispatches whose quarantined `dispatch.requested` message was published again.
    pub dispatches: Vec<Uuid>,
}

/// Replays dead letters: dead webhook deliveries (a new round of attempts) and dead-lettered
/// `dispatch.requested` messages of `dispatch_queue` ([`replay_dispatches`]). `account` limits it
/// to one account's (the dashboard), `id` to one delivery or, if no dead delivery has that id,
/// one dispatch. `dispatchctl dlq replay` and the dashboard both replay through here.
pub async fn replay(
    pool: &Pool,
    dispatch_queue: &str,
    account: Option<Uuid>,
    id: Option<Uuid>,
) -> Result<Replayed, DbError> {
    let deliveries = crate::deliveries::requeue(
        pool,
        &crate::deliveries::RequeueFilter {
            account_id: account,
            delivery_id: id,
            only_dead: true,
            ..Default::default()
        },
    )
    .await?;
    let dispatches = if id.is_some() && !deliveries.is_empty() {
        Vec::new()
    } else {
        replay_dispatches(pool, dispatch_queue, account, id).await?
    };
    Ok(Replayed {
        deliveries,
        dispatches,
    })
}

pub async fn list(pool: &Pool, limit: i64) -> Result<Vec<DeadLetter>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query(
            "SELECT id, queue, message_id, reason, created_at, body FROM dead_letters
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
            dispatch_id: serde_json::from_slice::<DispatchRequested>(r.get(5))
                .ok()
                .map(|m| m.dispatch_id),
        })
        .collect())
}

/// Sends dead-lettered `dispatch.requested` messages of `queue` again: each unfinished dispatch
/// among them is published once more through the outbox (the original message) and its
/// processing attempts start over, and its dead letter is removed, in one statement.
/// `account` limits it to that account's dispatches and `dispatch_id` picks one dispatch, else
/// every one is replayed. Returns the replayed dispatch ids; the dead letters of finished
/// dispatches are only cleared. A body that is not a `dispatch.requested` message stays where it
/// is, for an operator to read.
pub async fn replay_dispatches(
    pool: &Pool,
    queue: &str,
    account: Option<Uuid>,
    dispatch_id: Option<Uuid>,
) -> Result<Vec<Uuid>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let needle = account.map(account_needle);
    let stored = tx
        .query(
            "SELECT id, body FROM dead_letters
             WHERE queue = $1 AND ($2::bytea IS NULL OR position($2 in body) > 0)
             ORDER BY id FOR UPDATE",
            &[&queue, &needle],
        )
        .await?;
    let mut letters: Vec<i64> = Vec::new();
    let mut dispatches: Vec<Uuid> = Vec::new();
    let mut bodies: Vec<&[u8]> = Vec::new();
    let mut message_ids: Vec<Uuid> = Vec::new();
    for row in &stored {
        let body: &[u8] = row.get(1);
        let Ok(m) = serde_json::from_slice::<DispatchRequested>(body) else {
            continue;
        };
        if dispatch_id.is_some_and(|want| want != m.dispatch_id)
            || account.is_some_and(|want| want != m.account_id)
        {
            continue;
        }
        letters.push(row.get(0));
        dispatches.push(m.dispatch_id);
        bodies.push(body);
        message_ids.push(m.message_id);
    }
    let rows = tx
        .query(
            "WITH dead AS (
                 DELETE FROM dead_letters WHERE id = ANY($1)
             ), input AS (
                 SELECT DISTINCT ON (id) * FROM unnest($2::uuid[], $3::uuid[], $4::bytea[])
                     AS t(id, message_id, body)
             ), revived AS (
                 UPDATE dispatches d SET processing_attempts = 0
                 FROM input i
                 WHERE d.id = i.id AND d.status IN ('queued', 'processing')
                 RETURNING d.id
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload)
                 SELECT i.message_id, 'dispatch.requested', i.body
                 FROM input i JOIN revived USING (id)
             )
             SELECT id FROM revived",
            &[&letters, &dispatches, &message_ids, &bodies],
        )
        .await?;
    tx.commit().await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    if !ids.is_empty() {
        // The CLI runs no relay: wake the deployment's relays (a lost notification only delays
        // the messages to the relays' next poll).
        client
            .batch_execute("SELECT pg_notify('dispatcher_outbox', '')")
            .await?;
    }
    Ok(ids)
}
