//! The embedded database: everything webhookd must not lose, in one redb
//! file, `<data-dir>/webhookd.redb`, and the one thread that writes it.
//!
//! # Tables
//!
//! | table | key → value | what for |
//! |---|---|---|
//! | `log` | log key → record ([`encoding`]) | every transaction, keyed by arrival |
//! | `id_hashes` | (keyed hash of the id, log key) → () | lookup by id, deduplication ([`ids`]) |
//! | `jobs_by_due` | (due time, log key) → () | one row per pending job: the scheduler's index |
//! | `log_by_status` | (status, log key) → () | the listing filtered by status |
//! | `log_by_processed_at` | (`processed_at`, log key) → () | retention, oldest first |
//! | `id_tombstones` | log key → (end of window, fields digest, id) | deduplicating purged ids ([`tombstones`]) |
//! | `payloads` | log key → `Content-Type` and body as received | the original of a mapped webhook ([`payloads`]) |
//! | `attempts` | (log key, attempt number) → attempt | the delivery journal ([`attempts`]) |
//! | `attempts_open` | log key → attempt number | attempts in flight, resolved after a crash |
//! | `redeliveries` | id → bulk redelivery | durable bulk redeliveries ([`redeliveries`]) |
//! | `meta` | name → number | schema version, id hash key, the two watermarks |
//!
//! A log key is `created_ms << 20 | n` ([`next_log_key`]): records are
//! keyed by arrival, so new ones append at the right edge of the B-tree
//! and a commit writes a few pages however many records it carries,
//! whatever their ids. Names and versions are in [`schema`].
//!
//! # The log and its tail
//!
//! The log is the truth; every other table but `id_tombstones` and
//! `payloads` is an index of it. Accepting a webhook writes only its log
//! entry, whose record carries its due time, so the commit a 202 waits for
//! touches one table (two with `--payload-map`, which keeps the original
//! body beside it).
//! Processing rewrites the record, moves its listing row and adds its
//! retention row in the same transaction; a purge deletes the record with
//! its listing and retention rows and writes its tombstone in one. The id
//! and the job and listing rows of new entries follow later, in bulk;
//! until then the log's tail ([`tail`]) holds them in memory, and every
//! read consults it beside its snapshot. After a crash the tail is rebuilt
//! from the log, so memory is never the only copy of anything.
//!
//! # The two merges
//!
//! - The **id merge** ([`writer::id_merge`]) writes the tail's ids into
//!   `id_hashes`, in hash order, a chunk per batch; its watermark,
//!   `ids_indexed_upto` (`meta` key [`IDS_INDEXED_UPTO_KEY`]), says up to
//!   which log key every id is in the table.
//! - The **rows merge** ([`writer::rows_merge`]) writes the job and listing
//!   rows of the tail's jobs, oldest first, a chunk per batch; its
//!   watermark, `rows_indexed_upto` ([`ROWS_INDEXED_UPTO_KEY`]), says up
//!   to which log key every entry has its rows.
//!
//! Each moves its watermark in the commit that writes the rows, so the
//! indexes never disagree with the log after a crash; `webhookd check`
//! ([`Store::check`]) verifies it.
//!
//! # Writing, recovery, migrations
//!
//! One thread writes, committing every command queued meanwhile in one
//! durable commit ([`writer`]). `webhookd check` verifies every page's
//! checksum first ([`integrity`]), which redb itself does only when it
//! repairs a file a crash left. After a storage fault the file is reopened
//! without a restart, with reads served from a read-only view meanwhile
//! ([`reopen`]), and what a failed commit may have left is taken back
//! ([`unacknowledged`]). A file of an older schema is migrated when opened
//! ([`migrate`]). Long operations (a migration, a whole-log walk) report how
//! far they are through [`progress`], never to a terminal themselves.

