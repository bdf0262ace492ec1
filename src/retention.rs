//! `--retention`: deletes PROCESSED transactions whose `processed_at` is
//! older than the configured age.
//!
//! A thread asks the writer to purge at most [`PURGE_BATCH`] of the oldest
//! expired transactions at a time, found through the
//! `log_by_processed_at` index (never a scan of the table). Each
//! purge is one command among the webhooks of one writer batch, so it adds
//! a bounded amount of work to one commit and never holds ingest back for
//! longer than that; the thread sends the next one only after the previous
//! one committed. When nothing is left to purge it sleeps for
//! [`SWEEP_INTERVAL`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::writer::{WriteError, WriterHandle, now_ms};

/// Most transactions deleted by one writer command.
pub const PURGE_BATCH: usize = 500;

/// Pause between sweeps once nothing expired is left (and after an error).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The running retention thread.
pub struct Retention {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Retention {
    /// Starts purging transactions processed more than `age` ago.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(writer: WriterHandle, age: Duration) -> std::io::Result<Retention> {
        let (stop, stopped) = mpsc::channel();
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let thread = std::thread::Builder::new()
            .name("retention".to_owned())
            .spawn(move || run(&writer, age_ms, &stopped))?;
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

fn run(writer: &WriterHandle, age_ms: u64, stopped: &mpsc::Receiver<()>) {
    let mut swept = 0_u64;
    loop {
        let cutoff = now_ms().saturating_sub(age_ms);
        let pause = match writer.purge_blocking(cutoff, PURGE_BATCH) {
            Ok(deleted) => {
                swept += deleted;
                if deleted >= PURGE_BATCH as u64 {
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
                    swept = 0;
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
