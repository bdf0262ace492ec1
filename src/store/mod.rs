//! The embedded database: tables, their encoding, opening and checking the
//! file, reads, and (in [`writer`]) the single group-committing writer.
//!
//! Layout of `<data-dir>/webhookd.redb`:
//! - `transactions`: `transaction_id` → versioned bincode [`Record`] ([`encoding`]);
//! - `jobs`: `(due_ms, transaction_id)` → `()`, one row per transaction not
//!   yet processed; it reads in due order and is the scheduler's index;
//! - `meta`: `"schema_version"` → [`SCHEMA_VERSION`].
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

use crate::model::Record;

/// redb's page cache. redb's default (1 GiB) would let a daemon on a small
/// edge box grow to that size; the OS page cache still holds the file.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "webhookd.redb";

/// Version of the table layout this build reads and writes. A database with
/// a higher version was written by a newer webhookd and is refused.
pub const SCHEMA_VERSION: u64 = 1;

/// Key in [`META`] holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

pub(crate) const TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
pub(crate) const JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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
/// at the current version is left as it is.
fn initialise(db: &Database) -> Result<(), redb::Error> {
    if read_schema_version(db)? == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        txn.open_table(TRANSACTIONS)?;
        txn.open_table(JOBS)?;
        txn.open_table(META)?
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
    }
    txn.commit()?;
    Ok(())
}
