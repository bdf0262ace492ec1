//! The single writer thread: the durable-write path of webhookd.
//!
//! Every change to the database goes through here. The thread takes one
//! command from its bounded queue, then everything else already queued (up
//! to [`MAX_BATCH`]), applies them in order inside ONE write transaction,
//! makes ONE durable commit (`Durability::Immediate`, redb's default: fsync'd
//! before `commit` returns), and only then answers each waiting caller. So:
//!
//! - a 202 is never sent for anything that is not on disk;
//! - accepting a webhook writes only its log entry: the job and listing
//!   rows of new entries are written in bulk once [`ROWS_MERGE_THRESHOLD`]
//!   entries have gathered, for the jobs still pending (with a
//!   `--process-delay` under [`ROWS_MIN_AGE_MS`], only those at least that
//!   old, so a job processed younger never gets rows at all),
//!   [`ROWS_MERGE_CHUNK`] per batch (everything when idle), so most
//!   commits a 202 waits for touch one table. The log record carries the
//!   due time, so those rows can always be rebuilt from the log;
//! - commands in one batch see each other's writes, so two copies of a new
//!   id in the same batch give one record, one job and one `duplicate: false`;
//! - if the commit fails, nothing of the batch is stored and every caller
//!   in it is told so; the database is then reopened (redb refuses every
//!   operation after an I/O error until it is), so the daemon recovers from
//!   a full disk without a restart. A commit whose fsync failed may still
//!   show in the file; its log entries are recorded before anyone is
//!   answered and deleted by the first commit after the reopen
//!   ([`super::unacknowledged`]), so a 503 always means "not stored".

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::unacknowledged::Refused;
use super::{
    BY_PROCESSED, BY_STATUS, IDS, INDEXED_UPTO_KEY, JOBS, Job, LOG, META, ROWS_UPTO_KEY, Store,
    StoreError, encoding, first_log_key_at, ids, next_log_key, status_key,
};
use crate::heartbeat::Heartbeat;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::model::{NewTransaction, Status};

/// Most commands applied in one write transaction. Bounds the time one
/// commit holds its callers and the memory of one batch.
pub const MAX_BATCH: usize = 2048;

/// Ids not yet in the `id_hashes` table that start a merge cycle.
pub const MERGE_THRESHOLD: usize = 65_536;

/// Ids a merge cycle puts into `id_hashes` per batch while webhooks are flowing:
/// small, so the extra pages one commit writes stay few; but at least
/// [`MERGE_PACE`] times the batch's new transactions, so merging always
/// outpaces ingest and the in-memory map stays within about two cycles.
pub const MERGE_CHUNK: usize = 512;

/// See [`MERGE_CHUNK`].
pub const MERGE_PACE: usize = 2;

/// Log entries after the committed rows watermark that start writing
/// their job and listing rows (keys in arrival order, so a few pages per
/// table for many of them).
pub const ROWS_MERGE_THRESHOLD: usize = 4096;

/// With a `--process-delay` below this, the age a log entry reaches
/// before a rows merge (other than at idle) writes its job and listing
/// rows. A job processed younger than this is only ever in the log and in
/// memory: its rows are neither written nor deleted, which halves the
/// writes of processing it. Bounds the tail's size to about this long of
/// ingest (and [`ROWS_TAIL_CAP`]). With a longer delay, merges cover
/// every committed entry, so the tail stays a few thousand entries.
pub const ROWS_MIN_AGE_MS: u64 = 2_000;

/// Pending jobs in the tail beyond which a rows merge covers every
/// committed entry, whatever its age: bounds what a start-up after a
/// crash rebuilds from the log when jobs arrive faster than they fall due.
pub const ROWS_TAIL_CAP: usize = 32_768;

/// Job and listing rows written per batch while webhooks flow: bounded,
/// so no single commit stalls its webhooks with thousands of inserts
/// (all 4096 at once took ~10 ms and showed in the p99); but at least
/// [`MERGE_PACE`] times the batch's commands, so a merge always outpaces
/// ingest and the tail stays bounded.
pub const ROWS_MERGE_CHUNK: usize = 512;

/// Ids merged per batch when the writer is otherwise idle.
pub const IDLE_MERGE_CHUNK: usize = 16_384;

/// How often the writer is nudged to merge while idle.
const MERGE_TICK: Duration = Duration::from_millis(250);

/// How long without any other command before a tick counts as idle time:
/// a tick between two webhooks of a steady trickle must not hold the next
/// one up with a large merge.
const IDLE_AFTER: Duration = Duration::from_millis(200);

