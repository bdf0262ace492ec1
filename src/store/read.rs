//! Reads: one MVCC snapshot each, never waiting for the writer.
//!
//! Every read that needs jobs reads them from two places: `jobs_by_due`
//! and the log's tail ([`super::tail`]). [`Store::snapshot_with_tail_jobs`]
//! is the one place that combines them.

use std::sync::Arc;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};

use super::schema::{
    ID_HASHES, IDS_INDEXED_UPTO_KEY, JOBS_BY_DUE, LOG, LOG_BY_STATUS, META, ROWS_INDEXED_UPTO_KEY,
    first_log_key_at, status_key, watermark,
};
use super::tail::JobsPick;
use super::{Job, ListQuery, Page, Progress, Store, StoreError, encoding};
use crate::metrics::JobStats;
use crate::model::{Record, Status};

/// Largest backlog [`Store::job_stats`] counts exactly.
pub const BACKLOG_COUNT_CAP: u64 = 1_000_000;

/// One consistent view of the database: a read transaction, and the handle
/// it was opened on, kept alive so that a reopen waits for this read.
pub(crate) struct Snapshot {
    txn: ReadTransaction,
    _db: Arc<Database>,
}

impl Snapshot {
    pub(crate) fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: redb::TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, StoreError> {
        self.txn.open_table(definition).map_err(StoreError::storage)
    }

    /// A watermark as of this snapshot.
    pub(crate) fn watermark(&self, key: &str) -> Result<u64, StoreError> {
        watermark(&self.table(META)?, key).map_err(StoreError::storage)
    }

    pub(crate) fn txn(&self) -> &ReadTransaction {
        &self.txn
    }
}

