//! A heartbeat a worker thread updates as it goes, for a watchdog to read.
//!
//! A worker marks the start of every piece of work with [`Heartbeat::beat`]
//! and, if it waits for work with no bound on the wait, says so with
//! [`Heartbeat::rest`]. A watchdog asks [`Heartbeat::busy_for`]: how long
//! the current piece of work has lasted so far (`None` while resting). A
//! worker stuck inside one piece of work (a commit whose fsync never
//! returns, a round that never ends) shows an ever-growing figure; a worker
//! that is idle or moving along never does.
//!
//! Invariant: the figure is read from a monotonic clock, so a wall-clock
//! step never makes a healthy worker look stuck.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Value of `busy_since_ms` while the worker rests.
const RESTING: u64 = u64::MAX;

/// Shared between the worker, which beats, and the watchdog, which reads.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    /// Milliseconds after `origin` at which the current piece of work
    /// started, or [`RESTING`].
    busy_since_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat whose worker starts working now.
    #[must_use]
    pub fn new() -> Self {
        Heartbeat {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                busy_since_ms: AtomicU64::new(0),
            }),
        }
    }

    /// A heartbeat whose worker has been inside one piece of work for `ago`.
    #[cfg(test)]
    pub(crate) fn busy_since(ago: Duration) -> Self {
        Heartbeat {
            inner: Arc::new(Inner {
                origin: Instant::now()
                    .checked_sub(ago)
                    .expect("the monotonic clock is past `ago`"),
                busy_since_ms: AtomicU64::new(0),
            }),
        }
    }

    /// A new piece of work starts now: the previous one is done.
    pub fn beat(&self) {
        self.inner
            .busy_since_ms
            .store(self.elapsed_ms(), Ordering::Release);
    }

    /// The worker waits for work; it cannot be stuck until its next beat.
    pub fn rest(&self) {
        self.inner.busy_since_ms.store(RESTING, Ordering::Release);
    }

    /// How long the current piece of work has lasted; `None` while resting.
    #[must_use]
    pub fn busy_for(&self) -> Option<Duration> {
        let since = self.inner.busy_since_ms.load(Ordering::Acquire);
        (since != RESTING).then(|| Duration::from_millis(self.elapsed_ms().saturating_sub(since)))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(RESTING - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_starts_the_count_and_rest_stops_it() {
        let heartbeat = Heartbeat::new();
        assert!(heartbeat.busy_for().is_some());
        heartbeat.rest();
        assert_eq!(heartbeat.busy_for(), None);
        heartbeat.beat();
        let busy = heartbeat.busy_for().expect("busy after a beat");
        assert!(busy < Duration::from_secs(60), "{busy:?}");
    }

    #[test]
    fn the_count_grows_until_the_next_beat() {
        let heartbeat = Heartbeat::busy_since(Duration::from_secs(10));
        assert!(heartbeat.busy_for().unwrap() >= Duration::from_secs(10));
        heartbeat.clone().beat();
        assert!(heartbeat.busy_for().unwrap() < Duration::from_secs(10));
    }
}
