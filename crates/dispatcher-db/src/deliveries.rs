//! Webhook deliveries (one per outcome event and endpoint) and their attempts.

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub account_id: Uuid,
    pub dispatch_id: Uuid,
    pub event_id: Uuid,
    pub webhook_id: Option<Uuid>,
    pub url: String,
    pub msg_id: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

impl NewDelivery {
    /// Why Postgres would refuse this row, if it would: text holding a NUL character. Such a
    /// delivery is refused before its webhook is sent, not after.
    pub fn unstorable(&self) -> Option<String> {
        [
            ("url", Some(self.url.as_str())),
            ("msg_id", Some(self.msg_id.as_str())),
            ("event_type", Some(self.event_type.as_str())),
            ("traceparent", self.traceparent.as_deref()),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
        .map(|(field, _)| format!("delivery {}: its {field} holds a NUL character", self.id))
    }
}

/// The columns of deliveries to write with an attempt or a hold, one entry per statement row
/// (`None` where the row exists already), for the statements' `unnest`.
struct InsertColumns<'a> {
    is_new: Vec<bool>,
    account_ids: Vec<Option<Uuid>>,
    dispatch_ids: Vec<Option<Uuid>>,
    event_ids: Vec<Option<Uuid>>,
    webhook_ids: Vec<Option<Uuid>>,
    urls: Vec<Option<&'a str>>,
    msg_ids: Vec<Option<&'a str>>,
    event_types: Vec<Option<&'a str>>,
    payloads: Vec<Option<&'a [u8]>>,
    traceparents: Vec<Option<&'a str>>,
}

impl<'a> InsertColumns<'a> {
    fn of(rows: impl Iterator<Item = Option<&'a NewDelivery>>) -> Self {
        let rows: Vec<Option<&'a NewDelivery>> = rows.collect();
        let uuid = |f: fn(&NewDelivery) -> Option<Uuid>| -> Vec<Option<Uuid>> {
            rows.iter().map(|r| r.and_then(f)).collect()
        };
        let text = |f: fn(&'a NewDelivery) -> Option<&'a str>| -> Vec<Option<&'a str>> {
            rows.iter().map(|r| r.and_then(f)).collect()
        };
        InsertColumns {
            is_new: rows.iter().map(Option::is_some).collect(),
            account_ids: uuid(|n| Some(n.account_id)),
            dispatch_ids: uuid(|n| Some(n.dispatch_id)),
            event_ids: uuid(|n| Some(n.event_id)),
            webhook_ids: uuid(|n| n.webhook_id),
            urls: text(|n| Some(&n.url)),
            msg_ids: text(|n| Some(&n.msg_id)),
            event_types: text(|n| Some(&n.event_type)),
            payloads: rows
                .iter()
                .map(|r| r.map(|n| n.payload.as_slice()))
                .collect(),
            traceparents: text(|n| n.traceparent.as_deref()),
        }
    }
}

/// A delivery as the deliverer needs it to make an attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub account_id: Uuid,
    pub dispatch_id: Uuid,
    pub event_id: Uuid,
    pub webhook_id: Option<Uuid>,
    pub url: String,
    pub msg_id: String,
    pub payload: Vec<u8>,
    pub status: String,
    pub attempts: i32,
    pub traceparent: Option<String>,
    pub event_type: String,
    /// The subscription's requests-per-second limit, if it set one.
    pub rate_limit: Option<i32>,
    /// Whether its row exists. A new event's delivery is written with its first attempt (or its
    /// hold), not before it: one row write where an insert and then an update took two.
    pub stored: bool,
}

impl Delivery {
    /// The first attempt of a delivery: not written yet, or (`stored`) written without an
    /// attempt by a hold.
    pub fn first_attempt(n: NewDelivery, rate_limit: Option<i32>, stored: bool) -> Self {
        Delivery {
            id: n.id,
            account_id: n.account_id,
            dispatch_id: n.dispatch_id,
            event_id: n.event_id,
            webhook_id: n.webhook_id,
            url: n.url,
            msg_id: n.msg_id,
            payload: n.payload,
            status: "pending".to_owned(),
            attempts: 0,
            traceparent: n.traceparent,
            event_type: n.event_type,
            rate_limit,
            stored,
        }
    }

    /// The row to write with this delivery's first attempt or hold, if it does not exist yet.
    pub fn row_to_insert(&self) -> Option<NewDelivery> {
        (!self.stored).then(|| NewDelivery {
            id: self.id,
            account_id: self.account_id,
            dispatch_id: self.dispatch_id,
            event_id: self.event_id,
            webhook_id: self.webhook_id,
            url: self.url.clone(),
            msg_id: self.msg_id.clone(),
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
            traceparent: self.traceparent.clone(),
        })
    }
}

