//! The breaker: a down destination does not burn attempts.
//!
//! After [`THRESHOLD`] failed attempts in a row (any transactions, no
//! success between them; a 410 is a deliberate answer of a destination
//! that is up, and counts as a success here) delivery pauses: no attempt starts except one
//! probe every [`PROBE_INTERVAL`]. The first success (the probe's, or of
//! an attempt still in flight when it paused) resumes delivery. While
//! failures are counting up, at most `THRESHOLD - failures` attempts are in
//! flight, so with `--deliver-concurrency` up to the threshold no more than
//! the threshold fail before the pause. In memory only: it starts closed
//! after a restart. Time is passed in, so tests drive it without sleeping.

use std::time::{Duration, Instant};

/// Failed attempts in a row that pause delivery.
pub const THRESHOLD: u32 = 10;

/// While paused, one due delivery is tried this often.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// Whether delivery runs or is paused.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Failed attempts since the last success.
    failures: u32,
    /// When the next probe may start, while paused.
    paused_until: Option<Instant>,
    /// Whether a probe is in flight.
    probing: bool,
}

/// How many attempts may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Attempts that may start now.
    pub attempts: usize,
    /// Whether the first of them is a probe.
    pub probe: bool,
    /// When to ask again, if nothing may start before then.
    pub retry_at: Option<Instant>,
}

/// A change of state, to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Delivery paused.
    Paused,
    /// Delivery resumed.
    Resumed,
}

impl Breaker {
    /// Whether delivery is paused.
    #[must_use]
    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// What may start at `now` with `in_flight` attempts running, out of `concurrency`.
    #[must_use]
    pub fn allowance(&self, now: Instant, in_flight: usize, concurrency: usize) -> Allowance {
        let none = |retry_at| Allowance {
            attempts: 0,
            probe: false,
            retry_at,
        };
        match self.paused_until {
            Some(_) if self.probing => none(None),
            Some(at) if now < at => none(Some(at)),
            Some(_) => Allowance {
                attempts: 1,
                probe: true,
                retry_at: None,
            },
            None => {
                let cap = if self.failures == 0 {
                    concurrency
                } else {
                    concurrency.min((THRESHOLD - self.failures.min(THRESHOLD)) as usize)
                };
                Allowance {
                    attempts: cap.saturating_sub(in_flight),
                    probe: false,
                    retry_at: None,
                }
            }
        }
    }

    /// A probe was handed out at `now`.
    pub fn probe_started(&mut self, now: Instant) {
        self.probing = true;
        self.paused_until = Some(now + PROBE_INTERVAL);
    }

    /// The probe handed out at `now` was not sent after all (its
    /// transaction no longer needed it): another may go at once.
    pub fn probe_skipped(&mut self, now: Instant) {
        self.probing = false;
        if self.paused_until.is_some() {
            self.paused_until = Some(now);
        }
    }

    /// An attempt ended: `delivered` or not; `probe` if it was the probe.
    pub fn record(&mut self, delivered: bool, probe: bool, now: Instant) -> Option<Change> {
        if probe {
            self.probing = false;
        }
        if delivered {
            self.failures = 0;
            return self.paused_until.take().map(|_| Change::Resumed);
        }
        self.failures = self.failures.saturating_add(1);
        if self.paused_until.is_none() && self.failures >= THRESHOLD {
            self.paused_until = Some(now + PROBE_INTERVAL);
            return Some(Change::Paused);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_in_a_row_pause_and_a_success_between_resets_the_count() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..9 {
            assert_eq!(breaker.record(false, false, now), None);
        }
        assert_eq!(breaker.record(true, false, now), None);
        for _ in 0..9 {
            assert_eq!(breaker.record(false, false, now), None);
        }
        assert!(!breaker.paused());
        assert_eq!(breaker.record(false, false, now), Some(Change::Paused));
        assert!(breaker.paused());
    }

    #[test]
    fn while_failing_fewer_attempts_run_so_no_more_than_the_threshold_fail() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        assert_eq!(breaker.allowance(now, 3, 32).attempts, 29);
        for _ in 0..4 {
            breaker.record(false, false, now);
        }
        assert_eq!(breaker.allowance(now, 0, 32).attempts, 6);
        assert_eq!(breaker.allowance(now, 6, 32).attempts, 0);
        assert_eq!(breaker.allowance(now, 0, 4).attempts, 4);
    }

    #[test]
    fn paused_it_allows_one_probe_every_interval_and_a_success_resumes() {
        let start = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..THRESHOLD {
            breaker.record(false, false, start);
        }
        let waiting = breaker.allowance(start, 0, 32);
        assert_eq!(waiting.attempts, 0);
        assert_eq!(waiting.retry_at, Some(start + PROBE_INTERVAL));
        let due = start + PROBE_INTERVAL;
        let probe = breaker.allowance(due, 0, 32);
        assert_eq!((probe.attempts, probe.probe), (1, true));
        breaker.probe_started(due);
        assert_eq!(
            breaker.allowance(due, 1, 32).attempts,
            0,
            "one probe at a time"
        );
        assert_eq!(breaker.record(false, true, due), None);
        assert_eq!(
            breaker.allowance(due, 0, 32).retry_at,
            Some(due + PROBE_INTERVAL)
        );
        let later = due + PROBE_INTERVAL;
        breaker.probe_started(later);
        assert_eq!(breaker.record(true, true, later), Some(Change::Resumed));
        assert!(!breaker.paused());
        assert_eq!(breaker.allowance(later, 0, 32).attempts, 32);
    }
}
