//! Subscriptions' `rateLimit`: requests per second each endpoint receives from this deliverer.
//!
//! A token bucket per subscription, holding a tenth of a second of requests (at least one), so
//! requests go out evenly spaced rather than in bursts. A delivery waits for its token up to
//! [`MAX_WAIT`]; past that it is held back through a delay queue like a delivery whose breaker is
//! open, because a consumer that sleeps keeps its whole batch unacknowledged.

use dispatcher_core::ratelimit::TokenBucket;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// Longest a delivery waits for its turn before it is held back.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Buckets kept before full ones (which say nothing a new one would not) are dropped.
const PRUNE_AT: usize = 10_000;

#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<Uuid, (TokenBucket, usize)>>,
}

fn burst(rate: f64) -> u32 {
    ((rate / 10.0) as u32).max(1)
}

impl RateLimits {
    /// Waits for a request slot of `webhook` at `per_second`. `Err(n)` when the wait would pass
    /// `max_wait`: the delivery is to be held, and `n` counts this endpoint's holds (to spread
    /// them over the delay steps).
    pub async fn admit(
        &self,
        webhook: Uuid,
        per_second: u32,
        max_wait: Duration,
    ) -> Result<(), usize> {
        let rate = per_second.max(1) as f64;
        // Tokio's clock, so tests can run it paused.
        let clock = || tokio::time::Instant::now().into_std();
        let deadline = clock() + max_wait;
        loop {
            let now = clock();
            let wait = {
                let mut buckets = self.buckets.lock().expect("not poisoned");
                if buckets.len() >= PRUNE_AT {
                    buckets.retain(|_, (b, _)| !b.is_full(rate, burst(rate), now));
                }
                let (bucket, holds) = buckets
                    .entry(webhook)
                    .or_insert_with(|| (TokenBucket::full(burst(rate), now), 0));
                match bucket.take(rate, burst(rate), now) {
                    Ok(()) => return Ok(()),
                    Err(wait) if now + wait <= deadline => wait,
                    Err(_) => {
                        *holds += 1;
                        return Err(*holds);
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate() {
        let limits = RateLimits::default();
        let w = Uuid::now_v7();
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            limits.admit(w, 5, MAX_WAIT).await.unwrap();
        }
        // One at once, then one every 200 ms.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_bound_is_a_hold() {
        let limits = RateLimits::default();
        let w = Uuid::now_v7();
        limits.admit(w, 1, Duration::ZERO).await.unwrap();
        assert_eq!(limits.admit(w, 1, Duration::from_millis(500)).await, Err(1));
        assert_eq!(limits.admit(w, 1, Duration::from_millis(500)).await, Err(2));
        let other = Uuid::now_v7();
        assert_eq!(
            limits.admit(other, 1, Duration::ZERO).await,
            Ok(()),
            "each subscription has its own bucket"
        );
    }
}
