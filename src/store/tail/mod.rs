//! The log's tail: what of the newest log entries the index tables do not
//! hold yet, kept in memory so that the writer and every reader find it
//! meanwhile. One owner, `LogTail`; its lock never leaves this module.
//!
//! - **Ids** after the id merge's watermark (`ids_indexed_upto`), as
//!   (id hash, log key): `active` holds those accepted since the current
//!   id merge began, `frozen` those it is writing into `id_hashes`.
//! - **Jobs** of the PROCESSING entries after the rows merge's watermark
//!   (`rows_indexed_upto`), which have no `jobs_by_due` or `log_by_status`
//!   rows yet, kept in due order as well as in log order.
//!
//! Why nothing acknowledged is ever missed or seen twice:
//! - The writer adds an id in the batch that writes its log entry (so the
//!   batch's later commands see it), and removes it only after the commit
//!   that put it into `id_hashes`. A reader takes the candidates before it
//!   opens its snapshot, so an id missing here is in that snapshot's
//!   `id_hashes`.
//! - A job is added after the commit of its log entry and removed after
//!   the commit that wrote its rows or processed it. A reader copies the
//!   jobs before it opens its snapshot, then keeps only those after the
//!   snapshot's rows watermark (the others are rows in it): the one place
//!   that does so is `Store::snapshot_with_tail_jobs`.
//!
//! Everything here is rebuilt from the log at start-up, so a crash loses
//! nothing: the log is the truth.

mod jobs;

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::ReadTransaction;

use super::Job;
use super::encoding;
use super::ids::{IdHasher, filed_under};
use super::schema::{IDS_INDEXED_UPTO_KEY, LOG, META, ROWS_INDEXED_UPTO_KEY, watermark};
use crate::model::Status;
use jobs::TailJobs;

/// Which of the tail's jobs a reader copies.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobsPick {
    /// Every one, in log-key order.
    All,
    /// Up to `limit` due at or before `now_ms`, earliest first.
    Due { now_ms: u64, limit: usize },
    /// The one that falls due first.
    Earliest,
}

/// The log's tail; see the module doc for its invariants.
#[derive(Default)]
pub(crate) struct LogTail {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// (id hash, log key) of those accepted since the current id merge began.
    active: BTreeSet<(u64, u64)>,
    /// Being written into `id_hashes` by the current id merge (empty
    /// between merges). Already in order, so a merge starts by moving
    /// `active` here, without copying or sorting anything.
    frozen: Arc<BTreeSet<(u64, u64)>>,
    /// Every PROCESSING entry after the rows watermark.
    jobs: TailJobs,
}

impl LogTail {
    /// The tail as the file holds it: the ids after the id merge's
    /// watermark and the jobs after the rows merge's. At most a few merges'
    /// worth, so this takes milliseconds.
    pub(crate) fn load(txn: &ReadTransaction, hasher: &IdHasher) -> Result<LogTail, redb::Error> {
        let ids_upto = watermark(&txn.open_table(META)?, IDS_INDEXED_UPTO_KEY)?;
        let log = txn.open_table(LOG)?;
        let mut ids: Vec<(u64, u64)> = Vec::new();
        for row in log.range(ids_upto.saturating_add(1)..)? {
            let (key, value) = row?;
            match encoding::decode_id(value.value()) {
                Ok(id) => ids.push((hasher.hash(id), key.value())),
                Err(e) => {
                    tracing::error!(log_key = key.value(), error = %e, "record does not decode; not findable by id");
                }
            }
        }
        Ok(LogTail {
            state: RwLock::new(State {
                // Collected, then built in one go: `from_iter` sorts and
                // bulk-builds, several times faster than inserting random
                // ids one by one, and the server is not ready until this is done.
                active: ids.into_iter().collect(),
                frozen: Arc::default(),
                jobs: load_jobs(txn)?,
            }),
        })
    }

    /// The log keys filed under an id hash.
    pub(crate) fn id_candidates(&self, hash: u64) -> Vec<u64> {
        let state = self.read();
        filed_under(&state.active, hash)
            .chain(filed_under(&state.frozen, hash))
            .collect()
    }