impl Store {
    /// A snapshot of the last commit (or of the read-only view while
    /// writes fail).
    pub(crate) fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = self.shared.db.for_reads()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        Ok(Snapshot { txn, _db: db })
    }

    /// A snapshot, and the tail's jobs (as `pick` chooses them) that are
    /// not rows in it. The tail is copied BEFORE the snapshot opens, then
    /// only the jobs after the snapshot's rows watermark are kept: a job a
    /// rows merge wrote in between is read from `jobs_by_due` and not
    /// counted twice, and one added in between is not yet acknowledged.
    pub(crate) fn snapshot_with_tail_jobs(
        &self,
        pick: JobsPick,
    ) -> Result<(Snapshot, Vec<Job>), StoreError> {
        let mut jobs = self.shared.tail.jobs(pick);
        let snapshot = self.snapshot()?;
        let upto = snapshot.watermark(ROWS_INDEXED_UPTO_KEY)?;
        jobs.retain(|job| job.log_key > upto);
        Ok((snapshot, jobs))
    }

    /// Reads one transaction by id.
    pub fn get(&self, transaction_id: &str) -> Result<Option<Record>, StoreError> {
        let mut lookup = self.look_up_id(transaction_id);
        let snapshot = self.snapshot()?;
        let found = lookup
            .find(&snapshot.table(ID_HASHES)?, &snapshot.table(LOG)?)
            .map_err(StoreError::storage)?;
        match found {
            None => Ok(None),
            Some((_, Ok(record))) => Ok(Some(record)),
            Some((key, Err(source))) => Err(StoreError::Corrupt { key, source }),
        }
    }

    /// Up to `limit` jobs due at or before `now_ms`, earliest first.
    pub fn due_jobs(&self, now_ms: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let (snapshot, tail) = self.snapshot_with_tail_jobs(JobsPick::Due { now_ms, limit })?;
        let table = snapshot.table(JOBS_BY_DUE)?;
        let mut jobs = Vec::new();
        for row in table.iter().map_err(StoreError::storage)?.take(limit) {
            let (key, _) = row.map_err(StoreError::storage)?;
            let (due_ms, log_key) = key.value();
            if due_ms > now_ms {
                break;
            }
            jobs.push(Job { due_ms, log_key });
        }
        if !tail.is_empty() {
            jobs.extend(tail);
            jobs.sort_unstable_by_key(|job| (job.due_ms, job.log_key));
            jobs.truncate(limit);
        }
        Ok(jobs)
    }

    /// Due time of the earliest pending job, if any. The scheduler calls
    /// this between rounds: it reads the first of each order only.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        let (snapshot, tail) = self.snapshot_with_tail_jobs(JobsPick::Earliest)?;
        let table = snapshot
            .table(JOBS_BY_DUE)?
            .first()
            .map_err(StoreError::storage)?
            .map(|(key, _)| key.value().0);
        Ok(table
            .into_iter()
            .chain(tail.iter().map(|job| job.due_ms))
            .min())
    }

    /// Number of pending (not yet processed) jobs.
    pub fn pending_jobs(&self) -> Result<u64, StoreError> {
        Ok(self.job_stats(0)?.pending)
    }

    /// Counts of pending jobs, for monitoring: all of them, those already
    /// due at `now_ms` (the backlog), and the due time of the earliest.
    /// Counting the backlog walks it, so it stops at [`BACKLOG_COUNT_CAP`].
    pub fn job_stats(&self, now_ms: u64) -> Result<JobStats, StoreError> {
        let (snapshot, tail) = self.snapshot_with_tail_jobs(JobsPick::All)?;
        let table = snapshot.table(JOBS_BY_DUE)?;
        let pending = table.len().map_err(StoreError::storage)? + tail.len() as u64;
        let table_earliest = table
            .first()
            .map_err(StoreError::storage)?
            .map(|(key, _)| key.value().0);
        let tail_earliest = tail.iter().map(|job| job.due_ms).min();
        let earliest_due_ms = table_earliest.into_iter().chain(tail_earliest).min();
        let mut due = tail.iter().filter(|job| job.due_ms <= now_ms).count() as u64;
        if table_earliest.is_some_and(|d| d <= now_ms) {
            for row in table.iter().map_err(StoreError::storage)? {
                let (key, _) = row.map_err(StoreError::storage)?;
                if key.value().0 > now_ms || due >= BACKLOG_COUNT_CAP {
                    break;
                }
                due += 1;
            }
        }
        Ok(JobStats {
            pending,
            due,
            earliest_due_ms,
        })
    }

    /// Visits every stored transaction in arrival order, inside one read
    /// transaction (a consistent snapshot); stops when `visit` returns false.
    /// Reports one stage to `progress`, a step per transaction.
    pub fn for_each_transaction(
        &self,
        progress: &dyn Progress,
        visit: impl FnMut(u64, Result<Record, encoding::DecodeError>) -> bool,
    ) -> Result<(), StoreError> {
        let snapshot = self.snapshot()?;
        let total = snapshot.table(LOG)?.len().map_err(StoreError::storage)?;
        progress.start("reading transactions", total);
        for_each_in(&snapshot, progress, visit)?;
        progress.finish();
        Ok(())
    }

    /// One page of transactions, newest first (by log key, which orders by
    /// `created_at`), in one read transaction: a range of the log itself,
    /// or of the status index when filtering by status.
    ///
    /// Paging is stable while transactions arrive: new ones get larger log
    /// keys than any cursor already handed out, so they never shift a
    /// later page; a transaction changing status keeps its place in an
    /// unfiltered list.
    pub fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let (found, next, _) = self.list_in(query)?;
        Ok(Page {
            transactions: found.into_iter().map(|listed| listed.1).collect(),
            next,
        })
    }

    /// [`Store::list`] with each transaction's due time and open attempt,
    /// for the view with delivery.
    pub fn list_with_delivery(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<super::delivery_read::DeliveryView>, Option<u64>), StoreError> {
        let (found, next, snapshot) = self.list_in(query)?;
        let open = snapshot.table(super::schema::ATTEMPTS_OPEN)?;
        let mut views = Vec::with_capacity(found.len());
        for (key, record, due) in found {
            let open_attempt = open
                .get(key)
                .map_err(StoreError::storage)?
                .map(|v| v.value());
            let due_ms = due.filter(|_| record.status == Status::Processing);
            views.push(super::delivery_read::DeliveryView {
                record,
                due_ms,
                open_attempt,
            });
        }
        Ok((views, next))
    }

    /// The page of `query`: (log key, record, due time) of each, the
    /// cursor, and the snapshot read.
    fn list_in(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<Listed>, Option<u64>, Snapshot), StoreError> {
        // The tail's jobs are PROCESSING entries without listing rows yet.
        let (snapshot, tail) = match query.status {
            Some(Status::Processing) => self.snapshot_with_tail_jobs(JobsPick::All)?,
            _ => (self.snapshot()?, Vec::new()),
        };
        let log = snapshot.table(LOG)?;
        let low = query
            .created_after_ms
            .map_or(0, |ms| first_log_key_at(ms.saturating_add(1)));
        let high = query
            .created_before_ms
            .map_or(u64::MAX, first_log_key_at)
            .min(query.after.unwrap_or(u64::MAX));
        // One more than asked for, to know whether another page follows.
        let wanted = query.limit.saturating_add(1);
        let mut found: Vec<Listed> = Vec::with_capacity(wanted.min(1024));
        let refused = &self.shared.unacknowledged;
        if low < high {
            match query.status {
                None => {
                    for row in log
                        .range(low..high)
                        .map_err(StoreError::storage)?
                        .rev()
                        .filter(
                            |row| !matches!(row, Ok((key, _)) if refused.contains_key(key.value())),
                        )
                        .take(wanted)
                    {
                        let (key, value) = row.map_err(StoreError::storage)?;
                        let key = key.value();
                        let (record, due) = encoding::decode_with_due(value.value())
                            .map_err(|source| StoreError::Corrupt { key, source })?;
                        found.push((key, record, due));
                    }
                }
                Some(status) => {
                    // Tail entries all come after every row, so they lead,
                    // newest first.
                    let tail = tail
                        .into_iter()
                        .rev()
                        .map(|job| Ok(job.log_key))
                        .filter(|key| matches!(key, Ok(k) if (low..high).contains(k)));
                    let index = snapshot.table(LOG_BY_STATUS)?;
                    let s = status_key(status);
                    let rows = index
                        .range((s, low)..(s, high))
                        .map_err(StoreError::storage)?
                        .rev()
                        .map(|row| row.map(|(key, _)| key.value().1));
                    for key in tail
                        .chain(rows)
                        .filter(|key| !matches!(key, Ok(k) if refused.contains_key(*k)))
                    {
                        let key = key.map_err(StoreError::storage)?;
                        match read_record(&log, key)? {
                            // A tail entry processed since the copy was taken.
                            Some((record, _)) if record.status != status => {}
                            Some((record, due)) => found.push((key, record, due)),
                            None => {
                                tracing::error!(
                                    log_key = key,
                                    "listing index names a missing record"
                                );
                            }
                        }
                        if found.len() == wanted {
                            break;
                        }
                    }
                }
            }
        }
        let mut next = None;
        if found.len() > query.limit {
            found.truncate(query.limit);
            // The cursor is the key of the last transaction returned.
            next = found.last().map(|(key, _, _)| *key);
        }
        drop(log);
        Ok((found, next, snapshot))
    }

    /// The highest log key in use (0 for an empty log).
    pub(crate) fn last_log_key(&self) -> Result<u64, StoreError> {
        Ok(self
            .snapshot()?
            .table(LOG)?
            .last()
            .map_err(StoreError::storage)?
            .map_or(0, |(key, _)| key.value()))
    }

    /// The id merge's watermark as committed.
    pub(crate) fn ids_indexed_upto(&self) -> Result<u64, StoreError> {
        self.snapshot()?.watermark(IDS_INDEXED_UPTO_KEY)
    }

    /// The rows merge's watermark as committed, and how many log entries
    /// come after it: how far the job and listing rows lag the log.
    pub(crate) fn rows_lag(&self) -> Result<(u64, usize), StoreError> {
        let snapshot = self.snapshot()?;
        let upto = snapshot.watermark(ROWS_INDEXED_UPTO_KEY)?;
        let lag = snapshot
            .table(LOG)?
            .range(upto.saturating_add(1)..)
            .map_err(StoreError::storage)?
            .count();
        Ok((upto, lag))
    }
}

/// Visits every record of a snapshot in arrival order, until `visit` says stop.
pub(crate) fn for_each_in(
    snapshot: &Snapshot,
    progress: &dyn Progress,
    mut visit: impl FnMut(u64, Result<Record, encoding::DecodeError>) -> bool,
) -> Result<(), StoreError> {
    for row in snapshot.table(LOG)?.iter().map_err(StoreError::storage)? {
        let (key, value) = row.map_err(StoreError::storage)?;
        progress.advance(1);
        if !visit(key.value(), encoding::decode(value.value())) {
            break;
        }
    }
    Ok(())
}

/// A listed transaction: its log key, record and due time.
type Listed = (u64, Record, Option<u64>);

/// The record under `key`, with its due time, if any.
fn read_record(
    log: &impl ReadableTable<u64, &'static [u8]>,
    key: u64,
) -> Result<Option<(Record, Option<u64>)>, StoreError> {
    let Some(value) = log.get(key).map_err(StoreError::storage)? else {
        return Ok(None);
    };
    encoding::decode_with_due(value.value())
        .map(Some)
        .map_err(|source| StoreError::Corrupt { key, source })
}
