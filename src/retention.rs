//! `--retention`: deletes PROCESSED transactions whose `processed_at` is
//! older than the configured age, each leaving a tombstone that keeps its
//! id deduplicated for `--dedup-window` ([`crate::store::tombstones`]).
//!
//! A thread asks the writer to purge at most [`PURGE_BATCH`] of the oldest
//! expired transactions at a time, found through the
//! `log_by_processed_at` index (never a scan of the table), and to delete
//! at most as many tombstones whose window has ended. Each
//! purge is one command among the webhooks of one writer batch, so it adds
//! a bounded amount of work to one commit and never holds ingest back for
//! longer than that; the thread sends the next one only after the previous
//! one committed. When nothing is left to purge it sleeps for
//! [`SWEEP_INTERVAL`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::now_ms;
use crate::store::writer::{WriteError, WriterHandle};

/// Most transactions, and most tombstones, deleted by one writer command.
pub const PURGE_BATCH: usize = 500;

/// Pause between sweeps once nothing expired is left (and after an error).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The running retention thread.
pub struct Retention {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Retention {
    /// Starts purging transactions processed more than `age` ago, keeping
    /// each purged id deduplicated for `dedup_window` after its purge.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(
        writer: WriterHandle,
        age: Duration,
        dedup_window: Duration,
    ) -> std::io::Result<Retention> {
        let (stop, stopped) = mpsc::channel();
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let thread = std::thread::Builder::new()
            .name("retention".to_owned())
            .spawn(move || run(&writer, age_ms, dedup_window, &stopped))?;
        Ok(Retention { stop, thread })
    }

    /// Stops the thread after its current purge, dropping its writer handle.
    pub fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("the retention thread panicked");
        }
    }
}

fn run(writer: &WriterHandle, age_ms: u64, dedup_window: Duration, stopped: &mpsc::Receiver<()>) {
    let (mut swept, mut expired) = (0_u64, 0_u64);
    loop {
        let cutoff = now_ms().saturating_sub(age_ms);
        let pause = match writer.purge_blocking(cutoff, dedup_window, PURGE_BATCH) {
            Ok(purged) => {
                swept += purged.transactions;
                expired += purged.tombstones;
                let limit = PURGE_BATCH as u64;
                if purged.transactions >= limit || purged.tombstones >= limit {
                    // More may have expired: go on, after a check for stop.
                    Duration::ZERO
                } else {
                    if swept > 0 {
                        tracing::info!(
                            purged = swept,
                            "retention: deleted transactions processed before {}",
                            crate::view::format_time(cutoff)
                        );
                    }
                    if expired > 0 {
                        tracing::info!(
                            tombstones = expired,
                            "retention: deleted the tombstones of purged ids whose dedup window ended"
                        );
                    }
                    (swept, expired) = (0, 0);
                    SWEEP_INTERVAL
                }
            }
            Err(WriteError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "retention: purge failed; will retry");
                SWEEP_INTERVAL
            }
        };
        match stopped.recv_timeout(pause) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
