//! Dispatches: batched acceptance (dispatch row + outbox row in one statement), conditional state
//! transitions for workers, and tenant-scoped reads.

use crate::outbox::{self, OutboxRow};
use crate::pool::AsyncCommitPool;
use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use dispatcher_core::{DispatchError, DispatchStatus, TemplateFormat};
use tokio_postgres::Row;
use uuid::Uuid;

/// A dispatch about to be accepted, with its `dispatch.requested` message already serialized.
#[derive(Debug, Clone)]
pub struct NewDispatch {
    pub id: Uuid,
    pub account_id: Uuid,
    pub template_id: Option<Uuid>,
    pub template_format: TemplateFormat,
    pub template_body: String,
    pub data: serde_json::Value,
    pub provider: serde_json::Value,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    pub idempotency_response: Option<serde_json::Value>,
    pub notify_on_finish: bool,
    pub queued_at: DateTime<Utc>,
    pub message_id: Uuid,
    pub message: Vec<u8>,
}

/// Dispatches written, and their outbox rows to hand to the relay after the commit
/// ([`OutboxWake::hand_over`](crate::outbox::OutboxWake::hand_over)).
#[derive(Debug, Default)]
pub struct Inserted {
    pub ids: Vec<Uuid>,
    pub outbox: Vec<OutboxRow>,
}

/// Inserts many dispatches and their outbox rows in one statement (so in one transaction).
/// Returns the ids actually inserted: a row whose idempotency key already exists is skipped, and
/// gets no outbox row.
/// `traceparents[i]` is the trace context of `rows[i]`'s request, carried by its message.
pub async fn insert_batch(
    pool: &Pool,
    rows: &[NewDispatch],
    traceparents: &[Option<String>],
    requests_per_message: usize,
) -> Result<Inserted, DbError> {
    let client = pool.get().await?;
    insert_rows(&client, rows, traceparents, requests_per_message).await
}

/// A batch submission's Idempotency-Key and the answer a repeat of it gets.
#[derive(Debug, Clone)]
pub struct BatchKey<'a> {
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub response: &'a serde_json::Value,
}

/// Writes the accepted items of one batch submission in one transaction, with the batch's
/// Idempotency-Key if it has one. `Ok(None)`: that key already exists and nothing was written;
/// otherwise the outbox rows to hand to the relay after the commit.
pub async fn insert_submission(
    pool: &Pool,
    account_id: Uuid,
    rows: &[NewDispatch],
    traceparents: &[Option<String>],
    requests_per_message: usize,
    key: Option<BatchKey<'_>>,
) -> Result<Option<Vec<OutboxRow>>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if let Some(k) = key {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO batch_submissions (account_id, idempotency_key, request_hash, response)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id, idempotency_key) DO NOTHING",
            )
            .await?;
        let n = tx
            .execute(&stmt, &[&account_id, &k.key, &k.request_hash, k.response])
            .await?;
        if n == 0 {
            return Ok(None);
        }
    }
    let mut outbox = Vec::new();
    if !rows.is_empty() {
        outbox = insert_rows(&tx, rows, traceparents, requests_per_message)
            .await?
            .outbox;
    }
    tx.commit().await?;
    Ok(Some(outbox))
}

/// What an earlier batch submission with the same Idempotency-Key stored.
pub async fn find_batch_by_key(
    pool: &Pool,
    account_id: Uuid,
    key: &str,
) -> Result<Option<(Vec<u8>, serde_json::Value)>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT request_hash, response FROM batch_submissions
             WHERE account_id = $1 AND idempotency_key = $2",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&account_id, &key])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// The dispatches go out in `dispatch.requested` messages of up to `requests_per_message`