/// Default capacity of the queue in front of the writer (`--queue-depth`).
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;

/// Least time between two attempts to reopen the database after a storage
/// error; between attempts, writes are answered 503 at once.
const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// How long a failed write keeps `GET /` unhealthy unless a write of data
/// succeeds first.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);

/// Key in the meta table that health probes overwrite, so a probe proves a
/// real durable write still works.
const HEALTH_PROBE_KEY: &str = "health_probe_ms";

/// What became of an accepted webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// New transaction; it and its job are committed.
    Created,
    /// Same id with the same fields is already stored; nothing was written.
    Duplicate(Status),
    /// Same id with different fields is stored; it was left untouched.
    Conflict,
}

/// Why the writer could not do what was asked. All of these mean "not
/// stored; try again later" to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The queue in front of the writer is full (overload).
    #[error("the write queue is full")]
    QueueFull,
    /// The writer has stopped (shutting down).
    #[error("the store writer is shut down")]
    Closed,
    /// The write transaction or its commit failed; nothing of the batch was stored.
    #[error("storage cannot accept writes: {0}")]
    Storage(String),
    /// The record already stored under this id cannot be decoded.
    #[error("stored record cannot be read: {0}")]
    Corrupt(String),
}

enum Command {
    Accept {
        transaction: NewTransaction,
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
        limit: usize,
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    /// Periodic nudge: merge unindexed ids while there is time.
    Tick,
}

/// Cloneable handle for sending commands to the writer. The writer thread
/// ends once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<Command>,
    last_failure: Arc<Mutex<Option<(Instant, String)>>>,
    heartbeat: Heartbeat,
}

impl WriterHandle {
    /// Stores a new transaction with its job, or reports it as a duplicate
    /// or conflict. Returns only after the commit that decided it.
    ///
    /// Never waits for queue space: a full queue is [`WriteError::QueueFull`].
    pub async fn accept(&self, transaction: NewTransaction) -> Result<AcceptOutcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Command::Accept { transaction, reply })?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Makes a small durable write, to prove storage still accepts writes.
    pub async fn probe(&self) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Command::Probe { reply })?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Marks the jobs' transactions PROCESSED and deletes the job rows, in
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
    /// before `processed_before_ms`, oldest first, with their index rows, in
    /// one command of one batch. Returns how many were deleted. Blocks the
    /// calling (non-async) thread, waiting for queue space.
    pub fn purge_blocking(
        &self,
        processed_before_ms: u64,
        limit: usize,
    ) -> Result<u64, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .blocking_send(Command::Purge {
                processed_before_ms,
                limit,
                reply,
            })
            .map_err(|_| WriteError::Closed)?;
        answer.blocking_recv().map_err(|_| WriteError::Closed)?
    }

    /// Why a write failed within the last [`FAILURE_MEMORY`], unless a
    /// write of data (an acceptance or a completion) has committed since.
    /// A health probe alone does not clear it: a tiny probe can still fit
    /// on a disk that refuses the records themselves.
    #[must_use]
    pub fn recent_failure(&self) -> Option<String> {
        recent_failure(&self.last_failure)
    }

    /// Beats once per batch (and per idle tick, at least every
    /// `MERGE_TICK`): the systemd watchdog reads it to tell a stuck writer.
    #[must_use]
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Commands waiting in the writer's queue now.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    fn try_send(&self, command: Command) -> Result<(), WriteError> {
        self.queue.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
        })
    }
}

/// Starts the writer thread.
///
/// `on_new_jobs` is called after each commit that added jobs, with the
/// earliest due time among them (the scheduler uses it to wake up early).
pub fn spawn(
    store: Store,
    process_delay: Duration,
    queue_depth: usize,
    metrics: Arc<Metrics>,
    on_new_jobs: impl Fn(u64) + Send + 'static,
) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (queue, commands) = mpsc::channel(queue_depth.max(1));
    let last_failure = Arc::new(Mutex::new(None));
    let heartbeat = Heartbeat::new();
    let next_key = store.last_log_key().map_err(std::io::Error::other)?;
    let indexed_upto = store.indexed_upto().map_err(std::io::Error::other)?;
    let (rows_upto, rows_lag) = store.rows_lag().map_err(std::io::Error::other)?;
    let writer = Writer {
        next_key,
        indexed_upto,
        cycle: None,
        added: Vec::new(),
        new_jobs: Vec::new(),
        completed: Vec::new(),
        rows_upto,
        rows_lag,
        rows_target: None,
        store,
        needs_reopen: false,
        last_reopen: None,
        last_failure: Arc::clone(&last_failure),
        delay_ms: u64::try_from(process_delay.as_millis()).unwrap_or(u64::MAX),
        last_now_ms: 0,
        last_work: Instant::now(),
        buf: Vec::with_capacity(256),
        metrics,
        heartbeat: heartbeat.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || writer.run(commands, &on_new_jobs))?;
    // Holds only a weak sender, so it never keeps the writer alive.
    let ticker = queue.downgrade();
    std::thread::Builder::new()
        .name("store-merge-tick".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(MERGE_TICK);
                let Some(queue) = ticker.upgrade() else {
                    return;
                };
                // A full queue means the writer is busy, and merging anyway.
                let _ = queue.try_send(Command::Tick);
            }
        })?;
    Ok((
        WriterHandle {
            queue,
            last_failure,
            heartbeat,
        },
        thread,
    ))
}

