//! Migrations: a file of an older schema is brought to the current one
//! when it is opened, one version after another, before anything is
//! served. Each step ends with a commit that writes its version, so a
//! crash leaves the file at the last version completed.
//!
//! - 1 → 4: schema 1 kept records keyed by id (`transactions`, `jobs`).
//!   Every record is decoded first (a file with a record that does not
//!   decode is refused unchanged), then written into the log in creation
//!   order with its id index, listing and retention rows,
//!   [`MIGRATION_CHUNK`] per commit, every job re-keyed; the old tables go
//!   and the version is written in one last commit. A crash part-way
//!   leaves a version 1 file, and the next attempt clears the half-built
//!   new tables first.
//! - 2 → 3: schema 2 wrote the job and listing rows with every record, so
//!   the rows are complete up to its last log entry; its records (no due
//!   time) are read as they are. One commit.
//! - 3 → 4: schema 3's id index (`ids`, the ids themselves) becomes
//!   `id_hashes` ([`super::ids`]), in one commit.
//! - 4 → 5: adds `id_tombstones` ([`super::tombstones`]), empty: what
//!   schema 4 purged is not deduplicated. One commit.
//! - 5 → 6: adds `payloads` ([`super::payloads`]), empty: transactions
//!   stored before have no original body. One commit.
//! - 6 → 7: adds the delivery tables (`attempts`, `attempts_open`,
//!   `redeliveries`), empty. Records are read as they are (version 3: no
//!   attempt yet). One commit.

use std::collections::HashMap;
use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::encoding::{self, DecodeError};
use super::ids::IdHasher;
use super::progress::Progress;
use super::schema::{
    ATTEMPTS, ATTEMPTS_OPEN, ID_HASHES, ID_TOMBSTONES, IDS_INDEXED_UPTO_KEY, JOBS_BY_DUE, LOG,
    LOG_BY_PROCESSED_AT, LOG_BY_STATUS, META, PAYLOADS, REDELIVERIES, ROWS_INDEXED_UPTO_KEY,
    SCHEMA_VERSION, SCHEMA_VERSION_KEY, next_log_key, status_key,
};
use crate::model::Status;

/// Schema 1's tables, read once by the migration and then deleted.
const V1_TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
const V1_JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
/// Schemas 2 and 3 kept the ids themselves: id → log key.
const V3_IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");

/// Most records written per write transaction when a version 1 file is
/// migrated; bounds the memory of one migration commit.
pub const MIGRATION_CHUNK: usize = 50_000;

/// Why a migration stopped; the file is left at the last version completed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrationError {
    #[error(transparent)]
    Storage(redb::Error),
    /// A schema 1 record does not decode; nothing was changed.
    #[error("record {id:?} does not decode: {source}")]
    Record {
        id: String,
        #[source]
        source: DecodeError,
    },
}

impl<E: Into<redb::Error>> From<E> for MigrationError {
    fn from(e: E) -> Self {
        MigrationError::Storage(e.into())
    }
}

/// Brings a file of schema `found` to [`SCHEMA_VERSION`]; a new file
/// (`None`) or a current one is left to `initialise`. The steps that
/// walk every record or id report their stages to `progress`.
pub(crate) fn to_current(
    db: &Database,
    found: Option<u64>,
    id_hasher: &IdHasher,
    progress: &dyn Progress,
) -> Result<(), MigrationError> {
    let mut version = found;
    while let Some(from) = version.filter(|&v| v < SCHEMA_VERSION) {
        version = Some(match from {
            1 => from_v1(db, id_hasher, progress)?,
            2 => from_v2(db)?,
            3 => from_v3(db, id_hasher, progress)?,
            4 => from_v4(db)?,
            5 => from_v5(db)?,
            6 => from_v6(db)?,
            // No such version was ever written: left as it is.
            _ => return Ok(()),
        });
    }
    Ok(())
}

