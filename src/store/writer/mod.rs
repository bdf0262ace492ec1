//! The single writer thread: the durable-write path of webhookd.
//!
//! Every change to the database goes through here. The thread takes one
//! command from its bounded queue, then everything else already queued (up
//! to [`MAX_BATCH`]), and applies them in ONE write transaction, made
//! [`Durability::Immediate`] where it begins: `commit` returns only once
//! the batch is fsync'd. Only then is each caller answered. A batch is:
//!
//! 1. the rows step: the next chunk of a rows merge ([`rows_merge`]);
//! 2. the commands, in order ([`ops`]): accept, complete, purge, probe.
//!    Commands of one batch see each other's writes, so two copies of a new
//!    id in one batch give one record, one job and one `duplicate: false`;
//! 3. the id step: the next chunk of an id merge ([`id_merge`]);
//! 4. one commit; none when nothing changed (a batch of redeliveries is
//!    answered from data already durable).
//!
//! So a 202 is never sent for anything that is not on disk, and one fsync
//! serves the whole batch. If the commit fails, nothing of the batch is
//! stored and every caller in it is told so; the database is then reopened
//! without a restart ([`recovery`]), so a 503 always means "not stored".

pub mod delivery;
pub mod delivery_commands;
mod errors;
mod handle;
pub mod id_merge;
pub mod ops;
pub mod recovery;
mod redeliver;
pub mod rows_merge;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::mpsc;

use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;
use crate::model::Status;
use crate::retry::RetrySchedule;
use delivery_commands::DeliveryOutcome;
pub use delivery_commands::{Finish, Next, RedeliverOutcome, Started};
pub use errors::{SpawnError, WriteError};
pub use handle::WriterHandle;
use handle::{Command, answer, fail};
use id_merge::{IdMerge, IdStep};
pub use ops::Purged;
use ops::Tables;
use recovery::{FailureMemory, Recovery};
use rows_merge::RowsMerge;

/// Most commands applied in one write transaction. Bounds the time one
/// commit holds its callers and the memory of one batch.
pub const MAX_BATCH: usize = 2048;

/// Each merge writes, per batch while webhooks flow, at least this many
/// times the batch's new transactions (commands, for rows), so merging
/// always outpaces ingest and the tail stays bounded.
pub const MERGE_PACE: usize = 2;

/// How often the writer is nudged to merge while idle.
pub const MERGE_TICK: Duration = Duration::from_millis(250);

/// How long without any other command before a tick counts as idle time:
/// a tick between two webhooks of a steady trickle must not hold the next
/// one up with a large merge.
pub const IDLE_AFTER: Duration = Duration::from_millis(200);

/// How long a failed write keeps `GET /` unhealthy unless a write of data
/// succeeds first.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);

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

/// The writer thread and its merge ticker.
pub struct WriterThread {
    writer: JoinHandle<()>,
    ticker: JoinHandle<()>,
    /// Dropping it stops the ticker (also when this is dropped unjoined).
    stop_ticker: std::sync::mpsc::Sender<()>,
}

impl WriterThread {
    /// Waits until the writer has drained its queue and exited (once every
    /// [`WriterHandle`] is dropped), then stops and joins the ticker.
    /// An error is the writer's panic.
    pub fn join(self) -> std::thread::Result<()> {
        let writer = self.writer.join();
        drop(self.stop_ticker);
        if self.ticker.join().is_err() {
            tracing::error!("the store writer's merge ticker panicked");
        }
        writer
    }
}

/// Starts the writer thread, and beside it a ticker that nudges it every
/// [`MERGE_TICK`] so merges run while the writer is idle.
///
/// `on_new_jobs` is called after each commit that added jobs, with the
/// earliest due time among them (the scheduler uses it to wake up early).
pub fn spawn(
    store: Store,
    process_delay: Duration,
    queue_depth: usize,
    metrics: Arc<Metrics>,
    on_new_jobs: impl Fn(u64) + Send + 'static,
) -> Result<(WriterHandle, WriterThread), SpawnError> {
    spawn_delivering(
        store,
        process_delay,
        queue_depth,
        metrics,
        None,
        on_new_jobs,
    )
}

