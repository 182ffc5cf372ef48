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
//!
//! Every map here is a bounded cache that evicts one entry at a time, never all at once: a bucket
//! that is dropped starts again full, so clearing the buckets wholesale when they filled up would
//! hand a client flooding new keys a fresh allowance for everyone. Eviction picks cold entries
//! (TinyLFU: a key must be asked for more often than the entry it displaces), and a bucket idle
//! long enough to have refilled expires on its own, since it says nothing a new one would not.

use crate::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dispatcher_config::{DatabaseSettings, RateLimitSettings};
use dispatcher_core::ratelimit::TokenBucket;
use dispatcher_db::{accounts, Pool};
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CACHE_TTL: Duration = Duration::from_secs(300);
/// Verified credentials, and accounts' rate-limit buckets, kept per process. Both are of one small
/// size (a digest or an id and a few words), so they are bounded by entries.
const CACHE_MAX: u64 = 10_000;
/// Failed sign-in buckets are keyed by what the client sent (an email of any length): bounded
/// by bytes.
const FAILURES_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// What a bucket costs besides its key: the bucket, its lock and the cache's bookkeeping.
const BUCKET_OVERHEAD: usize = 192;
/// A failed sign-in bucket allows its number per minute: idle this long, it is full again.
const FAILURES_REFILL: Duration = Duration::from_secs(60);
/// Verifications that may wait for a free core; more answer 429 at once.
const MAX_WAITING: usize = 64;
/// Longest a verification waits for a free core.
const MAX_WAIT: Duration = Duration::from_secs(2);

pub struct Authenticator {
    pool: Pool,
    /// Accounts by credential digest, for `CACHE_TTL` at most.
    cache: Cache<[u8; 32], Uuid>,
    /// One verification per credential at a time: concurrent requests with the same (not yet
    /// cached) credentials wait for the first one's result instead of each running argon2.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// argon2 uses ~19 MiB per verification; bounding concurrent verifications to the cores keeps
    /// a burst of new clients from ballooning memory (and gains nothing: they are CPU-bound).
    verifying: tokio::sync::Semaphore,
    /// Verifications waiting for `verifying`.
    waiting: std::sync::atomic::AtomicUsize,
    limits: RateLimitSettings,
    buckets: Buckets<Uuid>,
    /// Failed sign-ins per email and per client address, checked before argon2 runs.
    failures: Buckets<FailureKey>,
}

/// Token buckets by key. A bucket idle for `refill` (the time an empty one takes to fill) expires:
/// a new one would be the same. The rest are evicted coldest first when the cache is full.
struct Buckets<K> {
    cache: Cache<K, Arc<Mutex<TokenBucket>>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> Buckets<K> {
    /// Up to `capacity` as weighed by `weigh`.
    fn new(capacity: u64, refill: Duration, weigh: fn(&K) -> u32) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(refill)
                .weigher(move |k: &K, _: &_| weigh(k))
                .build(),
        }
    }

    /// Whether `key` has a token now, without taking it; a key without a bucket has.
    fn peek(&self, key: &K, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        match self.cache.get(key) {
            Some(b) => b.lock().expect("token bucket").peek(rate, burst, now),
            None => Ok(()),
        }
    }

    /// Returns a token taken from `key`'s bucket.
    fn give_back(&self, key: &K, burst: u32) {
        if let Some(b) = self.cache.get(key) {
            b.lock().expect("token bucket").give_back(burst);
        }
    }

    /// Takes a token from `key`'s bucket, which starts full.
    fn take(&self, key: K, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        self.cache
            .get_with(key, || Arc::new(Mutex::new(TokenBucket::full(burst, now))))
            .lock()
            .expect("token bucket")
            .take(rate, burst, now)
    }
}

/// Time for an empty bucket to refill: `burst` tokens at `rate` a second (1 s to a day).
fn refill_time(rate: f64, burst: u32) -> Duration {
    let secs = if rate > 0.0 { burst as f64 / rate } else { 0.0 };
    Duration::from_secs_f64(secs.clamp(1.0, 86_400.0))
}

