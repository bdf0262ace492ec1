//! The writer's delivery commands: journaling attempts before and after
//! their requests, redelivery, and recording at start-up what a crash cut
//! off. Each rides in an ordinary batch, so many attempt starts share one
//! durable commit, and so do many outcomes.
//!
//! Invariants:
//! - An attempt row and its `attempts_open` row are written before the
//!   dispatcher sends the request (the start's commit returns first), and
//!   the outcome replaces both in one commit. So every request the
//!   destination saw has a row, and at most one attempt per transaction
//!   is open: a start is skipped while one is.
//! - A PROCESSING transaction has exactly one job, as without delivery: a
//!   failed attempt moves it to its next due time (its row, or its entry
//!   in the log's tail); a success or a FAILED removes it.
//! - FAILED and PROCESSED transactions always have their listing row
//!   (FAILED has no retention row, so retention never purges it).

use redb::{ReadableTable, Table};
use tokio::sync::oneshot;

use super::ops::Tables;
use super::{Applied, WriteError, Writer};
use crate::model::{Record, Status};
use crate::store::attempts::{self, AttemptOutcome, MAX_ERROR_CHARS, StoredAttempt};
use crate::store::redeliveries::{
    self, REDELIVERY_CHUNK, Redelivery, RedeliveryFilter, RedeliveryState,
};
use crate::store::schema::{ATTEMPTS, ATTEMPTS_OPEN, REDELIVERIES, first_log_key_at, status_key};
use crate::store::{Job, encoding};

/// What a batch's delivery commands write besides the indexes: opened on
/// first use (a write transaction opens each table once).
pub(super) struct Journal<'txn> {
    pub(super) attempts: Table<'txn, (u64, u32), &'static [u8]>,
    pub(super) open: Table<'txn, u64, u32>,
}

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

/// A record with its due time, as the log holds it.
struct Stored {
    record: Record,
    due: Option<u64>,
}

impl Writer {
    pub(super) fn apply_delivery(
        &mut self,
        tables: &mut Tables<'_>,
        command: &DeliveryCommand,
        now_ms: u64,
        rows_upto: u64,
        applied: &mut Applied,
    ) -> Result<DeliveryOutcome, redb::Error> {
        let mut step = Step {
            now_ms,
            rows_upto,
            applied,
        };
        Ok(match command {
            DeliveryCommand::Start { jobs, .. } => {
                DeliveryOutcome::Started(self.start_attempts(tables, jobs, &mut step)?)
            }
            DeliveryCommand::Finish { finish, .. } => {
                self.finish_attempt(tables, finish, &mut step)?;
                DeliveryOutcome::Done
            }
            DeliveryCommand::Redeliver { transaction_id, .. } => DeliveryOutcome::Redelivered(
                self.redeliver_id(tables, transaction_id, &mut step)?,
            ),
            DeliveryCommand::CreateRedelivery {
                filter,
                matched,
                upper_key,
                ..
            } => DeliveryOutcome::Created(create_redelivery(
                tables, *filter, *matched, *upper_key, &mut step,
            )?),
            DeliveryCommand::RedeliveryStep { id, .. } => {
                DeliveryOutcome::Stepped(self.redelivery_step(tables, *id, &mut step)?)
            }
            DeliveryCommand::ResolveInterrupted { .. } => {
                DeliveryOutcome::Resolved(self.resolve_interrupted(tables, &mut step)?)
            }
        })
    }

    /// Journals an attempt for each job still due as read, one commit for
    /// all of them.
    fn start_attempts(
        &mut self,
        tables: &mut Tables<'_>,
        jobs: &[Job],
        step: &mut Step<'_>,
    ) -> Result<Vec<Started>, redb::Error> {
        let mut started = Vec::with_capacity(jobs.len());
        for job in jobs {
            let key = job.log_key;
            let open = tables.journal()?.open.get(key)?.is_some();
            let stored = read(tables, key)?;
            let Some(Stored { record, .. }) = stored.filter(|s| {
                !open
                    && s.record.status == Status::Processing
                    && s.due.is_none_or(|d| d == job.due_ms)
            }) else {
                started.push(Started::Skip { log_key: key });
                continue;
            };
            let attempt = record.delivery.attempts.saturating_add(1);
            let row = StoredAttempt {
                started_at_ms: step.now_ms,
                ..StoredAttempt::default()
            };
            attempts::encode_into(&row, &mut self.buf);
            let journal = tables.journal()?;
            journal
                .attempts
                .insert((key, attempt), self.buf.as_slice())?;
            journal.open.insert(key, attempt)?;
            step.applied.wrote_data = true;
            started.push(Started::Go {
                log_key: key,
                attempt,
                record,
            });
        }
        Ok(started)
    }

