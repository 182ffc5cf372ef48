//! Writes that more than one front end offers (the REST APIs and the dashboard), each with its
//! rules in one place, so both answer the same way.

use crate::ApiError;
use dispatcher_config::DeliverySettings;
use dispatcher_core::netpolicy::check_url;
use dispatcher_core::TemplateFormat;
use dispatcher_db::{deliveries, dispatches, subscriptions, templates, Pool};
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

/// Postgres `text` and `jsonb` cannot store U+0000; a request carrying one anywhere (in a value or
/// a key) is answered 422 naming the field, instead of failing its write.
pub fn reject_nul(v: &serde_json::Value) -> Result<(), ApiError> {
    // Allocates only on the way back from a hit, so clean bodies cost one pass.
    fn nul_path(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) => s.contains('\0').then(String::new),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| nul_path(item).map(|rest| format!("[{i}]{rest}"))),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
                if k.contains('\0') {
                    Some(format!(".{}", k.escape_debug()))
                } else {
                    nul_path(item).map(|rest| format!(".{k}{rest}"))
                }
            }),
            _ => None,
        }
    }
    match nul_path(v) {
        None => Ok(()),
        Some(path) => {
            let path = path.strip_prefix('.').unwrap_or(&path);
            reject_nul_str("\0", if path.is_empty() { "body" } else { path })
        }
    }
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

/// Which of a dispatch's deliveries to send again.
#[derive(Debug, Clone, Copy, Default)]
pub enum RedeliverTarget {
    /// Every delivery of the dispatch.
    #[default]
    All,
    /// Only the one to this subscription.
    Webhook(Uuid),
    /// Only this delivery (the dashboard's button on one delivery row).
    Delivery(Uuid),
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
    let target = webhook_id.map_or(RedeliverTarget::All, RedeliverTarget::Webhook);
    redeliver_to(pool, account, dispatch_id, target).await
}

/// [`redeliver`] with any [`RedeliverTarget`].
pub async fn redeliver_to(
    pool: &Pool,
    account: Uuid,
    dispatch_id: Uuid,
    target: RedeliverTarget,
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
    let (webhook_id, delivery_id) = match target {
        RedeliverTarget::All => (None, None),
        RedeliverTarget::Webhook(w) => (Some(w), None),
        RedeliverTarget::Delivery(d) => (None, Some(d)),
    };
    let ids = deliveries::requeue(
        pool,
        &deliveries::RequeueFilter {
            account_id: Some(account),
            dispatch_id: Some(dispatch_id),
            webhook_id,
            delivery_id,
            ..Default::default()
        },
    )
    .await?;
    if ids.is_empty() {
        match target {
            RedeliverTarget::All => {}
            RedeliverTarget::Webhook(_) => {
                return Err(ApiError::NotFound("delivery for that webhook"));
            }
            RedeliverTarget::Delivery(_) => return Err(ApiError::NotFound("delivery")),
        }
    }
    Ok(ids)
}

/// Longest template name, in characters.
pub const MAX_TEMPLATE_NAME: usize = 200;
/// Largest template body, in bytes.
pub const MAX_TEMPLATE_BODY: usize = 256 * 1024;
/// Digests of template bodies known to parse (about 200 bytes each with the cache's bookkeeping).
const VALID_BODIES: u64 = 10_000;

/// Clients often send the same inline template with every dispatch: the bodies that parsed are
/// remembered (by SHA-256) instead of compiled again on every request. The keys are small and of
/// one size, so the set is bounded by entries; the ones in use stay.
static VALID: std::sync::LazyLock<moka::sync::Cache<[u8; 32], ()>> =
    std::sync::LazyLock::new(|| moka::sync::Cache::new(VALID_BODIES));

fn body_key(format: TemplateFormat, body: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format.as_str().as_bytes());
    h.update([0]);
    h.update(body.as_bytes());
    h.finalize().into()
}

/// Checks a template body (no NUL, at most [`MAX_TEMPLATE_BODY`], parses in its format's
/// language) and reports a syntax error with its line: for stored templates, inline ones and
/// previews alike.
pub fn check_template_body(format: TemplateFormat, body: &str) -> Result<(), ApiError> {
    reject_nul_str(body, "body")?;
    if body.len() > MAX_TEMPLATE_BODY {
        return Err(ApiError::unprocessable(
            "template_too_large",
            format!("template body exceeds {MAX_TEMPLATE_BODY} bytes"),
        ));
    }
    let key = body_key(format, body);
    if VALID.get(&key).is_some() {
        return Ok(());
    }
    dispatcher_render::check_syntax(format, body)
        .map_err(|e| ApiError::unprocessable("template_syntax_error", e.to_string()))?;
    VALID.insert(key, ());
    Ok(())
}

/// Checks a new template (name of 1 to [`MAX_TEMPLATE_NAME`] characters, not only whitespace,
/// stored trimmed; a body that parses) and stores it.
pub async fn create_template(
    pool: &Pool,
    account: Uuid,
    name: &str,
    format: TemplateFormat,
    body: &str,
) -> Result<templates::Template, ApiError> {
    // Counted in characters before trimming, as the API document's maxLength counts them.
    reject_nul_str(name, "name")?;
    let trimmed = name.trim();
    if trimmed.is_empty() || name.chars().count() > MAX_TEMPLATE_NAME {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("name: must be 1 to {MAX_TEMPLATE_NAME} characters, not only whitespace"),
        ));
    }
    check_template_body(format, body)?;
    Ok(templates::insert(pool, account, trimmed, format, body).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_bodies_stay_bounded_and_the_ones_in_use_stay() {
        let hot = "Hello {{ name }}, the template everyone sends";
        check_template_body(TemplateFormat::Text, hot).unwrap();
        for i in 0..3 * VALID_BODIES {
            check_template_body(TemplateFormat::Text, &format!("one-off {i} {{{{ x }}}}")).unwrap();
            check_template_body(TemplateFormat::Text, hot).unwrap();
            if i % 1000 == 0 {
                VALID.run_pending_tasks();
            }
        }
        VALID.run_pending_tasks();
        assert!(
            VALID.entry_count() <= VALID_BODIES,
            "{}",
            VALID.entry_count()
        );
        assert!(VALID.contains_key(&body_key(TemplateFormat::Text, hot)));
        // A body that does not parse is never remembered.
        assert!(check_template_body(TemplateFormat::Text, "{% if %}").is_err());
        assert!(!VALID.contains_key(&body_key(TemplateFormat::Text, "{% if %}")));
    }
}