const DELIVERY_COLUMNS: &str = "id, account_id, dispatch_id, event_id, webhook_id, url, msg_id, \
                                payload, status, attempts, traceparent, event_type";

fn delivery_from_row(r: &tokio_postgres::Row) -> Delivery {
    Delivery {
        id: r.get("id"),
        account_id: r.get("account_id"),
        dispatch_id: r.get("dispatch_id"),
        event_id: r.get("event_id"),
        webhook_id: r.get("webhook_id"),
        url: r.get("url"),
        msg_id: r.get("msg_id"),
        payload: r.get("payload"),
        status: r.get("status"),
        attempts: r.get("attempts"),
        traceparent: r.get("traceparent"),
        event_type: r.get("event_type"),
        rate_limit: r.get("rate_limit"),
        stored: true,
    }
}

/// The stored deliveries among `ids`, in their current state (a redelivered event sees what was
/// already done).
pub async fn get_many(pool: &Pool, ids: &[Uuid]) -> Result<Vec<Delivery>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT d.*, s.rate_limit FROM (
                 SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ANY($1)
             ) d LEFT JOIN webhook_subscriptions s ON s.id = d.webhook_id"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(delivery_from_row)
        .collect())
}

/// The outcome of one attempt, and what happens next.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub dispatch_id: Uuid,
    pub account_id: Uuid,
    pub attempt: i32,
    pub succeeded: bool,
    pub response_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub attempted_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The delivery's state after this attempt: `succeeded`, `pending` (a retry is scheduled),
    /// `failed` (will not be retried) or `dead` (retries exhausted).
    pub new_status: &'static str,
    /// The retry message to publish through the outbox, if one is scheduled.
    pub retry: Option<RetryMessage>,
    /// The subscription to disable with this attempt (its endpoint answered `410 Gone`).
    pub disable_webhook: Option<Uuid>,
    /// The delivery's row, written with this attempt (its first) when it does not exist yet.
    pub insert: Option<NewDelivery>,
}

#[derive(Debug, Clone)]
pub struct RetryMessage {
    pub message_id: Uuid,
    pub routing_key: String,
    pub payload: Vec<u8>,
}

/// What [`record_attempts`] changed.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Deliveries that moved (a duplicate attempt of one that already moved is not among them).
    pub applied: std::collections::HashSet<Uuid>,
    /// Subscriptions this commit disabled because their endpoint answered `410 Gone`.
    pub gone: Vec<Uuid>,
}

/// The reason stored on a subscription disabled by a `410 Gone`.
pub const GONE_REASON: &str = "the endpoint answered 410 Gone";

