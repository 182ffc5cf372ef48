//! Webhook subscriptions: an account's standing callbacks for event types (or `*`).

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: Uuid,
    pub event: String,
    pub callback_url: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, event, callback_url, description, created_at, disabled_at";

fn from_row(r: &Row) -> Subscription {
    Subscription {
        id: r.get(0),
        event: r.get(1),
        callback_url: r.get(2),
        description: r.get(3),
        created_at: r.get(4),
        disabled_at: r.get(5),
    }
}

pub async fn insert(
    pool: &Pool,
    account_id: Uuid,
    event: &str,
    callback_url: &str,
    description: Option<&str>,
) -> Result<Subscription, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "INSERT INTO webhook_subscriptions (id, account_id, event, callback_url, description)
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &Uuid::now_v7(),
                &account_id,
                &event,
                &callback_url,
                &description,
            ],
        )
        .await?;
    Ok(from_row(&row))
}

pub async fn get(pool: &Pool, account_id: Uuid, id: Uuid) -> Result<Option<Subscription>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM webhook_subscriptions
             WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id, &account_id])
        .await?
        .as_ref()
        .map(from_row))
}

/// Newest first; `before` is the keyset cursor of the last row seen.
pub async fn list(
    pool: &Pool,
    account_id: Uuid,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Subscription>, DbError> {
    let client = pool.get().await?;
    let (ts, id) = before.unzip();
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM webhook_subscriptions
             WHERE account_id = $1 AND deleted_at IS NULL
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&account_id, &ts, &id, &limit])
        .await?
        .iter()
        .map(from_row)
        .collect())
}

/// Soft-deletes (attempt history keeps referring to it). Returns false if there was none.
pub async fn delete(pool: &Pool, account_id: Uuid, id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE webhook_subscriptions SET deleted_at = now()
             WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
        )
        .await?;
    Ok(client.execute(&stmt, &[&id, &account_id]).await? == 1)
}

/// Active subscriptions of the given accounts matching `event` (or `*`):
/// (account_id, webhook_id, callback_url).
pub async fn matching(
    pool: &Pool,
    account_ids: &[Uuid],
    event: &str,
) -> Result<Vec<(Uuid, Uuid, String)>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT account_id, id, callback_url FROM webhook_subscriptions
             WHERE account_id = ANY($1) AND deleted_at IS NULL AND disabled_at IS NULL
               AND (event = '*' OR event = $2)",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&account_ids, &event])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
