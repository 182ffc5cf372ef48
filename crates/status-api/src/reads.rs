//! Which database a read goes to when `database.read_url` names a replica.
//!
//! The replica may lag the primary by the replication delay, so it serves only reads for which
//! that cannot contradict anything the client was told:
//!
//! - lists (`GET /v1/dispatches`): a page is a snapshot anyway; a dispatch committed a moment ago
//!   may be missing from it for that moment;
//! - a dispatch the replica already shows finished (`completed` or `failed`, `GET
//!   /v1/dispatches/{id}` and its `/attempts`): a finished dispatch never changes status again, so
//!   this copy says what the primary says about status, result and error; its deliveries,
//!   delivery attempts and `providerStatus` may be a moment behind.
//!
//! Everything else reads the primary: a dispatch the replica does not have yet or shows queued
//! or processing (so the status right after a sync submission, which answered from the primary,
//! is never older than that answer), documents, redelivery, authentication and the dashboard.
//! A replica that cannot be reached is skipped: the read goes to the primary.

use crate::AppState;
use dispatcher_db::dispatches::{self, DispatchView};
use dispatcher_db::{DbError, Pool};
use std::future::Future;
use uuid::Uuid;

impl AppState {
    /// Runs `read` on the replica, or on the primary when there is none or it is unreachable.
    pub(crate) async fn lagging_read<T, F, Fut>(&self, read: F) -> Result<T, DbError>
    where
        F: Fn(Pool) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        if let Some(replica) = &self.replica {
            match read(replica.clone()).await {
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "replica unavailable; reading the primary");
                    metrics::counter!("dispatcher_status_replica_fallbacks_total").increment(1);
                }
                done => return done,
            }
        }
        read(self.pool.clone()).await
    }

    /// The dispatch, and the pool that read it: the replica's copy when it shows the dispatch
    /// finished, otherwise the primary's.
    pub(crate) async fn dispatch(
        &self,
        account: Uuid,
        id: Uuid,
    ) -> Result<Option<(DispatchView, Pool)>, DbError> {
        if let Some(replica) = &self.replica {
            match dispatches::get(replica, account, id).await {
                Ok(Some(view)) if view.status.is_terminal() => {
                    metrics::counter!("dispatcher_status_reads_total", "db" => "replica")
                        .increment(1);
                    return Ok(Some((view, replica.clone())));
                }
                Ok(_) => {}
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "replica unavailable; reading the primary");
                    metrics::counter!("dispatcher_status_replica_fallbacks_total").increment(1);
                }
                Err(e) => return Err(e),
            }
        }
        metrics::counter!("dispatcher_status_reads_total", "db" => "primary").increment(1);
        Ok(dispatches::get(&self.pool, account, id)
            .await?
            .map(|view| (view, self.pool.clone())))
    }
}
