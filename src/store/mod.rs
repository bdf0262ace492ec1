//! The embedded database: tables, their encoding, opening and checking the
//! file, reads, and (in [`writer`]) the single group-committing writer.
//!
//! Layout of `<data-dir>/webhookd.redb` (schema 4):
//! - `log`: log key → versioned bincode [`Record`] ([`encoding`]). The log
//!   key is `created_ms << 20 | n`: records are keyed by arrival, so new
//!   ones append at the right edge of the B-tree and one commit writes a
//!   few pages however many records it carries, whatever their ids;
//! - `id_hashes`: `(hash of transaction_id, log key)` → `()`, the lookup
//!   by id ([`ids`]: a keyed hash, candidates checked against the log). It
//!   is written in large batches sorted by hash (see [`writer`]), so each
//!   page of this randomly-keyed table is rewritten once for many ids, not
//!   once per id. Until then an id lives in an in-memory set rebuilt at
//!   start from the log entries after [`INDEXED_UPTO_KEY`];
//! - `jobs_by_due`: `(due_ms, log key)` → `()`, one row per transaction not
//!   yet processed: the scheduler's index, in due order;
//! - `log_by_status`: `(status, log key)` → `()`: the filtered listing index;
//! - `log_by_processed_at`: `(processed_ms, log key)` → `()`: the retention index;
//! - `meta`: [`SCHEMA_VERSION_KEY`] → [`SCHEMA_VERSION`], the two halves
//!   of the id hash key,
//!   [`INDEXED_UPTO_KEY`] → the log key up to which every entry is in
//!   `id_hashes`,
//!   and [`ROWS_UPTO_KEY`] → the log key up to which every entry has its
//!   `jobs_by_due` and `log_by_status` rows.
//!
//! The log is the truth; every other table is an index of it. Accepting a
//! webhook writes only its log entry (whose record carries its due time),
//! so the commit a 202 waits for touches one table. The writer adds the
//! job and listing rows of the log's tail in bulk, every few thousand
//! entries, in the same write transaction that moves [`ROWS_UPTO_KEY`];
//! until then those jobs are in an in-memory map that reads consult along
//! with the tables. Processing writes its rows (status and retention)
//! directly. Everything that must survive a crash is in the log; the
//! in-memory maps only cache the log's tail, and are rebuilt from it.

pub mod backend;
pub mod encoding;
mod ids;
mod tail;
mod unacknowledged;
pub mod writer;

pub use backend::{Access, FileOpener, StorageOpener};

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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
/// History: 1 had `transactions` keyed by id, `jobs` and `meta`; 2 keys
/// records by arrival (`log`) with the `ids`, listing and retention
/// indexes; 3 adds the due time to records and [`ROWS_UPTO_KEY`], so job
/// and listing rows may lag the log (a version 2 webhookd would not see
/// the lagging jobs, hence the new version); 4 replaces `ids` (the ids
/// themselves) with `id_hashes` (a keyed hash of each, 16-byte rows).
/// [`Store::open`] migrates version 1, 2 and 3 files.
pub const SCHEMA_VERSION: u64 = 4;

/// Key in `meta` holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Key in `meta`: every log entry with a key up to this one is in
/// `id_hashes` (the name is from when that table was `ids`).
pub const INDEXED_UPTO_KEY: &str = "ids_complete_upto";

/// Key in `meta`: every log entry with a key up to this one has its
/// `jobs_by_due` and `log_by_status` rows; later entries have only those a
/// completion wrote (PROCESSED listing and retention rows).
pub const ROWS_UPTO_KEY: &str = "rows_complete_upto";

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// (keyed hash of the transaction id, log key): see [`ids`].
pub(crate) const IDS: TableDefinition<(u64, u64), ()> = TableDefinition::new("id_hashes");
pub(crate) const JOBS: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_by_due");
pub(crate) const BY_STATUS: TableDefinition<(u8, u64), ()> = TableDefinition::new("log_by_status");
pub(crate) const BY_PROCESSED: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("log_by_processed_at");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Schema 1's tables, read once by the migration and then deleted.
const V1_TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
const V1_JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
/// Schemas 2 and 3 kept the ids themselves: id → log key.
const V3_IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");

/// Bits of a log key below the creation time.
const LOG_KEY_SHIFT: u32 = 20;

/// The smallest log key of a record created at `ms`.
#[must_use]
pub fn first_log_key_at(ms: u64) -> u64 {
    ms.checked_shl(LOG_KEY_SHIFT)
        .filter(|k| k >> LOG_KEY_SHIFT == ms)
        .unwrap_or(u64::MAX)
}