/// Schema 2 → 3: the job and listing rows are complete up to the last log
/// entry. One commit.
fn from_v2(db: &Database) -> Result<u64, MigrationError> {
    let txn = db.begin_write()?;
    {
        let last = txn
            .open_table(LOG)?
            .last()?
            .map_or(0, |(key, _)| key.value());
        let mut meta = txn.open_table(META)?;
        meta.insert(ROWS_INDEXED_UPTO_KEY, last)?;
        meta.insert(SCHEMA_VERSION_KEY, 3)?;
    }
    txn.commit()?;
    tracing::info!("migrated the database from schema version 2 to 3");
    Ok(3)
}

/// Schema 3 → 4: every row of `ids` (id → log key) becomes its row of
/// `id_hashes`, and `ids` goes, in one commit. The log's tail is rebuilt
/// after the id merge's watermark as at every start.
/// A step per id read and per row written.
fn from_v3(
    db: &Database,
    id_hasher: &IdHasher,
    progress: &dyn Progress,
) -> Result<u64, MigrationError> {
    let started = Instant::now();
    let txn = db.begin_write()?;
    let mut rows = Vec::new();
    {
        let ids = txn.open_table(V3_IDS)?;
        progress.start("migrating schema 3 to 4: re-keying ids", 2 * ids.len()?);
        for row in ids.iter()? {
            let (id, key) = row?;
            rows.push((id_hasher.hash(id.value()), key.value()));
            progress.advance(1);
        }
        rows.sort_unstable();
        let mut hashes = txn.open_table(ID_HASHES)?;
        for &row in &rows {
            hashes.insert(row, ())?;
            progress.advance(1);
        }
    }
    txn.delete_table(V3_IDS)?;
    txn.open_table(META)?.insert(SCHEMA_VERSION_KEY, 4)?;
    txn.commit()?;
    progress.finish();
    tracing::info!(
        ids = rows.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "migrated the database from schema version 3 to 4"
    );
    Ok(4)
}

/// Schema 4 → 5: the tombstone table, empty. One commit.
fn from_v4(db: &Database) -> Result<u64, MigrationError> {
    let txn = db.begin_write()?;
    txn.open_table(ID_TOMBSTONES)?;
    txn.open_table(META)?.insert(SCHEMA_VERSION_KEY, 5)?;
    txn.commit()?;
    tracing::info!("migrated the database from schema version 4 to 5");
    Ok(5)
}

/// Schema 5 → 6: the table of original bodies, empty. One commit.
fn from_v5(db: &Database) -> Result<u64, MigrationError> {
    let txn = db.begin_write()?;
    txn.open_table(PAYLOADS)?;
    txn.open_table(META)?.insert(SCHEMA_VERSION_KEY, 6)?;
    txn.commit()?;
    tracing::info!("migrated the database from schema version 5 to 6");
    Ok(6)
}

/// Schema 6 → 7: the delivery tables, empty. One commit.
fn from_v6(db: &Database) -> Result<u64, MigrationError> {
    let txn = db.begin_write()?;
    txn.open_table(ATTEMPTS)?;
    txn.open_table(ATTEMPTS_OPEN)?;
    txn.open_table(REDELIVERIES)?;
    txn.open_table(META)?.insert(SCHEMA_VERSION_KEY, 7)?;
    txn.commit()?;
    tracing::info!("migrated the database from schema version 6 to 7");
    Ok(7)
}

