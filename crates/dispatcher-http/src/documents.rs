//! A dispatch's rendered document as an HTTP body, wherever `storage.url` keeps it: the status
//! API's `/result` and the dashboard's preview and download read it the same way.

use crate::ApiError;
use axum::body::Body;
use dispatcher_db::dispatches::{self, ResultBody};
use dispatcher_db::Pool;
use dispatcher_storage::Store;
use uuid::Uuid;

pub struct Document {
    pub content_type: String,
    /// Known for stored objects; an inline document's body knows its own length.
    pub size: Option<u64>,
    /// Streamed from the object store as it arrives, not read into memory first.
    pub body: Body,
}

/// The document of `account`'s dispatch `id`: `NotFound("dispatch")` for no such dispatch (or
/// another account's), `NotFound("result")` while it has none.
pub async fn open(
    pool: &Pool,
    store: Option<&Store>,
    account: Uuid,
    id: Uuid,
) -> Result<Document, ApiError> {
    let stored = dispatches::get_result(pool, account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?
        .ok_or(ApiError::NotFound("result"))?;
    let content_type = stored.content_type;
    match stored.body {
        ResultBody::Inline(doc) => Ok(Document {
            content_type,
            size: None,
            body: Body::from(doc),
        }),
        ResultBody::Stored(key) => {
            let Some(store) = store else {
                return Err(ApiError::Internal(format!(
                    "the document of dispatch {id} is in an object store ({key}), but \
                     storage.url is postgres"
                )));
            };
            let object = store.get(&key).await.map_err(|e| {
                ApiError::Unavailable(format!("reading {key} from {}: {e}", store.location()))
            })?;
            let Some(object) = object else {
                tracing::warn!(dispatch_id = %id, %key, store = %store.location(),
                    "a completed dispatch's document is missing from the object store");
                return Err(ApiError::NotFound("result"));
            };
            Ok(Document {
                content_type,
                size: Some(object.size),
                body: Body::from_stream(object.stream),
            })
        }
    }
}
