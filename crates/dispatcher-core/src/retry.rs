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
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
        }
    }
}