    /// Journals an attempt's outcome and applies what follows from it.
    fn finish_attempt(
        &mut self,
        tables: &mut Tables<'_>,
        finish: &Finish,
        step: &mut Step<'_>,
    ) -> Result<(), redb::Error> {
        let key = finish.log_key;
        let journal = tables.journal()?;
        let open = journal.open.get(key)?.map(|v| v.value());
        if open != Some(finish.attempt) {
            tracing::warn!(
                log_key = key,
                attempt = finish.attempt,
                ?open,
                "outcome of an attempt that is not open; ignored"
            );
            return Ok(());
        }
        journal.open.remove(key)?;
        attempts::encode_into(&finish.report, &mut self.buf);
        journal
            .attempts
            .insert((key, finish.attempt), self.buf.as_slice())?;
        step.applied.wrote_data = true;
        let Some(Stored { mut record, due }) = read(tables, key)? else {
            return Ok(());
        };
        if record.status != Status::Processing {
            return Ok(());
        }
        let at = finish
            .report
            .finished_at_ms
            .unwrap_or(step.now_ms)
            .max(record.created_at_ms);
        record.delivery.attempts = record.delivery.attempts.max(finish.attempt);
        record.delivery.schedule_pos = record.delivery.schedule_pos.saturating_add(1);
        record.delivery.last_error = match finish.next {
            Next::Processed => None,
            Next::RetryAt(_) | Next::Failed => finish
                .report
                .error
                .as_deref()
                .map(|e| attempts::shorten(e, MAX_ERROR_CHARS)),
        };
        let has_rows = key <= step.rows_upto;
        match finish.next {
            Next::RetryAt(next_due) => {
                self.write_record(tables, key, &record, Some(next_due))?;
                self.move_job(tables, key, due, next_due, has_rows, step)?;
            }
            Next::Processed | Next::Failed => {
                if has_rows && let Some(due) = due {
                    tables.jobs_by_due.remove((due, key))?;
                }
                self.effects.completed.push(key);
                if has_rows {
                    tables
                        .log_by_status
                        .remove((status_key(Status::Processing), key))?;
                }
                if finish.next == Next::Processed {
                    record.status = Status::Processed;
                    record.processed_at_ms = Some(at);
                    tables.log_by_processed_at.insert((at, key), ())?;
                    step.applied.processed += 1;
                } else {
                    record.status = Status::Failed;
                    record.delivery.failed_at_ms = Some(at);
                }
                tables
                    .log_by_status
                    .insert((status_key(record.status), key), ())?;
                self.write_record(tables, key, &record, due)?;
            }
        }
        Ok(())
    }

    /// Puts a FAILED or PROCESSED transaction back to PROCESSING with its
    /// schedule started afresh: due after the schedule's first wait.
    fn redeliver_key(
        &mut self,
        tables: &mut Tables<'_>,
        key: u64,
        stored: Stored,
        step: &mut Step<'_>,
    ) -> Result<(), redb::Error> {
        let mut record = stored.record;
        let old = record.status;
        tables.log_by_status.remove((status_key(old), key))?;
        if let (Status::Processed, Some(at)) = (old, record.processed_at_ms) {
            tables.log_by_processed_at.remove((at, key))?;
        }
        record.status = Status::Processing;
        record.processed_at_ms = None;
        record.delivery.failed_at_ms = None;
        record.delivery.schedule_pos = 0;
        let first_wait = self.retry.as_ref().and_then(|r| r.wait_ms_before(0));
        let next_due = step.now_ms.saturating_add(first_wait.unwrap_or(0));
        let has_rows = key <= step.rows_upto;
        if has_rows {
            tables
                .log_by_status
                .insert((status_key(Status::Processing), key), ())?;
        }
        self.write_record(tables, key, &record, Some(next_due))?;
        // Its old job is gone (completed): only a new one is written.
        self.move_job(tables, key, None, next_due, has_rows, step)?;
        step.applied.wrote_data = true;
        Ok(())
    }

