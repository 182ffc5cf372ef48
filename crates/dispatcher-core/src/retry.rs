//! Retry decisions: what follows a delivery attempt, on the schedule that dispatcher-config reads
//! (`delivery.retry_schedule`), with jitter from a fixed set of delay factors.

use std::time::Duration;

/// What one delivery attempt came back with, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx.
    Success,
    /// `410 Gone`: the receiver asks us to stop.
    Gone,
    /// Any other status, a timeout, a connection error or a redirect. `retry_after` is the
    /// receiver's `Retry-After` on a 429 or 503.
    Failure { retry_after: Option<Duration> },
}

/// What to do after attempt number `attempt` (1-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextStep {
    Succeeded,
    /// Stop for good (the subscription is disabled).
    Disabled,
    /// Try again after the scheduled delay scaled by `factor`.
    Retry {
        base: Duration,
        factor: f64,
    },
    /// The schedule is exhausted: dead-letter.
    Dead,
}

/// Delay multipliers with a declared delay queue: jitter spreads over the first five; a
/// `Retry-After` longer than the scheduled delay is honoured up to twice it.
pub const DELAY_FACTORS: [f64; 7] = [0.8, 0.9, 1.0, 1.1, 1.2, 1.5, 2.0];
const JITTER_FACTORS: usize = 5;

/// The retry decision. Pure: `pick` chooses a jitter index in `0..5` (random in production).
pub fn next_step(
    attempt: u32,
    schedule: &[Duration],
    outcome: AttemptOutcome,
    pick: impl FnOnce() -> usize,
) -> NextStep {
    match outcome {
        AttemptOutcome::Success => NextStep::Succeeded,
        AttemptOutcome::Gone => NextStep::Disabled,
        AttemptOutcome::Failure { retry_after } => {
            let Some(base) = schedule.get(attempt.saturating_sub(1) as usize).copied() else {
                return NextStep::Dead;
            };
            let jittered = DELAY_FACTORS[pick() % JITTER_FACTORS];
            let factor = match retry_after {
                Some(ra) if !base.is_zero() && ra > base.mul_f64(jittered) => {
                    let wanted = ra.as_secs_f64() / base.as_secs_f64();
                    DELAY_FACTORS
                        .iter()
                        .copied()
                        .find(|f| *f >= wanted)
                        .unwrap_or(2.0)
                }
                _ => jittered,
            };
            NextStep::Retry { base, factor }
        }
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    fn sched() -> Vec<Duration> {
        vec![Duration::from_secs(5), Duration::from_secs(30)]
    }

    #[test]
    fn success_and_gone_end_the_delivery() {
        assert_eq!(
            next_step(1, &sched(), AttemptOutcome::Success, || 0),
            NextStep::Succeeded
        );
        assert_eq!(
            next_step(1, &sched(), AttemptOutcome::Gone, || 0),
            NextStep::Disabled
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_die() {
        let f = AttemptOutcome::Failure { retry_after: None };
        assert_eq!(
            next_step(1, &sched(), f, || 2),
            NextStep::Retry {
                base: Duration::from_secs(5),
                factor: 1.0
            }
        );
        assert_eq!(
            next_step(2, &sched(), f, || 0),
            NextStep::Retry {
                base: Duration::from_secs(30),
                factor: 0.8
            }
        );
        assert_eq!(next_step(3, &sched(), f, || 0), NextStep::Dead);
        assert_eq!(next_step(1, &[], f, || 0), NextStep::Dead);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let f = AttemptOutcome::Failure { retry_after: None };
        for pick in 0..100 {
            match next_step(1, &sched(), f, || pick) {
                NextStep::Retry { factor, .. } => assert!((0.8..=1.2).contains(&factor)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_twice_the_delay() {
        let ra = |s| AttemptOutcome::Failure {
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(
            next_step(1, &sched(), ra(7), || 0),
            NextStep::Retry {
                base: Duration::from_secs(5),
                factor: 1.5
            }
        );
        assert_eq!(
            next_step(1, &sched(), ra(3600), || 0),
            NextStep::Retry {
                base: Duration::from_secs(5),
                factor: 2.0
            }
        );
        // Shorter than the schedule: the schedule wins.
        match next_step(1, &sched(), ra(1), || 0) {
            NextStep::Retry { factor, .. } => assert_eq!(factor, 0.8),
            other => panic!("{other:?}"),
        }
    }
}