/// requests each (a `RequestBatch`; a lone request is sent as itself), built from the rows
/// actually inserted, so a request skipped for its idempotency key is in no message.
async fn insert_rows(
    client: &impl deadpool_postgres::GenericClient,
    rows: &[NewDispatch],
    traceparents: &[Option<String>],
    requests_per_message: usize,
) -> Result<Inserted, DbError> {
    let stmt = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                      $6::jsonb[], $7::jsonb[], $8::text[], $9::jsonb[], $10::text[],
                                      $11::bytea[], $12::jsonb[], $13::bool[], $14::timestamptz[],
                                      $15::uuid[], $16::bytea[], $17::text[])
                 WITH ORDINALITY
                 AS t(id, account_id, template_id, template_format, template_body, data, provider,
                      callback_url, metadata, idempotency_key, request_hash, idempotency_response,
                      notify_on_finish, queued_at, message_id, message, traceparent, ord)
             ), ins AS (
                 INSERT INTO dispatches (id, account_id, template_id, template_format, template_body,
                                         data, provider, callback_url, metadata, idempotency_key,
                                         request_hash, idempotency_response, notify_on_finish, queued_at)
                 SELECT id, account_id, template_id, template_format, template_body, data, provider,
                        callback_url, metadata, idempotency_key, request_hash, idempotency_response,
                        notify_on_finish, queued_at
                 FROM input
                 ON CONFLICT (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id
             ), request AS (
                 -- The inserted requests, in submission order, numbered into messages of $19.
                 SELECT i.message_id, i.message, i.traceparent, i.ord,
                        (row_number() OVER (ORDER BY i.ord) - 1) / $19 AS message_no
                 FROM input i JOIN ins USING (id)
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload, headers, relay_after)
                 SELECT (array_agg(r.message_id ORDER BY r.ord))[1], 'dispatch.requested',
                        outbox_batch_body('requests', 'request', array_agg(r.message ORDER BY r.ord),
                                          array_agg(r.traceparent ORDER BY r.ord)),
                        outbox_batch_headers(array_agg(r.traceparent ORDER BY r.ord)),
                        now() + make_interval(secs => $18)
                 FROM request r
                 GROUP BY r.message_no
                 RETURNING id, message_id, routing_key, payload, headers->>'traceparent'
             )
             -- The ids inserted, then the outbox rows to hand over (NULL in the other columns).
             SELECT id, NULL::int8, NULL::uuid, NULL::text, NULL::bytea, NULL::text FROM ins
             UNION ALL
             SELECT NULL, ob.* FROM ob",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let accounts: Vec<Uuid> = rows.iter().map(|r| r.account_id).collect();
    let template_ids: Vec<Option<Uuid>> = rows.iter().map(|r| r.template_id).collect();
    let formats: Vec<&str> = rows.iter().map(|r| r.template_format.as_str()).collect();
    let bodies: Vec<&str> = rows.iter().map(|r| r.template_body.as_str()).collect();
    let data: Vec<&serde_json::Value> = rows.iter().map(|r| &r.data).collect();
    let providers: Vec<&serde_json::Value> = rows.iter().map(|r| &r.provider).collect();
    let callbacks: Vec<Option<&str>> = rows.iter().map(|r| r.callback_url.as_deref()).collect();
    let metadata: Vec<Option<&serde_json::Value>> =
        rows.iter().map(|r| r.metadata.as_ref()).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.idempotency_key.as_deref()).collect();
    let hashes: Vec<Option<&[u8]>> = rows.iter().map(|r| r.request_hash.as_deref()).collect();
    let responses: Vec<Option<&serde_json::Value>> = rows
        .iter()
        .map(|r| r.idempotency_response.as_ref())
        .collect();
    let notify: Vec<bool> = rows.iter().map(|r| r.notify_on_finish).collect();
    let queued: Vec<DateTime<Utc>> = rows.iter().map(|r| r.queued_at).collect();
    let msg_ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
    let messages: Vec<&[u8]> = rows.iter().map(|r| r.message.as_slice()).collect();
    let out = client
        .query(
            &stmt,
            &[
                &ids,
                &accounts,
                &template_ids,
                &formats,
                &bodies,
                &data,
                &providers,
                &callbacks,
                &metadata,
                &keys,
                &hashes,
                &responses,
                &notify,
                &queued,
                &msg_ids,
                &messages,
                &traceparents,
                &outbox::HANDOFF_GRACE_SECS,
                &(requests_per_message.max(1) as i64),
            ],
        )
        .await?;
    let mut inserted = Inserted::default();
    for r in &out {
        match r.get::<_, Option<Uuid>>(0) {
            Some(id) => inserted.ids.push(id),
            None => inserted.outbox.extend(outbox::handed_row(r, 1)),
        }
    }
    Ok(inserted)
}

