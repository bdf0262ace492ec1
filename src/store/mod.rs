//! The embedded database: tables, their encoding, opening and checking the
//! file, reads, and (in [`writer`]) the single group-committing writer.
//!
//! Layout of `<data-dir>/webhookd.redb`:
//! - `transactions`: `transaction_id` → versioned bincode [`Record`] ([`encoding`]);
//! - `jobs`: `(due_ms, transaction_id)` → `()`, one row per transaction not
//!   yet processed; it reads in due order and is the scheduler's index;
//! - `transactions_by_status`: `(status, created_ms, transaction_id)` → `()`,
//!   one row per transaction: the listing index (newest first per status);
//! - `transactions_by_processed_at`: `(processed_ms, transaction_id)` → `()`,
//!   one row per PROCESSED transaction: the retention index;
//! - `meta`: `"schema_version"` → [`SCHEMA_VERSION`].
//!
//! The writer keeps both indexes in the same write transaction as the
//! record they index, so they never disagree with it after a crash.
//!
//! Everything that must survive a crash is in these tables; nothing in
//! memory is the only copy of anything acknowledged.

pub mod encoding;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::model::{Record, Status};

/// redb's page cache. redb's default (1 GiB) would let a daemon on a small
/// edge box grow to that size; the OS page cache still holds the file.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "webhookd.redb";

/// Version of the table layout this build reads and writes. A database with
/// a higher version was written by a newer webhookd and is refused.
///
/// History: 1 had `transactions`, `jobs` and `meta`; 2 added the two
/// indexes, which [`Store::open`] builds from the records of a version 1 file.
pub const SCHEMA_VERSION: u64 = 2;

/// Key in [`META`] holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

pub(crate) const TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
pub(crate) const JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const BY_STATUS: TableDefinition<(u8, u64, &str), ()> =
    TableDefinition::new("transactions_by_status");
pub(crate) const BY_PROCESSED: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("transactions_by_processed_at");

/// A status as the first field of a `transactions_by_status` key.
#[must_use]
pub fn status_key(status: Status) -> u8 {
    match status {
        Status::Processing => 0,
        Status::Processed => 1,
    }
}

/// Most records indexed per write transaction when a version 1 file is
/// migrated; bounds the memory of one migration commit.
const MIGRATION_CHUNK: usize = 50_000;

/// Most transactions one listing page may hold (`limit`).
pub const MAX_PAGE: usize = 1000;

/// Where a listing page starts: just after (older than) this transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// `created_at` of the last transaction of the previous page, ms.
    pub created_ms: u64,
    /// Its id (ties in `created_at` are ordered by id).
    pub transaction_id: String,
}

/// A listing request: which transactions, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this status, or both.
    pub status: Option<Status>,
    /// Only those created strictly after this time (ms).
    pub created_after_ms: Option<u64>,
    /// Only those created strictly before this time (ms).
    pub created_before_ms: Option<u64>,
    /// At most this many (1..=[`MAX_PAGE`]).
    pub limit: usize,
    /// Continue after this position.
    pub after: Option<Position>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Transactions, newest first.
    pub transactions: Vec<Record>,
    /// Where the next page starts, if there may be more.
    pub next: Option<Position>,
}

/// Why the store could not be opened. Each message names the path and says
/// what the operator can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The data directory does not exist and cannot be created, or is not a directory.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// Another process holds the database file open.
    #[error(
        "data directory {path} is in use by another webhookd process (its database file is locked); stop that process or choose another --data-dir"
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
    },
    /// The database was written by a newer webhookd.
    #[error(
        "database {path} has schema version {found}, newer than version {supported} that this webhookd understands; run a newer webhookd (the file was not modified)"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
        /// Highest version this build understands.
        supported: u64,
    },
    /// redb refused the file (I/O error, not a redb file, unsupported file format).
    #[error("cannot open database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::Error,
    },
}

/// A read or write of the database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed (I/O error, corrupted page, closed database).
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    /// The database is being reopened after a storage error and cannot be read yet.
    #[error("the database is being reopened after a storage error")]
    Reopening,
    /// A stored record cannot be decoded.
    #[error("stored record {id:?} cannot be read: {source}")]
    Corrupt {
        /// Key of the record.
        id: String,
        /// Why it does not decode.
        #[source]
        source: encoding::DecodeError,
    },
}

impl StoreError {
    fn storage(e: impl Into<redb::Error>) -> Self {
        StoreError::Storage(e.into())
    }
}