/// Records attempts, advances their deliveries (writing those that do not exist yet with their
/// first attempt), enqueues scheduled retries and disables the subscriptions whose endpoint
/// answered `410 Gone`, in one statement (of the caller's transaction, if it has one). A delivery
/// only moves if it
/// is still `pending` at the attempt number the worker saw, so a duplicate message cannot record
/// a second outcome for the same attempt: a delivery another process wrote in the meantime is
/// updated only if it has not been attempted.
pub async fn record_attempts(
    client: &impl deadpool_postgres::GenericClient,
    rows: &[&AttemptRecord],
) -> Result<Recorded, DbError> {
    let stmt = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int4[],
                                      $6::text[], $7::int4[], $8::text[], $9::int4[],
                                      $10::timestamptz[], $11::timestamptz[], $12::text[],
                                      $13::uuid[], $14::text[], $15::bytea[], $16::uuid[],
                                      $18::bool[], $19::uuid[], $20::uuid[], $21::text[],
                                      $22::text[], $23::text[], $24::bytea[], $25::text[])
                 AS t(id, delivery_id, dispatch_id, account_id, attempt, status, response_status,
                      error, duration_ms, attempted_at, next_attempt_at, new_status,
                      retry_id, retry_key, retry_payload, disable_webhook, is_new, event_id,
                      webhook_id, url, msg_id, event_type, payload, traceparent)
             ), stored AS (
                 UPDATE deliveries d
                 SET status = i.new_status, attempts = i.attempt, next_attempt_at = i.next_attempt_at,
                     last_error = i.error, updated_at = now()
                 FROM input i
                 WHERE d.id = i.delivery_id AND NOT i.is_new
                   AND d.status = 'pending' AND d.attempts = i.attempt - 1
                 RETURNING d.id, d.generation
             ), created AS (
                 INSERT INTO deliveries AS d (id, account_id, dispatch_id, event_id, webhook_id,
                                              url, msg_id, event_type, payload, traceparent,
                                              status, attempts, next_attempt_at, last_error)
                 SELECT i.delivery_id, i.account_id, i.dispatch_id, i.event_id, i.webhook_id,
                        i.url, i.msg_id, i.event_type, i.payload, i.traceparent, i.new_status,
                        i.attempt, i.next_attempt_at, i.error
                 FROM input i WHERE i.is_new
                 ON CONFLICT (id) DO UPDATE
                 SET status = excluded.status, attempts = excluded.attempts,
                     next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
                     updated_at = now()
                 WHERE d.status = 'pending' AND d.attempts = excluded.attempts - 1
                 RETURNING d.id, d.generation
             ), upd AS (
                 SELECT id, generation FROM stored UNION ALL SELECT id, generation FROM created
             ), att AS (
                 INSERT INTO delivery_attempts (id, delivery_id, dispatch_id, account_id, attempt,
                                                generation, status, response_status, error,
                                                duration_ms, attempted_at, next_attempt_at)
                 SELECT i.id, i.delivery_id, i.dispatch_id, i.account_id, i.attempt, upd.generation,
                        i.status, i.response_status, i.error, i.duration_ms, i.attempted_at,
                        i.next_attempt_at
                 FROM input i JOIN upd ON upd.id = i.delivery_id
                 ON CONFLICT DO NOTHING
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload)
                 SELECT i.retry_id, i.retry_key, i.retry_payload
                 FROM input i JOIN upd ON upd.id = i.delivery_id
                 WHERE i.retry_id IS NOT NULL
             ), dead AS (
                 INSERT INTO dead_deliveries (delivery_id)
                 SELECT i.delivery_id FROM input i JOIN upd ON upd.id = i.delivery_id
                 WHERE i.new_status = 'dead'
                 ON CONFLICT (delivery_id) DO UPDATE SET dead_at = now()
             ), gone AS (
                 UPDATE webhook_subscriptions s SET disabled_at = now(), disabled_reason = $17
                 FROM input i JOIN upd ON upd.id = i.delivery_id
                 WHERE s.id = i.disable_webhook AND s.disabled_at IS NULL
                 RETURNING s.id
             )
             SELECT false, id FROM upd UNION ALL SELECT true, id FROM gone",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let deliveries: Vec<Uuid> = rows.iter().map(|r| r.delivery_id).collect();
    let dispatches: Vec<Uuid> = rows.iter().map(|r| r.dispatch_id).collect();
    let accounts: Vec<Uuid> = rows.iter().map(|r| r.account_id).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
    let statuses: Vec<&str> = rows
        .iter()
        .map(|r| if r.succeeded { "succeeded" } else { "failed" })
        .collect();
    let codes: Vec<Option<i32>> = rows.iter().map(|r| r.response_status).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    let durations: Vec<i32> = rows.iter().map(|r| r.duration_ms).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.attempted_at).collect();
    let next: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.next_attempt_at).collect();
    let new_status: Vec<&str> = rows.iter().map(|r| r.new_status).collect();
    let retry_ids: Vec<Option<Uuid>> = rows
        .iter()
        .map(|r| r.retry.as_ref().map(|m| m.message_id))
        .collect();
    let retry_keys: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.retry.as_ref().map(|m| m.routing_key.as_str()))
        .collect();
    let retry_payloads: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| r.retry.as_ref().map(|m| m.payload.as_slice()))
        .collect();
    let disable: Vec<Option<Uuid>> = rows.iter().map(|r| r.disable_webhook).collect();
    let new = InsertColumns::of(rows.iter().map(|r| r.insert.as_ref()));
    let out = client
        .query(
            &stmt,
            &[
                &ids,
                &deliveries,
                &dispatches,
                &accounts,
                &attempts,
                &statuses,
                &codes,
                &errors,
                &durations,
                &at,
                &next,
                &new_status,
                &retry_ids,
                &retry_keys,
                &retry_payloads,
                &disable,
                &GONE_REASON,
                &new.is_new,
                &new.event_ids,
                &new.webhook_ids,
                &new.urls,
                &new.msg_ids,
                &new.event_types,
                &new.payloads,
                &new.traceparents,
            ],
        )
        .await?;
    let mut recorded = Recorded::default();
    for r in out {
        let (gone, id): (bool, Uuid) = (r.get(0), r.get(1));
        if gone {
            if !recorded.gone.contains(&id) {
                recorded.gone.push(id);
            }
        } else {
            recorded.applied.insert(id);
        }
    }
    Ok(recorded)
}

