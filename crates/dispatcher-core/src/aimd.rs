//! How many requests one endpoint gets at once: additive increase, multiplicative decrease.
//!
//! A receiver's capacity is unknown and changes. The limit starts small, grows by about one for
//! every `limit` successes (one per round of requests), and halves when a request times out or
//! cannot connect, the signs of a receiver that is overwhelmed (a full listen backlog drops
//! connections). Several requests that were in flight together fail together: only the first
//! failure of a round halves the limit, so one overload does not collapse it to the minimum.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    initial: f64,
    max: f64,
    /// When the limit last decreased: failures of requests started before then were already
    /// accounted for.
    last_decrease: Option<Instant>,
}

impl Aimd {
    /// A limit starting at `initial`, never above `max` nor below 1.
    pub fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1) as f64;
        let initial = (initial.max(1) as f64).min(max);
        Self {
            limit: initial,
            initial,
            max,
            last_decrease: None,
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit.floor().max(1.0) as usize
    }

    /// A request succeeded.
    pub fn on_success(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// A request started at `started` timed out or could not connect (observed at `now`).
    pub fn on_overload(&mut self, started: Instant, now: Instant) {
        if self.last_decrease.is_some_and(|t| started < t) {
            return;
        }
        self.limit = (self.limit / 2.0).max(1.0);
        self.last_decrease = Some(now);
    }

    /// Back to one request at a time (an endpoint coming back from an outage is probed gently).
    pub fn restart_slowly(&mut self) {
        self.limit = 1.0;
    }

    /// The starting limit (for an endpoint whose health was forgotten).
    pub fn reset(&mut self) {
        self.limit = self.initial;
        self.last_decrease = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grows_by_about_one_per_round_of_successes_up_to_the_cap() {
        let mut a = Aimd::new(4, 8);
        assert_eq!(a.limit(), 4);
        // 4 + 1/4 + 1/4.25 + ... : five successes make one more.
        for _ in 0..4 {
            a.on_success();
        }
        assert_eq!(a.limit(), 4);
        a.on_success();
        assert_eq!(a.limit(), 5);
        for _ in 0..1000 {
            a.on_success();
        }
        assert_eq!(a.limit(), 8);
    }

    #[test]
    fn halves_once_per_round_of_failures_and_never_below_one() {
        let t0 = Instant::now();
        let mut a = Aimd::new(16, 64);
        // Eight requests started together all time out.
        for i in 0..8 {
            a.on_overload(t0, t0 + Duration::from_millis(10 + i));
        }
        assert_eq!(a.limit(), 8, "one halving for one round");
        // A request started after that decrease fails too: another halving.
        a.on_overload(
            t0 + Duration::from_millis(20),
            t0 + Duration::from_millis(30),
        );
        assert_eq!(a.limit(), 4);
        let mut t = t0 + Duration::from_millis(40);
        for _ in 0..10 {
            a.on_overload(t, t + Duration::from_millis(1));
            t += Duration::from_millis(2);
        }
        assert_eq!(a.limit(), 1);
    }

    #[test]
    fn restarts_slowly_and_resets() {
        let mut a = Aimd::new(4, 32);
        a.restart_slowly();
        assert_eq!(a.limit(), 1);
        a.on_success();
        assert_eq!(a.limit(), 2);
        a.reset();
        assert_eq!(a.limit(), 4);
    }

    #[test]
    fn odd_settings_are_clamped() {
        assert_eq!(Aimd::new(0, 0).limit(), 1);
        assert_eq!(Aimd::new(50, 10).limit(), 10);
    }
}
