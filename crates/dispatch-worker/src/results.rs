//! Where a completed dispatch's document goes. With `storage.url = postgres` it stays in the
//! outcome and the completion commit writes it to `dispatches.result`. With an object store, it
//! is written to the store under its deterministic key first, and the completion commit records
//! only the key: a crash between the two leaves at most an object without a completed dispatch
//! (written again, to the same key, when the message is redelivered), never a completed dispatch
//! without its document.

use dispatcher_db::dispatches::Finished;
use dispatcher_storage::{StorageError, Store};
use std::time::Instant;
use uuid::Uuid;

/// A document that could not be written: the batch is not finished.
#[derive(Debug, thiserror::Error)]
#[error("document of dispatch {dispatch_id} not written to {store}: {source}")]
pub struct UploadError {
    pub dispatch_id: Uuid,
    store: String,
    #[source]
    source: StorageError,
}

pub struct Results {
    store: Option<Store>,
}

impl Results {
    pub fn new(store: Option<Store>) -> Self {
        if let Some(s) = &store {
            tracing::info!(store = %s.location(), "documents are kept in the object store");
        }
        Self { store }
    }

    /// Writes `f`'s document to the object store, if there is a store and a document, and
    /// replaces the bytes by the object's key.
    pub async fn keep(&self, account_id: Uuid, mut f: Finished) -> Result<Finished, UploadError> {
        let Some(store) = &self.store else {
            return Ok(f);
        };
        let Some(doc) = f.result.take() else {
            return Ok(f);
        };
        let key = Store::result_key(account_id, f.id);
        let started = Instant::now();
        let size = doc.len();
        match store.put(&key, doc).await {
            Ok(()) => {
                metrics::histogram!("dispatcher_result_upload_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(dispatch_id = %f.id, %key, size, "document stored");
                f.result_key = Some(key);
                Ok(f)
            }
            Err(source) => {
                metrics::counter!("dispatcher_result_upload_failures_total").increment(1);
                Err(UploadError {
                    dispatch_id: f.id,
                    store: store.location().to_owned(),
                    source,
                })
            }
        }
    }
}