fn failure_weight(key: &FailureKey) -> u32 {
    let key_bytes = match key {
        FailureKey::Email(email) => email.len(),
        FailureKey::Address(_) => 0,
    };
    u32::try_from(key_bytes + BUCKET_OVERHEAD).unwrap_or(u32::MAX)
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
        let account_refill = refill_time(limits.requests_per_second, limits.burst);
        Arc::new(Self {
            pool,
            cache: Cache::builder()
                .max_capacity(CACHE_MAX)
                .time_to_live(CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            inflight: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(cores),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            limits,
            buckets: Buckets::new(CACHE_MAX, account_refill, |_| 1),
            failures: Buckets::new(FAILURES_MAX_BYTES, FAILURES_REFILL, failure_weight),
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
                match payload.parse::<Uuid>() {
                    // Entries cached before this point are never returned again.
                    Ok(id) if !channel.is_empty() => {
                        me.cache
                            .invalidate_entries_if(move |_, acct| *acct == id)
                            .expect("the credential cache supports invalidation closures");
                    }
                    // A reconnect may have missed notifications: start over.
                    _ => me.cache.invalidate_all(),
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
        // Used-up allowances answer at once, before queueing for the single flight.
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
            None => {
                // A verification holds one failed sign-in of its email and address while it runs
                // and gives it back unless it failed: a concurrent flood gets no more
                // verifications than the allowance, however many arrive before the first fails.
                // (Requests with the same credentials wait above for one verification, so a
                // client's first burst costs one token, not one each.)
                self.reserve_failures(&keys)?;
                let result = self.verify(key, email, password).await;
                if !matches!(result, Err(ApiError::Unauthorized)) {
                    self.give_back_failures(&keys);
                }
                result
            }
        };
        drop(one);
        drop(guard);
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
        for (k, per_minute) in keys {
            if *per_minute == 0 {
                continue;
            }
            self.failures
                .peek(k, *per_minute as f64 / 60.0, *per_minute, now)
                .map_err(|wait| {
                    metrics::counter!("dispatcher_http_failed_logins_limited_total").increment(1);
                    ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)
                })?;
        }
        Ok(())
    }

    /// Takes one failed sign-in from the email's and the client address's allowances, or answers
    /// 429 (taking none) when either is used up.
    fn reserve_failures(&self, keys: &[(FailureKey, u32)]) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut taken: Vec<(FailureKey, u32)> = Vec::with_capacity(keys.len());
        for (k, per_minute) in keys {
            if *per_minute == 0 {
                continue;
            }
            let rate = *per_minute as f64 / 60.0;
            if let Err(wait) = self.failures.take(k.clone(), rate, *per_minute, now) {
                self.give_back_failures(&taken);
                metrics::counter!("dispatcher_http_failed_logins_limited_total").increment(1);
                return Err(ApiError::RateLimited(
                    wait.as_secs_f64().ceil().max(1.0) as u64
                ));
            }
            taken.push((k.clone(), *per_minute));
        }
        Ok(())
    }

    fn give_back_failures(&self, keys: &[(FailureKey, u32)]) {
        for (k, per_minute) in keys {
            if *per_minute > 0 {
                self.failures.give_back(k, *per_minute);
            }
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Uuid> {
        self.cache.get(key)
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
                self.cache.insert(key, id);
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
        self.buckets
            .take(account, rate, burst, Instant::now())
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

    fn email(i: usize) -> FailureKey {
        FailureKey::Email(format!("someone-{i}@example.com"))
    }

    #[test]
    fn failed_sign_in_buckets_stay_within_their_bytes() {
        let budget = 64 * 1024;
        let b = Buckets::new(budget, FAILURES_REFILL, failure_weight);
        let now = Instant::now();
        for i in 0..10_000 {
            let _ = b.take(email(i), 10.0 / 60.0, 10, now);
        }
        // A long key weighs its length.
        let _ = b.take(FailureKey::Email("x".repeat(100_000)), 10.0 / 60.0, 10, now);
        b.cache.run_pending_tasks();
        assert!(
            b.cache.weighted_size() <= budget,
            "{}",
            b.cache.weighted_size()
        );
        assert!(b.cache.entry_count() > 0);
    }

    #[test]
    fn a_flood_of_new_keys_does_not_reset_a_used_up_bucket() {
        let b = Buckets::new(64 * 1024, FAILURES_REFILL, failure_weight);
        let (rate, burst) = (10.0 / 60.0, 10);
        let victim = FailureKey::Email("victim@example.com".into());
        let now = Instant::now();
        for _ in 0..burst {
            b.take(victim.clone(), rate, burst, now).unwrap();
        }
        assert!(b.peek(&victim, rate, burst, now).is_err());
        // Far more keys than fit, each tried once or twice, while the victim keeps being tried.
        for i in 0..20_000 {
            assert!(
                b.peek(&victim, rate, burst, now).is_err(),
                "reset after {i}"
            );
            if b.peek(&email(i), rate, burst, now).is_ok() {
                let _ = b.take(email(i), rate, burst, now);
            }
            if i % 1000 == 0 {
                b.cache.run_pending_tasks();
            }
        }
        b.cache.run_pending_tasks();
        assert!(b.peek(&victim, rate, burst, now).is_err());
        // A minute on, it has refilled.
        assert!(b
            .peek(&victim, rate, burst, now + Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn a_key_without_a_bucket_has_its_whole_burst() {
        let b = Buckets::new(CACHE_MAX, Duration::from_secs(3), |_: &Uuid| 1);
        let (account, now) = (Uuid::new_v4(), Instant::now());
        assert!(b.peek(&account, 1.0, 3, now).is_ok());
        for _ in 0..3 {
            b.take(account, 1.0, 3, now).unwrap();
        }
        assert!(b.take(account, 1.0, 3, now).is_err());
        assert!(b.take(Uuid::new_v4(), 1.0, 3, now).is_ok(), "per account");
    }

    #[test]
    fn buckets_expire_once_they_would_be_full_again() {
        assert_eq!(refill_time(1000.0, 2000), Duration::from_secs(2));
        assert_eq!(refill_time(1.0, 3), Duration::from_secs(3));
        assert_eq!(refill_time(10.0 / 60.0, 10), FAILURES_REFILL);
        assert_eq!(refill_time(1e9, 1), Duration::from_secs(1));
        assert_eq!(refill_time(1e-9, 1), Duration::from_secs(86_400));
    }

    #[test]
    fn failure_keys_weigh_their_length() {
        let short = failure_weight(&FailureKey::Email("a@b.c".into()));
        let long = failure_weight(&FailureKey::Email("a".repeat(1000)));
        assert_eq!(long - short, 995);
        assert_eq!(
            failure_weight(&FailureKey::Address([127, 0, 0, 1].into())),
            BUCKET_OVERHEAD as u32
        );
    }
}