/// One row of `GET /v1/dispatches/{id}/attempts`.
#[derive(Debug, Clone)]
pub struct AttemptView {
    pub id: Uuid,
    pub webhook_id: Option<Uuid>,
    pub url: String,
    pub attempt: i32,
    pub status: String,
    pub response_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub attempted_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

pub async fn list_attempts(
    pool: &Pool,
    account_id: Uuid,
    dispatch_id: Uuid,
) -> Result<Vec<AttemptView>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT a.id, d.webhook_id, d.url, a.attempt, a.status, a.response_status, a.error,
                    a.duration_ms, a.attempted_at, a.next_attempt_at
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE a.dispatch_id = $1 AND a.account_id = $2
             ORDER BY a.attempted_at, a.attempt",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&dispatch_id, &account_id])
        .await?
        .iter()
        .map(|r| AttemptView {
            id: r.get(0),
            webhook_id: r.get(1),
            url: r.get(2),
            attempt: r.get(3),
            status: r.get(4),
            response_status: r.get(5),
            error: r.get(6),
            duration_ms: r.get(7),
            attempted_at: r.get(8),
            next_attempt_at: r.get(9),
        })
        .collect())
}

/// Which deliveries to send again.
#[derive(Debug, Clone, Default)]
pub struct RequeueFilter {
    pub account_id: Option<Uuid>,
    pub dispatch_id: Option<Uuid>,
    pub delivery_id: Option<Uuid>,
    pub webhook_id: Option<Uuid>,
    /// Only dead-lettered deliveries (`dlq replay`).
    pub only_dead: bool,
}

/// Starts a new delivery round for every matching delivery: back to `pending` at attempt 0 with a
/// retry task for attempt 1 in the outbox, in one statement. Returns the delivery ids.
pub async fn requeue(pool: &Pool, f: &RequeueFilter) -> Result<Vec<Uuid>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH upd AS (
                 UPDATE deliveries
                 SET status = 'pending', attempts = 0, generation = generation + 1,
                     next_attempt_at = NULL, updated_at = now()
                 WHERE ($1::uuid IS NULL OR account_id = $1)
                   AND ($2::uuid IS NULL OR dispatch_id = $2)
                   AND ($3::uuid IS NULL OR id = $3)
                   AND ($4::uuid IS NULL OR webhook_id = $4)
                   AND (NOT $5 OR status = 'dead')
                 RETURNING id
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload)
                 SELECT gen_random_uuid(), 'webhook.retry',
                        convert_to(json_build_object('deliveryId', id, 'attempt', 1)::text, 'UTF8')
                 FROM upd
             ), revived AS (
                 DELETE FROM dead_deliveries WHERE delivery_id IN (SELECT id FROM upd)
             )
             SELECT id FROM upd",
        )
        .await?;
    let ids: Vec<Uuid> = client
        .query(
            &stmt,
            &[
                &f.account_id,
                &f.dispatch_id,
                &f.delivery_id,
                &f.webhook_id,
                &f.only_dead,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !ids.is_empty() {
        // The callers (status API, CLI) run no relay: wake the deployment's relays. The rows are
        // committed by now, and a lost notification only delays them to the relays' next poll.
        client
            .batch_execute("SELECT pg_notify('dispatcher_outbox', '')")
            .await?;
    }
    Ok(ids)
}

/// A dead-lettered delivery, for `dispatchctl dlq list`.
#[derive(Debug, Clone)]
pub struct DeadDelivery {
    pub id: Uuid,
    pub account_id: Uuid,
    pub dispatch_id: Uuid,
    pub url: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A dead delivery from a row of `id, account_id, dispatch_id, url, attempts, last_error` and
/// the time it last changed.
fn dead_delivery(r: &tokio_postgres::Row) -> DeadDelivery {
    DeadDelivery {
        id: r.get(0),
        account_id: r.get(1),
        dispatch_id: r.get(2),
        url: r.get(3),
        attempts: r.get(4),
        last_error: r.get(5),
        updated_at: r.get(6),
    }
}

pub async fn list_dead(pool: &Pool, limit: i64) -> Result<Vec<DeadDelivery>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query(
            "SELECT d.id, d.account_id, d.dispatch_id, d.url, d.attempts, d.last_error, d.updated_at
             FROM dead_deliveries x JOIN deliveries d ON d.id = x.delivery_id
             WHERE d.status = 'dead' ORDER BY x.dead_at DESC LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(dead_delivery)
        .collect())
}

/// An account's dead-lettered deliveries, most recently dead first, with the last error each got.
pub async fn list_dead_for_account(
    pool: &Pool,
    account_id: Uuid,
    limit: i64,
) -> Result<Vec<DeadDelivery>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT d.id, d.account_id, d.dispatch_id, d.url, d.attempts, d.last_error, x.dead_at
             FROM dead_deliveries x JOIN deliveries d ON d.id = x.delivery_id
             WHERE d.account_id = $1 AND d.status = 'dead'
             ORDER BY x.dead_at DESC, d.id DESC LIMIT $2",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&account_id, &limit])
        .await?
        .iter()
        .map(dead_delivery)
        .collect())
}

