//! Webhook subscriptions: an account's standing callbacks for event types (or `*`).

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use dispatcher_core::signing::WebhookSecret;
use dispatcher_core::EventType;
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

/// Everything a batch of outcome events needs before its webhooks are sent, in one statement:
/// the active subscriptions for each (account, event type) of `wanted` (each named once): those
/// naming the type or its family (`provider.*`), and those for `*` unless the type is
/// operational (operational events only go to subscriptions that name them); the signing secrets
/// of every account in `accounts` (one not found is an error); and the deliveries already
/// written for the events (`event_ids`, of the dispatches `dispatch_ids`) by an earlier copy of
/// them.
pub async fn targets(
    pool: &Pool,
    accounts: &[Uuid],
    wanted: &[(Uuid, EventType)],
    dispatch_ids: &[Uuid],
    event_ids: &[Uuid],
) -> Result<Targets, DbError> {
    let client = pool.get().await?;
    // Three kinds of row in one answer, told apart by the first column: 'a' an account and its
    // secrets, 's' a subscription for one of the wanted event types, 'd' an existing delivery
    // (its id, status and attempts). Existing deliveries are found through their dispatch (an
    // index) and narrowed to the events.
    let stmt = client
        .prepare_cached(
            "SELECT 'a' AS kind, a.id AS account_id, a.webhook_secret AS secret,
                    CASE WHEN a.previous_secret_until > now() THEN a.previous_webhook_secret END
                        AS previous_secret,
                    NULL::text AS event, NULL::uuid AS id, NULL::text AS url,
                    NULL::integer AS rate_limit, NULL::text AS status, NULL::integer AS attempts
             FROM accounts a WHERE a.id = ANY($1)
             UNION ALL
             SELECT 's', w.account_id, NULL, NULL, w.event, s.id, s.callback_url, s.rate_limit,
                    NULL, NULL
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bool[])
                      AS w(account_id, event, family, wildcard)
             JOIN webhook_subscriptions s
               ON s.account_id = w.account_id AND s.deleted_at IS NULL AND s.disabled_at IS NULL
              AND (s.event = w.event OR s.event = w.family OR (w.wildcard AND s.event = '*'))
             UNION ALL
             SELECT 'd', NULL, NULL, NULL, NULL, d.id, NULL, NULL, d.status, d.attempts
             FROM deliveries d WHERE d.dispatch_id = ANY($6) AND d.event_id = ANY($7)",
        )
        .await?;
    let account_ids: Vec<Uuid> = wanted.iter().map(|w| w.0).collect();
    let events: Vec<&str> = wanted.iter().map(|w| w.1.as_str()).collect();
    let families: Vec<String> = wanted.iter().map(|w| w.1.family_filter()).collect();
    let wildcards: Vec<bool> = wanted.iter().map(|w| !w.1.is_operational()).collect();
    let rows = client
        .query(
            &stmt,
            &[
                &accounts,
                &account_ids,
                &events,
                &families,
                &wildcards,
                &dispatch_ids,
                &event_ids,
            ],
        )
        .await?;
    let mut out = Targets::default();
    for r in rows {
        match r.get::<_, &str>("kind") {
            "a" => {
                let secrets =
                    crate::accounts::secrets_from(r.get("secret"), r.get("previous_secret"))?;
                out.secrets.insert(r.get("account_id"), secrets);
            }
            "s" => {
                // The type is one of `wanted`'s, sent in as its name.
                let event_type = EventType::parse(r.get("event"))
                    .ok_or_else(|| DbError::Corrupt("an event type read back changed".into()))?;
                out.subscriptions
                    .entry((r.get("account_id"), event_type))
                    .or_default()
                    .push(Target {
                        webhook_id: r.get("id"),
                        url: r.get("url"),
                        rate_limit: r.get("rate_limit"),
                    })
            }
            _ => {
                out.existing
                    .insert(r.get("id"), (r.get("status"), r.get("attempts")));
            }
        }
    }
    crate::accounts::all_found(accounts, &out.secrets)?;
    Ok(out)
}

/// A subscription an event goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub webhook_id: Uuid,
    pub url: String,
    /// Requests per second, if the subscription limits them.
    pub rate_limit: Option<i32>,
}

/// What [`targets`] found.
#[derive(Debug, Default)]
pub struct Targets {
    /// By (account, event type).
    pub subscriptions: HashMap<(Uuid, EventType), Vec<Target>>,
    pub secrets: HashMap<Uuid, Vec<WebhookSecret>>,
    /// The deliveries of the events written already: (status, attempts) by delivery id.
    pub existing: HashMap<Uuid, (String, i32)>,
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
