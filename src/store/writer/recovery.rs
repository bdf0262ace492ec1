//! What the writer does when a commit fails, and how it recovers without
//! a restart.
//!
//! A failed commit stores nothing of its batch: the batch's ids leave the
//! log's tail, its log keys are handed out again, and every caller gets
//! 503. redb refuses every operation after an I/O error until the file is
//! reopened, so the writer reopens it at once ([`super::super::reopen`]:
//! reads go on from a read-only view while that fails), and then at most
//! once per [`REOPEN_RETRY`] while writes are tried; between attempts,
//! writes are answered 503 at once.
//!
//! A commit whose fsync failed may still show in the reopened file. Its
//! log entries were recorded before anyone was answered
//! ([`super::super::unacknowledged`]), and the first commit after the
//! reopen, before any other batch, deletes whatever of them the file
//! shows; the tail's jobs and the rows watermark are then read back from
//! the file. So the database ends up agreeing with the 503s.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redb::ReadableTable;

use super::{FAILURE_MEMORY, WriteError, Writer, begin_durable};
use crate::model::Status;
use crate::store::schema::{ID_HASHES, LOG, PAYLOADS};
use crate::store::unacknowledged::Refused;
use crate::store::{StoreError, encoding};

/// Least time between two attempts to reopen the database after a storage
/// error.
pub const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// Whether the database must be reopened before the next write.
#[derive(Default)]
pub(super) struct Recovery {
    /// The latest error, while a reopen is needed.
    failed: Option<Arc<StoreError>>,
    last_attempt: Option<Instant>,
}

impl Recovery {
    pub(super) fn needs_reopen(&self) -> bool {
        self.failed.is_some()
    }
}

impl Writer {
    /// After a failed commit: forget the batch's ids and log keys, and
    /// record its log entries in case the file shows them anyway.
    pub(super) fn batch_failed(&mut self, key_before: u64, now_ms: u64) {
        let added = std::mem::take(&mut self.effects.added);
        self.store
            .tail()
            .forget_ids(added.iter().map(|&(_, hash, key)| (hash, key)));
        self.store
            .unacknowledged()
            .record(added.into_iter().map(|(id, _, key)| Refused {
                transaction_id: id,
                log_key: key,
                created_ms: now_ms,
            }));
        self.last_key = key_before;
    }

    /// A commit failed: reopen at once, before the batch is answered, so
    /// reads work again (from the read-only view while writes keep
    /// failing) by the time a caller that got its 503 reads. Returns the
    /// error to answer the batch with.
    pub(super) fn commit_failed(&mut self, error: StoreError, commands: usize) -> Arc<StoreError> {
        tracing::error!(error = %error, commands, "write transaction failed; nothing of this batch was stored");
        let error = Arc::new(error);
        self.recovery.failed = Some(Arc::clone(&error));
        self.recovery.last_attempt = None;
        let _ = self.ready_to_write();
        error
    }

    /// Reopens the database if a write failed since the last reopen (at
    /// most once per [`REOPEN_RETRY`]). An error is the latest reason the
    /// database cannot take writes.
    pub(super) fn ready_to_write(&mut self) -> Result<(), Arc<StoreError>> {
        let Some(failed) = &self.recovery.failed else {
            return Ok(());
        };
        if self
            .recovery
            .last_attempt
            .is_some_and(|at| at.elapsed() < REOPEN_RETRY)
        {
            return Err(Arc::clone(failed));
        }
        self.recovery.last_attempt = Some(Instant::now());
        match self.reopen() {
            Ok(()) => {
                tracing::warn!("database reopened after a storage error; accepting writes again");
                self.recovery.failed = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the database yet; will retry");
                let e = Arc::new(e);
                self.recovery.failed = Some(Arc::clone(&e));
                Err(e)
            }
        }
    }

    fn reopen(&mut self) -> Result<(), StoreError> {
        self.store.db().reopen()?;
        self.take_back_unacknowledged()?;
        // A failed commit may show in the file or not: the tail's jobs and
        // the rows watermark are read back from it.
        let snapshot = self.store.snapshot()?;
        self.store
            .tail()
            .reload_jobs(snapshot.txn())
            .map_err(StoreError::Storage)?;
        drop(snapshot);
        let (rows_indexed_upto, rows_lag) = self.store.rows_lag()?;
        // Log keys are never handed out twice, whatever the file shows.
        let last_key = self.store.last_log_key()?;
        self.rows_merge = super::RowsMerge::new(rows_indexed_upto, rows_lag);
        self.last_key = self.last_key.max(last_key);
        Ok(())
    }

    /// Deletes, in one durable commit, the log entries failed commits
    /// created that the reopened file shows anyway (an fsync that failed
    /// after its writes), with the original bodies kept beside them. They have no job or listing rows: those are
    /// written only for committed entries. Runs before any batch after a
    /// reopen, so every such entry comes from a failed commit; matching
    /// the id and `created_at` guards that invariant.
    fn take_back_unacknowledged(&mut self) -> Result<(), StoreError> {
        let pending = self.store.unacknowledged().pending();
        if pending.is_empty() {
            return Ok(());
        }
        let db = self.store.db().for_writes()?;
        let txn = begin_durable(&db)?;
        let mut taken_back = 0_usize;
        {
            let mut log = txn.open_table(LOG).map_err(StoreError::storage)?;
            let mut id_hashes = txn.open_table(ID_HASHES).map_err(StoreError::storage)?;
            let mut payloads = txn.open_table(PAYLOADS).map_err(StoreError::storage)?;
            for refused in &pending {
                let (id, key) = (&*refused.transaction_id, refused.log_key);
                let shown = match log.get(key).map_err(StoreError::storage)? {
                    Some(stored) => encoding::decode(stored.value()).ok(),
                    None => continue,
                };
                match shown {
                    Some(record)
                        if record.transaction.transaction_id == id
                            && record.created_at_ms == refused.created_ms
                            && record.status == Status::Processing =>
                    {
                        log.remove(key).map_err(StoreError::storage)?;
                        payloads.remove(key).map_err(StoreError::storage)?;
                        id_hashes
                            .remove((self.store.id_hash(id), key))
                            .map_err(StoreError::storage)?;
                        taken_back += 1;
                    }
                    _ => {
                        tracing::error!(
                            transaction_id = id,
                            log_key = key,
                            "the log entry of a failed commit differs from what it wrote; left as it is"
                        );
                    }
                }
            }
        }
        txn.commit().map_err(StoreError::storage)?;
        self.store.unacknowledged().clear();
        if taken_back > 0 {
            tracing::warn!(
                transactions = taken_back,
                "deleted transactions that a failed commit (answered 503) had left in the file"
            );
        }
        Ok(())
    }
}

/// The last write failure and when it happened, shared by the writer
/// (which records and clears it) and its handles (which report it).
#[derive(Clone, Default)]
pub(super) struct FailureMemory(Arc<Mutex<Option<(Instant, WriteError)>>>);

impl FailureMemory {
    pub(super) fn record(&self, error: &WriteError) {
        *self.lock() = Some((Instant::now(), error.clone()));
    }

    pub(super) fn clear(&self) {
        self.lock().take();
    }

    /// The failure, if within the last [`FAILURE_MEMORY`].
    pub(super) fn recent(&self) -> Option<WriteError> {
        self.lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FAILURE_MEMORY)
            .map(|(_, error)| error.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Option<(Instant, WriteError)>> {
        // Only whole values are assigned under the lock; a panic elsewhere
        // cannot leave it half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
