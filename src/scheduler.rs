//! Fires due jobs: reads pending jobs in due order and sends the due ones
//! to the writer to complete.
//!
//! The timer index is the store's: the `jobs_by_due` table, keyed
//! `(due_ms, log key)`, plus the jobs of the log's tail not yet written
//! there, which the store keeps in due order too (a few thousand, bounded
//! by the rows merge, and rebuilt from the log at start-up). So the next
//! due job is one B-tree lookup and the first of an ordered set; the
//! scheduler itself holds nothing per job, and the server answers at once
//! after a start while the first round finds the overdue jobs. The thread
//! sleeps until the earliest job falls due, or until the writer reports a
//! new job due earlier than that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::now_ms;
use crate::heartbeat::Heartbeat;
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError};

/// Most jobs completed in one writer command; bounds the memory of one
/// round and keeps room in each batch for incoming webhooks.
pub const MAX_JOBS_PER_ROUND: usize = 131_072;

/// Pause after a failed read or completion before trying again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Longest sleep with nothing pending; a wake-up is cheap, and bounding it
/// guards against a missed notification ever stranding a job.
const MAX_IDLE_SLEEP: Duration = Duration::from_secs(60);

/// `sleeping_until` value while the scheduler is scanning or has nothing
/// pending: any new job must wake it.
const AWAKE: u64 = u64::MAX;

/// Lets the writer wake the scheduler when it commits a job that is due
/// before the scheduler's planned wake-up.
#[derive(Clone)]
pub struct Waker {
    shared: Arc<Shared>,
}

struct Shared {
    sleeping_until: AtomicU64,
    stop: AtomicBool,
    nudge: SyncSender<()>,
}

impl Waker {
    /// Called by the writer after a commit that added jobs.
    pub fn new_job_due(&self, due_ms: u64) {
        // Ordering argument: the scheduler stores AWAKE before it reads the
        // table and its planned wake time after; the writer calls this after
        // its commit. Either the scheduler's read sees the job, or this load
        // sees AWAKE or the planned time and nudges if the job is earlier.
        if due_ms < self.shared.sleeping_until.load(Ordering::SeqCst) {
            self.nudge();
        }
    }

    fn nudge(&self) {
        // A full channel already holds a pending wake-up; one is enough.
        let _ = self.shared.nudge.try_send(());
    }
}

/// The running scheduler thread. Stop it with [`Scheduler::stop`].
pub struct Scheduler {
    waker: Waker,
    thread: JoinHandle<()>,
    heartbeat: Heartbeat,
}

/// Creates the waker before the writer exists; the thread starts with [`Scheduler::start`].
#[must_use]
pub fn waker() -> (Waker, mpsc::Receiver<()>) {
    let (nudge, nudged) = mpsc::sync_channel(1);
    let waker = Waker {
        shared: Arc::new(Shared {
            sleeping_until: AtomicU64::new(AWAKE),
            stop: AtomicBool::new(false),
            nudge,
        }),
    };
    (waker, nudged)
}

impl Scheduler {
    /// Starts the scheduler thread. Its first scan runs at once, so jobs
    /// that fell due while the daemon was stopped complete right after start.
    pub fn start(
        store: Store,
        writer: WriterHandle,
        waker: Waker,
        nudged: mpsc::Receiver<()>,
    ) -> std::io::Result<Scheduler> {
        let shared = Arc::clone(&waker.shared);
        let heartbeat = Heartbeat::new();
        let beats = heartbeat.clone();
        let thread = std::thread::Builder::new()
            .name("scheduler".to_owned())
            .spawn(move || run(&store, &writer, &shared, &nudged, &beats))?;
        Ok(Scheduler {
            waker,
            thread,
            heartbeat,
        })
    }

    /// Beats at the start of every round and rests while the thread
    /// sleeps: the systemd watchdog reads it to tell a round that never ends.
    #[must_use]
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Stops the thread after its current round and waits for it. Pending
    /// jobs stay in the table and run after the next start.
    pub fn stop(self) {
        self.waker.shared.stop.store(true, Ordering::SeqCst);
        self.waker.nudge();
        if self.thread.join().is_err() {
            tracing::error!("scheduler thread panicked");
        }
    }
}

fn run(
    store: &Store,
    writer: &WriterHandle,
    shared: &Shared,
    nudged: &mpsc::Receiver<()>,
    heartbeat: &Heartbeat,
) {
    while !shared.stop.load(Ordering::SeqCst) {
        shared.sleeping_until.store(AWAKE, Ordering::SeqCst);
        heartbeat.beat();
        let sleep = match round(store, writer) {
            Ok(Round::Completed) => continue,
            Ok(Round::Idle { next_due }) => {
                shared
                    .sleeping_until
                    .store(next_due.unwrap_or(AWAKE), Ordering::SeqCst);
                next_due.map_or(MAX_IDLE_SLEEP, |due| {
                    Duration::from_millis(due.saturating_sub(now_ms())).min(MAX_IDLE_SLEEP)
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduler round failed; retrying");
                RETRY_AFTER_ERROR
            }
        };
        heartbeat.rest();
        match nudged.recv_timeout(sleep) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

enum Round {
    /// Due jobs were completed; look again at once.
    Completed,
    /// Nothing due now; the earliest pending job, if any.
    Idle { next_due: Option<u64> },
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Read(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] crate::store::writer::WriteError),
}

fn round(store: &Store, writer: &WriterHandle) -> Result<Round, RoundError> {
    let now = now_ms();
    let due = store.due_jobs(now, MAX_JOBS_PER_ROUND)?;
    if due.is_empty() {
        return Ok(Round::Idle {
            next_due: store.next_due()?,
        });
    }
    let count = due.len();
    // The simulated processing is the delay itself; a real processor (the
    // external call) would run here, before the completion is committed.
    writer.complete_blocking(due)?;
    tracing::debug!(count, "completed due jobs");
    Ok(Round::Completed)
}
