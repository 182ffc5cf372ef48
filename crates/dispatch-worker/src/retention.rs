//! The retention sweeper: every `retention.interval`, deletes what is older than
//! `retention.days` (see `dispatcher_db::retention`). Every worker replica runs one; their
//! batches skip each other's locked rows, so they share the work instead of colliding. The
//! documents of purged dispatches that are in the object store are deleted after each batch's
//! rows (best effort: a failure leaves the object behind, and is logged).

use dispatcher_config::RetentionSettings;
use dispatcher_db::{retention, Pool};
use dispatcher_storage::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(
    settings: RetentionSettings,
    pool: Pool,
    store: Option<Store>,
    cancel: CancellationToken,
) {
    if settings.days == 0 {
        return;
    }
    // Replicas started together spread their first sweep over the interval.
    let first = settings.interval.mul_f64(rand::random::<f64>());
    let mut next = tokio::time::Instant::now() + first.min(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + settings.interval;
        let before = chrono::Utc::now() - chrono::Duration::days(settings.days as i64);
        let started = std::time::Instant::now();
        let purged = retention::purge(
            &pool,
            before,
            settings.batch_size,
            settings.pause,
            &cancel,
            |keys| delete_objects(store.as_ref(), keys),
        )
        .await;
        match purged {
            Ok(purged) => {
                metrics::counter!("dispatcher_retention_deleted_total", "table" => "dispatches")
                    .increment(purged.dispatches as u64);
                metrics::counter!("dispatcher_retention_deleted_total", "table" => "deliveries")
                    .increment(purged.deliveries as u64);
                metrics::counter!("dispatcher_retention_deleted_total", "table" => "delivery_attempts")
                    .increment(purged.attempts as u64);
                metrics::counter!("dispatcher_retention_deleted_total", "table" => "result_objects")
                    .increment(purged.result_objects as u64);
                if purged.total() > 0 {
                    tracing::info!(?purged, %before, elapsed = ?started.elapsed(), "retention: expired rows deleted");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed; trying again next interval")
            }
        }
    }
}

/// Deletes the purged dispatches' documents from the object store.
async fn delete_objects(store: Option<&Store>, keys: Vec<String>) -> i64 {
    match store {
        Some(store) => {
            let (deleted, failed) = store.delete_all(keys).await;
            for (key, error) in failed {
                tracing::warn!(
                    %key, %error, store = %store.location(),
                    "could not delete a purged dispatch's document; it is left behind"
                );
            }
            deleted
        }
        None => {
            tracing::warn!(
                objects = keys.len(),
                "purged dispatches had documents in an object store, but storage.url is postgres: \
                 their objects are left behind"
            );
            0
        }
    }
}
