//! The delivery commands of the writer's queue, what they answer, and the
//! [`WriterHandle`](super::WriterHandle) methods that send them.

use tokio::sync::oneshot;

use super::WriteError;
use crate::model::Record;
use crate::store::Job;
use crate::store::attempts::StoredAttempt;
use crate::store::redeliveries::{Redelivery, RedeliveryFilter};

/// A job whose attempt the journal started, or why not.
#[derive(Debug, Clone)]
pub enum Started {
    /// Journaled: send the request, then report with [`super::WriterHandle::finish_attempt`].
    Go {
        /// Log key of the transaction (its `webhook-id` is made from it).
        log_key: u64,
        /// The attempt's number, 1-based over the transaction's life.
        attempt: u32,
        /// The transaction as stored.
        record: Record,
    },
    /// Nothing to send: no longer PROCESSING, rescheduled since the job was
    /// read, or an attempt of it is already open.
    Skip {
        /// Log key of the job.
        log_key: u64,
    },
}

/// What comes of a transaction after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered: PROCESSED, `processed_at` the time the answer arrived.
    Processed,
    /// Try again: the job falls due at this time (ms).
    RetryAt(u64),
    /// Give up: FAILED, `failed_at` the time the answer arrived.
    Failed,
}

/// An attempt's outcome, to journal.
#[derive(Debug, Clone)]
pub struct Finish {
    /// Log key of the transaction.
    pub log_key: u64,
    /// The number [`Started::Go`] gave.
    pub attempt: u32,
    /// What the attempt came to (outcome, times, status, error, excerpt).
    pub report: StoredAttempt,
    /// What becomes of the transaction.
    pub next: Next,
}

/// What a redelivery of one transaction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeliverOutcome {
    /// Back to PROCESSING, its schedule started afresh.
    Redelivered,
    /// It is PROCESSING already.
    AlreadyProcessing,
    /// No such transaction.
    NotFound,
}

/// The delivery commands of the writer's queue.
pub(super) enum DeliveryCommand {
    Start {
        jobs: Vec<Job>,
        reply: oneshot::Sender<Result<Vec<Started>, WriteError>>,
    },
    Finish {
        finish: Box<Finish>,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Redeliver {
        transaction_id: String,
        reply: oneshot::Sender<Result<RedeliverOutcome, WriteError>>,
    },
    CreateRedelivery {
        filter: RedeliveryFilter,
        matched: u64,
        upper_key: u64,
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    RedeliveryStep {
        id: u64,
        reply: oneshot::Sender<Result<Option<Redelivery>, WriteError>>,
    },
    ResolveInterrupted {
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
}

/// Per-command answer, sent after the commit.
pub(super) enum DeliveryOutcome {
    Started(Vec<Started>),
    Done,
    Redelivered(RedeliverOutcome),
    Created(u64),
    Stepped(Option<Redelivery>),
    Resolved(u64),
}

impl DeliveryCommand {
    pub(super) fn answer(self, outcome: DeliveryOutcome) {
        // A caller that went away no longer needs its answer.
        match (self, outcome) {
            (DeliveryCommand::Start { reply, .. }, DeliveryOutcome::Started(started)) => {
                let _ = reply.send(Ok(started));
            }
            (DeliveryCommand::Finish { reply, .. }, DeliveryOutcome::Done) => {
                let _ = reply.send(Ok(()));
            }
            (DeliveryCommand::Redeliver { reply, .. }, DeliveryOutcome::Redelivered(outcome)) => {
                let _ = reply.send(Ok(outcome));
            }
            (DeliveryCommand::CreateRedelivery { reply, .. }, DeliveryOutcome::Created(id)) => {
                let _ = reply.send(Ok(id));
            }
            (DeliveryCommand::RedeliveryStep { reply, .. }, DeliveryOutcome::Stepped(step)) => {
                let _ = reply.send(Ok(step));
            }
            (DeliveryCommand::ResolveInterrupted { reply }, DeliveryOutcome::Resolved(count)) => {
                let _ = reply.send(Ok(count));
            }
            _ => unreachable!("outcomes are produced in command order, one per command"),
        }
    }

    pub(super) fn fail(self, error: WriteError) {
        match self {
            DeliveryCommand::Start { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            DeliveryCommand::Finish { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            DeliveryCommand::Redeliver { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            DeliveryCommand::CreateRedelivery { reply, .. }
            | DeliveryCommand::ResolveInterrupted { reply } => {
                let _ = reply.send(Err(error));
            }
            DeliveryCommand::RedeliveryStep { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl super::WriterHandle {
    /// Journals an attempt for each job (in one commit) and answers, per
    /// job, whether to send its request. Waits for queue space.
    pub async fn start_attempts(&self, jobs: Vec<Job>) -> Result<Vec<Started>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.send(DeliveryCommand::Start { jobs, reply }).await?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Journals an attempt's outcome and what follows for its transaction.
    /// Waits for queue space: an outcome is never dropped for load.
    pub async fn finish_attempt(&self, finish: Finish) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        let finish = Box::new(finish);
        self.send(DeliveryCommand::Finish { finish, reply }).await?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Puts one FAILED or PROCESSED transaction back to PROCESSING.
    /// Never waits for queue space: a full queue is [`WriteError::QueueFull`].
    pub async fn redeliver(&self, transaction_id: String) -> Result<RedeliverOutcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.try_send(super::Command::Delivery(DeliveryCommand::Redeliver {
            transaction_id,
            reply,
        }))?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Stores a new bulk redelivery; returns its id. Never waits for queue space.
    pub async fn create_redelivery(
        &self,
        filter: RedeliveryFilter,
        matched: u64,
        upper_key: u64,
    ) -> Result<u64, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.try_send(super::Command::Delivery(
            DeliveryCommand::CreateRedelivery {
                filter,
                matched,
                upper_key,
                reply,
            },
        ))?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Works through the next chunk of bulk redelivery `id`. Blocks the
    /// calling (non-async) thread, waiting for queue space.
    pub fn redelivery_step_blocking(&self, id: u64) -> Result<Option<Redelivery>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .blocking_send(super::Command::Delivery(DeliveryCommand::RedeliveryStep {
                id,
                reply,
            }))
            .map_err(|_| WriteError::Closed)?;
        answer.blocking_recv().map_err(|_| WriteError::Closed)?
    }

    /// Records the attempts left open by the last stop as interrupted and
    /// makes their transactions due now; returns how many. Blocks the
    /// calling (non-async) thread.
    pub fn resolve_interrupted_blocking(&self) -> Result<u64, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .blocking_send(super::Command::Delivery(
                DeliveryCommand::ResolveInterrupted { reply },
            ))
            .map_err(|_| WriteError::Closed)?;
        answer.blocking_recv().map_err(|_| WriteError::Closed)?
    }

    async fn send(&self, command: DeliveryCommand) -> Result<(), WriteError> {
        self.queue
            .send(super::Command::Delivery(command))
            .await
            .map_err(|_| WriteError::Closed)
    }
}