/// The log key for a record created at `ms`, after `previous`.
#[must_use]
pub fn next_log_key(previous: u64, ms: u64) -> u64 {
    first_log_key_at(ms).max(previous.saturating_add(1))
}

/// A status as the first field of a `log_by_status` key.
#[must_use]
pub fn status_key(status: Status) -> u8 {
    match status {
        Status::Processing => 0,
        Status::Processed => 1,
    }
}

/// Most records written per write transaction when a version 1 file is
/// migrated; bounds the memory of one migration commit.
const MIGRATION_CHUNK: usize = 50_000;

/// Most transactions one listing page may hold (`limit`).
pub const MAX_PAGE: usize = 1000;

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
    /// Continue with those older than this log key (a cursor).
    pub after: Option<u64>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Transactions, newest first.
    pub transactions: Vec<Record>,
    /// The log key to continue after, if there may be more.
    pub next: Option<u64>,
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
    /// A schema 1 file could not be migrated; it was left as it was.
    #[error(
        "cannot migrate database {path} to schema version {SCHEMA_VERSION}: {reason}; the file was not changed"
    )]
    Migration {
        /// The database file.
        path: PathBuf,
        /// What stopped the migration.
        reason: String,
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
    #[error("stored record {key} cannot be read: {source}")]
    Corrupt {
        /// Log key of the record.
        key: u64,
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

/// A pending processing job: the row `(due_ms, log_key)` of the jobs table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// When the job falls due, milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The log key of the transaction to process.
    pub log_key: u64,
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

/// Every index row, for `webhookd check`.
#[derive(Debug, Default)]
pub struct IndexRows {
    /// `id_hashes`: (id hash, log key).
    pub ids: Vec<(u64, u64)>,
    /// `log_by_status`: (status, log key).
    pub by_status: Vec<(u8, u64)>,
    /// `log_by_processed_at`: (processed ms, log key).
    pub by_processed: Vec<(u64, u64)>,
    /// Every jobs row.
    pub jobs: Vec<Job>,
    /// Jobs of the log's tail, after [`ROWS_UPTO_KEY`] (not yet rows).
    pub tail_jobs: Vec<Job>,
    /// [`INDEXED_UPTO_KEY`].
    pub indexed_upto: u64,
    /// [`ROWS_UPTO_KEY`].
    pub rows_upto: u64,
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
    /// The file's storage, opened once and lent to every handle below.
    storage: Arc<backend::SharedStorage>,
    /// Normally writable. After a storage error that a reopen could not
    /// clear, a read-only view of the last durable commit, so reads go on
    /// ([`Store::reopen`]). `None` only if neither could be opened.
    /// Readers hold the lock just long enough to clone the `Arc`.
    db: RwLock<Option<Handle>>,
    /// Log entries failed commits may have left in the file; reads skip them.
    unacknowledged: unacknowledged::Unacknowledged,
    /// The log's tail: ids not yet in `id_hashes` and jobs not yet in
    /// `jobs_by_due`.
    unindexed: RwLock<Unindexed>,
    /// The file's id hash.
    id_hasher: ids::IdHasher,
}

/// What of the log's tail is not yet in the index tables.
///
/// The writer adds an id in the same batch as the log entry, and removes
/// it only after the commit that put it into `id_hashes`; so every stored
/// transaction is always findable through this set or `id_hashes`. A job is
/// added after the commit of its log entry and removed after the commit
/// that wrote its row (or processed it), so a reader that copies the jobs
/// before opening its read transaction, and keeps those after the
/// snapshot's [`ROWS_UPTO_KEY`], sees every job exactly once.
#[derive(Default)]
pub(crate) struct Unindexed {
    /// (id hash, log key) of those accepted since the current merge cycle
    /// began.
    pub(crate) active: BTreeSet<(u64, u64)>,
    /// Being written into `id_hashes` by the current merge cycle (empty
    /// between cycles). Already in order, so a cycle starts by moving
    /// `active` here, without copying or sorting anything.
    pub(crate) frozen: Arc<BTreeSet<(u64, u64)>>,
    /// Every PROCESSING entry without its job row.
    pub(crate) jobs: tail::TailJobs,
}

impl Unindexed {
    /// The log keys filed under an id hash.
    pub(crate) fn candidates(&self, hash: u64) -> Vec<u64> {
        ids::filed_under(&self.active, hash)
            .chain(ids::filed_under(&self.frozen, hash))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.active.len() + self.frozen.len()
    }
}

/// An open database and whether it may be written.
#[derive(Clone)]
enum Handle {
    Writable(Arc<Database>),
    /// Opened on a sealed [`backend::Overlay`]: every write fails.
    ReadOnlyView(Arc<Database>),
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, checks its
    /// schema version and creates missing tables.
    ///
    /// A file written by a newer webhookd is refused before anything is
    /// written to it: the version is first read through a read-only open.
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        Store::open_with(data_dir, &FileOpener)
    }

    /// [`Store::open`] on storage that `opener` opens: the read-only schema
    /// check, then one read-write storage kept for the store's lifetime
    /// (every reopen after a storage error uses it again).
    pub fn open_with(data_dir: &Path, opener: &dyn StorageOpener) -> Result<Store, OpenError> {
        use std::os::unix::fs::DirBuilderExt as _;
        // Created for its owner only, whatever the umask; an existing
        // directory keeps the mode it has.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| OpenError::DataDir {
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
            let checked = opener
                .open(&path, Access::ReadOnly)
                .map_err(redb::DatabaseError::from)
                .and_then(|storage| {
                    let storage = backend::SharedStorage::new(storage);
                    redb::Builder::new().open_read_only_with_backend(backend::Lease::new(&storage))
                });
            match checked {
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

        let storage = opener
            .open(&path, Access::ReadWrite)
            .map_err(|e| database_error(e.into()))?;
        let storage = backend::SharedStorage::new(storage);
        let db = open_writable(&storage).map_err(&database_error)?;
        let found = read_schema_version(&db).map_err(&database_error)?;
        check_schema_version(&path, found)?;
        let id_hasher = ids::IdHasher::of(&db).map_err(&database_error)?;
        if found == Some(1) {
            migrate_from_v1(&db, &id_hasher).map_err(|e| match e {
                MigrationError::Storage(e) => database_error(e),
                MigrationError::Record(reason) => OpenError::Migration {
                    path: path.clone(),
                    reason,
                },
            })?;
        }
        if found == Some(2) {
            migrate_from_v2(&db).map_err(&database_error)?;
        }
        if matches!(found, Some(2 | 3)) {
            migrate_from_v3(&db, &id_hasher).map_err(&database_error)?;
        }
        initialise(&db).map_err(&database_error)?;
        let unindexed = load_unindexed(&db, &id_hasher).map_err(&database_error)?;
        Ok(Store {
            shared: Arc::new(Shared {
                storage,
                db: RwLock::new(Some(Handle::Writable(Arc::new(db)))),
                unacknowledged: unacknowledged::Unacknowledged::default(),
                unindexed: RwLock::new(unindexed),
                id_hasher,
            }),
        })
    }

    /// The open database, for one read: the writable one, or the
    /// read-only view while writes fail.
    pub(crate) fn handle(&self) -> Result<Arc<Database>, StoreError> {
        match &*self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(Handle::Writable(db) | Handle::ReadOnlyView(db)) => Ok(Arc::clone(db)),
            None => Err(StoreError::Reopening),
        }
    }

    /// The open database, for the writer; never the read-only view.
    pub(crate) fn write_handle(&self) -> Result<Arc<Database>, StoreError> {
        match &*self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(Handle::Writable(db)) => Ok(Arc::clone(db)),
            _ => Err(StoreError::Reopening),
        }
    }

    /// Opens the file for writing again after a storage error.
    ///
    /// After an I/O error redb fails every later access of the file, reads
    /// included (only pages still in its cache answer), until the file is
    /// reopened; opening repairs the file back to its last durable commit,
    /// so nothing acknowledged is lost. That repair writes, so while the
    /// fault lasts the open fails; then the store serves reads from a
    /// read-only view ([`backend::Overlay`]) that repairs in memory and
    /// never touches the file, keeps the file locked, and is swapped for
    /// the writable handle by the first reopen that succeeds.
    ///
    /// Only the writer thread calls this, with no handle of its own alive.
    /// Reads wait on the slot meanwhile; at most one handle is ever in use.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self
            .shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut view = None;
        if let Some(current) = slot.take() {
            // In-flight reads hold clones for the length of one read; the
            // old handle must be idle before another opens the file.
            match current {
                Handle::Writable(db) => match drain(db) {
                    // Dropping closes it; a handle that failed writes nothing.
                    Ok(db) => drop(db),
                    Err(db) => {
                        *slot = Some(Handle::Writable(db));
                        return Err(StoreError::Reopening);
                    }
                },
                Handle::ReadOnlyView(db) => match drain(db) {
                    Ok(db) => view = Some(db),
                    Err(db) => {
                        *slot = Some(Handle::ReadOnlyView(db));
                        return Err(StoreError::Reopening);
                    }
                },
            }
        }
        // An idle view may stay open meanwhile: it never writes, and the
        // pages of the durable commit it reads are not overwritten by an
        // open (redb only writes the header and free pages before the
        // first commit, and nothing commits until the view is dropped).
        match open_writable(&self.shared.storage) {
            Ok(db) => {
                drop(view);
                *slot = Some(Handle::Writable(Arc::new(db)));
                Ok(())
            }
            Err(e) => {
                if view.is_none() {
                    view = open_view(&self.shared.storage)
                        .inspect_err(|e| {
                            tracing::error!(error = %e, "cannot open a read-only view either; reads fail until storage recovers");
                        })
                        .ok();
                    if view.is_some() {
                        tracing::warn!(
                            "serving reads from a read-only view of the last durable commit until the database can be reopened for writing"
                        );
                    }
                }
                *slot = view.map(|db| Handle::ReadOnlyView(Arc::new(db)));
                Err(StoreError::Storage(e))
            }
        }
    }

    /// How many stored transactions are findable only through the
    /// in-memory set (not yet merged into `id_hashes`).
    #[must_use]
    pub fn unindexed_count(&self) -> usize {
        self.shared
            .unindexed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The ids of log entries not yet in `id_hashes`.
    pub(crate) fn unindexed(&self) -> &RwLock<Unindexed> {
        &self.shared.unindexed
    }

    /// Reads one transaction by id.
    pub fn get(&self, transaction_id: &str) -> Result<Option<Record>, StoreError> {
        // The set is read before the read transaction begins: an entry
        // leaves the set only after the commit that put it into
        // `id_hashes`, so a miss here means `id_hashes` in the snapshot
        // below has it (or it was never acknowledged).
        let hash = self.id_hash(transaction_id);
        let mut candidates = self
            .shared
            .unindexed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .candidates(hash);
        // The handle stays alive for the whole read, so a reopen waits for it.
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let log = txn.open_table(LOG).map_err(StoreError::storage)?;
        let ids = txn.open_table(IDS).map_err(StoreError::storage)?;
        candidates.extend(ids::filed_in_table(&ids, hash).map_err(StoreError::storage)?);
        match ids::find_in_log(&log, candidates, transaction_id).map_err(StoreError::storage)? {
            None => Ok(None),
            Some((_, Ok(record))) => Ok(Some(record)),
            Some((key, Err(source))) => Err(StoreError::Corrupt { key, source }),
        }
    }

    /// The hash `id_hashes` files `transaction_id` under.
    #[must_use]
    pub fn id_hash(&self, transaction_id: &str) -> u64 {
        self.shared.id_hasher.hash(transaction_id)
    }

    /// The highest log key in use (0 for an empty log).
    pub(crate) fn last_log_key(&self) -> Result<u64, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let log = txn.open_table(LOG).map_err(StoreError::storage)?;
        Ok(log
            .last()
            .map_err(StoreError::storage)?
            .map_or(0, |(key, _)| key.value()))
    }

    /// [`ROWS_UPTO_KEY`], and how many committed log entries come after
    /// it: how far the job and listing rows lag the log.
    pub(crate) fn rows_lag(&self) -> Result<(u64, usize), StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let upto = rows_upto(&txn)?;
        let log = txn.open_table(LOG).map_err(StoreError::storage)?;
        let lag = log
            .range(upto.saturating_add(1)..)
            .map_err(StoreError::storage)?
            .count();
        Ok((upto, lag))
    }

    /// Rebuilds the tail's jobs from the file, after a reopen: a failed
    /// commit may or may not show in it, and the file is the truth.
    pub(crate) fn reload_tail_jobs(&self) -> Result<(), StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let jobs = load_tail_jobs(&txn).map_err(StoreError::storage)?;
        self.shared
            .unindexed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs = jobs;
        Ok(())
    }

    /// [`INDEXED_UPTO_KEY`] as committed.
    pub(crate) fn indexed_upto(&self) -> Result<u64, StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let meta = txn.open_table(META).map_err(StoreError::storage)?;
        Ok(meta
            .get(INDEXED_UPTO_KEY)
            .map_err(StoreError::storage)?
            .map_or(0, |v| v.value()))
    }

    /// A copy of the log's tail jobs that `pick` takes. Called before the
    /// read transaction opens; the caller then drops those at or before
    /// the snapshot's [`ROWS_UPTO_KEY`] ([`TailCopy::after`]).
    fn tail_jobs(&self, pick: impl FnOnce(&tail::TailJobs) -> Vec<Job>) -> TailCopy {
        TailCopy(pick(
            &self
                .shared
                .unindexed
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .jobs,
        ))
    }

    /// Up to `limit` jobs due at or before `now_ms`, earliest first.
    pub fn due_jobs(&self, now_ms: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let tail = self.tail_jobs(|jobs| jobs.due(now_ms, limit));
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let tail = tail.after(rows_upto(&txn)?);
        let table = txn.open_table(JOBS).map_err(StoreError::storage)?;
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

    /// Due time of the earliest pending job, if any.
    /// Called by the scheduler after each round, so it reads only the
    /// first of each order, not the whole tail.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        // Before the snapshot, as for every tail read: a job moved to the
        // table meanwhile shows in both, with the same due time.
        let tail = self
            .shared
            .unindexed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .earliest_due();
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn
            .open_table(JOBS)
            .map_err(StoreError::storage)?
            .first()
            .map_err(StoreError::storage)?
            .map(|(key, _)| key.value().0);
        Ok(table.into_iter().chain(tail).min())
    }

    /// Number of pending (not yet processed) jobs.
    pub fn pending_jobs(&self) -> Result<u64, StoreError> {
        Ok(self.job_stats(0)?.pending)
    }

    /// Visits every stored transaction in arrival order, inside one read
    /// transaction (a consistent snapshot); stops when `visit` returns false.
    pub fn for_each_transaction(
        &self,
        mut visit: impl FnMut(u64, Result<Record, encoding::DecodeError>) -> bool,
    ) -> Result<(), StoreError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let table = txn.open_table(LOG).map_err(StoreError::storage)?;
        for row in table.iter().map_err(StoreError::storage)? {
            let (key, value) = row.map_err(StoreError::storage)?;
            if !visit(key.value(), encoding::decode(value.value())) {
                break;
            }
        }
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
        let tail = match query.status {
            Some(Status::Processing) => self.tail_jobs(tail::TailJobs::all),
            _ => TailCopy(Vec::new()),
        };
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let log = txn.open_table(LOG).map_err(StoreError::storage)?;
        let low = query
            .created_after_ms
            .map_or(0, |ms| first_log_key_at(ms.saturating_add(1)));
        let high = query
            .created_before_ms
            .map_or(u64::MAX, first_log_key_at)
            .min(query.after.unwrap_or(u64::MAX));
        // One more than asked for, to know whether another page follows.
        let wanted = query.limit.saturating_add(1);
        let mut found: Vec<(u64, Record)> = Vec::with_capacity(wanted.min(1024));
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
                        let record = encoding::decode(value.value())
                            .map_err(|source| StoreError::Corrupt { key, source })?;
                        found.push((key, record));
                    }
                }
                Some(status) => {
                    // Tail entries (PROCESSING, without listing rows yet)
                    // all come after every row, so they lead, newest first.
                    let tail = match status {
                        Status::Processing => tail.after(rows_upto(&txn)?),
                        Status::Processed => Vec::new(),
                    };
                    let tail = tail
                        .into_iter()
                        .rev()
                        .map(|job| Ok(job.log_key))
                        .filter(|key| matches!(key, Ok(k) if (low..high).contains(k)));
                    let index = txn.open_table(BY_STATUS).map_err(StoreError::storage)?;
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
                            Some(record) if record.status != status => {}
                            Some(record) => found.push((key, record)),
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
            next = found.last().map(|(key, _)| *key);
        }
        Ok(Page {
            transactions: found.into_iter().map(|(_, record)| record).collect(),
            next,
        })
    }
    /// Every index row (for `webhookd check`), from one read transaction.
    pub fn index_rows(&self) -> Result<IndexRows, StoreError> {
        let tail = self.tail_jobs(tail::TailJobs::all);
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let mut rows = IndexRows::default();
        rows.rows_upto = rows_upto(&txn)?;
        rows.tail_jobs = tail.after(rows.rows_upto);
        for row in txn
            .open_table(IDS)
            .map_err(StoreError::storage)?
            .iter()
            .map_err(StoreError::storage)?
        {
            let (key, _) = row.map_err(StoreError::storage)?;
            rows.ids.push(key.value());
        }
        for row in txn
            .open_table(BY_STATUS)
            .map_err(StoreError::storage)?
            .iter()
            .map_err(StoreError::storage)?
        {
            let (key, _) = row.map_err(StoreError::storage)?;
            rows.by_status.push(key.value());
        }
        for row in txn
            .open_table(BY_PROCESSED)
            .map_err(StoreError::storage)?
            .iter()
            .map_err(StoreError::storage)?
        {
            let (key, _) = row.map_err(StoreError::storage)?;
            rows.by_processed.push(key.value());
        }
        for row in txn
            .open_table(JOBS)
            .map_err(StoreError::storage)?
            .iter()
            .map_err(StoreError::storage)?
        {
            let (key, _) = row.map_err(StoreError::storage)?;
            let (due_ms, log_key) = key.value();
            rows.jobs.push(Job { due_ms, log_key });
        }
        rows.indexed_upto = txn
            .open_table(META)
            .map_err(StoreError::storage)?
            .get(INDEXED_UPTO_KEY)
            .map_err(StoreError::storage)?
            .map_or(0, |v| v.value());
        Ok(rows)
    }

    /// Counts of pending jobs, for monitoring: all of them, those already
    /// due at `now_ms` (the backlog), and the due time of the earliest.
    /// Counting the backlog walks it, so it stops at [`BACKLOG_COUNT_CAP`].
    pub fn job_stats(&self, now_ms: u64) -> Result<JobStats, StoreError> {
        let tail = self.tail_jobs(tail::TailJobs::all);
        let db = self.handle()?;
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let tail = tail.after(rows_upto(&txn)?);
        let table = txn.open_table(JOBS).map_err(StoreError::storage)?;
        let pending = table.len().map_err(StoreError::storage)? + tail.len() as u64;
        let table_earliest = table
            .first()
            .map_err(StoreError::storage)?
            .map(|(key, _)| key.value().0);
        let tail_earliest = tail.iter().map(|job| job.due_ms).min();
        let earliest_due_ms = table_earliest.into_iter().chain(tail_earliest).min();
        let table_earliest_due = table_earliest.is_some_and(|d| d <= now_ms);
        let mut due = tail.iter().filter(|job| job.due_ms <= now_ms).count() as u64;
        if table_earliest_due {
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

/// Jobs of the log's tail copied before a read transaction opened.
struct TailCopy(Vec<Job>);

impl TailCopy {
    /// Those not yet rows in a snapshot whose [`ROWS_UPTO_KEY`] is `upto`:
    /// the others were merged into `jobs_by_due` (and are read from there)
    /// after the copy was taken. In log-key order.
    fn after(self, upto: u64) -> Vec<Job> {
        let mut jobs = self.0;
        jobs.retain(|job| job.log_key > upto);
        jobs
    }
}

/// [`ROWS_UPTO_KEY`] in a snapshot.
fn rows_upto(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)
        .map_err(StoreError::storage)?
        .get(ROWS_UPTO_KEY)
        .map_err(StoreError::storage)?
        .map_or(0, |v| v.value()))
}

