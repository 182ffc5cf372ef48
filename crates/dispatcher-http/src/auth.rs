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
/// Verifications that may wait for a free core; more answer 429 at once.
const MAX_WAITING: usize = 64;
/// Longest a verification waits for a free core.
const MAX_WAIT: Duration = Duration::from_secs(2);

pub struct Authenticator {
    pool: Pool,
    cache: Mutex<HashMap<[u8; 32], (Uuid, Instant)>>,
    /// One verification per credential at a time: concurrent requests with the same (not yet
    /// cached) credentials wait for the first one's result instead of each running argon2.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// argon2 uses ~19 MiB per verification; bounding concurrent verifications to the cores keeps
    /// a burst of new clients from ballooning memory (and gains nothing: they are CPU-bound).
    verifying: tokio::sync::Semaphore,
    /// Verifications waiting for `verifying`.
    waiting: std::sync::atomic::AtomicUsize,
    limits: RateLimitSettings,
    buckets: Mutex<HashMap<Uuid, TokenBucket>>,
    /// Failed sign-ins per email and per client address, checked before argon2 runs.
    failures: Mutex<HashMap<FailureKey, TokenBucket>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    Email(String),
    Address(std::net::IpAddr),
}

/// Removes a credential's single-flight entry when its last user is done, however it ends
/// (a cancelled request included).
struct Inflight<'a> {
    auth: &'a Authenticator,
    key: [u8; 32],
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let mut inflight = self.auth.inflight.lock().expect("auth inflight");
        if inflight
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            inflight.remove(&self.key);
        }
    }
}

impl Authenticator {
    pub fn new(pool: Pool, limits: RateLimitSettings) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Self {
            pool,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(cores),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            limits,
            buckets: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
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
    /// wrong password). `client` is the peer address, for the failed sign-in limit.
    pub async fn authenticate(
        &self,
        email: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Uuid, ApiError> {
        let key = Self::key(email, password);
        if let Some(id) = self.cached(&key) {
            return Ok(id);
        }
        let keys = self.failure_keys(email, client);
        self.check_failures(&keys)?;
        let lock = self
            .inflight
            .lock()
            .expect("auth inflight")
            .entry(key)
            .or_default()
            .clone();
        let guard = Inflight {
            auth: self,
            key,
            lock: Some(lock),
        };
        let one = guard.lock.as_ref().expect("set above").lock().await;
        // Whoever held the lock before us may have cached the answer.
        let result = match self.cached(&key) {
            Some(id) => Ok(id),
            None => self.verify(key, email, password).await,
        };
        drop(one);
        drop(guard);
        if matches!(result, Err(ApiError::Unauthorized)) {
            self.record_failure(&keys);
        }
        result
    }

    /// The failed sign-in buckets a sign-in as `email` from `client` counts against, each with
    /// its allowance per minute.
    fn failure_keys(
        &self,
        email: &str,
        client: Option<std::net::IpAddr>,
    ) -> Vec<(FailureKey, u32)> {
        let mut keys = vec![(
            FailureKey::Email(email.trim().to_ascii_lowercase()),
            self.limits.failed_logins_per_account,
        )];
        if let Some(ip) = client {
            keys.push((
                FailureKey::Address(ip),
                self.limits.failed_logins_per_address,
            ));
        }
        keys
    }

    /// 429 when the email or the client address has used up its failed sign-ins.
    fn check_failures(&self, keys: &[(FailureKey, u32)]) -> Result<(), ApiError> {
        let now = Instant::now();
        let failures = self.failures.lock().expect("auth failures");
        for (k, per_minute) in keys {
            if *per_minute == 0 {
                continue;
            }
            if let Some(b) = failures.get(k) {
                b.peek(*per_minute as f64 / 60.0, *per_minute, now)
                    .map_err(|wait| {
                        metrics::counter!("dispatcher_http_failed_logins_limited_total")
                            .increment(1);
                        ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)
                    })?;
            }
        }
        Ok(())
    }

    fn record_failure(&self, keys: &[(FailureKey, u32)]) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("auth failures");
        if failures.len() >= CACHE_MAX {
            // Forget the buckets that have refilled: they say nothing a new one would not.
            let (account, address) = (
                self.limits.failed_logins_per_account,
                self.limits.failed_logins_per_address,
            );
            failures.retain(|k, b| {
                let n = match k {
                    FailureKey::Email(_) => account,
                    FailureKey::Address(_) => address,
                };
                !b.is_full(n as f64 / 60.0, n, now)
            });
        }
        for (k, per_minute) in keys {
            if *per_minute == 0 || (failures.len() >= CACHE_MAX && !failures.contains_key(k)) {
                continue;
            }
            let _ = failures
                .entry(k.clone())
                .or_insert_with(|| TokenBucket::full(*per_minute, now))
                .take(*per_minute as f64 / 60.0, *per_minute, now);
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Uuid> {
        let cache = self.cache.lock().expect("auth cache");
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(id, _)| *id)
    }

    async fn verify(&self, key: [u8; 32], email: &str, password: &str) -> Result<Uuid, ApiError> {
        use std::sync::atomic::Ordering;
        // No unbounded queue in front of argon2: a few wait briefly for a core, the rest are
        // told to come back.
        let busy = || {
            metrics::counter!("dispatcher_http_rate_limited_total").increment(1);
            ApiError::RateLimited(1)
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let permit = tokio::time::timeout(MAX_WAIT, self.verifying.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit
            .map_err(|_| busy())?
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
            ..
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
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let account = auth.authenticate(&email, &password, client).await?;
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
