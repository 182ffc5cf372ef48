//! A per-endpoint circuit breaker, as a pure state machine (time is passed in).
//!
//! After `threshold` consecutive failures the circuit opens: deliveries to that endpoint are held
//! back (re-scheduled, not attempted, not dropped) until its cool-down has passed. Then one probe
//! is let through; its success closes the circuit, its failure opens it again. This keeps one
//! dead receiver from occupying the deliverers and the broker with doomed attempts.
//!
//! The cool-down follows the endpoint's health: it doubles each time a probe fails (an endpoint
//! that stays down is probed less and less often, up to 16 times the base), and starts from the
//! base again once a probe succeeds.

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

/// The state an endpoint's health reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The circuit opened (from closed; a failed probe re-opening it is not a transition).
    Opened,
    /// A success closed an open circuit.
    Closed,
}

/// Most a cool-down grows, as a multiple of the base.
const MAX_BACKOFF_SHIFT: u32 = 4;

#[derive(Debug, Clone, Default)]
pub struct Circuit {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
    /// Probes that failed since the circuit opened.
    failed_probes: u32,
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
    pub fn record(
        &mut self,
        success: bool,
        now: Instant,
        threshold: u32,
        cooldown: Duration,
    ) -> Transition {
        let was_open = self.is_open();
        let probing = std::mem::take(&mut self.probe_in_flight);
        if success {
            *self = Circuit::default();
            return if was_open {
                Transition::Closed
            } else {
                Transition::None
            };
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if threshold > 0 && self.consecutive_failures >= threshold {
            if was_open && probing {
                self.failed_probes = self.failed_probes.saturating_add(1);
            }
            let shift = self.failed_probes.min(MAX_BACKOFF_SHIFT);
            self.open_until = Some(now + cooldown * (1 << shift));
            if !was_open {
                return Transition::Opened;
            }
        }
        Transition::None
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// True while the one probe of a half-open circuit is out.
    pub fn probing(&self) -> bool {
        self.probe_in_flight
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an open circuit lets its next probe through.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until && !self.probe_in_flight => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
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
        // A failed probe doubles the cool-down.
        assert_eq!(
            c.admit(later + CD + Duration::from_millis(1)),
            Admission::Hold
        );
        let much_later = later + CD * 2 + Duration::from_millis(1);
        assert_eq!(c.admit(much_later), Admission::Probe);
        c.record(true, much_later, 3, CD);
        assert_eq!(c.admit(much_later), Admission::Attempt);
        assert!(!c.is_open());
    }

    #[test]
    fn the_cooldown_doubles_with_each_failed_probe_and_resets_on_success() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..2 {
            c.record(false, t0, 3, CD);
        }
        assert_eq!(c.record(false, t0, 3, CD), Transition::Opened);
        assert_eq!(c.open_until(), Some(t0 + CD));
        let mut now = t0 + CD;
        for shift in 1..=6u32 {
            assert_eq!(c.admit(now), Admission::Probe);
            assert_eq!(c.state(now), BreakerState::HalfOpen);
            assert_eq!(c.record(false, now, 3, CD), Transition::None);
            let wait = CD * (1 << shift.min(MAX_BACKOFF_SHIFT));
            assert_eq!(
                c.open_until(),
                Some(now + wait),
                "after {shift} failed probes"
            );
            assert_eq!(c.state(now), BreakerState::Open);
            now += wait;
        }
        assert_eq!(c.admit(now), Admission::Probe);
        assert_eq!(c.record(true, now, 3, CD), Transition::Closed);
        assert_eq!(c.state(now), BreakerState::Closed);
        for _ in 0..3 {
            c.record(false, now, 3, CD);
        }
        assert_eq!(
            c.open_until(),
            Some(now + CD),
            "a new outage starts from the base"
        );
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
