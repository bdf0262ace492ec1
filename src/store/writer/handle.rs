//! The writer's handle: the commands it takes, one reply channel each,
//! and how every caller is answered (or failed) on every path.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::delivery_commands::DeliveryCommand;
use super::ops::Purged;
use super::recovery::FailureMemory;
use super::{AcceptOutcome, Outcome, WriteError};
use crate::heartbeat::Heartbeat;
use crate::model::NewTransaction;
use crate::store::Job;
use crate::store::payloads::OriginalBody;

pub(super) enum Command {
    Accept {
        transaction: NewTransaction,
        /// The body as received, kept beside a new record (`--payload-map`).
        original: Option<Box<OriginalBody>>,
        reply: oneshot::Sender<Result<AcceptOutcome, WriteError>>,
    },
    Complete {
        jobs: Vec<Job>,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Probe {
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Purge {
        processed_before_ms: u64,
        dedup_window_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Purged, WriteError>>,
    },
    /// Attempt journal and redelivery ([`delivery`]).
    Delivery(DeliveryCommand),
    /// Periodic nudge: merge while there is time.
    Tick,
}

/// Cloneable handle for sending commands to the writer. The writer thread
/// ends once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct WriterHandle {
    pub(super) queue: mpsc::Sender<Command>,
    pub(super) failures: FailureMemory,
    pub(super) heartbeat: Heartbeat,
}

impl WriterHandle {
    /// Stores a new transaction with its job, or reports it as a duplicate
    /// or conflict. Returns only after the commit that decided it.
    ///
    /// Never waits for queue space: a full queue is [`WriteError::QueueFull`].
    pub async fn accept(&self, transaction: NewTransaction) -> Result<AcceptOutcome, WriteError> {
        self.send_accept(transaction, None).await
    }

    /// [`WriterHandle::accept`], keeping `original` (the body the
    /// transaction was mapped from) in the same write transaction as a
    /// new record; a duplicate or a conflict keeps nothing.
    pub async fn accept_with_original(
        &self,
        transaction: NewTransaction,
        original: OriginalBody,
    ) -> Result<AcceptOutcome, WriteError> {
        self.send_accept(transaction, Some(Box::new(original)))
            .await
    }

    async fn send_accept(
        &self,
        transaction: NewTransaction,
        original: Option<Box<OriginalBody>>,
    ) -> Result<AcceptOutcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Command::Accept {
            transaction,
            original,
            reply,
        })?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Makes a small durable write, to prove storage still accepts writes.
    pub async fn probe(&self) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Command::Probe { reply })?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Marks the jobs' transactions PROCESSED and deletes their jobs, in
    /// one transaction. Blocks the calling (non-async) thread, waiting for
    /// queue space rather than failing.
    pub fn complete_blocking(&self, jobs: Vec<Job>) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .blocking_send(Command::Complete { jobs, reply })
            .map_err(|_| WriteError::Closed)?;
        answer.blocking_recv().map_err(|_| WriteError::Closed)?
    }

    /// Deletes up to `limit` PROCESSED transactions whose `processed_at` is
    /// before `processed_before_ms`, oldest first, with their index rows,
    /// each leaving a tombstone that deduplicates its id for
    /// `dedup_window`; and deletes up to `limit` tombstones whose window
    /// has ended. One command of one batch. Blocks the calling (non-async)
    /// thread, waiting for queue space.
    pub fn purge_blocking(
        &self,
        processed_before_ms: u64,
        dedup_window: Duration,
        limit: usize,
    ) -> Result<Purged, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .blocking_send(Command::Purge {
                processed_before_ms,
                dedup_window_ms: u64::try_from(dedup_window.as_millis()).unwrap_or(u64::MAX),
                limit,
                reply,
            })
            .map_err(|_| WriteError::Closed)?;
        answer.blocking_recv().map_err(|_| WriteError::Closed)?
    }

    /// Why a write failed within the last [`FAILURE_MEMORY`](super::FAILURE_MEMORY), unless a
    /// write of data (an acceptance or a completion) has committed since.
    /// A health probe alone does not clear it: a tiny probe can still fit
    /// on a disk that refuses the records themselves.
    #[must_use]
    pub fn recent_failure(&self) -> Option<String> {
        self.failures.recent().map(|e| e.to_string())
    }

    /// Beats once per batch (and per idle tick, at least every
    /// [`MERGE_TICK`](super::MERGE_TICK)): the systemd watchdog reads it to tell a stuck writer.
    #[must_use]
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Commands waiting in the writer's queue now.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub(super) fn try_send(&self, command: Command) -> Result<(), WriteError> {
        self.queue.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
        })
    }
}

pub(super) fn answer(command: Command, outcome: Outcome) {
    // A caller that went away (client disconnected) no longer needs its
    // answer; what was committed stays committed.
    match (command, outcome) {
        (Command::Accept { reply, .. }, Outcome::Accept(result)) => {
            let _ = reply.send(result);
        }
        (Command::Complete { reply, .. } | Command::Probe { reply }, Outcome::Done) => {
            let _ = reply.send(Ok(()));
        }
        (Command::Tick, Outcome::Done) => {}
        (Command::Purge { reply, .. }, Outcome::Purged(count)) => {
            let _ = reply.send(Ok(count));
        }
        (Command::Delivery(command), Outcome::Delivery(outcome)) => command.answer(outcome),
        _ => unreachable!("outcomes are produced in command order, one per command"),
    }
}

pub(super) fn fail(command: Command, error: WriteError) {
    match command {
        Command::Accept { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Complete { reply, .. } | Command::Probe { reply } => {
            let _ = reply.send(Err(error));
        }
        Command::Purge { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Delivery(command) => command.fail(error),
        Command::Tick => {}
    }
}