struct Writer {
    store: Store,
    /// The highest log key handed out (committed, or in the current batch).
    next_key: u64,
    /// Committed [`INDEXED_UPTO_KEY`]: every log entry up to it is in
    /// `id_hashes`.
    indexed_upto: u64,
    /// The merge cycle in progress, if any.
    cycle: Option<MergeCycle>,
    /// Id, id hash and log key of the entries this batch put into the
    /// unindexed set, removed again if its commit fails.
    added: Vec<(Box<str>, u64, u64)>,
    /// Log key and due time of this batch's new jobs, added to the tail's
    /// jobs once it commits.
    new_jobs: Vec<(u64, u64)>,
    /// Log keys whose jobs this batch completed, removed from the tail's
    /// jobs once it commits.
    completed: Vec<u64>,
    /// The committed rows watermark ([`ROWS_UPTO_KEY`]).
    rows_upto: u64,
    /// Log entries committed since the last rows merge started (after the
    /// watermark at start-up): what starts the next one.
    rows_lag: usize,
    /// The log key a running rows merge brings the watermark to.
    rows_target: Option<u64>,
    /// A write failed; the database must be reopened before the next one.
    needs_reopen: bool,
    last_reopen: Option<Instant>,
    last_failure: Arc<Mutex<Option<(Instant, String)>>>,
    delay_ms: u64,
    /// Time of the previous batch; batch times never go backwards, so
    /// `processed_at >= created_at` even if the wall clock is stepped back.
    last_now_ms: u64,
    /// When the last command other than a tick arrived.
    last_work: Instant,
    buf: Vec<u8>,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
}

/// Putting the ids of the log's tail into the `id_hashes` table: the
/// frozen set, in order, a chunk per batch. Sorted chunks over a large set
/// rewrite each page of `id_hashes` once for many ids.
struct MergeCycle {
    entries: Arc<BTreeSet<(u64, u64)>>,
    /// Entries up to and including this one are committed to `id_hashes`.
    merged_through: Option<(u64, u64)>,
    /// Every log entry up to this key is in `entries` or already in
    /// `id_hashes`.
    upto: u64,
}

/// The part of a merge cycle one batch wrote.
struct MergeStep {
    /// The last entry it wrote.
    through: Option<(u64, u64)>,
    /// Whether that finished the cycle.
    finished: bool,
}

/// What a committed batch did.
struct Applied {
    /// One per command, in command order.
    outcomes: Vec<Outcome>,
    /// Earliest due time among the jobs it added.
    earliest_new_due: Option<u64>,
    /// Whether it stored or completed a transaction (more than a probe).
    wrote_data: bool,
    /// Transactions it marked PROCESSED.
    processed: u64,
    /// Transactions it deleted (retention).
    purged: u64,
    /// The part of the merge cycle it committed to `id_hashes`.
    merged: Option<MergeStep>,
    /// The rows watermark it committed, if it wrote the tail's rows.
    rows_upto: Option<u64>,
    /// Transactions it created.
    created: usize,
}

/// Per-command result of applying a batch, sent only after the commit.
enum Outcome {
    Accept(Result<AcceptOutcome, WriteError>),
    Purged(u64),
    Done,
}

