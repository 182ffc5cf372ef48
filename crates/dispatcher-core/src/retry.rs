//! Retry schedules: parsing `"5s,30s,2m"` and spreading retries with jitter.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry schedule entry `{entry}`: {reason}")]
pub struct ScheduleError {
    pub entry: String,
    pub reason: String,
}

/// Parses a comma-separated list of durations (`5s`, `2m`, `1h`, `500ms`).
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, ScheduleError> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            parse_duration(entry).map_err(|reason| ScheduleError {
                entry: entry.to_owned(),
                reason,
            })
        })
        .collect()
}

/// Parses one duration such as `250ms`, `5s`, `2m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "missing unit (ms, s, m, h, d)".to_owned())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| "missing number".to_owned())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit `{other}`")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "too large".to_owned())
}

/// `base` moved by up to ±`fraction` of itself, uniformly.
pub fn jitter(base: Duration, fraction: f64, rng: &mut impl Rng) -> Duration {
    let f = fraction.clamp(0.0, 1.0);
    let factor = rng.gen_range((1.0 - f)..=(1.0 + f));
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_schedule() {
        let s = parse_schedule("5s,30s,2m,10m,30m,1h,3h,6h").unwrap();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0], Duration::from_secs(5));
        assert_eq!(s[2], Duration::from_secs(120));
        assert_eq!(s[7], Duration::from_secs(6 * 3600));
    }

    #[test]
    fn accepts_spaces_and_milliseconds() {
        assert_eq!(
            parse_schedule(" 200ms , 1s ").unwrap(),
            vec![Duration::from_millis(200), Duration::from_secs(1)]
        );
        assert_eq!(parse_schedule("").unwrap(), vec![]);
    }

    #[test]
    fn rejects_bad_entries() {
        assert!(parse_schedule("5s,soon").is_err());
        assert!(parse_schedule("5").is_err());
        assert!(parse_schedule("5y").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut rng = rand::thread_rng();
        let base = Duration::from_secs(10);
        for _ in 0..1000 {
            let d = jitter(base, 0.2, &mut rng);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}

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
