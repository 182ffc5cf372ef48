//! An endpoint's health as every deliverer sees it: folded from the attempts they record.
//!
//! Each deliverer also keeps a circuit breaker in memory ([`crate::circuit`]) to decide, at once,
//! whether to send. That one is per process; this one is stored with the attempts, so the API
//! shows one answer and an operational event (`endpoint.failing`, `endpoint.recovered`,
//! `endpoint.disabled`) is emitted once, by the commit that changed the state, however many
//! deliverers run. Both open after the same number of consecutive failures.

use crate::circuit::BreakerState;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Attempts the success rate mostly reflects: a plain average over the first ones, then an
/// exponentially weighted one in which the last `RATE_WINDOW` attempts weigh about two thirds.
pub const RATE_WINDOW: f64 = 50.0;

/// Longest error text kept (the attempt itself keeps the whole of it).
const MAX_ERROR: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub attempts: i64,
    /// Between 0 and 1, over recent attempts.
    pub success_rate: f64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: i32,
    /// The first failure after the last success.
    pub failing_since: Option<DateTime<Utc>>,
    /// Open once `consecutive_failures` reached the threshold, until a success.
    pub breaker_open: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            attempts: 0,
            success_rate: 1.0,
            last_success_at: None,
            last_error_at: None,
            last_error: None,
            consecutive_failures: 0,
            failing_since: None,
            breaker_open: false,
        }
    }
}

/// One attempt's outcome, as health needs it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub at: DateTime<Utc>,
    pub succeeded: bool,
    pub error: Option<String>,
}

/// What a batch of attempts changed, for the operational events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The breaker opened: `endpoint.failing`.
    Failing,
    /// A success closed it: `endpoint.recovered`.
    Recovered,
    /// Failing for longer than the policy allows: disable the subscription (`endpoint.disabled`).
    Disable,
}

/// The rules health is folded by.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Consecutive failures that open the breaker; 0 never opens it.
    pub threshold: u32,
    /// An endpoint failing without a success for this long is disabled; `None` never.
    pub disable_after: Option<Duration>,
}

impl Health {
    /// Folds attempts in (in the order they were made) and says what changed, if anything:
    /// the net change of the batch, so a breaker that opened and closed again within it is not
    /// reported.
    pub fn apply(&mut self, observed: &[Observed], policy: Policy) -> Option<Change> {
        let was_open = self.breaker_open;
        for o in observed {
            self.attempts += 1;
            let weight = (1.0 / self.attempts as f64).max(1.0 / RATE_WINDOW);
            let value = if o.succeeded { 1.0 } else { 0.0 };
            self.success_rate += (value - self.success_rate) * weight;
            if o.succeeded {
                self.last_success_at = Some(o.at);
                self.consecutive_failures = 0;
                self.failing_since = None;
                self.breaker_open = false;
            } else {
                self.last_error_at = Some(o.at);
                self.last_error = o.error.as_deref().map(truncate);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.failing_since.get_or_insert(o.at);
                if policy.threshold > 0 && self.consecutive_failures as u32 >= policy.threshold {
                    self.breaker_open = true;
                }
            }
        }
        let now = observed.last().map(|o| o.at);
        if let (Some(limit), Some(since), Some(now)) =
            (policy.disable_after, self.failing_since, now)
        {
            let failing_for = (now - since).to_std().unwrap_or_default();
            if self.breaker_open && failing_for >= limit {
                return Some(Change::Disable);
            }
        }
        match (was_open, self.breaker_open) {
            (false, true) => Some(Change::Failing),
            (true, false) => Some(Change::Recovered),
            _ => None,
        }
    }

