//! A token bucket as a pure function of time: `rate` tokens per second up to `burst`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst as f64,
            last: now,
        }
    }

    /// Whether a token is available now, without taking it (or how long until one is).
    pub fn peek(&self, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        self.clone().take(rate, burst, now)
    }

    /// True once the bucket has refilled to `burst`: it then says nothing a new one would not.
    pub fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= burst as f64
    }

    /// Returns a token taken for something that turned out not to count (at most up to `burst`).
    pub fn give_back(&mut self, burst: u32) {
        self.tokens = (self.tokens + 1.0).min(burst as f64);
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        for _ in 0..3 {
            assert!(b.take(10.0, 3, t0).is_ok());
        }
        let wait = b.take(10.0, 3, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(b.take(10.0, 3, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(10.0, 3, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_token_given_back_is_available_again_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1, t0);
        assert!(b.take(1.0, 1, t0).is_ok());
        assert!(b.take(1.0, 1, t0).is_err());
        b.give_back(1);
        assert!(b.take(1.0, 1, t0).is_ok());
        b.give_back(1);
        b.give_back(1);
        assert!(b.take(1.0, 1, t0).is_ok());
        assert!(b.take(1.0, 1, t0).is_err(), "never more than the burst");
    }

    #[test]
    fn never_exceeds_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(100.0, 2, later).is_ok());
        assert!(b.take(100.0, 2, later).is_ok());
        assert!(b.take(100.0, 2, later).is_err());
    }
}
