//! Opening the file: the schema check, migrations, tables, the log's tail.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};

use super::backend::{self, Access, StorageOpener};
use super::ids::{HashKeyError, IdHasher};
use super::migrate::{self, MigrationError};
use super::reopen::{OpenDatabase, open_writable};
use super::schema::{
    ATTEMPTS, ATTEMPTS_OPEN, ID_HASHES, ID_TOMBSTONES, IDS_INDEXED_UPTO_KEY, JOBS_BY_DUE, LOG,
    LOG_BY_PROCESSED_AT, LOG_BY_STATUS, META, PAYLOADS, REDELIVERIES, ROWS_INDEXED_UPTO_KEY,
    SCHEMA_VERSION, SCHEMA_VERSION_KEY, read_meta,
};
use super::tail::LogTail;
use super::unacknowledged::Unacknowledged;
use super::{DB_FILE_NAME, FileOpener, NoProgress, OpenError, Progress, Shared, Store};

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, checks its
    /// schema version, migrates an older file and creates missing tables.
    ///
    /// A file written by a newer webhookd is refused before anything is
    /// written to it: the version is first read through a read-only open.
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        Store::open_with(data_dir, &FileOpener, &NoProgress)
    }

    /// [`Store::open`] on storage that `opener` opens: the read-only schema
    /// check, then one read-write storage kept for the store's lifetime
    /// (every reopen after a storage error uses it again). A migration
    /// reports its stages to `progress`.
    pub fn open_with(
        data_dir: &Path,
        opener: &dyn StorageOpener,
        progress: &dyn Progress,
    ) -> Result<Store, OpenError> {
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
        let database_error = |source: redb::Error| OpenError::database(data_dir, source);

        // An empty file is what a crash during the very first start leaves
        // behind; like a missing one, it becomes a new database. So does a
        // file that holds nothing past its header page, which a power cut
        // while redb creates the file can leave ([`holds_no_database`]).
        let existing = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        let mut start_afresh = false;
        if existing {
            let read_only = opener
                .open(&path, Access::ReadOnly)
                .map_err(|e| database_error(e.into()))?;
            start_afresh = holds_no_database(&*read_only).map_err(|e| database_error(e.into()))?;
            if !start_afresh {
                let storage = backend::SharedStorage::new(read_only);
                match redb::Builder::new()
                    .open_read_only_with_backend(backend::Lease::new(&storage))
                {
                    Ok(db) => {
                        let found = read_meta(&db, SCHEMA_VERSION_KEY).map_err(&database_error)?;
                        check_schema_version(&path, found)?;
                    }
                    // A file left by a crash needs repair, which a read-only
                    // open refuses; the writable open below repairs it, and
                    // the version is checked again before anything else is
                    // written.
                    Err(redb::DatabaseError::RepairAborted) => {}
                    Err(e) => return Err(database_error(e.into())),
                }
            }
        }

        let storage = opener
            .open(&path, Access::ReadWrite)
            .map_err(|e| database_error(e.into()))?;
        // Looked at again through the storage redb will lock and write.
        if start_afresh && holds_no_database(&*storage).map_err(|e| database_error(e.into()))? {
            tracing::warn!(
                path = %path.display(),
                "the database file holds no data past its header page, as a power cut while it was being created leaves it; starting a new database in it"
            );
            storage.set_len(0).map_err(|e| database_error(e.into()))?;
        }
        let storage = backend::SharedStorage::new(storage);
        let db = open_writable(&storage).map_err(&database_error)?;
        let found = read_meta(&db, SCHEMA_VERSION_KEY).map_err(&database_error)?;
        check_schema_version(&path, found)?;
        let id_hasher = IdHasher::of(&db).map_err(|e| match e {
            HashKeyError::Storage(e) => database_error(e),
            HashKeyError::Randomness(source) => OpenError::NoRandomness {
                path: path.clone(),
                source,
            },
        })?;
        migrate::to_current(&db, found, &id_hasher, progress).map_err(|e| match e {
            MigrationError::Storage(e) => database_error(e),
            MigrationError::Record { id, source } => OpenError::Migration {
                path: path.clone(),
                id,
                source,
            },
        })?;
        initialise(&db).map_err(&database_error)?;
        let tail = db
            .begin_read()
            .map_err(redb::Error::from)
            .and_then(|txn| LogTail::load(&txn, &id_hasher))
            .map_err(&database_error)?;
        Ok(Store {
            shared: Arc::new(Shared {
                db: OpenDatabase::new(storage, db),
                unacknowledged: Unacknowledged::default(),
                tail,
                id_hasher,
            }),
        })
    }
}