impl Writer {
    fn run(mut self, mut commands: mpsc::Receiver<Command>, on_new_jobs: &dyn Fn(u64)) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = commands.blocking_recv() {
            self.heartbeat.beat();
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let only_ticks = batch.iter().all(|c| matches!(c, Command::Tick));
            if !only_ticks {
                self.last_work = Instant::now();
            }
            // Merging can wait: no tick work while writes are failing (a
            // failed commit forces a reopen), or when there is none.
            let failing = self.needs_reopen || recent_failure(&self.last_failure).is_some();
            let busy = self.last_work.elapsed() < IDLE_AFTER;
            if only_ticks && (failing || busy || !self.merge_pending()) {
                batch.clear();
                continue;
            }
            if self.needs_reopen && !self.try_reopen() {
                let error = WriteError::Storage(
                    "storage failed and the database could not be reopened yet".to_owned(),
                );
                self.fail_batch(&mut batch, &error);
                continue;
            }
            let now_ms = now_ms().max(self.last_now_ms);
            self.last_now_ms = now_ms;
            match self.apply(&batch, now_ms) {
                Ok(applied) => {
                    if applied.wrote_data {
                        lock(&self.last_failure).take();
                    }
                    self.metrics.processed(applied.processed);
                    self.metrics.purged(applied.purged);
                    // Counted at the commit, not on the way out of the
                    // response: a webhook stays accepted if its client
                    // is gone before the answer.
                    for _ in 0..applied.created {
                        self.metrics.webhook(WebhookOutcome::Accepted);
                    }
                    for (command, outcome) in batch.drain(..).zip(applied.outcomes) {
                        answer(command, outcome);
                    }
                    if let Some(due) = applied.earliest_new_due {
                        on_new_jobs(due);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, commands = batch.len(), "write transaction failed; nothing of this batch was stored");
                    // Reopen at once, before answering, so reads work again
                    // (from a read-only view while writes keep failing) by
                    // the time a caller that got its 503 reads; later
                    // batches retry the reopen if this one fails.
                    self.needs_reopen = true;
                    self.last_reopen = None;
                    self.try_reopen();
                    self.fail_batch(&mut batch, &WriteError::Storage(e.to_string()));
                }
            }
        }
        self.merge_everything();
        tracing::debug!("store writer stopped: queue closed and drained");
    }

    /// Whether ids or rows wait to be merged.
    fn merge_pending(&self) -> bool {
        self.cycle.is_some()
            || self.store.unindexed_count() > 0
            || self.rows_upto < self.next_key
            || self.rows_target.is_some()
    }

    /// At shutdown: puts every id still only in memory into `id_hashes`, and
    /// every job into `jobs_by_due`, so the next start has nothing to
    /// rebuild. Skipped after a storage error; the next start rebuilds the
    /// maps from the log instead.
    fn merge_everything(&mut self) {
        let started = Instant::now();
        let waiting = self.store.unindexed_count();
        while !self.needs_reopen && self.merge_pending() {
            let now_ms = now_ms().max(self.last_now_ms);
            if let Err(e) = self.apply(&[Command::Tick], now_ms) {
                tracing::warn!(error = %e, "could not finish merging ids at shutdown; the next start rebuilds them from the log");
                return;
            }
        }
        if waiting > 0 {
            tracing::info!(
                ids = waiting,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "merged the remaining ids into the id index"
            );
        }
    }

    /// Applies a batch in one write transaction and commits it durably.
    /// Returns one outcome per command and the earliest due time of the
    /// jobs it added.
    fn apply(&mut self, batch: &[Command], now_ms: u64) -> Result<Applied, StoreError> {
        let db = self.store.write_handle()?;
        let first_key = self.next_key;
        self.added.clear();
        self.new_jobs.clear();
        self.completed.clear();
        match self.apply_in(&db, batch, now_ms) {
            Ok(applied) => {
                if let Some(step) = &applied.merged {
                    self.finish_merge_step(step);
                }
                self.update_tail_jobs(&applied);
                Ok(applied)
            }
            Err(e) => {
                // Nothing of the batch is stored: forget its ids and keys.
                // If only the fsync failed, its log entries may still show
                // in the file: record them, to be taken back.
                let mut unindexed = write_lock(self.store.unindexed());
                let mut refused = Vec::with_capacity(self.added.len());
                for (id, hash, key) in self.added.drain(..) {
                    unindexed.active.remove(&(hash, key));
                    refused.push(Refused {
                        transaction_id: id,
                        log_key: key,
                        created_ms: now_ms,
                    });
                }
                drop(unindexed);
                self.store.shared.unacknowledged.record(refused);
                self.next_key = first_key;
                Err(e.into())
            }
        }
    }

    /// After a commit: the tail's jobs lose those it wrote rows for or
    /// completed, and gain its new ones, which the scheduler may now run.
    fn update_tail_jobs(&mut self, applied: &Applied) {
        let mut unindexed = write_lock(self.store.unindexed());
        if let Some(upto) = applied.rows_upto {
            self.rows_upto = upto;
            unindexed.jobs.drop_through(upto);
            if self.rows_target == Some(upto) {
                self.rows_target = None;
            }
        }
        for key in self.completed.drain(..) {
            unindexed.jobs.remove(key);
        }
        for (key, due) in self.new_jobs.drain(..) {
            unindexed.jobs.insert(key, due);
        }
        self.rows_lag += applied.created;
    }

    /// Starts a merge cycle over every committed log entry not yet in
    /// `id_hashes`: the active set becomes the frozen one (a move, no copy).
    fn start_merge_cycle(&mut self) {
        let mut unindexed = write_lock(self.store.unindexed());
        let active = std::mem::take(&mut unindexed.active);
        unindexed.frozen = Arc::new(active);
        self.cycle = Some(MergeCycle {
            entries: Arc::clone(&unindexed.frozen),
            merged_through: None,
            upto: self.next_key,
        });
    }

    /// After the commit of a merge step: at the cycle's end every frozen id
    /// is in `id_hashes`, so the frozen set goes and [`INDEXED_UPTO_KEY`] moves.
    fn finish_merge_step(&mut self, step: &MergeStep) {
        let Some(cycle) = &mut self.cycle else { return };
        cycle.merged_through = step.through;
        if step.finished {
            self.indexed_upto = cycle.upto;
            self.cycle = None;
            write_lock(self.store.unindexed()).frozen = Arc::default();
        }
    }

    fn apply_in(
        &mut self,
        db: &Database,
        batch: &[Command],
        now_ms: u64,
    ) -> Result<Applied, redb::Error> {
        let txn = db.begin_write()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut earliest_new_due = None;
        // Only a batch that changed something, or carries a health probe,
        // needs a commit; a batch of pure duplicates is answered from
        // already-durable data.
        let mut wrote_data = false;
        let mut probed = false;
        let mut processed = 0;
        let mut purged = 0;
        let only_ticks = batch.iter().all(|c| matches!(c, Command::Tick));
        // A cycle starts before this batch's own acceptances, so it holds
        // only committed log entries.
        if self.cycle.is_none() {
            let waiting = self.store.unindexed_count();
            if waiting >= MERGE_THRESHOLD || (only_ticks && waiting > 0) {
                self.start_merge_cycle();
            }
        }
        let mut created = 0_usize;
        let (merged, rows_upto) = {
            let mut tables = Tables {
                log: txn.open_table(LOG)?,
                ids: txn.open_table(IDS)?,
                jobs: txn.open_table(JOBS)?,
                by_status: txn.open_table(BY_STATUS)?,
                by_processed: txn.open_table(BY_PROCESSED)?,
            };
            // Before this batch's commands, so it covers committed entries
            // only (and a completion below sees the rows it wrote).
            let chunk = if only_ticks {
                usize::MAX
            } else {
                ROWS_MERGE_CHUNK.max(batch.len().saturating_mul(MERGE_PACE))
            };
            let rows_upto = self.rows_step(&txn, &mut tables, chunk, now_ms)?;
            // Entries after it have no job or listing rows in this
            // transaction.
            let watermark = rows_upto.unwrap_or(self.rows_upto);
            for command in batch {
                match command {
                    Command::Accept { transaction, .. } => {
                        let outcome = self.accept(&mut tables, transaction, now_ms)?;
                        if outcome == Ok(AcceptOutcome::Created) {
                            wrote_data = true;
                            created += 1;
                            let due = now_ms.saturating_add(self.delay_ms);
                            earliest_new_due =
                                Some(earliest_new_due.map_or(due, |d: u64| d.min(due)));
                        }
                        outcomes.push(Outcome::Accept(outcome));
                    }
                    Command::Complete { jobs: done, .. } => {
                        let (changed, newly_processed) =
                            self.complete(&mut tables, done, now_ms, watermark)?;
                        wrote_data |= changed;
                        processed += newly_processed;
                        outcomes.push(Outcome::Done);
                    }
                    Command::Purge {
                        processed_before_ms,
                        limit,
                        ..
                    } => {
                        let deleted = purge(
                            &self.store,
                            &mut tables,
                            *processed_before_ms,
                            *limit,
                            self.indexed_upto,
                        )?;
                        wrote_data |= deleted > 0;
                        purged += deleted;
                        outcomes.push(Outcome::Purged(deleted));
                    }
                    Command::Probe { .. } => {
                        probed = true;
                        txn.open_table(META)?.insert(HEALTH_PROBE_KEY, now_ms)?;
                        outcomes.push(Outcome::Done);
                    }
                    Command::Tick => outcomes.push(Outcome::Done),
                }
            }
            let chunk = if only_ticks {
                IDLE_MERGE_CHUNK
            } else {
                MERGE_CHUNK.max(created.saturating_mul(MERGE_PACE))
            };
            (self.merge_step(&txn, &mut tables, chunk)?, rows_upto)
        };
        if wrote_data || probed || merged.is_some() || rows_upto.is_some() {
            let started = Instant::now();
            txn.commit()?;
            self.metrics.commit(batch.len(), started.elapsed());
        } else {
            txn.abort()?;
        }
        Ok(Applied {
            outcomes,
            earliest_new_due,
            wrote_data,
            processed,
            purged,
            merged,
            rows_upto,
            created,
        })
    }

    /// Starts a rows merge once enough entries lag (or when idle: `chunk`
    /// is unbounded), and writes its next `chunk` rows. Returns the
    /// watermark it moved to, if it wrote any.
    fn rows_step(
        &mut self,
        txn: &WriteTransaction,
        tables: &mut Tables<'_>,
        chunk: usize,
        now_ms: u64,
    ) -> Result<Option<u64>, redb::Error> {
        let idle = chunk == usize::MAX;
        if self.rows_target.is_none()
            && (self.rows_lag >= ROWS_MERGE_THRESHOLD || (idle && self.rows_upto < self.next_key))
        {
            // Every committed entry up to the target gets its rows: those
            // at least ROWS_MIN_AGE_MS old (a log key starts with its
            // creation time) if jobs can be done younger, else, or when
            // idle or past the cap, all of them. Later ones count toward
            // the next merge.
            let tail = self
                .store
                .unindexed()
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .jobs
                .len();
            // With a delay of ROWS_MIN_AGE_MS or more no new job can be
            // done that young: waiting would only grow the tail.
            let young_jobs_done = self.delay_ms < ROWS_MIN_AGE_MS;
            let target = if idle || tail > ROWS_TAIL_CAP || !young_jobs_done {
                self.next_key
            } else {
                first_log_key_at(now_ms.saturating_sub(ROWS_MIN_AGE_MS))
                    .saturating_sub(1)
                    .min(self.next_key)
            };
            // The watermark never moves back; nothing old enough yet
            // means the next batch looks again.
            if target > self.rows_upto {
                self.rows_target = Some(target);
                self.rows_lag = 0;
            }
        }
        let Some(target) = self.rows_target else {
            return Ok(None);
        };
        self.merge_rows(txn, tables, target, chunk).map(Some)
    }

    /// Writes the job and listing rows of the oldest `chunk` tail jobs up
    /// to `target` (committed entries still PROCESSING), and moves the
    /// watermark past them: to `target` once none is left before it.
    /// Returns the new watermark.
    fn merge_rows(
        &self,
        txn: &WriteTransaction,
        tables: &mut Tables<'_>,
        target: u64,
        chunk: usize,
    ) -> Result<u64, redb::Error> {
        let jobs: Vec<(u64, u64)> = self
            .store
            .unindexed()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .through(target, chunk.saturating_add(1));
        // One more than the chunk was read to know whether any is left.
        let (jobs, upto) = if jobs.len() > chunk {
            (&jobs[..chunk], jobs[chunk - 1].0)
        } else {
            (&jobs[..], target)
        };
        for &(key, due) in jobs {
            tables.jobs.insert((due, key), ())?;
        }
        for &(key, _) in jobs {
            tables
                .by_status
                .insert((status_key(Status::Processing), key), ())?;
        }
        txn.open_table(META)?.insert(ROWS_UPTO_KEY, upto)?;
        Ok(upto)
    }

    /// Writes the next chunk of the merge cycle, if one is running, into
    /// `id_hashes`; the cycle's last chunk also moves [`INDEXED_UPTO_KEY`].
    fn merge_step(
        &self,
        txn: &WriteTransaction,
        tables: &mut Tables<'_>,
        chunk: usize,
    ) -> Result<Option<MergeStep>, redb::Error> {
        let Some(cycle) = &self.cycle else {
            return Ok(None);
        };
        let start = cycle
            .merged_through
            .map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = cycle.entries.range((start, Bound::Unbounded)).peekable();
        let mut through = cycle.merged_through;
        for &entry in rest.by_ref().take(chunk) {
            tables.ids.insert(entry, ())?;
            through = Some(entry);
        }
        let finished = rest.peek().is_none();
        if finished {
            txn.open_table(META)?.insert(INDEXED_UPTO_KEY, cycle.upto)?;
        }
        Ok(Some(MergeStep { through, finished }))
    }

    /// Answers every command of a batch that could not be applied.
    fn fail_batch(&self, batch: &mut Vec<Command>, error: &WriteError) {
        *lock(&self.last_failure) = Some((Instant::now(), error.to_string()));
        for command in batch.drain(..) {
            fail(command, error.clone());
        }
    }

    /// Reopens the database after a storage error, at most once per
    /// [`REOPEN_RETRY`]. Returns whether the database is usable again.
    fn try_reopen(&mut self) -> bool {
        if self
            .last_reopen
            .is_some_and(|at| at.elapsed() < REOPEN_RETRY)
        {
            return false;
        }
        self.last_reopen = Some(Instant::now());
        let reopened = self
            .store
            .reopen()
            .and_then(|()| self.take_back_unacknowledged())
            // A failed commit may show in the file or not: the tail's jobs
            // and the rows watermark are read back from it.
            .and_then(|()| self.store.reload_tail_jobs())
            .and_then(|()| self.store.rows_lag())
            // Log keys are never handed out twice, whatever the file shows.
            .and_then(|rows| Ok((rows, self.store.last_log_key()?)));
        match reopened {
            Ok(((rows_upto, rows_lag), last_key)) => {
                tracing::warn!("database reopened after a storage error; accepting writes again");
                self.rows_upto = rows_upto;
                self.rows_lag = rows_lag;
                self.rows_target = None;
                self.next_key = self.next_key.max(last_key);
                self.needs_reopen = false;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the database yet; will retry");
                false
            }
        }
    }

    /// Deletes, in one durable commit, the log entries failed commits
    /// created that the reopened file shows anyway (an fsync that failed
    /// after its writes). They have no job or listing rows: those are
    /// written only for committed entries. Runs before any
    /// batch after a reopen, so every such entry comes from a failed
    /// commit; matching the id and `created_at` guards that invariant.
    fn take_back_unacknowledged(&mut self) -> Result<(), StoreError> {
        let pending = self.store.shared.unacknowledged.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let db = self.store.write_handle()?;
        let txn = db.begin_write().map_err(StoreError::storage)?;
        let mut taken_back = 0_usize;
        {
            let mut log = txn.open_table(LOG).map_err(StoreError::storage)?;
            let mut ids = txn.open_table(IDS).map_err(StoreError::storage)?;
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
                        ids.remove((self.store.id_hash(id), key))
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
        self.store.shared.unacknowledged.clear();
        if taken_back > 0 {
            tracing::warn!(
                transactions = taken_back,
                "deleted transactions that a failed commit (answered 503) had left in the file"
            );
        }
        Ok(())
    }

    fn accept(
        &mut self,
        tables: &mut Tables<'_>,
        transaction: &NewTransaction,
        now_ms: u64,
    ) -> Result<Result<AcceptOutcome, WriteError>, redb::Error> {
        let id = transaction.transaction_id.as_str();
        let hash = self.store.id_hash(id);
        let mut candidates = self
            .store
            .unindexed()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .candidates(hash);
        candidates.extend(ids::filed_in_table(&tables.ids, hash)?);
        if let Some((_, stored)) = ids::find_in_log(&tables.log, candidates, id)? {
            return Ok(match stored {
                // NewTransaction equality compares the id, the amount by
                // value (1500.50 == 1500.5) and the upper-cased currency.
                Ok(record) if record.transaction == *transaction => {
                    Ok(AcceptOutcome::Duplicate(record.status))
                }
                Ok(_) => Ok(AcceptOutcome::Conflict),
                Err(e) => {
                    tracing::error!(transaction_id = id, error = %e, "stored record cannot be decoded");
                    Err(WriteError::Corrupt(e.to_string()))
                }
            });
        }
        let key = next_log_key(self.next_key, now_ms);
        self.next_key = key;
        let due = now_ms.saturating_add(self.delay_ms);
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
        // The record alone, due time included, is the job: a 202 means it
        // is on disk. Its rows follow in a later bulk merge.
        tables.log.insert(key, self.buf.as_slice())?;
        self.new_jobs.push((key, due));
        write_lock(self.store.unindexed())
            .active
            .insert((hash, key));
        self.added.push((id.into(), hash, key));
        Ok(Ok(AcceptOutcome::Created))
    }

    /// Completes jobs. Idempotent: a job already gone, or a transaction
    /// already PROCESSED, changes nothing, so `processed_at` is set once.
    /// Returns whether anything was written, and how many transactions
    /// became PROCESSED. A job after `watermark` (the rows watermark as of
    /// this transaction) is one of the tail's: it has no rows to delete.
    fn complete(
        &mut self,
        tables: &mut Tables<'_>,
        done: &[Job],
        now_ms: u64,
        watermark: u64,
    ) -> Result<(bool, u64), redb::Error> {
        let mut changed = false;
        let mut processed = 0;
        // In log-key order: neighbouring records share B-tree leaves, and
        // jobs fall due roughly in arrival order, so this walks the log's
        // recent pages instead of jumping across the file.
        let mut jobs: Vec<Job> = done.to_vec();
        jobs.sort_unstable_by_key(|job| job.log_key);
        for job in jobs {
            // A job of the log's tail has no rows; either way it is
            // dropped from the tail's jobs once this commits.
            let has_rows = job.log_key <= watermark;
            if has_rows {
                changed |= tables.jobs.remove((job.due_ms, job.log_key))?.is_some();
            }
            self.completed.push(job.log_key);
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
                    encoding::encode_into(
                        &record.transaction,
                        encoding::State {
                            status: Status::Processed,
                            created_at_ms: record.created_at_ms,
                            processed_at_ms: Some(now_ms),
                            due_at_ms: due.or(Some(job.due_ms)),
                        },
                        &mut self.buf,
                    );
                    tables.log.insert(job.log_key, self.buf.as_slice())?;
                    if has_rows {
                        tables
                            .by_status
                            .remove((status_key(Status::Processing), job.log_key))?;
                    }
                    tables
                        .by_status
                        .insert((status_key(Status::Processed), job.log_key), ())?;
                    tables.by_processed.insert((now_ms, job.log_key), ())?;
                    changed = true;
                    processed += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    // The job row is removed so a damaged record does not
                    // stall the scheduler; the record itself is kept as is.
                    tracing::error!(log_key = job.log_key, error = %e, "cannot process: stored record cannot be decoded");
                }
            }
        }
        Ok((changed, processed))
    }
}