/// The record under `key`, if any.
fn read_record(
    log: &impl ReadableTable<u64, &'static [u8]>,
    key: u64,
) -> Result<Option<Record>, StoreError> {
    let Some(value) = log.get(key).map_err(StoreError::storage)? else {
        return Ok(None);
    };
    encoding::decode(value.value())
        .map(Some)
        .map_err(|source| StoreError::Corrupt { key, source })
}

fn open_writable(storage: &Arc<backend::SharedStorage>) -> Result<Database, redb::Error> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(backend::Lease::new(storage))?)
}

/// Opens the read-only view: the file's last durable commit, repaired in
/// memory, sealed before it is returned so nothing is ever written through it.
fn open_view(storage: &Arc<backend::SharedStorage>) -> Result<Database, redb::Error> {
    let overlay = backend::Overlay::new(backend::Lease::new(storage))?;
    let seal = overlay.seal_handle();
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(overlay)?;
    seal.store(true, Ordering::Release);
    Ok(db)
}

/// Waits up to [`REOPEN_WAIT`] for in-flight reads to drop their clones.
fn drain(mut db: Arc<Database>) -> Result<Database, Arc<Database>> {
    let deadline = Instant::now() + REOPEN_WAIT;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Ok(db),
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(shared) => return Err(shared),
        }
    }
}