/// [`spawn`] for a daemon that delivers (`--deliver-to`): new jobs fall due
/// after `retry`'s first wait too, and redeliveries start it afresh. With
/// or without it, the first batch records the attempts the last stop cut
/// off as interrupted ([`WriterHandle::resolve_interrupted_blocking`]).
pub fn spawn_delivering(
    store: Store,
    process_delay: Duration,
    queue_depth: usize,
    metrics: Arc<Metrics>,
    retry: Option<Arc<RetrySchedule>>,
    on_new_jobs: impl Fn(u64) + Send + 'static,
) -> Result<(WriterHandle, WriterThread), SpawnError> {
    let (queue, commands) = mpsc::channel(queue_depth.max(1));
    let failures = FailureMemory::default();
    let heartbeat = Heartbeat::new();
    let interrupted_metrics = Arc::clone(&metrics);
    let (rows_indexed_upto, rows_lag) = store.rows_lag()?;
    let writer = Writer {
        last_key: store.last_log_key()?,
        id_merge: IdMerge::new(store.ids_indexed_upto()?),
        rows_merge: RowsMerge::new(rows_indexed_upto, rows_lag),
        recovery: Recovery::default(),
        effects: Effects::default(),
        store,
        failures: failures.clone(),
        delay_ms: u64::try_from(process_delay.as_millis()).unwrap_or(u64::MAX),
        last_now_ms: 0,
        last_work: Instant::now(),
        buf: Vec::with_capacity(256),
        metrics,
        heartbeat: heartbeat.clone(),
        retry,
    };
    // Holds only a weak sender, so it never keeps the writer alive.
    let ticks = queue.downgrade();
    let (stop_ticker, stopped) = std::sync::mpsc::channel::<()>();
    let ticker = std::thread::Builder::new()
        .name("store-merge-tick".to_owned())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(MERGE_TICK)
            {
                let Some(queue) = ticks.upgrade() else {
                    return;
                };
                // A full queue means the writer is busy, and merging anyway.
                let _ = queue.try_send(Command::Tick);
            }
        })
        .map_err(SpawnError::Thread)?;
    let thread = std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || writer.run(commands, &on_new_jobs));
    let writer = match thread {
        Ok(writer) => writer,
        Err(e) => {
            drop(stop_ticker);
            let _ = ticker.join();
            return Err(SpawnError::Thread(e));
        }
    };
    let handle = WriterHandle {
        queue,
        failures,
        heartbeat,
    };
    let thread = WriterThread {
        writer,
        ticker,
        stop_ticker,
    };
    // Before anyone schedules: a job whose attempt is still open would be
    // skipped until it is resolved.
    match handle.resolve_interrupted_blocking() {
        Ok(count) => interrupted_metrics.delivery_interrupted(count),
        Err(e) => {
            drop(handle);
            let _ = thread.join();
            return Err(SpawnError::Interrupted(e));
        }
    }
    Ok((handle, thread))
}

struct Writer {
    store: Store,
    /// The highest log key handed out (committed, or in the current batch).
    last_key: u64,
    id_merge: IdMerge,
    rows_merge: RowsMerge,
    recovery: Recovery,
    /// What the current batch did beside its tables.
    effects: Effects,
    failures: FailureMemory,
    delay_ms: u64,
    /// Time of the previous batch; batch times never go backwards, so
    /// `processed_at >= created_at` even if the wall clock is stepped back.
    last_now_ms: u64,
    /// When the last command other than a tick arrived.
    last_work: Instant,
    buf: Vec<u8>,
    metrics: Arc<Metrics>,
    /// Beaten once per batch, for the systemd watchdog.
    heartbeat: Heartbeat,
    /// With delivery: the retry schedule (its first wait delays new jobs).
    retry: Option<Arc<RetrySchedule>>,
}

/// What a batch changed outside its write transaction: undone if its
/// commit fails, published to the log's tail once it succeeds.
#[derive(Default)]
struct Effects {
    /// Id, id hash and log key of the entries it put into the tail's ids.
    added: Vec<(Box<str>, u64, u64)>,
    /// Log key and due time of its new jobs.
    new_jobs: Vec<(u64, u64)>,
    /// Log keys whose jobs it completed.
    completed: Vec<u64>,
}

/// What a committed batch did.
#[derive(Default)]
struct Applied {
    /// One per command, in command order.
    outcomes: Vec<Outcome>,
    /// Earliest due time among the jobs it added.
    earliest_new_due: Option<u64>,
    /// Whether it stored, completed or deleted a transaction.
    wrote_data: bool,
    /// Whether it carried a health probe.
    probed: bool,
    /// Transactions it created.
    created: usize,
    /// Transactions it marked PROCESSED.
    processed: u64,
    /// Transactions it deleted (retention).
    purged: u64,
    /// The rows merge's watermark, if its rows step moved it.
    rows_indexed_upto: Option<u64>,
    /// The part of an id merge it wrote.
    id_step: Option<IdStep>,
}

impl Applied {
    fn needs_commit(&self) -> bool {
        self.wrote_data || self.probed || self.id_step.is_some() || self.rows_indexed_upto.is_some()
    }
}

/// Per-command result of applying a batch, sent only after the commit.
enum Outcome {
    Accept(Result<AcceptOutcome, WriteError>),
    Purged(Purged),
    Delivery(DeliveryOutcome),
    Done,
}

