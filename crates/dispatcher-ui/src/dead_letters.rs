//! The dead letters page: the account's webhook deliveries that ran out of attempts and its
//! dispatches that no worker could process, each with its reason, replayed one at a time or all
//! at once through `dispatcher_db::dead_letters::replay`, as `dispatchctl dlq replay` does.

use crate::pages::when;
use crate::{page_result, UiError, UiSession, UiState};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use dispatcher_db::{dead_letters, deliveries};
use dispatcher_http::ApiError;
use minijinja::context;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most dead letters of each kind the page lists (the newest).
const SHOWN: i64 = 100;

#[derive(Serialize)]
struct DeliveryRow {
    id: Uuid,
    dispatch_id: Uuid,
    url: String,
    attempts: i32,
    reason: String,
    dead_at: String,
}

#[derive(Serialize)]
struct DispatchRow {
    dispatch_id: Option<Uuid>,
    reason: String,
    since: String,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    deliveries: Option<usize>,
    dispatches: Option<usize>,
}

pub async fn list(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Query(q): Query<ListQuery>,
) -> Response {
    let r = async {
        let account = session.account;
        let dead = deliveries::list_dead_for_account(&s.pool, account, SHOWN).await?;
        let quarantined =
            dead_letters::list_dispatches_for_account(&s.pool, &s.dispatch_queue, account, SHOWN)
                .await?;
        let full = dead.len() as i64 == SHOWN || quarantined.len() as i64 == SHOWN;
        let deliveries: Vec<DeliveryRow> = dead
            .into_iter()
            .map(|d| DeliveryRow {
                id: d.id,
                dispatch_id: d.dispatch_id,
                url: d.url,
                attempts: d.attempts,
                reason: d.last_error.unwrap_or_else(|| "no error recorded".into()),
                dead_at: when(d.updated_at),
            })
            .collect();
        let dispatches: Vec<DispatchRow> = quarantined
            .into_iter()
            .map(|d| DispatchRow {
                dispatch_id: d.dispatch_id,
                reason: d.reason,
                since: when(d.created_at),
            })
            .collect();
        let replayed = match (q.deliveries, q.dispatches) {
            (None, None) => None,
            (d, m) => Some((d.unwrap_or(0), m.unwrap_or(0))),
        };
        let html = s.render(
            "dead_letters.html",
            context! {
                csrf => &session.csrf,
                section => "dead-letters",
                deliveries => deliveries,
                dispatches => dispatches,
                replayed => replayed,
                shown => SHOWN,
                full => full,
            },
        )?;
        Ok(html.into_response())
    }
    .await;
    page_result(&s, r)
}

#[derive(Deserialize)]
pub struct ReplayForm {
    /// A dead delivery's id or a dead-lettered dispatch's id; empty for all of them.
    #[serde(default)]
    id: String,
}

/// Replays one dead letter of the account, or all of them.
pub async fn replay(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Form(f): Form<ReplayForm>,
) -> Response {
    let r = async {
        let id = match f.id.trim() {
            "" => None,
            id => Some(
                id.parse::<Uuid>()
                    .map_err(|_| ApiError::NotFound("dead letter"))?,
            ),
        };
        let replayed =
            dead_letters::replay(&s.pool, &s.dispatch_queue, Some(session.account), id).await?;
        if id.is_some() && replayed == dead_letters::Replayed::default() {
            return Err(UiError(ApiError::NotFound("dead letter")));
        }
        Ok(Redirect::to(&format!(
            "/ui/dead-letters?deliveries={}&dispatches={}",
            replayed.deliveries.len(),
            replayed.dispatches.len()
        ))
        .into_response())
    }
    .await;
    page_result(&s, r)
}
