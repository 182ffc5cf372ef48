//! A per-endpoint circuit breaker, as a pure state machine (time is passed in).
//!
//! After `threshold` consecutive failures the circuit opens: deliveries to that endpoint are held
//! back (re-scheduled, not attempted, not dropped) until `cooldown` has passed. Then one probe is
//! let through; its success closes the circuit, its failure opens it for another cooldown. This
//! keeps one dead receiver from occupying the deliverers and the broker with doomed attempts.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed circuit: attempt.
    Attempt,
    /// The single probe of a half-open circuit.
    Probe,
    /// Open circuit: hold the delivery back.
    Hold,
}

#[derive(Debug, Clone, Default)]
pub struct Circuit {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

impl Circuit {
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.open_until {
            None => Admission::Attempt,
            Some(until) if now < until => Admission::Hold,
            Some(_) if self.probe_in_flight => Admission::Hold,
            Some(_) => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    /// Records an attempt's outcome. `threshold == 0` disables the breaker.
    pub fn record(&mut self, success: bool, now: Instant, threshold: u32, cooldown: Duration) {
        self.probe_in_flight = false;
        if success {
            *self = Circuit::default();
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if threshold > 0 && self.consecutive_failures >= threshold {
            self.open_until = Some(now + cooldown);
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CD: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..2 {
            assert_eq!(c.admit(t0), Admission::Attempt);
            c.record(false, t0, 3, CD);
        }
        assert!(!c.is_open());
        c.record(false, t0, 3, CD);
        assert!(c.is_open());
        assert_eq!(c.admit(t0 + Duration::from_secs(1)), Admission::Hold);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.record(false, t0, 3, CD);
        c.record(false, t0, 3, CD);
        c.record(true, t0, 3, CD);
        c.record(false, t0, 3, CD);
        assert!(!c.is_open());
    }

    #[test]
    fn one_probe_after_cooldown_decides() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.record(false, t0, 3, CD);
        }
        let later = t0 + CD + Duration::from_millis(1);
        assert_eq!(c.admit(later), Admission::Probe);
        assert_eq!(c.admit(later), Admission::Hold, "only one probe at a time");
        c.record(false, later, 3, CD);
        assert_eq!(c.admit(later + Duration::from_secs(1)), Admission::Hold);
        let much_later = later + CD + Duration::from_millis(1);
        assert_eq!(c.admit(much_later), Admission::Probe);
        c.record(true, much_later, 3, CD);
        assert_eq!(c.admit(much_later), Admission::Attempt);
        assert!(!c.is_open());
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..100 {
            c.record(false, t0, 0, CD);
        }
        assert_eq!(c.admit(t0), Admission::Attempt);
    }
}
