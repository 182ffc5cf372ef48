//! Rendered documents outside Postgres (`storage.url`): files in a directory or objects in an S3
//! bucket, through the `object_store` crate. `postgres` (the default) opens no store: documents
//! stay in the `dispatches.result` column.
//!
//! A document's key is deterministic, `results/{account_id}/{dispatch_id}`: a dispatch processed
//! twice (its message redelivered after a crash) writes the same object again, never a second one.

use bytes::Bytes;
use dispatcher_config::{StorageLocation, StorageSettings};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::fmt;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The settings do not open a store (reported at start-up).
    #[error("{0}")]
    Config(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Objects deleted at once by [`Store::delete_all`].
const DELETE_CONCURRENCY: usize = 8;

/// An open document store. Cheap to clone (one shared client).
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// `file:///dir` or `s3://bucket/prefix`, for logs (no credentials).
    location: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

/// A document read from the store: its size and its bytes as they arrive.
pub struct Object {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, StorageError>>,
}

impl Object {
    /// The whole document in memory.
    pub async fn bytes(self) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        let mut stream = self.stream;
        while let Some(chunk) = stream.try_next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl Store {
    /// Opens the store `storage.url` names; `None` for `postgres`. Creates a `file://` directory
    /// that does not exist yet. An S3 store is not contacted here: a bucket that cannot be reached
    /// shows up in the first write or read.
    pub fn open(settings: &StorageSettings) -> Result<Option<Store>, StorageError> {
        let location = settings.location().map_err(StorageError::Config)?;
        let (inner, prefix, described): (Arc<dyn ObjectStore>, String, String) = match location {
            StorageLocation::Postgres => return Ok(None),
            StorageLocation::File(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StorageError::Config(format!(
                        "storage.url: cannot create the directory {}: {e}",
                        dir.display()
                    ))
                })?;
                // fsync: a document must be on disk before its dispatch's completion commits.
                let fs = LocalFileSystem::new_with_prefix(&dir)?.with_fsync(true);
                (
                    Arc::new(fs),
                    String::new(),
                    format!("file://{}", dir.display()),
                )
            }
            StorageLocation::S3 { bucket, prefix } => {
                use_ring_for_tls();
                let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                if !settings.endpoint.is_empty() {
                    b = b.with_endpoint(&settings.endpoint);
                }
                if !settings.region.is_empty() {
                    b = b.with_region(&settings.region);
                }
                if !settings.access_key_id.is_empty() {
                    b = b.with_access_key_id(&settings.access_key_id);
                }
                if !settings.secret_access_key.expose().is_empty() {
                    b = b.with_secret_access_key(settings.secret_access_key.expose());
                }
                if settings.allow_http {
                    b = b.with_allow_http(true);
                }
                let s3 = b.build().map_err(|e| {
                    StorageError::Config(format!("storage.url: cannot open s3://{bucket}: {e}"))
                })?;
                let described = if prefix.is_empty() {
                    format!("s3://{bucket}")
                } else {
                    format!("s3://{bucket}/{prefix}")
                };
                (Arc::new(s3), prefix, described)
            }
        };
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            inner
        } else {
            Arc::new(PrefixStore::new(inner, Path::from(prefix.as_str())))
        };
        Ok(Some(Store {
            inner,
            location: described,
        }))
    }

    /// Where the documents are, for logs: `file:///dir` or `s3://bucket[/prefix]`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The key of a dispatch's document.
    pub fn result_key(account_id: Uuid, dispatch_id: Uuid) -> String {
        format!("results/{account_id}/{dispatch_id}")
    }

    /// Writes (or overwrites) the object at `key`. When this returns, the object is stored.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner
            .put(&Path::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The object at `key`, streamed; `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        match self.inner.get(&Path::from(key)).await {
            Ok(got) => Ok(Some(Object {
                size: got.meta.size,
                stream: got.into_stream().map_err(StorageError::from).boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object at `key`; one that is already gone is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object of `keys`, a few at once, best effort. Returns how many were deleted
    /// (or were already gone), and the keys that could not be deleted with why.
    pub async fn delete_all(&self, keys: Vec<String>) -> (i64, Vec<(String, StorageError)>) {
        let results: Vec<Result<(), (String, StorageError)>> = futures::stream::iter(keys)
            .map(|key| async move { self.delete(&key).await.map_err(|e| (key, e)) })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        let mut deleted = 0;
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(()) => deleted += 1,
                Err(f) => failed.push(f),
            }
        }
        (deleted, failed)
    }
}

/// The S3 client's TLS (rustls without a built-in provider, see the workspace Cargo.toml) uses
/// the process's default provider: `ring`, like the rest of the workspace. Installed once; a
/// provider the program installed itself is kept.
fn use_ring_for_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher_config::Secret;

    fn settings(url: &str) -> StorageSettings {
        StorageSettings {
            url: url.into(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::new(""),
            allow_http: false,
        }
    }

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("dispatcher-storage-{}", Uuid::new_v4()))
    }

    #[test]
    fn postgres_opens_no_store() {
        assert!(Store::open(&settings("postgres")).unwrap().is_none());
    }

    #[test]
    fn keys_are_deterministic_per_account_and_dispatch() {
        let (a, d) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(Store::result_key(a, d), format!("results/{a}/{d}"));
        assert_eq!(Store::result_key(a, d), Store::result_key(a, d));
        assert_ne!(Store::result_key(a, d), Store::result_key(d, a));
    }

    #[test]
    fn a_bad_url_is_a_config_error() {
        let err = Store::open(&settings("ftp://x")).unwrap_err();
        assert!(matches!(err, StorageError::Config(_)));
        assert!(err.to_string().contains("storage.url `ftp://x`"), "{err}");
    }

    #[tokio::test]
    async fn a_directory_store_round_trips_overwrites_and_deletes() {
        let dir = temp_dir();
        let store = Store::open(&settings(&format!("file://{}", dir.display())))
            .unwrap()
            .expect("a file store");
        assert_eq!(store.location(), format!("file://{}", dir.display()));
        let key = Store::result_key(Uuid::new_v4(), Uuid::new_v4());
        assert!(store.get(&key).await.unwrap().is_none());

        let doc: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        store.put(&key, doc.clone()).await.unwrap();
        assert_eq!(std::fs::read(dir.join(&key)).unwrap(), doc, "a plain file");
        let got = store.get(&key).await.unwrap().unwrap();
        assert_eq!(got.size, doc.len() as u64);
        assert_eq!(got.bytes().await.unwrap(), doc);

        // A redelivered dispatch writes the same key again.
        store.put(&key, b"second".to_vec()).await.unwrap();
        let got = store.get(&key).await.unwrap().unwrap();
        assert_eq!(got.bytes().await.unwrap(), b"second");

        store.delete(&key).await.unwrap();
        assert!(store.get(&key).await.unwrap().is_none());
        store.delete(&key).await.unwrap();
        let (deleted, failed) = store.delete_all(vec![key.clone(), key]).await;
        assert_eq!((deleted, failed.len()), (2, 0));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_s3_prefix_is_kept_in_the_description() {
        let mut s = settings("s3://results-bucket/prod/");
        s.endpoint = "https://127.0.0.1:1".into();
        s.region = "eu-west-1".into();
        s.access_key_id = "AKID".into();
        s.secret_access_key = Secret::new("very-secret");
        let store = Store::open(&s).unwrap().unwrap();
        assert_eq!(store.location(), "s3://results-bucket/prod");
        assert!(!format!("{store:?}").contains("very-secret"));
    }
}
