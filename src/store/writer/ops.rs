//! The operations a batch applies, one per command: accept, complete,
//! purge, probe. Each writes only through the batch's tables; what it
//! changes in memory is recorded in the writer's effects and published
//! after the commit.

use std::sync::Arc;

use redb::{ReadableTable, Table, WriteTransaction};

use super::{AcceptOutcome, Applied, Command, Outcome, WriteError, Writer};
use crate::model::{NewTransaction, Status};
use crate::store::payloads::{self, OriginalBody};
use crate::store::schema::{
    HEALTH_PROBE_KEY, ID_HASHES, ID_TOMBSTONES, JOBS_BY_DUE, LOG, LOG_BY_PROCESSED_AT,
    LOG_BY_STATUS, META, PAYLOADS, next_log_key, status_key,
};
use crate::store::{Job, encoding, tombstones};

/// What one purge command deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Transactions (each leaving a tombstone).
    pub transactions: u64,
    /// Tombstones whose dedup window had ended.
    pub tombstones: u64,
}

/// The tables one batch writes.
pub(super) struct Tables<'txn> {
    pub(super) txn: &'txn WriteTransaction,
    pub(super) log: Table<'txn, u64, &'static [u8]>,
    pub(super) id_hashes: Table<'txn, (u64, u64), ()>,
    pub(super) jobs_by_due: Table<'txn, (u64, u64), ()>,
    pub(super) log_by_status: Table<'txn, (u8, u64), ()>,
    pub(super) log_by_processed_at: Table<'txn, (u64, u64), ()>,
    /// Opened on first use, so a batch that keeps no original body
    /// (every batch without `--payload-map`) never touches the table.
    payloads: Option<Table<'txn, u64, &'static [u8]>>,
    /// The delivery journal, opened by the first delivery command.
    pub(super) journal: Option<super::delivery::Journal<'txn>>,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::Error> {
        Ok(Tables {
            txn,
            log: txn.open_table(LOG)?,
            id_hashes: txn.open_table(ID_HASHES)?,
            jobs_by_due: txn.open_table(JOBS_BY_DUE)?,
            log_by_status: txn.open_table(LOG_BY_STATUS)?,
            log_by_processed_at: txn.open_table(LOG_BY_PROCESSED_AT)?,
            payloads: None,
            journal: None,
        })
    }

    fn payloads(&mut self) -> Result<&mut Table<'txn, u64, &'static [u8]>, redb::Error> {
        if self.payloads.is_none() {
            self.payloads = Some(self.txn.open_table(PAYLOADS)?);
        }
        // Invariant: set just above.
        Ok(self.payloads.as_mut().expect("opened above"))
    }

    pub(super) fn set_meta(&self, key: &str, value: u64) -> Result<(), redb::Error> {
        self.txn.open_table(META)?.insert(key, value)?;
        Ok(())
    }
}

impl Writer {
    /// Applies one command. An error fails the whole batch; an answer
    /// that concerns this command alone is in the outcome.
    pub(super) fn apply_command(
        &mut self,
        tables: &mut Tables<'_>,
        command: &Command,
        now_ms: u64,
        rows_upto: u64,
        applied: &mut Applied,
    ) -> Result<Outcome, redb::Error> {
        match command {
            Command::Accept {
                transaction,
                original,
                ..
            } => self.accept(tables, transaction, original.as_deref(), now_ms, applied),
            Command::Complete { jobs, .. } => {
                self.complete(tables, jobs, now_ms, rows_upto, applied)?;
                Ok(Outcome::Done)
            }
            Command::Purge {
                processed_before_ms,
                dedup_window_ms,
                limit,
                ..
            } => {
                let purged = self.purge(
                    tables,
                    *processed_before_ms,
                    now_ms.saturating_add(*dedup_window_ms),
                    *limit,
                )?;
                let expired = tombstones::expire(
                    &mut tables.txn.open_table(ID_TOMBSTONES)?,
                    &mut tables.id_hashes,
                    self.store.id_hasher(),
                    now_ms,
                    *limit,
                )?;
                applied.wrote_data |= purged > 0 || expired > 0;
                applied.purged += purged;
                Ok(Outcome::Purged(Purged {
                    transactions: purged,
                    tombstones: expired,
                }))
            }
            Command::Probe { .. } => {
                tables.set_meta(HEALTH_PROBE_KEY, now_ms)?;
                applied.probed = true;
                Ok(Outcome::Done)
            }
            Command::Delivery(command) => Ok(Outcome::Delivery(
                self.apply_delivery(tables, command, now_ms, rows_upto, applied)?,
            )),
            Command::Tick => Ok(Outcome::Done),
        }
    }

