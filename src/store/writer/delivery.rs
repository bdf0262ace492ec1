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

use super::delivery_commands::{DeliveryCommand, DeliveryOutcome, Finish, Next, Started};
use super::ops::Tables;
use super::{Applied, Writer};
use crate::model::{Record, Status};
use crate::store::attempts::{self, AttemptOutcome, MAX_ERROR_CHARS, StoredAttempt};
use crate::store::schema::{ATTEMPTS, ATTEMPTS_OPEN, status_key};
use crate::store::{Job, encoding};

/// What a batch's delivery commands write besides the indexes: opened on
/// first use (a write transaction opens each table once).
pub(super) struct Journal<'txn> {
    pub(super) attempts: Table<'txn, (u64, u32), &'static [u8]>,
    pub(super) open: Table<'txn, u64, u32>,
}

/// A record with its due time, as the log holds it.
pub(super) struct Stored {
    pub(super) record: Record,
    pub(super) due: Option<u64>,
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
            } => DeliveryOutcome::Created(super::redeliver::create_redelivery(
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

    pub(super) fn write_record(
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
    pub(super) fn move_job(
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
pub(super) struct Step<'a> {
    pub(super) now_ms: u64,
    pub(super) rows_upto: u64,
    pub(super) applied: &'a mut Applied,
}

pub(super) fn read(tables: &Tables<'_>, key: u64) -> Result<Option<Stored>, redb::Error> {
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
