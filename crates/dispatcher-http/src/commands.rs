//! Writes that more than one front end offers (the REST APIs and the dashboard), each with its
//! rules in one place, so both answer the same way.

use crate::ApiError;
use dispatcher_config::DeliverySettings;
use dispatcher_core::netpolicy::check_url;
use dispatcher_db::{deliveries, dispatches, subscriptions, Pool};
use uuid::Uuid;

/// The event filters a subscription may name.
pub const EVENTS: [&str; 15] = [
    "dispatch.completed",
    "dispatch.failed",
    "dispatch.*",
    "provider.accepted",
    "provider.delivered",
    "provider.bounced",
    "provider.failed",
    "provider.*",
    "endpoint.failing",
    "endpoint.recovered",
    "endpoint.disabled",
    "endpoint.*",
    "delivery.exhausted",
    "delivery.*",
    "*",
];

/// Longest subscription description, in characters.
pub const MAX_DESCRIPTION: usize = 500;
/// Highest per-subscription rate limit, in requests per second.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// 422 for a string with a NUL character (Postgres text cannot store it).
pub fn reject_nul_str(s: &str, field: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field}: must not contain the NUL character (U+0000)"),
        ));
    }
    Ok(())
}

/// A new webhook subscription, as asked for.
pub struct NewWebhook<'a> {
    pub event: &'a str,
    pub callback_url: &'a str,
    pub description: Option<&'a str>,
    pub rate_limit: Option<u32>,
}

/// Checks a subscription (event filter, callback URL under the address policy, description,
/// rate limit) and stores it.
pub async fn create_webhook(
    pool: &Pool,
    delivery: &DeliverySettings,
    account: Uuid,
    req: NewWebhook<'_>,
) -> Result<subscriptions::Subscription, ApiError> {
    if !EVENTS.contains(&req.event) {
        return Err(ApiError::unprocessable(
            "invalid_event",
            format!("event: must be one of {}", EVENTS.join(", ")),
        ));
    }
    check_url(req.callback_url, delivery.allow_http, &delivery.allow_hosts).map_err(|e| {
        ApiError::unprocessable("invalid_callback_url", format!("callbackUrl: {e}"))
    })?;
    reject_nul_str(req.callback_url, "callbackUrl")?;
    if let Some(description) = req.description {
        reject_nul_str(description, "description")?;
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("description: at most {MAX_DESCRIPTION} characters"),
            ));
        }
    }
    if req.rate_limit.is_some_and(|r| r == 0 || r > MAX_RATE_LIMIT) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("rateLimit: between 1 and {MAX_RATE_LIMIT} requests per second"),
        ));
    }
    Ok(subscriptions::insert(
        pool,
        account,
        req.event,
        req.callback_url,
        req.description,
        req.rate_limit.map(|r| r as i32),
    )
    .await?)
}

/// Sends a finished dispatch's outcome again: every delivery of the dispatch, or only the one to
/// `webhook_id`. Returns the deliveries queued again. A dispatch that is not the account's is not
/// found; one without an outcome yet is a conflict.
pub async fn redeliver(
    pool: &Pool,
    account: Uuid,
    dispatch_id: Uuid,
    webhook_id: Option<Uuid>,
) -> Result<Vec<Uuid>, ApiError> {
    let view = dispatches::get(pool, account, dispatch_id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    if !view.status.is_terminal() {
        return Err(ApiError::Conflict {
            code: "dispatch_not_finished",
            message: "the dispatch has no outcome to deliver yet".into(),
        });
    }
    let ids = deliveries::requeue(
        pool,
        &deliveries::RequeueFilter {
            account_id: Some(account),
            dispatch_id: Some(dispatch_id),
            webhook_id,
            ..Default::default()
        },
    )
    .await?;
    if ids.is_empty() && webhook_id.is_some() {
        return Err(ApiError::NotFound("delivery for that webhook"));
    }
    Ok(ids)
}