    /// The breaker as the API shows it: half open once a probe is due (a cool-down after the
    /// last failure).
    pub fn breaker(&self, now: DateTime<Utc>, cooldown: Duration) -> BreakerState {
        if !self.breaker_open {
            return BreakerState::Closed;
        }
        let quiet = self
            .last_error_at
            .map(|at| (now - at).to_std().unwrap_or_default())
            .unwrap_or_default();
        if quiet >= cooldown {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR {
        return s.to_owned();
    }
    let mut end = MAX_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        threshold: 3,
        disable_after: None,
    };

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn ok(s: i64) -> Observed {
        Observed {
            at: at(s),
            succeeded: true,
            error: None,
        }
    }

    fn failed(s: i64) -> Observed {
        Observed {
            at: at(s),
            succeeded: false,
            error: Some(format!("endpoint answered 500 at {s}")),
        }
    }

    #[test]
    fn opens_after_the_threshold_once_and_closes_on_a_success() {
        let mut h = Health::default();
        assert_eq!(h.apply(&[failed(1), failed(2)], POLICY), None);
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(h.failing_since, Some(at(1)));
        assert_eq!(h.apply(&[failed(3)], POLICY), Some(Change::Failing));
        assert_eq!(
            h.apply(&[failed(4), failed(5)], POLICY),
            None,
            "an open breaker failing again is no new event"
        );
        assert_eq!(h.last_error.as_deref(), Some("endpoint answered 500 at 5"));
        assert_eq!(h.apply(&[ok(6)], POLICY), Some(Change::Recovered));
        assert_eq!(h.consecutive_failures, 0);
        assert_eq!(h.failing_since, None);
        assert_eq!(h.last_success_at, Some(at(6)));
        assert_eq!(h.last_error_at, Some(at(5)), "the last error stays visible");
    }

    #[test]
    fn a_batch_reports_its_net_change() {
        let mut h = Health::default();
        let batch = [failed(1), failed(2), failed(3), ok(4)];
        assert_eq!(h.apply(&batch, POLICY), None);
        assert!(!h.breaker_open);
        let mut h = Health::default();
        let batch = [ok(1), failed(2), failed(3), failed(4)];
        assert_eq!(h.apply(&batch, POLICY), Some(Change::Failing));
    }

    #[test]
    fn threshold_zero_never_opens() {
        let mut h = Health::default();
        let policy = Policy {
            threshold: 0,
            disable_after: None,
        };
        let many: Vec<_> = (0..100).map(failed).collect();
        assert_eq!(h.apply(&many, policy), None);
        assert_eq!(h.consecutive_failures, 100);
    }

    #[test]
    fn success_rate_averages_then_follows_recent_attempts() {
        let mut h = Health::default();
        h.apply(&[ok(1), failed(2), ok(3), failed(4)], POLICY);
        assert!((h.success_rate - 0.5).abs() < 1e-9, "{}", h.success_rate);
        let long_good: Vec<_> = (10..300).map(ok).collect();
        h.apply(&long_good, POLICY);
        assert!(h.success_rate > 0.99, "{}", h.success_rate);
        let recent_bad: Vec<_> = (300..350).map(failed).collect();
        h.apply(
            &recent_bad,
            Policy {
                threshold: 0,
                ..POLICY
            },
        );
        assert!(
            h.success_rate < 0.4,
            "the last 50 failures dominate: {}",
            h.success_rate
        );
        assert_eq!(h.attempts, 4 + 290 + 50);
    }

    #[test]
    fn failing_too_long_disables() {
        let policy = Policy {
            threshold: 2,
            disable_after: Some(Duration::from_secs(60)),
        };
        let mut h = Health::default();
        assert_eq!(
            h.apply(&[failed(0), failed(1)], policy),
            Some(Change::Failing)
        );
        assert_eq!(h.apply(&[failed(30)], policy), None);
        assert_eq!(h.apply(&[failed(61)], policy), Some(Change::Disable));
    }

    #[test]
    fn breaker_is_half_open_once_a_probe_is_due() {
        let mut h = Health::default();
        let cooldown = Duration::from_secs(30);
        assert_eq!(h.breaker(at(0), cooldown), BreakerState::Closed);
        h.apply(&[failed(0), failed(1), failed(2)], POLICY);
        assert_eq!(h.breaker(at(10), cooldown), BreakerState::Open);
        assert_eq!(h.breaker(at(32), cooldown), BreakerState::HalfOpen);
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(400);
        let t = truncate(&long);
        assert!(t.len() <= MAX_ERROR + '…'.len_utf8());
        assert!(t.ends_with('…'));
    }
}