/// What an earlier submission with the same Idempotency-Key stored.
#[derive(Debug, Clone)]
pub struct IdempotentHit {
    pub id: Uuid,
    pub request_hash: Option<Vec<u8>>,
    pub response: Option<serde_json::Value>,
}

pub async fn find_by_idempotency_key(
    pool: &Pool,
    account_id: Uuid,
    key: &str,
) -> Result<Option<IdempotentHit>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, request_hash, idempotency_response FROM dispatches
             WHERE account_id = $1 AND idempotency_key = $2",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&account_id, &key])
        .await?
        .map(|r| IdempotentHit {
            id: r.get(0),
            request_hash: r.get(1),
            response: r.get(2),
        }))
}

/// The client-visible state of a dispatch.
#[derive(Debug, Clone)]
pub struct DispatchView {
    pub id: Uuid,
    pub account_id: Uuid,
    pub status: DispatchStatus,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub has_result: bool,
    pub error: Option<DispatchError>,
    pub metadata: Option<serde_json::Value>,
    pub provider_status: Option<String>,
    pub provider_status_at: Option<DateTime<Utc>>,
    pub provider_reply: Option<String>,
    /// Provider tries that failed for now and were retried.
    pub provider_attempts: i32,
}

const VIEW_COLUMNS: &str = "id, account_id, status, queued_at, started_at, completed_at,
     result_content_type IS NOT NULL AS has_result, error, metadata, provider_status,
     provider_status_at, provider_reply, provider_attempts";

fn view_from_row(r: &Row) -> Result<DispatchView, DbError> {
    let status: String = r.get("status");
    let error: Option<serde_json::Value> = r.get("error");
    Ok(DispatchView {
        id: r.get("id"),
        account_id: r.get("account_id"),
        status: status.parse().map_err(DbError::Corrupt)?,
        queued_at: r.get("queued_at"),
        started_at: r.get("started_at"),
        completed_at: r.get("completed_at"),
        has_result: r.get("has_result"),
        error: error
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| DbError::Corrupt(format!("dispatch error column: {e}")))?,
        metadata: r.get("metadata"),
        provider_status: r.get("provider_status"),
        provider_status_at: r.get("provider_status_at"),
        provider_reply: r.get("provider_reply"),
        provider_attempts: r.get("provider_attempts"),
    })
}

pub async fn get(pool: &Pool, account_id: Uuid, id: Uuid) -> Result<Option<DispatchView>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {VIEW_COLUMNS} FROM dispatches WHERE id = $1 AND account_id = $2"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&id, &account_id])
        .await?
        .as_ref()
        .map(view_from_row)
        .transpose()
}

/// Newest first, optionally filtered by status; `before` is the keyset cursor of the last row seen.
pub async fn list(
    pool: &Pool,
    account_id: Uuid,
    status: Option<DispatchStatus>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<DispatchView>, DbError> {
    let client = pool.get().await?;
    let (ts, id) = before.unzip();
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {VIEW_COLUMNS} FROM dispatches
             WHERE account_id = $1
               AND ($2::text IS NULL OR status = $2)
               AND ($3::timestamptz IS NULL OR (queued_at, id) < ($3, $4))
             ORDER BY queued_at DESC, id DESC LIMIT $5"
        ))
        .await?;
    let status = status.map(|s| s.as_str());
    client
        .query(&stmt, &[&account_id, &status, &ts, &id, &limit])
        .await?
        .iter()
        .map(view_from_row)
        .collect()
}

