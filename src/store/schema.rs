//! The file's layout: its tables, the keys of `meta`, the schema version,
//! and how log keys are made. The design they serve is in [`super`].

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::model::Status;

/// Version of the table layout this build reads and writes. A file with a
/// higher version was written by a newer webhookd and is refused unchanged;
/// a lower one is migrated on open ([`super::migrate`]).
pub const SCHEMA_VERSION: u64 = 7;

/// Key in `meta`: the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Key in `meta`: the id merge's watermark. Every log entry up to this log
/// key is in `id_hashes`. (The name is from when that table was `ids`.)
pub const IDS_INDEXED_UPTO_KEY: &str = "ids_complete_upto";

/// Key in `meta`: the rows merge's watermark. Every log entry up to this
/// log key has its `jobs_by_due` and `log_by_status` rows; a later one has
/// only the rows its completion wrote (PROCESSED listing and retention).
pub const ROWS_INDEXED_UPTO_KEY: &str = "rows_complete_upto";

/// Keys in `meta`: the two halves of the file's id hash key ([`super::ids`]).
pub(crate) const ID_HASH_KEY_NAMES: [&str; 2] = ["id_hash_key_0", "id_hash_key_1"];

/// Key in `meta` that each health probe overwrites, so a probe proves that
/// a real durable write still works.
pub(crate) const HEALTH_PROBE_KEY: &str = "health_probe_ms";

/// Log key → record ([`super::encoding`]): every transaction, keyed by arrival.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// (keyed hash of the transaction id, log key): the id index ([`super::ids`]).
pub(crate) const ID_HASHES: TableDefinition<(u64, u64), ()> = TableDefinition::new("id_hashes");
/// (due time, log key): one row per pending job, the scheduler's index.
pub(crate) const JOBS_BY_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_by_due");
/// ([`status_key`], log key): the listing filtered by status.
pub(crate) const LOG_BY_STATUS: TableDefinition<(u8, u64), ()> =
    TableDefinition::new("log_by_status");
/// (`processed_at`, log key): retention's index, oldest first.
pub(crate) const LOG_BY_PROCESSED_AT: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("log_by_processed_at");
/// Log key of a purged transaction → (end of its dedup window, digest of
/// its fields, its id): what deduplicates it after the purge
/// ([`super::tombstones`]). Its `id_hashes` row stays while this does.
pub(crate) const ID_TOMBSTONES: TableDefinition<u64, (u64, [u8; 32], &str)> =
    TableDefinition::new("id_tombstones");
/// Log key → the body as received and its `Content-Type`
/// ([`super::payloads`]); written only with `--payload-map`.
pub(crate) const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
/// (log key, attempt number) → attempt ([`super::attempts`]): the delivery
/// journal, every attempt ever made, keyed by arrival then attempt.
pub(crate) const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
/// Log key → attempt number: attempts journaled as started whose outcome is
/// not written yet. At most `--deliver-concurrency` rows while running;
/// what a crash leaves is recorded `interrupted` at the next start.
pub(crate) const ATTEMPTS_OPEN: TableDefinition<u64, u32> = TableDefinition::new("attempts_open");
/// Redelivery id → bulk redelivery ([`super::redeliveries`]).
pub(crate) const REDELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("redeliveries");
/// Name → number: the version, the watermarks, the id hash key.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bits of a log key below the creation time.
const LOG_KEY_SHIFT: u32 = 20;

/// The smallest log key of a record created at `ms`.
#[must_use]
pub fn first_log_key_at(ms: u64) -> u64 {
    ms.checked_shl(LOG_KEY_SHIFT)
        .filter(|k| k >> LOG_KEY_SHIFT == ms)
        .unwrap_or(u64::MAX)
}

/// The log key of a record created at `ms`, the one after `previous`:
/// `created_ms << 20 | n`, so keys grow with time and never repeat, even
/// when the clock steps back.
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
        Status::Failed => 2,
    }
}

/// A value of `meta` as committed; `None` in a file without that table.
pub(crate) fn read_meta(db: &impl ReadableDatabase, key: &str) -> Result<Option<u64>, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(key)?.map(|v| v.value()))
}

/// A watermark in `meta` (0 when absent: nothing indexed yet).
pub(crate) fn watermark(
    meta: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<u64, redb::StorageError> {
    Ok(meta.get(key)?.map_or(0, |v| v.value()))
}
