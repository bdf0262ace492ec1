//! The rows merge: writing the job and listing rows of the log's tail.
//!
//! Accepting a webhook writes only its log entry; its `jobs_by_due` and
//! PROCESSING `log_by_status` rows come later, in bulk: once
//! [`ROWS_MERGE_THRESHOLD`] entries have been committed since the last
//! merge began, the writer picks a target log key and writes the rows of
//! the tail's jobs up to it, oldest first, [`ROWS_MERGE_CHUNK`] per batch
//! (all of them when idle). Keys in arrival order touch a few pages per
//! table for many rows. Each chunk moves the watermark,
//! `rows_indexed_upto`, in its own commit, so the rows and the watermark
//! never disagree.
//!
//! With a `--process-delay` under [`ROWS_MIN_AGE_MS`], a merge (other than
//! at idle) covers only entries at least that old: a job processed younger
//! never gets rows, and processing it deletes none. That bounds the tail
//! to about that long of ingest, and [`ROWS_TAIL_CAP`] bounds it whatever
//! the ingest rate, which bounds what a start-up after a crash rebuilds.

use super::{MERGE_PACE, Tables, Writer};
use crate::model::Status;
use crate::store::schema::{ROWS_INDEXED_UPTO_KEY, first_log_key_at, status_key};

/// Log entries committed since the last rows merge began that start the next.
pub const ROWS_MERGE_THRESHOLD: usize = 4096;

/// With a `--process-delay` below this, the age a log entry reaches
/// before a rows merge (other than at idle) writes its rows. With a longer
/// delay no job can be done that young, so merges cover every committed
/// entry and the tail stays a few thousand entries.
pub const ROWS_MIN_AGE_MS: u64 = 2_000;

/// Pending jobs in the tail beyond which a rows merge covers every
/// committed entry, whatever its age.
pub const ROWS_TAIL_CAP: usize = 32_768;

/// Rows written per batch while webhooks flow (at least [`MERGE_PACE`]
/// times the batch's commands): bounded, so no single commit stalls its
/// webhooks with thousands of inserts.
pub const ROWS_MERGE_CHUNK: usize = 512;

/// Where the rows merge stands.
pub(super) struct RowsMerge {
    /// The committed watermark.
    indexed_upto: u64,
    /// Log entries committed since the last merge began (after the
    /// watermark at start-up): what starts the next one.
    lag: usize,
    /// The log key the running merge brings the watermark to.
    target: Option<u64>,
}

impl RowsMerge {
    pub(super) fn new(indexed_upto: u64, lag: usize) -> RowsMerge {
        RowsMerge {
            indexed_upto,
            lag,
            target: None,
        }
    }

    /// The committed watermark.
    pub(super) fn indexed_upto(&self) -> u64 {
        self.indexed_upto
    }

    /// Whether log entries up to `last_key` still wait for their rows.
    pub(super) fn pending(&self, last_key: u64) -> bool {
        self.indexed_upto < last_key || self.target.is_some()
    }

    /// After a commit that moved the watermark to `upto` (if it did) and
    /// created `created` entries.
    pub(super) fn committed(&mut self, upto: Option<u64>, created: usize) {
        if let Some(upto) = upto {
            self.indexed_upto = upto;
            if self.target == Some(upto) {
                self.target = None;
            }
        }
        self.lag += created;
    }
}

impl Writer {
    /// Starts a rows merge once enough entries lag (or, when idle, if any
    /// do), and writes its next chunk. Before the batch's commands, so it
    /// covers committed entries only, and a completion in the batch sees
    /// the rows it wrote. Returns the watermark it moved to, if it wrote.
    pub(super) fn rows_step(
        &mut self,
        tables: &mut Tables<'_>,
        commands: usize,
        idle: bool,
        now_ms: u64,
    ) -> Result<Option<u64>, redb::Error> {
        let merge = &mut self.rows_merge;
        if merge.target.is_none()
            && (merge.lag >= ROWS_MERGE_THRESHOLD || (idle && merge.indexed_upto < self.last_key))
        {
            // With a delay of ROWS_MIN_AGE_MS or more no new job can be
            // done that young: waiting would only grow the tail.
            let young_jobs_done = self.delay_ms < ROWS_MIN_AGE_MS;
            let tail_full = self.store.tail().job_count() > ROWS_TAIL_CAP;
            let target = if idle || tail_full || !young_jobs_done {
                self.last_key
            } else {
                // A log key starts with its creation time.
                first_log_key_at(now_ms.saturating_sub(ROWS_MIN_AGE_MS))
                    .saturating_sub(1)
                    .min(self.last_key)
            };
            // The watermark never moves back; nothing old enough yet
            // means the next batch looks again.
            if target > merge.indexed_upto {
                merge.target = Some(target);
                merge.lag = 0;
            }
        }
        let Some(target) = merge.target else {
            return Ok(None);
        };
        let chunk = if idle {
            usize::MAX
        } else {
            ROWS_MERGE_CHUNK.max(commands.saturating_mul(MERGE_PACE))
        };
        // One more than the chunk, to know whether any is left before the target.
        let jobs = self
            .store
            .tail()
            .jobs_through(target, chunk.saturating_add(1));
        let (jobs, upto) = if jobs.len() > chunk {
            (&jobs[..chunk], jobs[chunk - 1].0)
        } else {
            (&jobs[..], target)
        };
        for &(key, due) in jobs {
            tables.jobs_by_due.insert((due, key), ())?;
        }
        for &(key, _) in jobs {
            tables
                .log_by_status
                .insert((status_key(Status::Processing), key), ())?;
        }
        tables.set_meta(ROWS_INDEXED_UPTO_KEY, upto)?;
        Ok(Some(upto))
    }
}