/// A metadata search: dispatches with a top-level metadata value equal to `value` (strings
/// compare without their quotes, numbers and booleans as written), under `key` only if given.
#[derive(Debug, Clone, Copy)]
pub struct MetadataMatch<'a> {
    pub key: Option<&'a str>,
    pub value: &'a str,
}

/// [`list`] narrowed to the dispatches whose metadata matches: newest first with the same keyset
/// cursor. It reads the account's dispatches in that order until the page is full.
pub async fn search_metadata(
    pool: &Pool,
    account_id: Uuid,
    status: Option<DispatchStatus>,
    matching: MetadataMatch<'_>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<DispatchView>, DbError> {
    let client = pool.get().await?;
    let (ts, id) = before.unzip();
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {VIEW_COLUMNS} FROM dispatches
             WHERE account_id = $1
               AND ($2::text IS NULL OR status = $2)
               AND ($3::timestamptz IS NULL OR (queued_at, id) < ($3, $4))
               AND jsonb_typeof(metadata) = 'object'
               AND EXISTS (SELECT 1 FROM jsonb_each_text(metadata) m
                           WHERE m.value = $6 AND ($7::text IS NULL OR m.key = $7))
             ORDER BY queued_at DESC, id DESC LIMIT $5"
        ))
        .await?;
    let status = status.map(|s| s.as_str());
    client
        .query(
            &stmt,
            &[
                &account_id,
                &status,
                &ts,
                &id,
                &limit,
                &matching.value,
                &matching.key,
            ],
        )
        .await?
        .iter()
        .map(view_from_row)
        .collect()
}

/// Where a dispatch's rendered document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultBody {
    /// In the `result` column.
    Inline(Vec<u8>),
    /// In the object store (`storage.url`), under this key.
    Stored(String),
}

/// A dispatch's rendered document, once it has one: its content type and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub content_type: String,
    pub body: ResultBody,
}

/// `None`: no such dispatch (for this account). `Some(None)`: the dispatch has no document (yet).
pub async fn get_result(
    pool: &Pool,
    account_id: Uuid,
    id: Uuid,
) -> Result<Option<Option<StoredResult>>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT result, result_key, result_content_type FROM dispatches
             WHERE id = $1 AND account_id = $2",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id, &account_id]).await? else {
        return Ok(None);
    };
    let (inline, key, content_type): (Option<Vec<u8>>, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let body = match (key, inline) {
        (Some(key), _) => Some(ResultBody::Stored(key)),
        (None, Some(bytes)) => Some(ResultBody::Inline(bytes)),
        (None, None) => None,
    };
    Ok(Some(content_type.zip(body).map(|(content_type, body)| {
        StoredResult { content_type, body }
    })))
}

/// The content type of the dispatch's document, once it has one (without reading the document).
pub async fn result_content_type(
    pool: &Pool,
    account_id: Uuid,
    id: Uuid,
) -> Result<Option<String>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT result_content_type FROM dispatches WHERE id = $1 AND account_id = $2",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id, &account_id])
        .await?
        .and_then(|r| r.get(0)))
}

/// A dispatch a worker has taken up (`processing`, or still `queued` on the quick path of
/// [`claim`]), with everything needed to run it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub account_id: Uuid,
    pub template_format: TemplateFormat,
    pub template_body: String,
    pub data: serde_json::Value,
    pub provider: serde_json::Value,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Provider tries made before this one.
    pub provider_attempts: i32,
}

/// What [`claim`] found.
#[derive(Debug, Default)]
pub struct Claim {
    /// Dispatches now `processing`, to be rendered and provided.
    pub claimed: Vec<Claimed>,
    /// Unfinished dispatches already taken up `max_attempts` times: each time their worker
    /// stopped before finishing. They are left as they are, for their message to be quarantined.
    pub exhausted: Vec<Uuid>,
}

