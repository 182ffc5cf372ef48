//! HTTP Basic authentication against argon2 hashes, a bounded cache of verified credentials, and
//! the per-account rate limit.
//!
//! argon2 costs tens of milliseconds by design; a client sending thousands of requests per second
//! with the same credentials must not pay it each time. The cache key is a SHA-256 of email and
//! password, so the cache never holds a password. A password change invalidates the account's
//! entries in every API process at once: the update NOTIFYs `dispatcher_accounts` and each
//! process listens. Entries also expire after `CACHE_TTL` in case a notification is missed.
//!
//! The rate limit is a token bucket per account in each process: an API replica admits
//! `requests_per_second` (with `burst`) per account, so N replicas admit N times that. Operators
//! set the per-replica figure to their account limit divided by the replica count; it needs no
//! shared store on the request path, and a client spread unevenly over replicas is still bounded.

use crate::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dispatcher_config::{DatabaseSettings, RateLimitSettings};
use dispatcher_core::ratelimit::TokenBucket;
use dispatcher_db::{accounts, Pool};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX: usize = 10_000;

pub struct Authenticator {
    pool: Pool,
    cache: Mutex<HashMap<[u8; 32], (Uuid, Instant)>>,
    /// One verification per credential at a time: concurrent requests with the same (not yet
    /// cached) credentials wait for the first one's result instead of each running argon2.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// argon2 uses ~19 MiB per verification; bounding concurrent verifications to the cores keeps
    /// a burst of new clients from ballooning memory (and gains nothing: they are CPU-bound).
    verifying: tokio::sync::Semaphore,
    limits: RateLimitSettings,
    buckets: Mutex<HashMap<Uuid, TokenBucket>>,
}

impl Authenticator {
    pub fn new(pool: Pool, limits: RateLimitSettings) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Self {
            pool,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(cores),
            limits,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Listens for password changes and drops the changed accounts' cached credentials.
    pub fn watch_invalidations(self: &Arc<Self>, db: &DatabaseSettings, cancel: CancellationToken) {
        let mut rx =
            dispatcher_db::listen::spawn_listener(db.clone(), &["dispatcher_accounts"], cancel);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some((channel, payload)) = rx.recv().await {
                let Some(me) = me.upgrade() else { return };
                let mut cache = me.cache.lock().expect("auth cache");
                match payload.parse::<Uuid>() {
                    Ok(id) if !channel.is_empty() => cache.retain(|_, (acct, _)| *acct != id),
                    // A reconnect may have missed notifications: start over.
                    _ => cache.clear(),
                }
            }
        });
    }

    fn key(email: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(email.trim().to_ascii_lowercase().as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// The account for these credentials, or `Unauthorized` (same answer for unknown email and
    /// wrong password).
    pub async fn authenticate(&self, email: &str, password: &str) -> Result<Uuid, ApiError> {
        let key = Self::key(email, password);
        if let Some(id) = self.cached(&key) {
            return Ok(id);
        }
        let lock = self
            .inflight
            .lock()
            .expect("auth inflight")
            .entry(key)
            .or_default()
            .clone();
        let result = {
            let _one = lock.lock().await;
            // Whoever held the lock before us may have cached the answer.
            match self.cached(&key) {
                Some(id) => Ok(id),
                None => self.verify(key, email, password).await,
            }
        };
        drop(lock);
        let mut inflight = self.inflight.lock().expect("auth inflight");
        if inflight
            .get(&key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            inflight.remove(&key);
        }
        result
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Uuid> {
        let cache = self.cache.lock().expect("auth cache");
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(id, _)| *id)
    }

    async fn verify(&self, key: [u8; 32], email: &str, password: &str) -> Result<Uuid, ApiError> {
        let _permit = self
            .verifying
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("authenticator closed".into()))?;
        match accounts::authenticate(&self.pool, email, password).await? {
            Some(id) => {
                let mut cache = self.cache.lock().expect("auth cache");
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key, (id, Instant::now()));
                Ok(id)
            }
            None => Err(ApiError::Unauthorized),
        }
    }

    /// Takes a token from the account's bucket, or answers 429 with the wait.
    pub fn check_rate(&self, account: Uuid) -> Result<(), ApiError> {
        let RateLimitSettings {
            requests_per_second: rate,
            burst,
        } = self.limits;
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() >= CACHE_MAX && !buckets.contains_key(&account) {
            buckets.clear();
        }
        buckets
            .entry(account)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
            .map_err(|wait| {
                metrics::counter!("dispatcher_http_rate_limited_total").increment(1);
                ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)
            })
    }
}

/// Parses `Authorization: Basic base64(email:password)`.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    // Control characters (NUL above all) can never be part of valid credentials.
    if decoded.chars().any(char::is_control) {
        return None;
    }
    Some((user.to_owned(), pass.to_owned()))
}

/// The authenticated, rate-checked account of a request.
#[derive(Debug, Clone, Copy)]
pub struct AuthAccount(pub Uuid);

impl<S> FromRequestParts<S> for AuthAccount
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (email, password) = parse_basic(header).ok_or(ApiError::Unauthorized)?;
        let auth = Arc::<Authenticator>::from_ref(state);
        let account = auth.authenticate(&email, &password).await?;
        auth.check_rate(account)?;
        Ok(AuthAccount(account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_credentials() {
        let h = format!("Basic {}", B64.encode("ada@example.com:pa:ss"));
        assert_eq!(
            parse_basic(&h),
            Some(("ada@example.com".into(), "pa:ss".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(
            parse_basic(&format!("Basic {}", B64.encode("nocolon"))),
            None
        );
        assert_eq!(parse_basic(""), None);
        assert_eq!(
            parse_basic(&format!("Basic {}", B64.encode("a\0@x:pw"))),
            None
        );
    }

    #[test]
    fn cache_keys_differ_by_password_not_email_case() {
        assert_eq!(
            Authenticator::key("Ada@X.io", "pw"),
            Authenticator::key("ada@x.io", "pw")
        );
        assert_ne!(
            Authenticator::key("ada@x.io", "pw"),
            Authenticator::key("ada@x.io", "pw2")
        );
    }
}