/// The tables one batch writes.
struct Tables<'txn> {
    log: Table<'txn, u64, &'static [u8]>,
    ids: Table<'txn, (u64, u64), ()>,
    jobs: Table<'txn, (u64, u64), ()>,
    by_status: Table<'txn, (u8, u64), ()>,
    by_processed: Table<'txn, (u64, u64), ()>,
}

/// Deletes up to `limit` transactions processed before `before_ms`, oldest
/// first, with their id index and other index rows. Only PROCESSED transactions are
/// in the retention index, so nothing pending is ever touched; one whose id
/// is not yet in `ids` (log key after `indexed_upto`) waits for a later
/// sweep, so a merge never re-adds the id of a purged record.
fn purge(
    store: &Store,
    tables: &mut Tables<'_>,
    before_ms: u64,
    limit: usize,
    indexed_upto: u64,
) -> Result<u64, redb::Error> {
    let mut victims = Vec::new();
    for row in tables.by_processed.range((0, 0)..(before_ms, 0))? {
        let (key, _) = row?;
        let (processed_ms, log_key) = key.value();
        if log_key <= indexed_upto {
            victims.push((processed_ms, log_key));
            if victims.len() == limit {
                break;
            }
        }
    }
    let mut deleted = 0;
    for (processed_ms, log_key) in victims {
        tables.by_processed.remove((processed_ms, log_key))?;
        let record = match tables.log.get(log_key)? {
            None => continue,
            Some(stored) => encoding::decode(stored.value()),
        };
        match record {
            Ok(record) => {
                tables.log.remove(log_key)?;
                tables
                    .ids
                    .remove((store.id_hash(&record.transaction.transaction_id), log_key))?;
                tables
                    .by_status
                    .remove((status_key(record.status), log_key))?;
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

fn answer(command: Command, outcome: Outcome) {
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
        _ => unreachable!("outcomes are produced in command order, one per command"),
    }
}

fn fail(command: Command, error: WriteError) {
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
        Command::Tick => {}
    }
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    // The map is only changed by whole inserts and removes; a panic
    // elsewhere cannot leave it half-written.
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The reason of a write failure within the last [`FAILURE_MEMORY`].
fn recent_failure(last_failure: &Mutex<Option<(Instant, String)>>) -> Option<String> {
    lock(last_failure)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < FAILURE_MEMORY)
        .map(|(_, reason)| reason.clone())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded value is a plain Option<String>; a panic elsewhere
    // cannot leave it half-written.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wall-clock time in milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