/// One `dispatch.requested` message to act on: its dispatch, the provider-try count it carries,
/// and whether the broker delivers it for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub id: Uuid,
    pub provider_attempts: i32,
    pub first_delivery: bool,
}

/// Takes up the given dispatches, in one statement, and returns them.
///
/// A dispatch for the `store` provider whose message arrives for the first time is only read: its
/// outcome is written by [`settle`] straight from `queued` (claim and finish in one write), since
/// rendering it has no effect outside this database. Every other one moves to `processing` where
/// that is legal (`queued`, or `processing` left by a worker that died) and fewer than
/// `max_attempts` processing attempts were started: a provider call takes time and has effects,
/// and a redelivered message means a worker may have died on this dispatch, which must count
/// towards quarantine. Finished dispatches are in neither list: their redelivered messages are
/// simply acknowledged.
///
/// The statement commits without waiting for the WAL flush (an `AsyncCommitPool`): if a claim is
/// lost in a crash the dispatch is simply still `queued` when its message is redelivered. The
/// finishing statement, which must not be lost once the message is acknowledged, commits
/// synchronously. A message whose provider-try count is not the dispatch's any more (its retry
/// was scheduled since) takes up nothing.
pub async fn claim(
    pool: &AsyncCommitPool,
    requests: &[ClaimRequest],
    max_attempts: i32,
) -> Result<Claim, DbError> {
    let client = pool.get().await?;
    let sources: Vec<&str> = DispatchStatus::sources_of(DispatchStatus::Processing)
        .iter()
        .map(|s| s.as_str())
        .collect();
    // The three parts read the snapshot from before the update, so they are disjoint.
    let stmt = client
        .prepare_cached(
            "WITH m AS (
                 SELECT * FROM unnest($1::uuid[], $4::int[], $5::bool[])
                 AS t(id, provider_attempts, first_delivery)
             ), quick AS (
                 SELECT d.id, d.account_id, d.template_format, d.template_body, d.data,
                        d.provider, d.callback_url, d.metadata, d.provider_attempts
                 FROM dispatches d JOIN m USING (id)
                 WHERE m.first_delivery AND d.provider_attempts = m.provider_attempts
                   AND d.status = 'queued' AND d.provider->>'type' = 'store'
                   AND d.processing_attempts < $3
             ), upd AS (
                 UPDATE dispatches d
                 SET status = 'processing', started_at = COALESCE(started_at, now()),
                     processing_attempts = d.processing_attempts + 1
                 FROM m
                 WHERE d.id = m.id AND d.provider_attempts = m.provider_attempts
                   AND d.status = ANY($2) AND d.processing_attempts < $3
                   AND d.id NOT IN (SELECT id FROM quick)
                 RETURNING d.id, d.account_id, d.template_format, d.template_body, d.data,
                           d.provider, d.callback_url, d.metadata, d.provider_attempts
             )
             SELECT id, account_id, template_format, template_body, data, provider,
                    callback_url, metadata, provider_attempts, false AS exhausted
             FROM upd
             UNION ALL
             SELECT id, account_id, template_format, template_body, data, provider,
                    callback_url, metadata, provider_attempts, false
             FROM quick
             UNION ALL
             SELECT d.id, d.account_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true
             FROM dispatches d JOIN m USING (id)
             WHERE d.provider_attempts = m.provider_attempts
               AND d.status = ANY($2) AND d.processing_attempts >= $3",
        )
        .await?;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let tries: Vec<i32> = requests.iter().map(|r| r.provider_attempts).collect();
    let first: Vec<bool> = requests.iter().map(|r| r.first_delivery).collect();
    let rows = client
        .query(&stmt, &[&ids, &sources, &max_attempts, &tries, &first])
        .await?;
    let mut out = Claim::default();
    for r in &rows {
        if r.get::<_, bool>("exhausted") {
            out.exhausted.push(r.get("id"));
            continue;
        }
        let f: String = r.get("template_format");
        out.claimed.push(Claimed {
            id: r.get("id"),
            account_id: r.get("account_id"),
            template_format: TemplateFormat::parse(&f)
                .ok_or_else(|| DbError::Corrupt(format!("template format `{f}`")))?,
            template_body: r.get("template_body"),
            data: r.get("data"),
            provider: r.get("provider"),
            callback_url: r.get("callback_url"),
            metadata: r.get("metadata"),
            provider_attempts: r.get("provider_attempts"),
        });
    }
    Ok(out)
}