    /// Stores a new transaction (its log entry alone, due time included:
    /// that is the job, and its original body when there is one), or
    /// finds it a duplicate or a conflict.
    fn accept(
        &mut self,
        tables: &mut Tables<'_>,
        transaction: &NewTransaction,
        original: Option<&OriginalBody>,
        now_ms: u64,
        applied: &mut Applied,
    ) -> Result<Outcome, redb::Error> {
        let id = transaction.transaction_id.as_str();
        let mut lookup = self.store.look_up_id(id);
        let hash = lookup.hash();
        if let Some((key, stored)) = lookup.find(&tables.id_hashes, &tables.log)? {
            return Ok(Outcome::Accept(match stored {
                // NewTransaction equality compares the id, the amount by
                // value (1500.50 == 1500.5) and the upper-cased currency.
                Ok(record) if record.transaction == *transaction => {
                    Ok(AcceptOutcome::Duplicate(record.status))
                }
                Ok(_) => Ok(AcceptOutcome::Conflict),
                Err(source) => {
                    tracing::error!(transaction_id = id, log_key = key, error = %source, "stored record cannot be decoded");
                    Err(WriteError::Corrupt {
                        key,
                        source: Arc::new(source),
                    })
                }
            }));
        }
        if !lookup.gone().is_empty() {
            // Purged within its dedup window: known, as it was before.
            let tombstones = tables.txn.open_table(ID_TOMBSTONES)?;
            if let Some(digest) = tombstones::find(&tombstones, lookup.gone(), id, now_ms)? {
                return Ok(Outcome::Accept(Ok(
                    if digest == tombstones::fields_digest(transaction) {
                        AcceptOutcome::Duplicate(Status::Processed)
                    } else {
                        AcceptOutcome::Conflict
                    },
                )));
            }
        }
        let key = next_log_key(self.last_key, now_ms);
        self.last_key = key;
        // With delivery, the schedule's first wait counts from the due time.
        let first_wait = self.retry.as_ref().and_then(|r| r.wait_ms_before(0));
        let due = now_ms
            .saturating_add(self.delay_ms)
            .saturating_add(first_wait.unwrap_or(0));
        encoding::encode_into(
            transaction,
            encoding::State {
                status: Status::Processing,
                created_at_ms: now_ms,
                processed_at_ms: None,
                due_at_ms: Some(due),
            },
            &mut self.buf,
        );
        tables.log.insert(key, self.buf.as_slice())?;
        if let Some(original) = original {
            payloads::insert(tables.payloads()?, key, original)?;
        }
        // Into the tail's ids at once, so later commands of this batch
        // find it; taken out again if the commit fails.
        self.store.tail().add_id(hash, key);
        self.effects.added.push((id.into(), hash, key));
        self.effects.new_jobs.push((key, due));
        applied.wrote_data = true;
        applied.created += 1;
        applied.earliest_new_due = Some(applied.earliest_new_due.map_or(due, |d| d.min(due)));
        Ok(Outcome::Accept(Ok(AcceptOutcome::Created)))
    }