/// A pending processing job: the row `(due_ms, id)` of the jobs table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// When the job falls due, milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The transaction to process.
    pub transaction_id: String,
}

/// Largest backlog [`Store::job_stats`] counts exactly.
pub const BACKLOG_COUNT_CAP: u64 = 1_000_000;

/// Pending-job figures for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStats {
    /// Jobs not yet completed.
    pub pending: u64,
    /// Jobs already due but not yet completed (capped at [`BACKLOG_COUNT_CAP`]).
    pub due: u64,
    /// Due time of the earliest pending job.
    pub earliest_due_ms: Option<u64>,
}

/// How long a reopen waits for in-flight reads to let go of the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// Shared handle to the open database. Cheap to clone; reads go through
/// MVCC read transactions and never wait for the writer.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// `None` only while a reopen after a storage error has not succeeded.
    /// Readers hold the lock just long enough to clone the `Arc`.
    db: RwLock<Option<Arc<Database>>>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, checks its
    /// schema version and creates missing tables.
    ///
    /// A file written by a newer webhookd is refused before anything is
    /// written to it: the version is first read through a read-only open.
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let database_error = |source: redb::Error| match source {
            redb::Error::DatabaseAlreadyOpen => OpenError::InUse {
                path: data_dir.to_owned(),
            },
            source => OpenError::Database {
                path: path.clone(),
                source,
            },
        };

        // An empty file is what a crash during the very first start leaves
        // behind; like a missing one, it becomes a new database.
        let existing = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if existing {
            match redb::Builder::new().open_read_only(&path) {
                Ok(db) => {
                    let found = read_schema_version(&db).map_err(&database_error)?;
                    check_schema_version(&path, found)?;
                }
                // A file left by a crash needs repair, which a read-only open
                // refuses; the writable open below repairs it, and the
                // version is checked again before anything else is written.
                Err(redb::DatabaseError::RepairAborted) => {}
                Err(e) => return Err(database_error(e.into())),
            }
        }

        let db = open_writable(&path).map_err(&database_error)?;
        let found = read_schema_version(&db).map_err(&database_error)?;
        check_schema_version(&path, found)?;
        initialise(&db).map_err(&database_error)?;
        Ok(Store {
            shared: Arc::new(Shared {
                path,
                db: RwLock::new(Some(Arc::new(db))),
            }),
        })
    }

    /// The open database, for one operation.
    pub(crate) fn handle(&self) -> Result<Arc<Database>, StoreError> {
        self.shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Closes the database and opens the file again.
    ///
    /// After an I/O error redb fails every later operation, reads included,
    /// until the file is reopened; opening repairs the file back to its last
    /// durable commit, so nothing acknowledged is lost. Only the writer
    /// thread calls this, with no handle of its own still alive.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self
            .shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut db) = slot.take() {
            // redb locks the file; the old handle must be dropped (closing
            // the file) before it can be opened again. In-flight reads hold
            // clones for the length of one read.
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StoreError::Reopening);
                    }
                }
            }
        }
        let db = open_writable(&self.shared.path).map_err(StoreError::Storage)?;
        *slot = Some(Arc::new(db));
        Ok(())
    }

    /// Reads one transaction.
    pub fn get(&self, transaction_id: &str) -> Result<Option<Record>, StoreError> {
        // The handle stays alive for the whole read, so a reopen waits for it.
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(TRANSACTIONS).map_err(StoreError::storage)?;
        let Some(value) = table.get(transaction_id).map_err(StoreError::storage)? else {
            return Ok(None);
        };
        encoding::decode(transaction_id, value.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                id: transaction_id.to_owned(),
                source,
            })
    }

    /// Up to `limit` jobs due at or before `now_ms`, earliest first.
    pub fn due_jobs(&self, now_ms: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(JOBS).map_err(StoreError::storage)?;
        let mut jobs = Vec::new();
        for row in table.iter().map_err(StoreError::storage)?.take(limit) {
            let (key, _) = row.map_err(StoreError::storage)?;
            let (due_ms, id) = key.value();
            if due_ms > now_ms {
                break;
            }
            jobs.push(Job {
                due_ms,
                transaction_id: id.to_owned(),
            });
        }
        Ok(jobs)
    }

    /// Due time of the earliest pending job, if any.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(JOBS).map_err(StoreError::storage)?;
        Ok(table
            .first()
            .map_err(StoreError::storage)?
            .map(|(key, _)| key.value().0))
    }

    /// Number of pending (not yet processed) jobs.
    pub fn pending_jobs(&self) -> Result<u64, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(JOBS).map_err(StoreError::storage)?;
        table.len().map_err(StoreError::storage)
    }

    /// Visits every stored transaction in id order, inside one read
    /// transaction (a consistent snapshot); stops when `visit` returns false.
    pub fn for_each_transaction(
        &self,
        mut visit: impl FnMut(&str, Result<Record, encoding::DecodeError>) -> bool,
    ) -> Result<(), StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(TRANSACTIONS).map_err(StoreError::storage)?;
        for row in table.iter().map_err(StoreError::storage)? {
            let (key, value) = row.map_err(StoreError::storage)?;
            let id = key.value();
            if !visit(id, encoding::decode(id, value.value())) {
                break;
            }
        }
        Ok(())
    }

    /// One page of transactions, newest first (by `created_at`, then id,
    /// descending), read from the status index in one read transaction.
    ///
    /// Paging is stable while transactions arrive: new ones are newer than
    /// any position already handed out, so they never shift a later page;
    /// a transaction changing status keeps its place in an unfiltered list.
    pub fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let index = txn.open_table(BY_STATUS).map_err(StoreError::storage)?;
        let records = txn.open_table(TRANSACTIONS).map_err(StoreError::storage)?;
        let low = query.created_after_ms.map_or(0, |ms| ms.saturating_add(1));
        // Newest first: each status's range read backwards, then merged.
        let statuses: &[Status] = match query.status {
            Some(Status::Processing) => &[Status::Processing],
            Some(Status::Processed) => &[Status::Processed],
            None => &[Status::Processing, Status::Processed],
        };
        let mut ranges = Vec::with_capacity(statuses.len());
        for &status in statuses {
            let s = status_key(status);
            let start = (s, low, "");
            let end: (u8, u64, &str) = match (&query.after, query.created_before_ms) {
                (Some(after), Some(before)) if before <= after.created_ms => (s, before, ""),
                (Some(after), _) => (s, after.created_ms, after.transaction_id.as_str()),
                (None, Some(before)) => (s, before, ""),
                (None, None) => (s + 1, 0, ""),
            };
            if start >= end {
                continue;
            }
            let range = index.range(start..end).map_err(StoreError::storage)?;
            ranges.push(range.rev().peekable());
        }
        let mut keys: Vec<(u64, String)> = Vec::with_capacity(query.limit + 1);
        while keys.len() <= query.limit {
            // The newest head among the ranges.
            let mut best: Option<(usize, (u64, String))> = None;
            for (i, range) in ranges.iter_mut().enumerate() {
                let Some(head) = range.peek() else { continue };
                let Ok((key, _)) = head else {
                    // Surface the error through next().
                    if let Some(Err(e)) = range.next() {
                        return Err(StoreError::storage(e));
                    }
                    continue;
                };
                let (_, created, id) = key.value();
                if best
                    .as_ref()
                    .is_none_or(|(_, (c, i))| (created, id) > (*c, i.as_str()))
                {
                    best = Some((i, (created, id.to_owned())));
                }
            }
            let Some((i, key)) = best else { break };
            ranges[i].next();
            keys.push(key);
        }
        let next = if keys.len() > query.limit {
            keys.truncate(query.limit);
            keys.last().map(|(created_ms, id)| Position {
                created_ms: *created_ms,
                transaction_id: id.clone(),
            })
        } else {
            None
        };
        let mut transactions = Vec::with_capacity(keys.len());
        for (_, id) in &keys {
            let Some(value) = records.get(id.as_str()).map_err(StoreError::storage)? else {
                // The index and the records are written in one transaction;
                // `webhookd check` reports a mismatch. Skip rather than fail.
                tracing::error!(transaction_id = %id, "listing index names a missing transaction");
                continue;
            };
            let record =
                encoding::decode(id, value.value()).map_err(|source| StoreError::Corrupt {
                    id: id.clone(),
                    source,
                })?;
            transactions.push(record);
        }
        Ok(Page { transactions, next })
    }

    /// Visits every row of the listing index as `(status, created_ms, id)`,
    /// then every row of the retention index as `(processed_ms, id)`, in
    /// one read transaction (for `webhookd check`).
    pub fn for_each_index_row(
        &self,
        mut status_row: impl FnMut(u8, u64, &str),
        mut processed_row: impl FnMut(u64, &str),
    ) -> Result<(), StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let by_status = txn.open_table(BY_STATUS).map_err(StoreError::storage)?;
        for row in by_status.iter().map_err(StoreError::storage)? {
            let (key, _) = row.map_err(StoreError::storage)?;
            let (status, created, id) = key.value();
            status_row(status, created, id);
        }
        let by_processed = txn.open_table(BY_PROCESSED).map_err(StoreError::storage)?;
        for row in by_processed.iter().map_err(StoreError::storage)? {
            let (key, _) = row.map_err(StoreError::storage)?;
            let (processed, id) = key.value();
            processed_row(processed, id);
        }
        Ok(())
    }

    /// Every pending job, earliest first.
    pub fn all_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.due_jobs(u64::MAX, usize::MAX)
    }

    /// Counts of pending jobs, for monitoring: all of them, those already
    /// due at `now_ms` (the backlog), and the due time of the earliest.
    /// Counting the backlog walks it, so it stops at [`BACKLOG_COUNT_CAP`].
    pub fn job_stats(&self, now_ms: u64) -> Result<JobStats, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(JOBS).map_err(StoreError::storage)?;
        let pending = table.len().map_err(StoreError::storage)?;
        let earliest_due_ms = table
            .first()
            .map_err(StoreError::storage)?
            .map(|(key, _)| key.value().0);
        let mut due = 0;
        if earliest_due_ms.is_some_and(|d| d <= now_ms) {
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
}