/// Takes back the processing attempt [`claim`] counted for dispatches still `processing` whose
/// batch could not be finished for a reason outside the dispatch (its document could not be
/// written to the object store): their redelivery does not bring them closer to quarantine.
pub async fn unclaim(pool: &AsyncCommitPool, ids: &[Uuid]) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE dispatches SET processing_attempts = processing_attempts - 1
             WHERE id = ANY($1) AND status = 'processing' AND processing_attempts > 0",
        )
        .await?;
    Ok(client.execute(&stmt, &[&ids]).await?)
}

/// The outcome of one claimed dispatch, with its outcome event already serialized.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: Uuid,
    pub status: DispatchStatus,
    /// The provider-try count the dispatch was taken up with: the outcome is written only while
    /// the dispatch still has it.
    pub provider_attempts: i32,
    /// When this worker began on it (kept if an earlier claim recorded one).
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    /// The document, to be kept in the `result` column.
    pub result: Option<Vec<u8>>,
    /// Or the key of the document already written to the object store (`storage.url`).
    pub result_key: Option<String>,
    pub content_type: Option<String>,
    pub error: Option<serde_json::Value>,
    pub event_id: Uuid,
    pub routing_key: &'static str,
    pub event: Vec<u8>,
    pub traceparent: Option<String>,
    /// What the provider answered (an SMTP relay's reply).
    pub provider_reply: Option<String>,
    /// A provider's own report of this outcome (the email provider's `accepted` or `failed`),
    /// stored and applied like a provider callback.
    pub provider_event: Option<OwnProviderEvent>,
}

/// A provider event the worker itself records, with its `provider.event` message.
#[derive(Debug, Clone)]
pub struct OwnProviderEvent {
    pub provider: &'static str,
    pub event_id: String,
    pub event_type: &'static str,
    pub body: Vec<u8>,
    pub message_id: Uuid,
    pub message: Vec<u8>,
}

/// A dispatch whose provider failed for now, with the retry message that brings it back.
#[derive(Debug, Clone)]
pub struct Requeued {
    pub id: Uuid,
    /// The transient failure, shown on the queued dispatch until its next try.
    pub error: serde_json::Value,
    pub message_id: Uuid,
    /// A delay queue's routing key: the message comes back as `dispatch.requested` when it expires.
    pub routing_key: String,
    pub message: Vec<u8>,
    pub traceparent: Option<String>,
}

/// Records a batch's outcomes (with their outbox events) and its retries in one transaction. Only
/// unfinished dispatches at the provider-try count they were taken up with change (`processing`,
/// or `queued` for those [`claim`] only read), so a duplicate worker cannot finish a dispatch
/// twice, emit two outcome events or schedule two retries.
///
/// The outcome events of one type go out together, up to `events_per_message` in one message
/// (an `OutcomeBatch`); a lone event is sent as itself, with its trace context in the headers.
///
/// Returns the outbox rows written, to hand to the relay after the commit.
pub async fn settle(
    pool: &Pool,
    finished: &[Finished],
    requeued: &[Requeued],
    events_per_message: usize,
) -> Result<Vec<OutboxRow>, DbError> {
    let mut client = pool.get().await?;
    if requeued.is_empty() {
        return finish_rows(&client, finished, events_per_message).await;
    }
    let tx = client.transaction().await?;
    let mut outbox = Vec::new();
    if !finished.is_empty() {
        outbox = finish_rows(&tx, finished, events_per_message).await?;
    }
    outbox.extend(requeue_rows(&tx, requeued).await?);
    tx.commit().await?;
    Ok(outbox)
}

