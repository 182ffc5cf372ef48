//! Where a dispatch's document goes. With `storage.url = postgres` it stays in the outcome and
//! the completion commit writes it to `dispatches.result`. With an object store, it is written to
//! the store under its deterministic key as soon as it is rendered, before it is handed to its
//! provider, and the completion commit records only the key:
//!
//! - a crash between the upload and the commit leaves at most an object without a completed
//!   dispatch (written again, to the same key, when the message is redelivered), never a
//!   completed dispatch without its document;
//! - a store that refuses writes holds the dispatch back before its provider has it, so an email
//!   or an `http` provider never gets the document once per refused upload.
//!
//! A dispatch whose provider then fails has no document: its object is deleted again, and if
//! that fails too the dispatch keeps the key (without a content type, so it has no `/result`)
//! and retention deletes the object with it.

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

    /// Writes a dispatch's document to the object store, if there is one, and answers its key
    /// (`None`: the document stays in the outcome).
    pub async fn put(
        &self,
        account_id: Uuid,
        dispatch_id: Uuid,
        doc: &[u8],
    ) -> Result<Option<String>, UploadError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let key = Store::result_key(account_id, dispatch_id);
        let started = Instant::now();
        match store.put(&key, doc.to_vec()).await {
            Ok(()) => {
                metrics::histogram!("dispatcher_result_upload_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(%dispatch_id, %key, size = doc.len(), "document stored");
                Ok(Some(key))
            }
            Err(source) => {
                metrics::counter!("dispatcher_result_upload_failures_total").increment(1);
                Err(UploadError {
                    dispatch_id,
                    store: store.location().to_owned(),
                    source,
                })
            }
        }
    }

    /// Deletes the object of a dispatch that has no document after all. `true`: it is gone; if
    /// not, the caller keeps its key for retention.
    pub async fn discard(&self, key: &str) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        match store.delete(key).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%key, %error, "object of a failed dispatch left for retention");
                false
            }
        }
    }
}
