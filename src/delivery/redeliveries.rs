//! The bulk redelivery worker: one thread that works through every
//! running bulk redelivery, one chunk per writer command, the next sent
//! only after the previous one committed, so webhook intake always gets
//! its share of each commit. It starts with the daemon (carrying on with
//! those a restart interrupted) and is woken when a new one is created.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::Store;
use crate::store::redeliveries::RedeliveryState;
use crate::store::writer::{WriteError, WriterHandle};

/// Pause between two chunks, so a large redelivery leaves the writer
/// room for webhooks and for the attempts it causes.
pub const CHUNK_PAUSE: Duration = Duration::from_millis(20);

/// Pause after a failed read or chunk before trying again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Longest sleep with nothing to do (a wake-up is sent on every creation).
const IDLE_SLEEP: Duration = Duration::from_secs(60);

/// The running worker.
pub struct RedeliveryWorker {
    wake: mpsc::SyncSender<()>,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// Wakes the worker after a bulk redelivery was created.
#[derive(Clone)]
pub struct RedeliveryWaker(mpsc::SyncSender<()>);

impl RedeliveryWaker {
    /// Tells the worker there is new work.
    pub fn wake(&self) {
        // A full channel already holds a wake-up.
        let _ = self.0.try_send(());
    }
}

impl RedeliveryWorker {
    /// Starts the worker thread.
    pub fn start(store: Store, writer: WriterHandle) -> std::io::Result<RedeliveryWorker> {
        let (wake, woken) = mpsc::sync_channel(1);
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("redeliveries".to_owned())
            .spawn(move || run(&store, &writer, &woken, &stopped))?;
        Ok(RedeliveryWorker { wake, stop, thread })
    }

    /// A handle that wakes the worker.
    #[must_use]
    pub fn waker(&self) -> RedeliveryWaker {
        RedeliveryWaker(self.wake.clone())
    }

    /// Stops the worker after its current chunk; the rest carries on
    /// after the next start.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.wake.try_send(());
        if self.thread.join().is_err() {
            tracing::error!("the redelivery thread panicked");
        }
    }
}

fn run(
    store: &Store,
    writer: &WriterHandle,
    woken: &mpsc::Receiver<()>,
    stopped: &mpsc::Receiver<()>,
) {
    let is_stopped = || {
        matches!(
            stopped.try_recv(),
            Ok(()) | Err(mpsc::TryRecvError::Disconnected)
        )
    };
    loop {
        if is_stopped() {
            return;
        }
        let pause = match store.running_redeliveries() {
            Ok(running) if running.is_empty() => IDLE_SLEEP,
            Ok(running) => match step_all(writer, &running, &is_stopped) {
                Ok(()) => CHUNK_PAUSE,
                Err(WriteError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "bulk redelivery: a chunk failed; retrying");
                    RETRY_AFTER_ERROR
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "bulk redelivery: cannot read the running ones; retrying");
                RETRY_AFTER_ERROR
            }
        };
        match woken.recv_timeout(pause) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One chunk of each running bulk redelivery.
fn step_all(
    writer: &WriterHandle,
    running: &[u64],
    is_stopped: &dyn Fn() -> bool,
) -> Result<(), WriteError> {
    for &id in running {
        if is_stopped() {
            return Ok(());
        }
        if let Some(redelivery) = writer.redelivery_step_blocking(id)?
            && redelivery.state == RedeliveryState::Done
        {
            tracing::info!(
                redelivery_id = id,
                matched = redelivery.matched,
                done = redelivery.done,
                "bulk redelivery done"
            );
        }
    }
    Ok(())
}