fn open_writable(path: &Path) -> Result<Database, redb::Error> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?)
}

fn read_schema_version(db: &impl ReadableDatabase) -> Result<Option<u64>, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(SCHEMA_VERSION_KEY)?.map(|v| v.value()))
}

fn check_schema_version(path: &Path, found: Option<u64>) -> Result<(), OpenError> {
    match found {
        Some(found) if found > SCHEMA_VERSION => Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Creates the tables and records the schema version in a new file; a file
/// at the current version is left as it is; a version 1 file is migrated.
fn initialise(db: &Database) -> Result<(), redb::Error> {
    match read_schema_version(db)? {
        Some(SCHEMA_VERSION) => return Ok(()),
        Some(1) => migrate_from_v1(db)?,
        _ => {}
    }
    let txn = db.begin_write()?;
    {
        txn.open_table(TRANSACTIONS)?;
        txn.open_table(JOBS)?;
        txn.open_table(BY_STATUS)?;
        txn.open_table(BY_PROCESSED)?;
        txn.open_table(META)?
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
    }
    txn.commit()?;
    Ok(())
}

/// Builds the version 2 indexes from the records of a version 1 file, in
/// chunks of [`MIGRATION_CHUNK`] records per commit. Rerunning it after a
/// crash part-way is safe: the version stays 1 until the caller's final
/// commit, and indexing a record twice writes the same keys again.
fn migrate_from_v1(db: &Database) -> Result<(), redb::Error> {
    let started = Instant::now();
    let mut resume: Option<String> = None;
    let mut indexed = 0_u64;
    loop {
        let txn = db.begin_write()?;
        let mut done = true;
        {
            let records = txn.open_table(TRANSACTIONS)?;
            let mut by_status = txn.open_table(BY_STATUS)?;
            let mut by_processed = txn.open_table(BY_PROCESSED)?;
            let rows = match &resume {
                Some(last) => records.range::<&str>((
                    std::ops::Bound::Excluded(last.as_str()),
                    std::ops::Bound::Unbounded,
                ))?,
                None => records.iter()?,
            };
            let mut in_chunk = 0;
            for row in rows {
                let (key, value) = row?;
                let id = key.value();
                in_chunk += 1;
                if in_chunk > MIGRATION_CHUNK {
                    done = false;
                    break;
                }
                resume = Some(id.to_owned());
                match encoding::decode(id, value.value()) {
                    Ok(record) => {
                        by_status
                            .insert((status_key(record.status), record.created_at_ms, id), ())?;
                        if let (Status::Processed, Some(at)) =
                            (record.status, record.processed_at_ms)
                        {
                            by_processed.insert((at, id), ())?;
                        }
                        indexed += 1;
                    }
                    // Left as it is; `webhookd check` reports it.
                    Err(e) => {
                        tracing::error!(transaction_id = id, error = %e, "record does not decode; not indexed");
                    }
                }
            }
        }
        txn.commit()?;
        if done {
            break;
        }
    }
    tracing::info!(
        transactions = indexed,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "migrated the database from schema version 1 to 2 (built the listing and retention indexes)"
    );
    Ok(())
}
