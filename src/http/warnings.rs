//! Per-request warnings (a rejected request, with its reason) are rate
//! limited, so a flood of bad requests cannot flood the log: at most
//! [`MAX_WARNINGS_PER_SECOND`] are written in any one-second window, and
//! the rest are counted and reported in one line once the window is over.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Most per-request warnings written in any one second.
pub const MAX_WARNINGS_PER_SECOND: u32 = 20;

/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The rate limit on per-request warnings; one per server.
pub(super) struct Warnings {
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl Warnings {
    pub(super) fn new() -> Self {
        Warnings {
            window: Mutex::new(Window {
                started: Instant::now(),
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether one more warning may be written now; if not, it is counted
    /// as suppressed. A window that is over is reported and a new one
    /// starts.
    pub(super) fn admit(&self) -> bool {
        let mut window = self.lock();
        let now = Instant::now();
        let mut report = 0;
        if now.duration_since(window.started) >= WINDOW {
            report = std::mem::take(&mut window.suppressed);
            window.started = now;
            window.written = 0;
        }
        let admitted = window.written < MAX_WARNINGS_PER_SECOND;
        if admitted {
            window.written += 1;
        } else {
            window.suppressed += 1;
        }
        drop(window);
        report_suppressed(report);
        admitted
    }

    /// Reports the warnings suppressed in a window that is over (or, at
    /// `shutdown`, in the current one). Called once a [`WINDOW`], so the
    /// count is written even when the flood has stopped.
    pub(super) fn flush(&self, shutdown: bool) {
        let mut window = self.lock();
        if shutdown || window.started.elapsed() >= WINDOW {
            let report = std::mem::take(&mut window.suppressed);
            drop(window);
            report_suppressed(report);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Plain counters, changed in whole statements: a panic elsewhere
        // cannot leave them half-written.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn report_suppressed(count: u64) {
    if count > 0 {
        tracing::warn!(
            suppressed = count,
            "{count} more rejected requests were not logged (at most {MAX_WARNINGS_PER_SECOND} a second)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_is_admitted_in_one_window_and_the_rest_counted() {
        let warnings = Warnings::new();
        let admitted = (0..100).filter(|_| warnings.admit()).count();
        assert_eq!(admitted, MAX_WARNINGS_PER_SECOND as usize);
        assert_eq!(
            warnings.lock().suppressed,
            100 - u64::from(MAX_WARNINGS_PER_SECOND)
        );
    }

    #[test]
    fn a_new_window_admits_again_and_clears_the_count() {
        let warnings = Warnings::new();
        for _ in 0..50 {
            warnings.admit();
        }
        warnings.lock().started -= WINDOW;
        assert!(warnings.admit());
        let window = warnings.lock();
        assert_eq!((window.written, window.suppressed), (1, 0));
    }

    #[test]
    fn flushing_an_ended_window_clears_its_count() {
        let warnings = Warnings::new();
        for _ in 0..50 {
            warnings.admit();
        }
        warnings.flush(false);
        assert_eq!(warnings.lock().suppressed, 30, "the window is not over yet");
        warnings.flush(true);
        assert_eq!(warnings.lock().suppressed, 0);
    }
}