    fn redeliver_id(
        &mut self,
        tables: &mut Tables<'_>,
        transaction_id: &str,
        step: &mut Step<'_>,
    ) -> Result<RedeliverOutcome, redb::Error> {
        let mut lookup = self.store.look_up_id(transaction_id);
        let Some((key, _)) = lookup.find(&tables.id_hashes, &tables.log)? else {
            return Ok(RedeliverOutcome::NotFound);
        };
        let Some(stored) = read(tables, key)? else {
            return Ok(RedeliverOutcome::NotFound);
        };
        if stored.record.status == Status::Processing {
            return Ok(RedeliverOutcome::AlreadyProcessing);
        }
        self.redeliver_key(tables, key, stored, step)?;
        Ok(RedeliverOutcome::Redelivered)
    }

    /// The next chunk of a bulk redelivery; `None` if there is no such one.
    fn redelivery_step(
        &mut self,
        tables: &mut Tables<'_>,
        id: u64,
        step: &mut Step<'_>,
    ) -> Result<Option<Redelivery>, redb::Error> {
        let mut table = tables.txn.open_table(REDELIVERIES)?;
        let Some(mut redelivery) = table
            .get(id)?
            .and_then(|v| redeliveries::decode(v.value()).ok())
        else {
            return Ok(None);
        };
        if redelivery.state == RedeliveryState::Done {
            return Ok(Some(redelivery));
        }
        let s = status_key(redelivery.filter.status);
        let high = redelivery
            .filter
            .created_before_ms
            .map_or(u64::MAX, |ms| first_log_key_at(ms).saturating_sub(1));
        let high = high.min(redelivery.upper_key);
        let mut keys = Vec::new();
        if redelivery.cursor <= high {
            for row in tables
                .log_by_status
                .range((s, redelivery.cursor)..=(s, high))?
                .take(REDELIVERY_CHUNK)
            {
                keys.push(row?.0.value().1);
            }
        }
        for &key in &keys {
            if let Some(stored) = read(tables, key)?
                && stored.record.status == redelivery.filter.status
            {
                self.redeliver_key(tables, key, stored, step)?;
                redelivery.done += 1;
            }
        }
        match keys.last() {
            Some(&last) if keys.len() == REDELIVERY_CHUNK => redelivery.cursor = last + 1,
            _ => redelivery.state = RedeliveryState::Done,
        }
        table.insert(id, redeliveries::encode(&redelivery).as_slice())?;
        step.applied.wrote_data = true;
        Ok(Some(redelivery))
    }

    /// Records every attempt a crash (or a shutdown) left open as
    /// `interrupted` (`finished_at` unknown), counts it, and makes its
    /// transaction due at once, without moving it along its schedule:
    /// the cut was webhookd's, not the destination's.
    fn resolve_interrupted(
        &mut self,
        tables: &mut Tables<'_>,
        step: &mut Step<'_>,
    ) -> Result<u64, redb::Error> {
        let journal = tables.journal()?;
        let mut open = Vec::new();
        for row in journal.open.iter()? {
            let (key, attempt) = row?;
            open.push((key.value(), attempt.value()));
        }
        for &(key, attempt) in &open {
            let journal = tables.journal()?;
            journal.open.remove(key)?;
            let mut row = journal
                .attempts
                .get((key, attempt))?
                .and_then(|v| attempts::decode(v.value()).ok())
                .unwrap_or_default();
            row.outcome = Some(AttemptOutcome::Interrupted);
            row.error = Some(INTERRUPTED.to_owned());
            attempts::encode_into(&row, &mut self.buf);
            journal
                .attempts
                .insert((key, attempt), self.buf.as_slice())?;
            step.applied.wrote_data = true;
            let Some(Stored { mut record, due }) = read(tables, key)? else {
                continue;
            };
            record.delivery.attempts = record.delivery.attempts.max(attempt);
            if record.status == Status::Processing {
                record.delivery.last_error = Some(INTERRUPTED.to_owned());
                self.write_record(tables, key, &record, Some(step.now_ms))?;
                let has_rows = key <= step.rows_upto;
                self.move_job(tables, key, due, step.now_ms, has_rows, step)?;
            } else {
                self.write_record(tables, key, &record, due)?;
            }
        }
        if !open.is_empty() {
            tracing::warn!(
                attempts = open.len(),
                "recorded delivery attempts cut off by the last stop as interrupted; their transactions are tried again now"
            );
        }
        Ok(open.len() as u64)
    }