fn read_schema_version(db: &impl ReadableDatabase) -> Result<Option<u64>, redb::Error> {
    read_meta(db, SCHEMA_VERSION_KEY)
}

/// A value of `meta` as committed; none in a file without that table.
fn read_meta(db: &impl ReadableDatabase, key: &str) -> Result<Option<u64>, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(key)?.map(|v| v.value()))
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
/// at the current version is left as it is.
fn initialise(db: &Database) -> Result<(), redb::Error> {
    if read_schema_version(db)? == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(IDS)?;
        txn.open_table(JOBS)?;
        txn.open_table(BY_STATUS)?;
        txn.open_table(BY_PROCESSED)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
        for watermark in [INDEXED_UPTO_KEY, ROWS_UPTO_KEY] {
            if meta.get(watermark)?.is_none() {
                meta.insert(watermark, 0)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Schema 2 → 3: a version 2 file has every job and listing row, so the
/// rows are complete up to its last log entry. One commit.
fn migrate_from_v2(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let last = txn
            .open_table(LOG)?
            .last()?
            .map_or(0, |(key, _)| key.value());
        let mut meta = txn.open_table(META)?;
        meta.insert(ROWS_UPTO_KEY, last)?;
        meta.insert(SCHEMA_VERSION_KEY, 3)?;
    }
    txn.commit()?;
    tracing::info!("migrated the database from schema version 2 to 3");
    Ok(())
}

/// Schema 3 → 4: every row of `ids` (id → log key) becomes its row of
/// `id_hashes`, and `ids` goes, in one commit. Everything else stays:
/// the in-memory tail is rebuilt from the log after
/// [`INDEXED_UPTO_KEY`] as at every start.
fn migrate_from_v3(db: &Database, id_hasher: &ids::IdHasher) -> Result<(), redb::Error> {
    let started = Instant::now();
    let txn = db.begin_write()?;
    let mut rows = Vec::new();
    {
        for row in txn.open_table(V3_IDS)?.iter()? {
            let (id, key) = row?;
            rows.push((id_hasher.hash(id.value()), key.value()));
        }
        rows.sort_unstable();
        // A file that already went through part of this and crashed has
        // nothing committed of it: the whole step is one transaction.
        let mut hashes = txn.open_table(IDS)?;
        for &row in &rows {
            hashes.insert(row, ())?;
        }
    }
    txn.delete_table(V3_IDS)?;
    txn.open_table(META)?
        .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
    txn.commit()?;
    tracing::info!(
        ids = rows.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "migrated the database from schema version 3 to 4"
    );
    Ok(())
}

/// The log's tail as the daemon left it: the ids of the entries after
/// [`INDEXED_UPTO_KEY`], which the writer had not yet put into `id_hashes`, and
/// the jobs of the PROCESSING entries after [`ROWS_UPTO_KEY`], whose rows
/// it had not yet written. At most a few merge cycles' worth, so this
/// takes milliseconds.
fn load_unindexed(
    db: &impl ReadableDatabase,
    id_hasher: &ids::IdHasher,
) -> Result<Unindexed, redb::Error> {
    let txn = db.begin_read()?;
    let ids_upto = txn
        .open_table(META)?
        .get(INDEXED_UPTO_KEY)?
        .map_or(0, |v| v.value());
    let mut unindexed = Unindexed {
        jobs: load_tail_jobs(&txn)?,
        ..Unindexed::default()
    };
    let log = txn.open_table(LOG)?;
    let mut hashes: Vec<(u64, u64)> = Vec::new();
    for row in log.range(ids_upto.saturating_add(1)..)? {
        let (key, value) = row?;
        match encoding::decode_id(value.value()) {
            Ok(id) => hashes.push((id_hasher.hash(id), key.value())),
            Err(e) => {
                tracing::error!(log_key = key.value(), error = %e, "record does not decode; not findable by id");
            }
        }
    }
    // Collected, then built in one go: `from_iter` sorts and bulk-builds,
    // several times faster than inserting random ids one by one, and the
    // server is not ready until this is done.
    unindexed.active = hashes.into_iter().collect();
    Ok(unindexed)
}

/// The jobs of the PROCESSING entries after [`ROWS_UPTO_KEY`].
fn load_tail_jobs(txn: &redb::ReadTransaction) -> Result<tail::TailJobs, redb::Error> {
    let upto = txn
        .open_table(META)?
        .get(ROWS_UPTO_KEY)?
        .map_or(0, |v| v.value());
    let log = txn.open_table(LOG)?;
    let mut jobs = Vec::new();
    for row in log.range(upto.saturating_add(1)..)? {
        let (key, value) = row?;
        let key = key.value();
        match encoding::decode_with_due(value.value()) {
            Ok((record, _)) if record.status == Status::Processed => {}
            Ok((_, Some(due))) => {
                jobs.push((key, due));
            }
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

enum MigrationError {
    Storage(redb::Error),
    Record(String),
}

impl<E: Into<redb::Error>> From<E> for MigrationError {
    fn from(e: E) -> Self {
        MigrationError::Storage(e.into())
    }
}

/// Rewrites a version 1 file (records keyed by id) into schema 3: every
/// record into the log in creation order, with its id index, listing and
/// retention rows, and every job re-keyed to its record's log key.
///
/// Every record is decoded before anything is written, so a file with a
/// damaged record is refused unchanged. The new tables are filled in
/// chunks of [`MIGRATION_CHUNK`] records per commit; the old tables are
/// dropped and the version set in the last commit, so a crash
/// part-way leaves a version 1 file whose half-built new tables the next
/// attempt clears first.
fn migrate_from_v1(db: &Database, id_hasher: &ids::IdHasher) -> Result<(), MigrationError> {
    let started = Instant::now();
    // (created_ms, id, record), in creation order.
    let mut records = Vec::new();
    let mut v1_jobs = Vec::new();
    {
        let txn = db.begin_read()?;
        let table = txn.open_table(V1_TRANSACTIONS)?;
        for row in table.iter()? {
            let (id, value) = row?;
            let id = id.value();
            let record = encoding::decode_v1(id, value.value()).map_err(|e| {
                MigrationError::Record(format!("record {id:?} does not decode: {e}"))
            })?;
            records.push(record);
        }
        if let Ok(jobs) = txn.open_table(V1_JOBS) {
            for row in jobs.iter()? {
                let (key, _) = row?;
                let (due, id) = key.value();
                v1_jobs.push((due, id.to_owned()));
            }
        }
    }
    records.sort_by(|a, b| {
        (a.created_at_ms, &a.transaction.transaction_id)
            .cmp(&(b.created_at_ms, &b.transaction.transaction_id))
    });
    // Clear what an interrupted earlier attempt may have left.
    let txn = db.begin_write()?;
    txn.delete_table(LOG)?;
    txn.delete_table(V3_IDS)?;
    txn.delete_table(IDS)?;
    txn.delete_table(JOBS)?;
    txn.delete_table(BY_STATUS)?;
    txn.delete_table(BY_PROCESSED)?;
    txn.commit()?;

    let due_of: HashMap<&str, u64> = v1_jobs
        .iter()
        .map(|(due, id)| (id.as_str(), *due))
        .collect();
    let mut key_of: HashMap<String, u64> = HashMap::with_capacity(records.len());
    let mut last_key = 0;
    let mut buf = Vec::new();
    for chunk in records.chunks(MIGRATION_CHUNK) {
        let txn = db.begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut ids = txn.open_table(IDS)?;
            let mut by_status = txn.open_table(BY_STATUS)?;
            let mut by_processed = txn.open_table(BY_PROCESSED)?;
            for record in chunk {
                last_key = next_log_key(last_key, record.created_at_ms);
                let id = record.transaction.transaction_id.as_str();
                encoding::encode_into(
                    &record.transaction,
                    encoding::State {
                        status: record.status,
                        created_at_ms: record.created_at_ms,
                        processed_at_ms: record.processed_at_ms,
                        due_at_ms: due_of.get(id).copied(),
                    },
                    &mut buf,
                );
                log.insert(last_key, buf.as_slice())?;
                ids.insert((id_hasher.hash(id), last_key), ())?;
                by_status.insert((status_key(record.status), last_key), ())?;
                if let (Status::Processed, Some(at)) = (record.status, record.processed_at_ms) {
                    by_processed.insert((at, last_key), ())?;
                }
                key_of.insert(id.to_owned(), last_key);
            }
        }
        txn.commit()?;
    }
    let txn = db.begin_write()?;
    {
        let mut jobs = txn.open_table(JOBS)?;
        for (due, id) in &v1_jobs {
            match key_of.get(id) {
                Some(&key) => {
                    jobs.insert((*due, key), ())?;
                }
                None => {
                    tracing::warn!(transaction_id = %id, "schema 1 job without a transaction; dropped");
                }
            }
        }
        txn.delete_table(V1_TRANSACTIONS)?;
        txn.delete_table(V1_JOBS)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(INDEXED_UPTO_KEY, last_key)?;
        meta.insert(ROWS_UPTO_KEY, last_key)?;
        meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
    }
    txn.commit()?;
    tracing::info!(
        transactions = records.len(),
        jobs = v1_jobs.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "migrated the database from schema version 1 to 4"
    );
    Ok(())
}