    /// How many ids are not yet in `id_hashes`.
    pub(crate) fn unindexed_ids(&self) -> usize {
        let state = self.read();
        state.active.len() + state.frozen.len()
    }

    /// Copies of the jobs `pick` chooses.
    pub(crate) fn jobs(&self, pick: JobsPick) -> Vec<Job> {
        let state = self.read();
        match pick {
            JobsPick::All => state.jobs.all(),
            JobsPick::Due { now_ms, limit } => state.jobs.due(now_ms, limit),
            JobsPick::Earliest => state.jobs.earliest().into_iter().collect(),
        }
    }

    /// How many jobs the tail holds.
    pub(crate) fn job_count(&self) -> usize {
        self.read().jobs.len()
    }

    /// Writer: up to `limit` jobs at or before log key `upto`, as (log key,
    /// due time) in log-key order: the next rows a rows merge writes.
    pub(crate) fn jobs_through(&self, upto: u64, limit: usize) -> Vec<(u64, u64)> {
        self.read().jobs.through(upto, limit)
    }

    /// Writer: an id whose log entry the current batch writes.
    pub(crate) fn add_id(&self, hash: u64, log_key: u64) {
        self.write().active.insert((hash, log_key));
    }

    /// Writer: the ids of a batch whose commit failed.
    pub(crate) fn forget_ids(&self, ids: impl IntoIterator<Item = (u64, u64)>) {
        let mut state = self.write();
        for id in ids {
            state.active.remove(&id);
        }
    }

    /// Writer: starts an id merge; the ids accepted so far become the
    /// frozen set it writes (a move, no copy), in order.
    pub(crate) fn freeze_ids(&self) -> Arc<BTreeSet<(u64, u64)>> {
        let mut state = self.write();
        state.frozen = Arc::new(std::mem::take(&mut state.active));
        Arc::clone(&state.frozen)
    }

    /// Writer: the id merge committed every frozen id to `id_hashes`.
    pub(crate) fn drop_frozen_ids(&self) {
        self.write().frozen = Arc::default();
    }

    /// Writer, after a commit: drops the jobs up to the rows watermark it
    /// moved to (their rows are written) and those it completed, and adds
    /// the jobs it created, which the scheduler may now run.
    pub(crate) fn committed(
        &self,
        rows_indexed_upto: Option<u64>,
        completed: &[u64],
        created: &[(u64, u64)],
    ) {
        let mut state = self.write();
        if let Some(upto) = rows_indexed_upto {
            state.jobs.drop_through(upto);
        }
        for &key in completed {
            state.jobs.remove(key);
        }
        for &(key, due) in created {
            state.jobs.insert(key, due);
        }
    }

    /// Writer, after a reopen: the jobs as the file holds them (a failed
    /// commit may or may not show in it, and the file is the truth).
    pub(crate) fn reload_jobs(&self, txn: &ReadTransaction) -> Result<(), redb::Error> {
        let jobs = load_jobs(txn)?;
        self.write().jobs = jobs;
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Only whole inserts, removes and swaps happen under the lock; a
        // panic elsewhere cannot leave the state half-changed.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The jobs of the PROCESSING entries after the rows merge's watermark,
/// with the due times their records carry.
fn load_jobs(txn: &ReadTransaction) -> Result<TailJobs, redb::Error> {
    let upto = watermark(&txn.open_table(META)?, ROWS_INDEXED_UPTO_KEY)?;
    let log = txn.open_table(LOG)?;
    let mut jobs = Vec::new();
    for row in log.range(upto.saturating_add(1)..)? {
        let (key, value) = row?;
        let key = key.value();
        match encoding::decode_with_due(value.value()) {
            Ok((record, _)) if record.status != Status::Processing => {}
            Ok((_, Some(due))) => jobs.push((key, due)),
            // Only schema 2 records lack a due time, and the migration
            // puts all of them before the watermark.
            Ok((record, None)) => {
                tracing::error!(
                    log_key = key,
                    "PROCESSING record without a due time; due now"
                );
                jobs.push((key, record.created_at_ms));
            }
            Err(e) => {
                tracing::error!(log_key = key, error = %e, "record does not decode; not scheduled");
            }
        }
    }
    Ok(jobs.into_iter().collect())
}
