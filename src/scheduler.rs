//! Fires due jobs: reads pending jobs in due order and sends the due ones
//! to the writer to complete, or, with `--deliver-to`, hands them to the
//! delivery dispatcher as far as its gate admits them (free slots, the
//! breaker), earliest due first, skipping those with an attempt in flight.
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
use crate::delivery::Gate;
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

    /// Wakes the scheduler to look again (the dispatcher calls this when
    /// an attempt slot or a transaction frees up).
    pub fn nudge(&self) {
        // A full channel already holds a pending wake-up; one is enough.
        let _ = self.shared.nudge.try_send(());
    }
}

/// What the scheduler does with due jobs.
pub enum Processor {
    /// Marks them PROCESSED through the writer (no `--deliver-to`).
    Complete(WriterHandle),
    /// Hands them to the delivery dispatcher.
    Deliver(Gate),
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
        Scheduler::start_with(store, Processor::Complete(writer), waker, nudged)
    }

    /// [`Scheduler::start`] with the processor chosen: completion or delivery.
    pub fn start_with(
        store: Store,
        processor: Processor,
        waker: Waker,
        nudged: mpsc::Receiver<()>,
    ) -> std::io::Result<Scheduler> {
        let shared = Arc::clone(&waker.shared);
        let heartbeat = Heartbeat::new();
        let beats = heartbeat.clone();
        let thread = std::thread::Builder::new()
            .name("scheduler".to_owned())
            .spawn(move || run(&store, &processor, &shared, &nudged, &beats))?;
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
    processor: &Processor,
    shared: &Shared,
    nudged: &mpsc::Receiver<()>,
    heartbeat: &Heartbeat,
) {
    while !shared.stop.load(Ordering::SeqCst) {
        shared.sleeping_until.store(AWAKE, Ordering::SeqCst);
        heartbeat.beat();
        let round = match processor {
            Processor::Complete(writer) => round(store, writer),
            Processor::Deliver(gate) => deliver_round(store, gate),
        };
        let sleep = match round {
            Ok(Round::Completed) => continue,
            // Every slot is taken: the dispatcher nudges when one frees
            // up; new jobs need not wake this thread meanwhile.
            Ok(Round::Full { retry_at }) => {
                shared.sleeping_until.store(0, Ordering::SeqCst);
                retry_at.map_or(MAX_IDLE_SLEEP, |at| {
                    at.saturating_duration_since(std::time::Instant::now())
                })
            }
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
    /// No attempt may start now; look again at `retry_at` or when nudged.
    Full {
        retry_at: Option<std::time::Instant>,
    },
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

/// With delivery: hands the earliest due jobs that are not in flight to
/// the dispatcher, as many as its gate admits. Reads only the first
/// `busy + free` jobs of the due order, so a round costs as much as the
/// slots it fills.
fn deliver_round(store: &Store, gate: &Gate) -> Result<Round, RoundError> {
    let admission = gate.admission();
    if admission.free == 0 {
        return Ok(Round::Full {
            retry_at: admission.retry_at,
        });
    }
    let now = now_ms();
    let head = store.due_jobs(u64::MAX, admission.busy.len() + admission.free)?;
    let mut ready = Vec::new();
    let mut next_due = None;
    for job in head
        .into_iter()
        .filter(|job| !admission.busy.contains(&job.log_key))
    {
        if job.due_ms <= now && ready.len() < admission.free {
            ready.push(job);
        } else {
            next_due = Some(job.due_ms);
            break;
        }
    }
    if ready.is_empty() {
        return Ok(Round::Idle { next_due });
    }
    gate.hand_over(ready, admission.probe);
    Ok(Round::Completed)
}