/// Each delivery of a dispatch with its state, for the status body.
#[derive(Debug, Clone)]
pub struct DeliveryState {
    pub id: Uuid,
    pub webhook_id: Option<Uuid>,
    pub url: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

pub async fn states_for_dispatch(
    pool: &Pool,
    account_id: Uuid,
    dispatch_id: Uuid,
) -> Result<Vec<DeliveryState>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, webhook_id, url, status, attempts, next_attempt_at FROM deliveries
             WHERE dispatch_id = $1 AND account_id = $2 ORDER BY created_at, id",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&dispatch_id, &account_id])
        .await?
        .iter()
        .map(|r| DeliveryState {
            id: r.get(0),
            webhook_id: r.get(1),
            url: r.get(2),
            status: r.get(3),
            attempts: r.get(4),
            next_attempt_at: r.get(5),
        })
        .collect())
}

/// A delivery held back without an attempt, until `next_attempt_at`, when `retry` brings it back.
#[derive(Debug, Clone)]
pub struct Held {
    pub id: Uuid,
    pub next_attempt_at: DateTime<Utc>,
    pub retry: RetryMessage,
    /// The delivery's row, written with the hold when it does not exist yet.
    pub insert: Option<NewDelivery>,
}

/// Holds deliveries back without attempting them (their endpoint's circuit is open, or their
/// subscription's rate is spent): each gets its `next_attempt_at` and a task for the same attempt
/// number through the outbox, in one statement. A delivery not written yet is written `pending`.
pub async fn hold_batch(pool: &Pool, rows: &[Held]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[],
                                      $5::bytea[], $6::bool[], $7::uuid[], $8::uuid[], $9::uuid[],
                                      $10::uuid[], $11::text[], $12::text[], $13::text[],
                                      $14::bytea[], $15::text[])
                 AS t(id, next_attempt_at, message_id, routing_key, task, is_new, account_id,
                      dispatch_id, event_id, webhook_id, url, msg_id, event_type, payload,
                      traceparent)
             ), stored AS (
                 UPDATE deliveries d SET next_attempt_at = i.next_attempt_at, updated_at = now()
                 FROM input i WHERE d.id = i.id AND NOT i.is_new AND d.status = 'pending'
                 RETURNING d.id
             ), created AS (
                 INSERT INTO deliveries AS d (id, account_id, dispatch_id, event_id, webhook_id,
                                              url, msg_id, event_type, payload, traceparent,
                                              next_attempt_at)
                 SELECT i.id, i.account_id, i.dispatch_id, i.event_id, i.webhook_id, i.url,
                        i.msg_id, i.event_type, i.payload, i.traceparent, i.next_attempt_at
                 FROM input i WHERE i.is_new
                 ON CONFLICT (id) DO UPDATE
                 SET next_attempt_at = excluded.next_attempt_at, updated_at = now()
                 WHERE d.status = 'pending'
                 RETURNING d.id
             )
             INSERT INTO outbox (message_id, routing_key, payload)
             SELECT i.message_id, i.routing_key, i.task
             FROM input i JOIN (SELECT id FROM stored UNION ALL SELECT id FROM created) h USING (id)",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.next_attempt_at).collect();
    let msg_ids: Vec<Uuid> = rows.iter().map(|r| r.retry.message_id).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.retry.routing_key.as_str()).collect();
    let tasks: Vec<&[u8]> = rows.iter().map(|r| r.retry.payload.as_slice()).collect();
    let new = InsertColumns::of(rows.iter().map(|r| r.insert.as_ref()));
    client
        .execute(
            &stmt,
            &[
                &ids,
                &at,
                &msg_ids,
                &keys,
                &tasks,
                &new.is_new,
                &new.account_ids,
                &new.dispatch_ids,
                &new.event_ids,
                &new.webhook_ids,
                &new.urls,
                &new.msg_ids,
                &new.event_types,
                &new.payloads,
                &new.traceparents,
            ],
        )
        .await?;
    Ok(())
}
