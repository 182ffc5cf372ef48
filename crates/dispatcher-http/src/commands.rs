//! Writes that more than one front end offers (the REST APIs and the dashboard), each with its
//! rules in one place, so both answer the same way.

use crate::ApiError;
use dispatcher_db::{deliveries, dispatches, Pool};
use uuid::Uuid;

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