/// Begins a write transaction: the one place, so every commit is durable.
fn begin_durable(db: &Database) -> Result<WriteTransaction, redb::Error> {
    let mut txn = db.begin_write()?;
    // The promise behind every 202: `commit` returns only once the
    // transaction is on disk (fsync'd).
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
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
            let idle = only_ticks(&batch);
            if !idle {
                self.last_work = Instant::now();
            } else if !self.worth_a_tick() {
                batch.clear();
                continue;
            }
            if let Err(error) = self.ready_to_write() {
                self.fail_batch(&mut batch, &WriteError::NotReopened(error));
                continue;
            }
            let now_ms = self.batch_time();
            match self.apply(&batch, now_ms) {
                Ok(applied) => self.answer_batch(&mut batch, applied, on_new_jobs),
                Err(e) => {
                    let error = self.commit_failed(e, batch.len());
                    self.fail_batch(&mut batch, &WriteError::Storage(error));
                }
            }
        }
        self.merge_everything();
        tracing::debug!("store writer stopped: queue closed and drained");
    }

    /// Whether a tick has work to do: merges wait while writes are failing
    /// (a failed commit forces a reopen), while webhooks flow, or when
    /// nothing is left to merge.
    fn worth_a_tick(&self) -> bool {
        let failing = self.recovery.needs_reopen() || self.failures.recent().is_some();
        let busy = self.last_work.elapsed() < IDLE_AFTER;
        !failing && !busy && self.merge_pending()
    }

    /// Whether ids or rows wait to be merged.
    fn merge_pending(&self) -> bool {
        self.id_merge.pending(self.store.tail()) || self.rows_merge.pending(self.last_key)
    }

    fn batch_time(&mut self) -> u64 {
        self.last_now_ms = now_ms().max(self.last_now_ms);
        self.last_now_ms
    }

    /// Applies a batch in one write transaction and commits it durably.
    fn apply(&mut self, batch: &[Command], now_ms: u64) -> Result<Applied, StoreError> {
        let db = self.store.db().for_writes()?;
        let key_before = self.last_key;
        self.effects.added.clear();
        self.effects.new_jobs.clear();
        self.effects.completed.clear();
        match self.apply_in(&db, batch, now_ms) {
            Ok(applied) => {
                self.committed(&applied);
                Ok(applied)
            }
            Err(e) => {
                self.batch_failed(key_before, now_ms);
                Err(e.into())
            }
        }
    }

    /// The batch: rows step, commands, id step, commit.
    fn apply_in(
        &mut self,
        db: &Database,
        batch: &[Command],
        now_ms: u64,
    ) -> Result<Applied, redb::Error> {
        let txn = begin_durable(db)?;
        let idle = only_ticks(batch);
        // Before this batch's acceptances: an id merge covers committed
        // log entries only.
        self.id_merge
            .start_if_due(self.store.tail(), idle, self.last_key);
        let mut applied = Applied {
            outcomes: Vec::with_capacity(batch.len()),
            ..Applied::default()
        };
        {
            let mut tables = Tables::open(&txn)?;
            applied.rows_indexed_upto = self.rows_step(&mut tables, batch.len(), idle, now_ms)?;
            // Entries after it have no job or listing rows in this transaction.
            let rows_upto = applied
                .rows_indexed_upto
                .unwrap_or(self.rows_merge.indexed_upto());
            for command in batch {
                let outcome =
                    self.apply_command(&mut tables, command, now_ms, rows_upto, &mut applied)?;
                applied.outcomes.push(outcome);
            }
            let chunk = id_merge::chunk(idle, applied.created);
            applied.id_step = self.id_merge.step(&mut tables, chunk)?;
        }
        if applied.needs_commit() {
            let started = Instant::now();
            txn.commit()?;
            self.metrics.commit(batch.len(), started.elapsed());
        } else {
            txn.abort()?;
        }
        Ok(applied)
    }

    /// After a commit: the merges move on, and the log's tail learns what
    /// the batch did.
    fn committed(&mut self, applied: &Applied) {
        let tail = self.store.tail();
        if let Some(step) = &applied.id_step {
            self.id_merge.committed(step, tail);
        }
        self.rows_merge
            .committed(applied.rows_indexed_upto, applied.created);
        tail.committed(
            applied.rows_indexed_upto,
            &self.effects.completed,
            &self.effects.new_jobs,
        );
    }

    fn answer_batch(&self, batch: &mut Vec<Command>, applied: Applied, on_new_jobs: &dyn Fn(u64)) {
        if applied.wrote_data {
            self.failures.clear();
        }
        self.metrics.accepted(applied.created as u64);
        self.metrics.processed(applied.processed);
        self.metrics.purged(applied.purged);
        for (command, outcome) in batch.drain(..).zip(applied.outcomes) {
            answer(command, outcome);
        }
        if let Some(due) = applied.earliest_new_due {
            on_new_jobs(due);
        }
    }

    /// Answers every command of a batch that could not be applied.
    fn fail_batch(&self, batch: &mut Vec<Command>, error: &WriteError) {
        self.failures.record(error);
        for command in batch.drain(..) {
            fail(command, error.clone());
        }
    }

    /// At shutdown: puts every id still only in memory into `id_hashes`, and
    /// every job into `jobs_by_due`, so the next start has nothing to
    /// rebuild. Skipped after a storage error; the next start rebuilds the
    /// tail from the log instead.
    fn merge_everything(&mut self) {
        let started = Instant::now();
        let waiting = self.store.unindexed_count();
        while !self.recovery.needs_reopen() && self.merge_pending() {
            let now_ms = self.batch_time();
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
}

fn only_ticks(batch: &[Command]) -> bool {
    batch.iter().all(|c| matches!(c, Command::Tick))
}
