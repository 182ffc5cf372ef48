//! Inbound provider callbacks: stored (with their outbox message) before the 200, applied later.

use crate::outbox::{self, NewMessage};
use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewProviderEvent {
    pub provider: String,
    pub event_id: String,
    pub dispatch_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub body: Vec<u8>,
    pub message_id: Uuid,
    pub message: Vec<u8>,
}

/// Stores the event and its `provider.event` message in one statement. A duplicate event id is
/// accepted and ignored; returns whether it was new.
pub async fn store(pool: &Pool, e: &NewProviderEvent) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH ins AS (
                 INSERT INTO provider_events (provider, event_id, dispatch_id, type, occurred_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (provider, event_id) DO NOTHING
                 RETURNING 1
             ), ob AS (
                 INSERT INTO outbox (message_id, routing_key, payload)
                 SELECT $7, 'provider.event', $8 FROM ins
             )
             SELECT count(*) FROM ins",
        )
        .await?;
    let n: i64 = client
        .query_one(
            &stmt,
            &[
                &e.provider,
                &e.event_id,
                &e.dispatch_id,
                &e.event_type,
                &e.occurred_at,
                &e.body,
                &e.message_id,
                &e.message,
            ],
        )
        .await?
        .get(0);
    Ok(n == 1)
}

/// A provider event applied for the first time, with what forwarding it needs of its dispatch.
#[derive(Debug, Clone)]
pub struct Applied {
    pub provider: String,
    pub event_id: String,
    pub dispatch_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub account_id: Uuid,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Applies stored events to their dispatches and queues the webhook of each event applied for
/// the first time (`forward` builds its outbox message), in one transaction. The newest report
/// wins the dispatch's provider status, so duplicates and out-of-order arrivals leave it in the
/// state of the latest event; an older event is still forwarded, with its own time. A repeated
/// event was applied before and is not forwarded again. Returns the events newly applied.
pub async fn apply(
    pool: &Pool,
    keys: &[(String, String)],
    forward: impl Fn(&Applied) -> Option<NewMessage>,
) -> Result<Vec<Applied>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let providers: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let mark = tx
        .prepare_cached(
            "UPDATE provider_events e SET applied_at = now()
             FROM unnest($1::text[], $2::text[]) AS k(provider, event_id), dispatches d
             WHERE e.provider = k.provider AND e.event_id = k.event_id AND e.applied_at IS NULL
               AND d.id = e.dispatch_id
             RETURNING e.provider, e.event_id, e.dispatch_id, e.type, e.occurred_at,
                       d.account_id, d.callback_url, d.metadata",
        )
        .await?;
    let applied: Vec<Applied> = tx
        .query(&mark, &[&providers, &ids])
        .await?
        .iter()
        .map(|r| Applied {
            provider: r.get(0),
            event_id: r.get(1),
            dispatch_id: r.get(2),
            event_type: r.get(3),
            occurred_at: r.get(4),
            account_id: r.get(5),
            callback_url: r.get(6),
            metadata: r.get(7),
        })
        .collect();
    let status = tx
        .prepare_cached(
            "WITH ev AS (
                 SELECT DISTINCT ON (e.dispatch_id) e.dispatch_id, e.type, e.occurred_at
                 FROM provider_events e
                 JOIN unnest($1::text[], $2::text[]) AS k(provider, event_id)
                   ON e.provider = k.provider AND e.event_id = k.event_id
                 ORDER BY e.dispatch_id, e.occurred_at DESC
             )
             UPDATE dispatches d SET provider_status = ev.type, provider_status_at = ev.occurred_at
             FROM ev
             WHERE d.id = ev.dispatch_id
               AND (d.provider_status_at IS NULL OR d.provider_status_at < ev.occurred_at)",
        )
        .await?;
    tx.execute(&status, &[&providers, &ids]).await?;
    let messages: Vec<NewMessage> = applied.iter().filter_map(&forward).collect();
    outbox::insert(&tx, &messages).await?;
    tx.commit().await?;
    Ok(applied)
}