async fn finish_rows(
    client: &impl deadpool_postgres::GenericClient,
    rows: &[Finished],
    events_per_message: usize,
) -> Result<Vec<OutboxRow>, DbError> {
    debug_assert!(rows.iter().all(|r| r.status.is_terminal()));
    let stmt = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bytea[],
                                      $5::text[], $6::jsonb[], $7::uuid[], $8::text[], $9::bytea[],
                                      $10::text[], $11::text[], $12::text[], $13::text[],
                                      $14::text[], $15::bytea[], $16::uuid[], $17::bytea[],
                                      $18::text[], $19::int4[], $20::timestamptz[])
                 WITH ORDINALITY
                 AS t(id, status, completed_at, result, content_type, error, event_id, routing_key,
                      event, traceparent, provider_reply, pe_provider, pe_event_id, pe_type,
                      pe_body, pe_message_id, pe_message, result_key, provider_attempts,
                      started_at, ord)
             ), upd AS (
                 UPDATE dispatches d
                 SET status = i.status, started_at = COALESCE(d.started_at, i.started_at),
                     completed_at = i.completed_at, result = i.result,
                     result_key = i.result_key, result_content_type = i.content_type,
                     error = i.error, provider_reply = i.provider_reply
                 FROM input i
                 WHERE d.id = i.id AND d.status = ANY($21::text[])
                   AND d.provider_attempts = i.provider_attempts
                 RETURNING d.id
             ), pe AS (
                 INSERT INTO provider_events (provider, event_id, dispatch_id, type, occurred_at, body)
                 SELECT i.pe_provider, i.pe_event_id, i.id, i.pe_type, i.completed_at, i.pe_body
                 FROM input i JOIN upd USING (id)
                 WHERE i.pe_event_id IS NOT NULL
                 ON CONFLICT (provider, event_id) DO NOTHING
                 RETURNING provider, event_id
             ), outcome AS (
                 -- The events of one type, in batch order, numbered into messages of $22.
                 SELECT i.event_id, i.routing_key, i.event, i.traceparent, i.ord,
                        (row_number() OVER (PARTITION BY i.routing_key ORDER BY i.ord) - 1) / $22
                            AS message
                 FROM input i JOIN upd USING (id)
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload, headers, relay_after)
                 SELECT (array_agg(o.event_id ORDER BY o.ord))[1], o.routing_key,
                        outbox_batch_body('events', 'event', array_agg(o.event ORDER BY o.ord),
                                          array_agg(o.traceparent ORDER BY o.ord)),
                        outbox_batch_headers(array_agg(o.traceparent ORDER BY o.ord)),
                        now() + make_interval(secs => $23)
                 FROM outcome o
                 GROUP BY o.routing_key, o.message
                 UNION ALL
                 SELECT i.pe_message_id, 'provider.event', i.pe_message, NULL,
                        now() + make_interval(secs => $23)
                 FROM input i JOIN pe ON pe.provider = i.pe_provider AND pe.event_id = i.pe_event_id
                 RETURNING id, message_id, routing_key, payload, headers->>'traceparent'
             )
             -- `upd` and `pe` take effect whether or not the result reads them.
             SELECT * FROM ob",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let completed: Vec<DateTime<Utc>> = rows.iter().map(|r| r.completed_at).collect();
    let results: Vec<Option<&[u8]>> = rows.iter().map(|r| r.result.as_deref()).collect();
    let types: Vec<Option<&str>> = rows.iter().map(|r| r.content_type.as_deref()).collect();
    let errors: Vec<Option<&serde_json::Value>> = rows.iter().map(|r| r.error.as_ref()).collect();
    let event_ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.routing_key).collect();
    let events: Vec<&[u8]> = rows.iter().map(|r| r.event.as_slice()).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.traceparent.as_deref()).collect();
    let replies: Vec<Option<&str>> = rows.iter().map(|r| r.provider_reply.as_deref()).collect();
    let result_keys: Vec<Option<&str>> = rows.iter().map(|r| r.result_key.as_deref()).collect();
    let tries: Vec<i32> = rows.iter().map(|r| r.provider_attempts).collect();
    let started: Vec<DateTime<Utc>> = rows.iter().map(|r| r.started_at).collect();
    // Completed and failed have the same sources (checked in the tests below).
    let sources: Vec<&str> = DispatchStatus::sources_of(DispatchStatus::Completed)
        .iter()
        .map(|s| s.as_str())
        .collect();
    let pe = |f: fn(&OwnProviderEvent) -> Option<&str>| -> Vec<Option<&str>> {
        rows.iter()
            .map(|r| r.provider_event.as_ref().and_then(f))
            .collect()
    };
    let pe_providers = pe(|e| Some(e.provider));
    let pe_ids = pe(|e| Some(e.event_id.as_str()));
    let pe_types = pe(|e| Some(e.event_type));
    let pe_bodies: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| r.provider_event.as_ref().map(|e| e.body.as_slice()))
        .collect();
    let pe_message_ids: Vec<Option<Uuid>> = rows
        .iter()
        .map(|r| r.provider_event.as_ref().map(|e| e.message_id))
        .collect();
    let pe_messages: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| r.provider_event.as_ref().map(|e| e.message.as_slice()))
        .collect();
    let out = client
        .query(
            &stmt,
            &[
                &ids,
                &statuses,
                &completed,
                &results,
                &types,
                &errors,
                &event_ids,
                &keys,
                &events,
                &traces,
                &replies,
                &pe_providers,
                &pe_ids,
                &pe_types,
                &pe_bodies,
                &pe_message_ids,
                &pe_messages,
                &result_keys,
                &tries,
                &started,
                &sources,
                &(events_per_message.max(1) as i64),
                &outbox::HANDOFF_GRACE_SECS,
            ],
        )
        .await?;
    Ok(out
        .iter()
        .filter_map(|r| outbox::handed_row(r, 0))
        .collect())
}