/// Schema 1 → 4 (see the module doc). Two stages: a step per record
/// read; then a step per record and per job written.
fn from_v1(
    db: &Database,
    id_hasher: &IdHasher,
    progress: &dyn Progress,
) -> Result<u64, MigrationError> {
    let started = Instant::now();
    let (mut records, v1_jobs) = read_v1(db, progress)?;
    records.sort_by(|a, b| {
        (a.created_at_ms, &a.transaction.transaction_id)
            .cmp(&(b.created_at_ms, &b.transaction.transaction_id))
    });
    // Clear what an interrupted earlier attempt may have left.
    let txn = db.begin_write()?;
    txn.delete_table(LOG)?;
    txn.delete_table(V3_IDS)?;
    txn.delete_table(ID_HASHES)?;
    txn.delete_table(JOBS_BY_DUE)?;
    txn.delete_table(LOG_BY_STATUS)?;
    txn.delete_table(LOG_BY_PROCESSED_AT)?;
    txn.commit()?;

    let due_of: HashMap<&str, u64> = v1_jobs
        .iter()
        .map(|(due, id)| (id.as_str(), *due))
        .collect();
    let mut key_of: HashMap<String, u64> = HashMap::with_capacity(records.len());
    let mut last_key = 0;
    let mut buf = Vec::new();
    progress.start(
        "migrating schema 1 to 4: writing records",
        (records.len() + v1_jobs.len()) as u64,
    );
    for chunk in records.chunks(MIGRATION_CHUNK) {
        let txn = db.begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut id_index = txn.open_table(ID_HASHES)?;
            let mut by_status = txn.open_table(LOG_BY_STATUS)?;
            let mut by_processed = txn.open_table(LOG_BY_PROCESSED_AT)?;
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
                id_index.insert((id_hasher.hash(id), last_key), ())?;
                by_status.insert((status_key(record.status), last_key), ())?;
                if let (Status::Processed, Some(at)) = (record.status, record.processed_at_ms) {
                    by_processed.insert((at, last_key), ())?;
                }
                key_of.insert(id.to_owned(), last_key);
                progress.advance(1);
            }
        }
        txn.commit()?;
    }
    // Logged once the stage is over, not under its progress.
    let mut dropped = Vec::new();
    let txn = db.begin_write()?;
    {
        let mut jobs = txn.open_table(JOBS_BY_DUE)?;
        for (due, id) in &v1_jobs {
            match key_of.get(id) {
                Some(&key) => {
                    jobs.insert((*due, key), ())?;
                }
                None => dropped.push(id),
            }
            progress.advance(1);
        }
        txn.delete_table(V1_TRANSACTIONS)?;
        txn.delete_table(V1_JOBS)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(IDS_INDEXED_UPTO_KEY, last_key)?;
        meta.insert(ROWS_INDEXED_UPTO_KEY, last_key)?;
        meta.insert(SCHEMA_VERSION_KEY, 4)?;
    }
    txn.commit()?;
    progress.finish();
    for id in dropped {
        tracing::warn!(transaction_id = %id, "schema 1 job without a transaction; dropped");
    }
    tracing::info!(
        transactions = records.len(),
        jobs = v1_jobs.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "migrated the database from schema version 1 to 4"
    );
    Ok(4)
}

/// Every schema 1 record, decoded, and every job as (due, id).
type V1Contents = (Vec<crate::model::Record>, Vec<(u64, String)>);

/// A step per record.
fn read_v1(db: &Database, progress: &dyn Progress) -> Result<V1Contents, MigrationError> {
    let mut records = Vec::new();
    let mut jobs = Vec::new();
    let txn = db.begin_read()?;
    let table = txn.open_table(V1_TRANSACTIONS)?;
    progress.start("migrating schema 1 to 4: reading records", table.len()?);
    for row in table.iter()? {
        let (id, value) = row?;
        let id = id.value();
        let record =
            encoding::decode_v1(id, value.value()).map_err(|source| MigrationError::Record {
                id: id.to_owned(),
                source,
            })?;
        records.push(record);
        progress.advance(1);
    }
    if let Ok(table) = txn.open_table(V1_JOBS) {
        for row in table.iter()? {
            let (key, _) = row?;
            let (due, id) = key.value();
            jobs.push((due, id.to_owned()));
        }
    }
    progress.finish();
    Ok((records, jobs))
}