    /// Completes jobs. Idempotent: a job already gone, or a transaction
    /// already PROCESSED, changes nothing, so `processed_at` is set once.
    /// A job after `rows_upto` (the rows watermark in this transaction) is
    /// one of the tail's: it has no rows to delete.
    fn complete(
        &mut self,
        tables: &mut Tables<'_>,
        done: &[Job],
        now_ms: u64,
        rows_upto: u64,
        applied: &mut Applied,
    ) -> Result<(), redb::Error> {
        // In log-key order: neighbouring records share B-tree leaves, and
        // jobs fall due roughly in arrival order, so this walks the log's
        // recent pages instead of jumping across the file.
        let mut jobs: Vec<Job> = done.to_vec();
        jobs.sort_unstable_by_key(|job| job.log_key);
        for job in jobs {
            let has_rows = job.log_key <= rows_upto;
            if has_rows {
                applied.wrote_data |= tables
                    .jobs_by_due
                    .remove((job.due_ms, job.log_key))?
                    .is_some();
            }
            // Either way it leaves the tail's jobs once this commits.
            self.effects.completed.push(job.log_key);
            let record = match tables.log.get(job.log_key)? {
                None => {
                    tracing::warn!(
                        log_key = job.log_key,
                        "job without a transaction; job row removed"
                    );
                    continue;
                }
                Some(stored) => encoding::decode_with_due(stored.value()),
            };
            match record {
                Ok((record, due)) if record.status == Status::Processing => {
                    // Attempts made while --deliver-to was set stay on record.
                    encoding::encode_with_delivery(
                        &record.transaction,
                        encoding::State {
                            status: Status::Processed,
                            created_at_ms: record.created_at_ms,
                            processed_at_ms: Some(now_ms),
                            due_at_ms: due.or(Some(job.due_ms)),
                        },
                        &record.delivery,
                        &mut self.buf,
                    );
                    tables.log.insert(job.log_key, self.buf.as_slice())?;
                    if has_rows {
                        tables
                            .log_by_status
                            .remove((status_key(Status::Processing), job.log_key))?;
                    }
                    tables
                        .log_by_status
                        .insert((status_key(Status::Processed), job.log_key), ())?;
                    tables
                        .log_by_processed_at
                        .insert((now_ms, job.log_key), ())?;
                    applied.wrote_data = true;
                    applied.processed += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    // The job goes so a damaged record does not stall the
                    // scheduler; the record itself is kept as it is.
                    tracing::error!(log_key = job.log_key, error = %e, "cannot process: stored record cannot be decoded");
                }
            }
        }
        Ok(())
    }

    /// Deletes up to `limit` transactions processed before `before_ms`,
    /// oldest first, with their listing and retention rows and original
    /// bodies, and leaves a
    /// tombstone of each until `dedup_until_ms`, with its `id_hashes` row.
    /// Only PROCESSED transactions are in the retention index, so nothing
    /// pending is ever touched; one whose id is not yet in `id_hashes`
    /// (after the id merge's watermark) waits for a later sweep, so its
    /// tombstone is always found through `id_hashes`.
    fn purge(
        &self,
        tables: &mut Tables<'_>,
        before_ms: u64,
        dedup_until_ms: u64,
        limit: usize,
    ) -> Result<u64, redb::Error> {
        let ids_upto = self.id_merge.indexed_upto();
        let mut victims = Vec::new();
        for row in tables.log_by_processed_at.range((0, 0)..(before_ms, 0))? {
            let (key, _) = row?;
            let (processed_ms, log_key) = key.value();
            if log_key <= ids_upto {
                victims.push((processed_ms, log_key));
                if victims.len() == limit {
                    break;
                }
            }
        }
        let mut deleted = 0;
        let mut tombstones = tables.txn.open_table(ID_TOMBSTONES)?;
        for (processed_ms, log_key) in victims {
            tables.log_by_processed_at.remove((processed_ms, log_key))?;
            let record = match tables.log.get(log_key)? {
                None => continue,
                Some(stored) => encoding::decode(stored.value()),
            };
            match record {
                Ok(record) => {
                    tables.log.remove(log_key)?;
                    tables.payloads()?.remove(log_key)?;
                    let digest = tombstones::fields_digest(&record.transaction);
                    let id = record.transaction.transaction_id.as_str();
                    tombstones.insert(log_key, (dedup_until_ms, digest, id))?;
                    tables
                        .log_by_status
                        .remove((status_key(record.status), log_key))?;
                    // Its delivery journal goes with it.
                    let journal = &mut tables.journal()?.attempts;
                    let attempts: Vec<u32> = journal
                        .range((log_key, 0)..=(log_key, u32::MAX))?
                        .map(|row| row.map(|(key, _)| key.value().1))
                        .collect::<Result<_, _>>()?;
                    for attempt in attempts {
                        journal.remove((log_key, attempt))?;
                    }
                    deleted += 1;
                }
                // Damaged data is never deleted unseen: the record stays for
                // `webhookd check` to report; only its retention row goes, so
                // purging moves on.
                Err(e) => {
                    tracing::error!(log_key, error = %e, "not purged: stored record cannot be decoded");
                }
            }
        }
        Ok(deleted)
    }
}
