//! The webhooks page: the account's subscriptions with each endpoint's health, creating and
//! deleting them, and rotating the signing secret (shown once).

use crate::{page_result, UiError, UiSession, UiState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use dispatcher_db::{accounts, endpoint_health, subscriptions};
use dispatcher_http::commands::{self, NewWebhook, EVENTS};
use dispatcher_http::{cursor, ApiError};
use minijinja::context;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[derive(Serialize)]
struct Row {
    id: Uuid,
    event: String,
    url: String,
    description: Option<String>,
    disabled: Option<String>,
    success_rate: Option<String>,
    last_error: Option<String>,
    last_error_at: Option<String>,
    failing_since: Option<String>,
    breaker: &'static str,
    /// `ok`, `failing` or `unknown` (no attempts yet).
    health: &'static str,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    done: String,
}

/// What the page shows besides the list.
#[derive(Default)]
struct Extra<'a> {
    error: Option<String>,
    new_secret: Option<(String, String)>,
    done: &'a str,
    form: Option<&'a CreateForm>,
}

async fn render(
    s: &UiState,
    session: &UiSession,
    cursor_arg: Option<&str>,
    status: StatusCode,
    extra: Extra<'_>,
) -> Result<Response, UiError> {
    let (before, limit) = cursor::page(cursor_arg, None)?;
    let subs = subscriptions::list(&s.pool, session.account, before, limit).await?;
    let next = cursor::next(&subs, limit, |r| (r.created_at, r.id));
    let cooldown = s.settings.delivery.circuit_breaker_cooldown;
    let mut rows = Vec::with_capacity(subs.len());
    for sub in subs {
        let h = endpoint_health::get(&s.pool, session.account, sub.id).await?;
        let attempts = h.as_ref().map_or(0, |h| h.attempts);
        let h = h.unwrap_or_default();
        let breaker = h.breaker(Utc::now(), cooldown).as_str();
        rows.push(Row {
            id: sub.id,
            event: sub.event,
            url: sub.callback_url,
            description: sub.description,
            disabled: sub.disabled_at.map(|t| match sub.disabled_reason {
                Some(r) => format!("{} ({r})", when(t)),
                None => when(t),
            }),
            success_rate: (attempts > 0).then(|| format!("{:.0} %", h.success_rate * 100.0)),
            last_error_at: h.last_error_at.map(when),
            failing_since: h.failing_since.map(when),
            health: match (attempts, h.consecutive_failures > 0 || h.breaker_open) {
                (0, _) => "unknown",
                (_, true) => "failing",
                _ => "ok",
            },
            last_error: h.last_error,
            breaker,
        });
    }
    let form = extra.form;
    let html = s.render(
        "webhooks.html",
        context! {
            csrf => &session.csrf,
            section => "webhooks",
            rows => rows,
            events => EVENTS,
            error => extra.error,
            new_secret => extra.new_secret.as_ref().map(|(k, _)| k),
            previous_until => extra.new_secret.as_ref().map(|(_, u)| u),
            done => extra.done,
            form_event => form.map_or("dispatch.*", |f| f.event.as_str()),
            form_url => form.map_or("", |f| f.callback_url.as_str()),
            form_description => form.map_or("", |f| f.description.as_str()),
            form_rate_limit => form.map_or("", |f| f.rate_limit.as_str()),
            older_href => next.map(|c| format!("/ui/webhooks?cursor={c}")),
            newest_href => cursor_arg.map(|_| "/ui/webhooks"),
        },
    )?;
    Ok((status, html).into_response())
}

pub async fn list(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Query(q): Query<ListQuery>,
) -> Response {
    let cursor_arg = (!q.cursor.is_empty()).then_some(q.cursor.as_str());
    let done = match q.done.as_str() {
        "created" => "Subscription created.",
        "deleted" => "Subscription deleted.",
        "disabled" => "Subscription disabled: it receives no events until it is enabled again.",
        "enabled" => "Subscription enabled.",
        _ => "",
    };
    let extra = Extra {
        done,
        ..Extra::default()
    };
    let r = render(&s, &session, cursor_arg, StatusCode::OK, extra).await;
    page_result(&s, r)
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    event: String,
    #[serde(default)]
    callback_url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rate_limit: String,
}

/// Creates a subscription through the same checks as `POST /v1/webhooks`; a refused one shows
/// the form again with the reason.
pub async fn create(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Form(f): Form<CreateForm>,
) -> Response {
    let r = async {
        let rate_limit = match f.rate_limit.trim() {
            "" => Ok(None),
            n => n
                .parse::<u32>()
                .map(Some)
                .map_err(|_| ApiError::unprocessable("invalid_field", "rateLimit: a whole number")),
        };
        let description = f.description.trim();
        let created = match rate_limit {
            Ok(rate_limit) => {
                commands::create_webhook(
                    &s.pool,
                    &s.settings.delivery,
                    session.account,
                    NewWebhook {
                        event: &f.event,
                        callback_url: f.callback_url.trim(),
                        description: (!description.is_empty()).then_some(description),
                        rate_limit,
                    },
                )
                .await
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(_) => Ok(Redirect::to("/ui/webhooks?done=created").into_response()),
            Err(e @ ApiError::Unprocessable { .. }) => {
                let extra = Extra {
                    error: Some(e.to_string()),
                    form: Some(&f),
                    ..Extra::default()
                };
                render(&s, &session, None, StatusCode::UNPROCESSABLE_ENTITY, extra).await
            }
            Err(e) => Err(e.into()),
        }
    }
    .await;
    page_result(&s, r)
}

/// Deletes a subscription (another account's is not found, as in the API).
pub async fn delete(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("webhook"))?;
        if !subscriptions::delete(&s.pool, session.account, id).await? {
            return Err(UiError(ApiError::NotFound("webhook")));
        }
        Ok(Redirect::to("/ui/webhooks?done=deleted").into_response())
    }
    .await;
    page_result(&s, r)
}

/// Disables a subscription: it matches no event until it is enabled again.
pub async fn disable(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
) -> Response {
    let r = set_enabled(&s, &session, &id, false).await;
    page_result(&s, r)
}

/// Enables a subscription again (one the account disabled, or one Dispatcher disabled after its
/// endpoint answered `410 Gone` or kept failing).
pub async fn enable(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
) -> Response {
    let r = set_enabled(&s, &session, &id, true).await;
    page_result(&s, r)
}

async fn set_enabled(
    s: &UiState,
    session: &UiSession,
    id: &str,
    enabled: bool,
) -> Result<Response, UiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("webhook"))?;
    if !subscriptions::set_enabled(&s.pool, session.account, id, enabled).await? {
        return Err(UiError(ApiError::NotFound("webhook")));
    }
    let done = if enabled { "enabled" } else { "disabled" };
    Ok(Redirect::to(&format!("/ui/webhooks?done={done}")).into_response())
}

/// Issues a new signing secret, as `POST /v1/webhooks/secret/rotate` does, and shows it this
/// once (the answer is not cached).
pub async fn rotate_secret(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
) -> Response {
    let r = async {
        let (secret, until) = accounts::rotate_webhook_secret(
            &s.pool,
            session.account,
            s.settings.delivery.secret_rotation_grace,
        )
        .await?;
        let extra = Extra {
            new_secret: Some((secret, when(until))),
            ..Extra::default()
        };
        render(&s, &session, None, StatusCode::OK, extra).await
    }
    .await;
    page_result(&s, r)
}
