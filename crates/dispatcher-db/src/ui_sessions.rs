//! Dashboard sessions, keyed by the SHA-256 of the id in the browser's cookie. Whether a session
//! is still valid (idle and absolute expiry) is decided by the caller from the times read here.

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSession {
    pub account_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

pub async fn insert(
    pool: &Pool,
    id_hash: &[u8],
    account_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO ui_sessions (id_hash, account_id, created_at, last_seen_at)
             VALUES ($1, $2, $3, $3)",
            &[&id_hash, &account_id, &now],
        )
        .await?;
    Ok(())
}

pub async fn get(pool: &Pool, id_hash: &[u8]) -> Result<Option<UiSession>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT account_id, created_at, last_seen_at FROM ui_sessions WHERE id_hash = $1",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id_hash])
        .await?
        .map(|r| UiSession {
            account_id: r.get(0),
            created_at: r.get(1),
            last_seen_at: r.get(2),
        }))
}

/// Records activity on a session (its idle expiry starts again from `now`).
pub async fn touch(pool: &Pool, id_hash: &[u8], now: DateTime<Utc>) -> Result<(), DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("UPDATE ui_sessions SET last_seen_at = $2 WHERE id_hash = $1")
        .await?;
    client.execute(&stmt, &[&id_hash, &now]).await?;
    Ok(())
}

/// Ends a session; true if it existed.
pub async fn delete(pool: &Pool, id_hash: &[u8]) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute("DELETE FROM ui_sessions WHERE id_hash = $1", &[&id_hash])
        .await?
        == 1)
}

/// Deletes an account's sessions idle since before `idle_before` or created before
/// `created_before` (run at each sign-in, so expired rows do not pile up).
pub async fn delete_expired(
    pool: &Pool,
    account_id: Uuid,
    idle_before: DateTime<Utc>,
    created_before: DateTime<Utc>,
) -> Result<u64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM ui_sessions
             WHERE account_id = $1 AND (last_seen_at < $2 OR created_at < $3)",
            &[&account_id, &idle_before, &created_before],
        )
        .await?)
}