/// Puts dispatches back in line after a transient provider failure, with their retry messages.
async fn requeue_rows(
    client: &impl deadpool_postgres::GenericClient,
    rows: &[Requeued],
) -> Result<Vec<OutboxRow>, DbError> {
    let sources: Vec<&str> = DispatchStatus::sources_of(DispatchStatus::Queued)
        .iter()
        .map(|s| s.as_str())
        .collect();
    let stmt = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::jsonb[], $3::uuid[], $4::text[], $5::bytea[],
                                      $6::text[])
                 AS t(id, error, message_id, routing_key, message, traceparent)
             ), upd AS (
                 UPDATE dispatches d
                 SET status = 'queued', provider_attempts = d.provider_attempts + 1,
                     processing_attempts = 0, error = i.error
                 FROM input i
                 WHERE d.id = i.id AND d.status = ANY($7)
                 RETURNING d.id
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload, headers, relay_after)
                 SELECT i.message_id, i.routing_key, i.message,
                        CASE WHEN i.traceparent IS NULL THEN NULL
                             ELSE jsonb_build_object('traceparent', i.traceparent) END,
                        now() + make_interval(secs => $8)
                 FROM input i JOIN upd USING (id)
                 RETURNING id, message_id, routing_key, payload, headers->>'traceparent'
             )
             SELECT * FROM ob",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let errors: Vec<&serde_json::Value> = rows.iter().map(|r| &r.error).collect();
    let message_ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.routing_key.as_str()).collect();
    let messages: Vec<&[u8]> = rows.iter().map(|r| r.message.as_slice()).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.traceparent.as_deref()).collect();
    let out = client
        .query(
            &stmt,
            &[
                &ids,
                &errors,
                &message_ids,
                &keys,
                &messages,
                &traces,
                &sources,
                &outbox::HANDOFF_GRACE_SECS,
            ],
        )
        .await?;
    Ok(out
        .iter()
        .filter_map(|r| outbox::handed_row(r, 0))
        .collect())
}