/// redb's page size. Its header (magic number, commit slots) fills the
/// first page; every page a commit writes lies past it.
const HEADER_PAGE: u64 = 4096;

/// Whether a non-empty file holds no database: nothing but zeros past its
/// first page. A power cut while redb creates the file can leave that: redb
/// sets the length, then writes its header, and its magic number only once
/// the rest of the header is on disk, so the file may be all zeros, or a
/// header redb refuses as "not a database" (or stale bytes in that page, on
/// a file system that exposes them after a crash). No transaction can be in
/// such a file, so it becomes a new database; any other file is left as it
/// is for redb to open or refuse.
fn holds_no_database(storage: &dyn StorageBackend) -> std::io::Result<bool> {
    let len = storage.len()?;
    let mut buf = vec![0; 64 * 1024];
    let mut at = HEADER_PAGE.min(len);
    while at < len {
        let n = usize::try_from(len - at).map_or(buf.len(), |rest| rest.min(buf.len()));
        storage.read(at, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
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
    if read_meta(db, SCHEMA_VERSION_KEY)? == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(ID_HASHES)?;
        txn.open_table(JOBS_BY_DUE)?;
        txn.open_table(LOG_BY_STATUS)?;
        txn.open_table(LOG_BY_PROCESSED_AT)?;
        txn.open_table(ID_TOMBSTONES)?;
        txn.open_table(PAYLOADS)?;
        txn.open_table(ATTEMPTS)?;
        txn.open_table(ATTEMPTS_OPEN)?;
        txn.open_table(REDELIVERIES)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
        for watermark in [IDS_INDEXED_UPTO_KEY, ROWS_INDEXED_UPTO_KEY] {
            if meta.get(watermark)?.is_none() {
                meta.insert(watermark, 0)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl OpenError {
    /// What a redb error on the database in `data_dir` means: another
    /// process holding it, or anything else about its file.
    pub(crate) fn database(data_dir: &Path, source: redb::Error) -> OpenError {
        match source {
            redb::Error::DatabaseAlreadyOpen => OpenError::InUse {
                path: data_dir.to_owned(),
            },
            source => OpenError::Database {
                path: data_dir.join(DB_FILE_NAME),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redb's length for a new file, as a power cut during its creation
    /// may leave it.
    const NEW_FILE_LEN: usize = 73_728;

    #[test]
    fn a_file_with_nothing_past_its_header_page_becomes_a_new_database() {
        // All zeros (the length landed, the header not), or a first page
        // redb refuses (a header without its magic number, stale bytes).
        let refused_header: Vec<u8> = (0..HEADER_PAGE).map(|i| (i % 251) as u8).collect();
        for first_page in [vec![0; HEADER_PAGE as usize], refused_header] {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = first_page;
            bytes.resize(NEW_FILE_LEN, 0);
            std::fs::write(dir.path().join(DB_FILE_NAME), &bytes).unwrap();
            let store = Store::open(dir.path()).unwrap();
            let report = store.check(&NoProgress).unwrap();
            assert!(report.problems.is_empty(), "{report:?}");
            assert_eq!(report.transactions, 0);
            drop(store);
            // A database now, with its id hash key: it opens as one.
            Store::open(dir.path()).unwrap();
        }
    }

    #[test]
    fn a_file_with_data_past_its_header_page_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0; NEW_FILE_LEN];
        bytes[HEADER_PAGE as usize + 100] = 1;
        let file = dir.path().join(DB_FILE_NAME);
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(OpenError::Database { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
    }
}