pub mod attempts;
pub mod backend;
mod check;
pub mod delivery_read;
pub mod encoding;
pub mod ids;
pub mod integrity;
pub mod migrate;
mod open;
pub mod overlay;
pub mod payloads;
pub mod progress;
mod read;
pub mod redeliveries;
pub mod reopen;
pub mod schema;
pub mod tail;
pub mod tombstones;
pub mod unacknowledged;
pub mod writer;

pub use backend::{Access, FileOpener, StorageOpener};
pub use check::CheckReport;
pub use progress::{NoProgress, Progress};
pub use read::BACKLOG_COUNT_CAP;
pub use schema::{
    IDS_INDEXED_UPTO_KEY, ROWS_INDEXED_UPTO_KEY, SCHEMA_VERSION, SCHEMA_VERSION_KEY,
    first_log_key_at, next_log_key, status_key,
};

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{Record, Status};

/// redb's page cache. redb's default (1 GiB) would let a daemon on a small
/// edge box grow to that size; the OS page cache still holds the file.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "webhookd.redb";

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

/// A pending processing job: the row `(due_ms, log_key)` of `jobs_by_due`,
/// or its entry in the log's tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// When the job falls due, milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The log key of the transaction to process.
    pub log_key: u64,
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
    /// A schema 1 record does not decode, so the file cannot be migrated;
    /// it was left as it was.
    #[error(
        "cannot migrate database {path} to schema version {SCHEMA_VERSION}: record {id:?} does not decode: {source}; the file was not changed"
    )]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The transaction id the record is stored under.
        id: String,
        /// Why it does not decode.
        #[source]
        source: encoding::DecodeError,
    },
    /// A new file needs a random id hash key and the OS gave none.
    #[error(
        "cannot create the id hash key of database {path}: no randomness from the OS: {source}"
    )]
    NoRandomness {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: getrandom::Error,
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
    /// The original body kept with a record cannot be decoded.
    #[error("the original body of stored record {key} cannot be read: {source}")]
    CorruptOriginal {
        /// Log key of the record.
        key: u64,
        /// Why it does not decode.
        #[source]
        source: payloads::DecodeError,
    },
}

impl StoreError {
    fn storage(e: impl Into<redb::Error>) -> Self {
        StoreError::Storage(e.into())
    }
}

/// Shared handle to the open database. Cheap to clone; reads go through
/// MVCC read transactions and never wait for the writer.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// The database, reopened after storage faults.
    db: reopen::OpenDatabase,
    /// Log entries failed commits may have left in the file; reads skip them.
    unacknowledged: unacknowledged::Unacknowledged,
    /// What of the log the index tables do not hold yet.
    tail: tail::LogTail,
    /// The file's id hash.
    id_hasher: ids::IdHasher,
}

impl Store {
    /// How many stored transactions are findable only through the log's
    /// tail (not yet merged into `id_hashes`).
    #[must_use]
    pub fn unindexed_count(&self) -> usize {
        self.shared.tail.unindexed_ids()
    }

    /// The hash `id_hashes` files `transaction_id` under.
    #[must_use]
    pub fn id_hash(&self, transaction_id: &str) -> u64 {
        self.shared.id_hasher.hash(transaction_id)
    }

    /// Starts looking `transaction_id` up ([`ids::IdLookup`]).
    pub(crate) fn look_up_id<'a>(&self, transaction_id: &'a str) -> ids::IdLookup<'a> {
        ids::IdLookup::new(transaction_id, &self.shared.id_hasher, &self.shared.tail)
    }

    pub(crate) fn id_hasher(&self) -> &ids::IdHasher {
        &self.shared.id_hasher
    }

    pub(crate) fn tail(&self) -> &tail::LogTail {
        &self.shared.tail
    }

    pub(crate) fn unacknowledged(&self) -> &unacknowledged::Unacknowledged {
        &self.shared.unacknowledged
    }

    pub(crate) fn db(&self) -> &reopen::OpenDatabase {
        &self.shared.db
    }
}
