//! The retry schedule of deliveries (`--retry-schedule`) and what a
//! destination's `Retry-After` adds to it. Pure: no I/O, no clock.
//!
//! Entry `i` is the wait before attempt `i + 1` of a schedule run: the
//! first counts from the time the transaction falls due, each later one
//! from the end of the attempt before. The number of entries is the number
//! of attempts before the transaction is FAILED. Every non-zero wait gets
//! ±[`JITTER_PERCENT`]% of uniform jitter, so transactions that failed
//! together do not all come back at the same moment.

use std::time::{Duration, SystemTime};

/// The default `--retry-schedule`.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h";

/// Jitter on every non-zero wait, in percent either way.
pub const JITTER_PERCENT: u64 = 20;

/// Most entries a schedule may have (each is an attempt).
pub const MAX_ENTRIES: usize = 100;

/// Longest single wait a schedule may hold.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest wait a destination's `Retry-After` can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A parsed `--retry-schedule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    waits: Vec<Duration>,
}

/// Why a `--retry-schedule` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// No entry at all.
    #[error("is empty: give at least one wait, e.g. 0s")]
    Empty,
    /// An entry is not a humantime duration.
    #[error("entry {0:?} is not a duration (e.g. 0s, 5s, 5m, 2h)")]
    Entry(String),
    /// An entry is longer than [`MAX_WAIT`].
    #[error("entry {0:?} is longer than 30 days")]
    TooLong(String),
    /// More than [`MAX_ENTRIES`] entries.
    #[error("has more than {MAX_ENTRIES} entries")]
    TooMany,
}

impl std::str::FromStr for RetrySchedule {
    type Err = ScheduleError;

    /// Comma-separated humantime durations: `0s,5s,5m`.
    fn from_str(text: &str) -> Result<RetrySchedule, ScheduleError> {
        if text.trim().is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut waits = Vec::new();
        for entry in text.split(',').map(str::trim) {
            let wait = humantime::parse_duration(entry)
                .map_err(|_| ScheduleError::Entry(entry.to_owned()))?;
            if wait > MAX_WAIT {
                return Err(ScheduleError::TooLong(entry.to_owned()));
            }
            waits.push(wait);
        }
        if waits.len() > MAX_ENTRIES {
            return Err(ScheduleError::TooMany);
        }
        Ok(RetrySchedule { waits })
    }
}

impl std::fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, wait) in self.waits.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", humantime::format_duration(*wait))?;
        }
        Ok(())
    }
}

impl RetrySchedule {
    /// How many attempts one run of the schedule makes.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.waits.len()).unwrap_or(u32::MAX)
    }

    /// The wait before attempt `position + 1` of a run, jittered; `None`
    /// once the schedule has run out.
    #[must_use]
    pub fn wait_before(&self, position: u32) -> Option<Duration> {
        self.waits
            .get(usize::try_from(position).ok()?)
            .map(|&wait| jittered(wait, fastrand::u64(..=2 * JITTER_PERCENT * 100)))
    }

    /// [`RetrySchedule::wait_before`] in milliseconds.
    #[must_use]
    pub fn wait_ms_before(&self, position: u32) -> Option<u64> {
        self.wait_before(position)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// `wait` moved by the jitter `draw` picks: `draw` runs from 0 (−20%) to
/// 4000 (+20%) in steps of 0.01%. Zero stays zero.
fn jittered(wait: Duration, draw: u64) -> Duration {
    if wait.is_zero() {
        return wait;
    }
    let span = 2 * JITTER_PERCENT * 100;
    let low = u128::from(100 - JITTER_PERCENT) * 100;
    let scaled = wait.as_nanos() * (low + u128::from(draw.min(span))) / 10_000;
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// What a `Retry-After` value asks for, at most [`MAX_RETRY_AFTER`]:
/// seconds (`120`) or an HTTP date, against `now`. `None` if it is neither.
#[must_use]
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_has_ten_attempts_starting_at_once() {
        let schedule: RetrySchedule = DEFAULT_SCHEDULE.parse().unwrap();
        assert_eq!(schedule.attempts(), 10);
        assert_eq!(schedule.wait_before(0), Some(Duration::ZERO));
        assert_eq!(schedule.wait_before(10), None);
        let shown: RetrySchedule = schedule.to_string().parse().unwrap();
        assert_eq!(shown, schedule);
    }

    #[test]
    fn bad_schedules_are_refused_with_the_entry_named() {
        assert_eq!("".parse::<RetrySchedule>(), Err(ScheduleError::Empty));
        assert_eq!(
            "1s,,2s".parse::<RetrySchedule>(),
            Err(ScheduleError::Entry(String::new()))
        );
        assert_eq!(
            "1s,soon".parse::<RetrySchedule>(),
            Err(ScheduleError::Entry("soon".to_owned()))
        );
        assert!(matches!(
            "1s,60days".parse::<RetrySchedule>(),
            Err(ScheduleError::TooLong(_))
        ));
        let many = vec!["1s"; MAX_ENTRIES + 1].join(",");
        assert_eq!(many.parse::<RetrySchedule>(), Err(ScheduleError::TooMany));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_spans_it() {
        let wait = Duration::from_secs(100);
        assert_eq!(jittered(wait, 0), Duration::from_secs(80));
        assert_eq!(jittered(wait, 2000), Duration::from_secs(100));
        assert_eq!(jittered(wait, 4000), Duration::from_secs(120));
        assert_eq!(jittered(wait, 9999), Duration::from_secs(120), "capped");
        assert_eq!(jittered(Duration::ZERO, 4000), Duration::ZERO);
        let schedule: RetrySchedule = "10s".parse().unwrap();
        let draws: Vec<Duration> = (0..200).map(|_| schedule.wait_before(0).unwrap()).collect();
        assert!(draws.iter().all(|d| (8..=12).contains(&d.as_secs())));
        assert!(draws.iter().any(|d| *d < Duration::from_secs(9)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(11)));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped_at_an_hour() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