    fn write_record(
        &mut self,
        tables: &mut Tables<'_>,
        key: u64,
        record: &Record,
        due: Option<u64>,
    ) -> Result<(), redb::Error> {
        encoding::encode_with_delivery(
            &record.transaction,
            encoding::State {
                status: record.status,
                created_at_ms: record.created_at_ms,
                processed_at_ms: record.processed_at_ms,
                due_at_ms: due,
            },
            &record.delivery,
            &mut self.buf,
        );
        tables.log.insert(key, self.buf.as_slice())?;
        Ok(())
    }

    /// Moves a PROCESSING transaction's job to `new_due`: its row (if the
    /// rows merge has written it), else its entry in the log's tail.
    fn move_job(
        &mut self,
        tables: &mut Tables<'_>,
        key: u64,
        old_due: Option<u64>,
        new_due: u64,
        has_rows: bool,
        step: &mut Step<'_>,
    ) -> Result<(), redb::Error> {
        if has_rows {
            if let Some(old) = old_due {
                tables.jobs_by_due.remove((old, key))?;
            }
            tables.jobs_by_due.insert((new_due, key), ())?;
        } else {
            self.effects.new_jobs.push((key, new_due));
        }
        let earliest = &mut step.applied.earliest_new_due;
        *earliest = Some(earliest.map_or(new_due, |d| d.min(new_due)));
        Ok(())
    }
}

/// The error text of an interrupted attempt.
const INTERRUPTED: &str = "interrupted: webhookd stopped before the outcome was recorded";

/// What every delivery operation of one batch shares.
struct Step<'a> {
    now_ms: u64,
    rows_upto: u64,
    applied: &'a mut Applied,
}

fn read(tables: &Tables<'_>, key: u64) -> Result<Option<Stored>, redb::Error> {
    let Some(value) = tables.log.get(key)? else {
        return Ok(None);
    };
    match encoding::decode_with_due(value.value()) {
        Ok((record, due)) => Ok(Some(Stored { record, due })),
        Err(e) => {
            tracing::error!(log_key = key, error = %e, "cannot deliver: stored record cannot be decoded");
            Ok(None)
        }
    }
}

fn create_redelivery(
    tables: &mut Tables<'_>,
    filter: RedeliveryFilter,
    matched: u64,
    upper_key: u64,
    step: &mut Step<'_>,
) -> Result<u64, redb::Error> {
    let mut table = tables.txn.open_table(REDELIVERIES)?;
    let id = table.last()?.map_or(1, |(key, _)| key.value() + 1);
    let cursor = filter
        .created_after_ms
        .map_or(0, |ms| first_log_key_at(ms.saturating_add(1)));
    let redelivery = Redelivery {
        filter,
        upper_key,
        cursor,
        matched,
        done: 0,
        state: RedeliveryState::Running,
    };
    table.insert(id, redeliveries::encode(&redelivery).as_slice())?;
    step.applied.wrote_data = true;
    Ok(id)
}

impl<'txn> Tables<'txn> {
    /// The journal's tables, opened once per write transaction.
    pub(super) fn journal(&mut self) -> Result<&mut Journal<'txn>, redb::Error> {
        if self.journal.is_none() {
            self.journal = Some(Journal {
                attempts: self.txn.open_table(ATTEMPTS)?,
                open: self.txn.open_table(ATTEMPTS_OPEN)?,
            });
        }
        Ok(self.journal.as_mut().expect("opened just above"))
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
