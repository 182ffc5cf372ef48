//! Webhook subscriptions: an account's standing callbacks for event types (or `*`).

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use dispatcher_core::signing::WebhookSecret;
use std::collections::HashMap;
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
    pub disabled_reason: Option<String>,
    /// Requests per second its endpoint receives from each deliverer.
    pub rate_limit: Option<i32>,
}

const COLUMNS: &str =
    "id, event, callback_url, description, created_at, disabled_at, disabled_reason, rate_limit";

fn from_row(r: &Row) -> Subscription {
    Subscription {
        id: r.get(0),
        event: r.get(1),
        callback_url: r.get(2),
        description: r.get(3),
        created_at: r.get(4),
        disabled_at: r.get(5),
        disabled_reason: r.get(6),
        rate_limit: r.get(7),
    }
}

pub async fn insert(
    pool: &Pool,
    account_id: Uuid,
    event: &str,
    callback_url: &str,
    description: Option<&str>,
    rate_limit: Option<i32>,
) -> Result<Subscription, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "INSERT INTO webhook_subscriptions (id, account_id, event, callback_url, description,
                                                rate_limit)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
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
                &rate_limit,
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

/// The reason stored on a subscription its account disabled.
pub const DISABLED_BY_ACCOUNT: &str = "disabled by the account";

/// Disables (`enabled` false, with [`DISABLED_BY_ACCOUNT`] as its reason) or enables again one of
/// the account's subscriptions: a disabled subscription matches no event. Returns false if the
/// account has no such subscription.
///
/// Enabling a disabled subscription also starts its endpoint's failure streak afresh (no
/// consecutive failures, closed breaker; the success rate and last error stay as history). The
/// account enables it once the endpoint works again: with the old streak, its first failure
/// would disable it again at once, and the open breaker would hold its first deliveries back.
pub async fn set_enabled(
    pool: &Pool,
    account_id: Uuid,
    id: Uuid,
    enabled: bool,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH target AS (
                 SELECT id, disabled_at IS NOT NULL AS was_disabled FROM webhook_subscriptions
                 WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL
                 FOR UPDATE
             ), switched AS (
                 UPDATE webhook_subscriptions s
                 SET disabled_at = CASE WHEN $3 THEN NULL
                                        ELSE COALESCE(s.disabled_at, now()) END,
                     disabled_reason = CASE WHEN $3 THEN NULL
                                            ELSE COALESCE(s.disabled_reason, $4) END
                 FROM target t WHERE s.id = t.id
                 RETURNING s.id
             ), fresh_streak AS (
                 UPDATE endpoint_health h
                 SET consecutive_failures = 0, failing_since = NULL, breaker_open = false,
                     updated_at = now()
                 FROM target t WHERE $3 AND t.was_disabled AND h.webhook_id = t.id
             )
             SELECT count(*) FROM switched",
        )
        .await?;
    let switched: i64 = client
        .query_one(&stmt, &[&id, &account_id, &enabled, &DISABLED_BY_ACCOUNT])
        .await?
        .get(0);
    Ok(switched == 1)
}

/// Where a batch's events of one type go, and how their webhooks are signed, in one statement:
/// the accounts' active subscriptions for `event` (those naming it or its family (`family`, e.g.
/// `provider.*`), and those for `*` when `wildcard`: operational events are only sent to
/// subscriptions that name them), and every account's signing secrets (an account not found is
/// an error).
pub async fn targets(
    pool: &Pool,
    account_ids: &[Uuid],
    event: &str,
    family: &str,
    wildcard: bool,
) -> Result<Targets, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT a.id, a.webhook_secret,
                    CASE WHEN a.previous_secret_until > now() THEN a.previous_webhook_secret END,
                    s.id, s.callback_url, s.rate_limit
             FROM accounts a
             LEFT JOIN webhook_subscriptions s
               ON s.account_id = a.id AND s.deleted_at IS NULL AND s.disabled_at IS NULL
              AND (s.event = $2 OR s.event = $3 OR ($4 AND s.event = '*'))
             WHERE a.id = ANY($1)",
        )
        .await?;
    let mut out = Targets::default();
    for r in client
        .query(&stmt, &[&account_ids, &event, &family, &wildcard])
        .await?
    {
        let account: Uuid = r.get(0);
        if let std::collections::hash_map::Entry::Vacant(slot) = out.secrets.entry(account) {
            slot.insert(crate::accounts::secrets_from(r.get(1), r.get(2))?);
        }
        if let Some(webhook) = r.get::<_, Option<Uuid>>(3) {
            out.subscriptions
                .push((account, webhook, r.get(4), r.get(5)));
        }
    }
    crate::accounts::all_found(account_ids, &out.secrets)?;
    Ok(out)
}

/// What [`targets`] found.
#[derive(Debug, Default)]
pub struct Targets {
    /// (account, subscription, callback URL, rate limit).
    pub subscriptions: Vec<(Uuid, Uuid, String, Option<i32>)>,
    pub secrets: HashMap<Uuid, Vec<WebhookSecret>>,
}

/// Disables subscriptions, each with its reason, in the caller's transaction; returns those that
/// were still enabled.
pub async fn disable(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(Uuid, String)],
) -> Result<Vec<Uuid>, DbError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE webhook_subscriptions s SET disabled_at = now(), disabled_reason = t.reason
             FROM unnest($1::uuid[], $2::text[]) AS t(id, reason)
             WHERE s.id = t.id AND s.disabled_at IS NULL
             RETURNING s.id",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    Ok(tx
        .query(&stmt, &[&ids, &reasons])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
