//! Each subscription's endpoint health (see `dispatcher_core::health`), read and written inside
//! the transaction that records the attempts it is folded from.

use crate::{DbError, Pool};
use deadpool_postgres::Transaction;
use dispatcher_core::health::Health;
use std::collections::HashMap;
use tokio_postgres::Row;
use uuid::Uuid;

const COLUMNS: &str = "webhook_id, attempts, success_rate, last_success_at, last_error_at,
                       last_error, consecutive_failures, failing_since, breaker_open";

fn from_row(r: &Row) -> (Uuid, Health) {
    (
        r.get(0),
        Health {
            attempts: r.get(1),
            success_rate: r.get(2),
            last_success_at: r.get(3),
            last_error_at: r.get(4),
            last_error: r.get(5),
            consecutive_failures: r.get(6),
            failing_since: r.get(7),
            breaker_open: r.get(8),
        },
    )
}

/// The health of these subscriptions (`(webhook_id, account_id)`), locked until the transaction
/// ends: rows that do not exist yet are created first, so two deliverers recording attempts for
/// the same endpoint take turns instead of overwriting each other.
pub async fn lock(
    tx: &Transaction<'_>,
    webhooks: &[(Uuid, Uuid)],
) -> Result<HashMap<Uuid, Health>, DbError> {
    if webhooks.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids: Vec<Uuid> = webhooks.iter().map(|w| w.0).collect();
    let accounts: Vec<Uuid> = webhooks.iter().map(|w| w.1).collect();
    let create = tx
        .prepare_cached(
            "INSERT INTO endpoint_health (webhook_id, account_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[])
             ORDER BY 1
             ON CONFLICT (webhook_id) DO NOTHING",
        )
        .await?;
    tx.execute(&create, &[&ids, &accounts]).await?;
    ids.sort_unstable();
    let select = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM endpoint_health WHERE webhook_id = ANY($1)
             ORDER BY webhook_id FOR UPDATE"
        ))
        .await?;
    Ok(tx
        .query(&select, &[&ids])
        .await?
        .iter()
        .map(from_row)
        .collect())
}

/// Writes back health read with [`lock`].
pub async fn store(tx: &Transaction<'_>, rows: &HashMap<Uuid, Health>) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE endpoint_health h SET
                 attempts = t.attempts, success_rate = t.success_rate,
                 last_success_at = t.last_success_at, last_error_at = t.last_error_at,
                 last_error = t.last_error, consecutive_failures = t.consecutive_failures,
                 failing_since = t.failing_since, breaker_open = t.breaker_open,
                 updated_at = now()
             FROM unnest($1::uuid[], $2::int8[], $3::float8[], $4::timestamptz[],
                         $5::timestamptz[], $6::text[], $7::int4[], $8::timestamptz[],
                         $9::bool[])
                  AS t(webhook_id, attempts, success_rate, last_success_at, last_error_at,
                       last_error, consecutive_failures, failing_since, breaker_open)
             WHERE h.webhook_id = t.webhook_id",
        )
        .await?;
    let ids: Vec<Uuid> = rows.keys().copied().collect();
    let h: Vec<&Health> = ids.iter().map(|id| &rows[id]).collect();
    let attempts: Vec<i64> = h.iter().map(|h| h.attempts).collect();
    let rate: Vec<f64> = h.iter().map(|h| h.success_rate).collect();
    let ok_at: Vec<_> = h.iter().map(|h| h.last_success_at).collect();
    let err_at: Vec<_> = h.iter().map(|h| h.last_error_at).collect();
    let err: Vec<Option<&str>> = h.iter().map(|h| h.last_error.as_deref()).collect();
    let consecutive: Vec<i32> = h.iter().map(|h| h.consecutive_failures).collect();
    let since: Vec<_> = h.iter().map(|h| h.failing_since).collect();
    let open: Vec<bool> = h.iter().map(|h| h.breaker_open).collect();
    tx.execute(
        &stmt,
        &[
            &ids,
            &attempts,
            &rate,
            &ok_at,
            &err_at,
            &err,
            &consecutive,
            &since,
            &open,
        ],
    )
    .await?;
    Ok(())
}

/// One subscription's health, if it has any attempts yet.
pub async fn get(
    pool: &Pool,
    account_id: Uuid,
    webhook_id: Uuid,
) -> Result<Option<Health>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM endpoint_health WHERE webhook_id = $1 AND account_id = $2"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&webhook_id, &account_id])
        .await?
        .as_ref()
        .map(|r| from_row(r).1))
}
