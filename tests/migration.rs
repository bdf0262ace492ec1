//! Upgrading from schema version 1 (webhookd before listing and retention)
//! and 2 (before job rows could lag the log): a file of each version,
//! written here table by table with redb exactly as the old layout was, is
//! migrated on start; every record, job and status survives, listing,
//! deduplication and retention work on the old records, and
//! `webhookd check` passes.

mod common;

use std::path::Path;

use common::{
    CheckTotals, DEADLINE, Daemon, check_totals, check_totals_of_a_copy, get, get_transaction,
    poll_until, run_to_exit, wait_processed,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

const TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
const JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A schema 1 value, spelled out here independently of webhookd's own
/// encoder: a version byte 1, then bincode (standard config) of these
/// fields in this order.
#[derive(Serialize)]
struct RecordV1 {
    source_account: &'static str,
    destination_account: &'static str,
    /// `rust_decimal::Decimal::serialize()`.
    amount: [u8; 16],
    currency: [u8; 3],
    /// 0 = PROCESSING, 1 = PROCESSED (the enum's variant index).
    status: u32,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

fn v1_value(amount: &str, processed_at_ms: Option<u64>, created_at_ms: u64) -> Vec<u8> {
    let record = RecordV1 {
        source_account: "s",
        destination_account: "d",
        amount: amount.parse::<rust_decimal::Decimal>().unwrap().serialize(),
        currency: *b"EUR",
        status: u32::from(processed_at_ms.is_some()),
        created_at_ms,
        processed_at_ms,
    };
    let mut value = vec![1];
    value.extend(bincode::serde::encode_to_vec(&record, bincode::config::standard()).unwrap());
    value
}

fn now_ms() -> u64 {
    common::now_millis()
}

/// Writes a version 1 database: a PROCESSED transaction processed an hour
/// ago, one whose job fell due while "the old version" was stopped, and
/// one due a day from now.
fn write_version_1(dir: &Path) {
    let db = Database::create(dir.join("webhookd.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut transactions = txn.open_table(TRANSACTIONS).unwrap();
        let mut jobs = txn.open_table(JOBS).unwrap();
        let hour_ago = now_ms() - 3_600_000;
        let mut put = |id: &str, amount: &str, processed, created| {
            transactions
                .insert(id, v1_value(amount, processed, created).as_slice())
                .unwrap();
        };
        put("v1-done", "0.1", Some(hour_ago + 10), hour_ago);
        put("v1-overdue", "12345678901234567.89", None, hour_ago + 1);
        put("v1-later", "7", None, hour_ago + 2);
        jobs.insert((hour_ago + 30_000, "v1-overdue"), ()).unwrap();
        jobs.insert((now_ms() + 86_400_000, "v1-later"), ())
            .unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
    }
    txn.commit().unwrap();
}

fn schema_version(dir: &Path) -> u64 {
    let db = Database::open(dir.join("webhookd.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

/// Starts webhookd (`--process-delay 1h`) on an old file and requires
/// the log lines of its migration steps, `(from, to)`.
fn start_migrating(dir: &Path, steps: &[(u64, u64)]) -> Daemon {
    let daemon = Daemon::start(dir, &["--process-delay", "1h"]);
    for (from, to) in steps {
        let line = format!("migrated the database from schema version {from} to {to}");
        assert!(
            daemon.stderr_text().contains(&line),
            "{}",
            daemon.stderr_text()
        );
    }
    daemon
}

/// Whether the file still has schema 3's `ids` table (id → log key).
fn has_v3_ids_table(dir: &Path) -> bool {
    let db = Database::open(dir.join("webhookd.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    match txn.open_table(IDS) {
        Ok(_) => true,
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => panic!("{e}"),
    }
}

fn check(dir: &Path) -> (Option<i32>, String) {
    run_to_exit(&["--data-dir", dir.to_str().unwrap(), "check"], &[])
}

#[test]
fn a_version_1_database_is_migrated_and_everything_in_it_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    // `check` on a copy (which it migrates, as any open does) finds the
    // three records and the two jobs the old layout had.
    assert_eq!(
        check_totals_of_a_copy(dir.path()),
        CheckTotals {
            transactions: 3,
            processing: 2,
            processed: 1,
            pending_jobs: 2
        }
    );
    assert_eq!(
        schema_version(dir.path()),
        1,
        "checking a copy changed the file"
    );

    let daemon = start_migrating(dir.path(), &[(1, 4)]);
    let addr = daemon.addr;

    // Records read back exactly, with their times.
    let done = get_transaction(addr, "v1-done").json();
    assert_eq!(done["status"], "PROCESSED");
    assert_eq!(done["amount"].to_string(), "0.1");
    assert_eq!(done["currency"], "EUR");
    let processed_at = done["processed_at"].clone();
    assert!(!processed_at.is_null());
    // The job that fell due while stopped runs at once; the later one waits.
    wait_processed(addr, "v1-overdue", DEADLINE);
    let overdue = get_transaction(addr, "v1-overdue").body;
    assert!(
        overdue.contains(r#""amount":12345678901234567.89,"#),
        "{overdue}"
    );
    assert_eq!(
        get_transaction(addr, "v1-later").json()["status"],
        "PROCESSING"
    );

    // Listing sees the old records, filtered by their status.
    let processed = get(addr, "/v1/transactions?status=PROCESSED").json();
    let mut ids: Vec<&str> = processed["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["v1-done", "v1-overdue"]);
    let all = get(addr, "/v1/transactions").json();
    assert_eq!(all["transactions"].as_array().unwrap().len(), 3);

    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(schema_version(dir.path()), webhookd::store::SCHEMA_VERSION);
    assert!(!has_v3_ids_table(dir.path()));
    assert_eq!(
        check_totals(dir.path()),
        CheckTotals {
            transactions: 3,
            processing: 1,
            processed: 2,
            pending_jobs: 1
        },
        "check after migration"
    );

    // Retention applies to records processed before the upgrade.
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h", "--retention", "30m"]);
    poll_until(DEADLINE, "the hour-old processed record purged", || {
        (get_transaction(daemon.addr, "v1-done").status == 404).then_some(())
    });
    assert_eq!(get_transaction(daemon.addr, "v1-overdue").status, 200);
    assert_eq!(get_transaction(daemon.addr, "v1-later").status, 200);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(
        check_totals(dir.path()),
        CheckTotals {
            transactions: 2,
            processing: 1,
            processed: 1,
            pending_jobs: 1
        },
        "check after purging"
    );
}

/// A schema 2 value, spelled out independently of webhookd's encoder: a
/// version byte 2, then bincode (standard config) of these fields.
#[derive(Serialize)]
struct RecordV2 {
    transaction_id: &'static str,
    source_account: &'static str,
    destination_account: &'static str,
    amount: [u8; 16],
    currency: [u8; 3],
    status: u32,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
const JOBS_BY_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_by_due");
const BY_STATUS: TableDefinition<(u8, u64), ()> = TableDefinition::new("log_by_status");
const BY_PROCESSED: TableDefinition<(u64, u64), ()> = TableDefinition::new("log_by_processed_at");

type V2Row = (&'static str, &'static str, Option<u64>, u64, Option<u64>);

/// Writes a version 2 database as schema 2 left it: every record with its
/// job, listing and retention rows; the newest id not yet merged into
/// `ids` (after `ids_complete_upto`).
fn write_version_2(dir: &Path) {
    let db = Database::create(dir.join("webhookd.redb")).unwrap();
    let hour_ago = now_ms() - 3_600_000;
    let key = |ms: u64, n: u64| ms << 20 | n;
    let txn = db.begin_write().unwrap();
    {
        let mut log = txn.open_table(LOG).unwrap();
        let mut ids = txn.open_table(IDS).unwrap();
        let mut jobs = txn.open_table(JOBS_BY_DUE).unwrap();
        let mut by_status = txn.open_table(BY_STATUS).unwrap();
        let mut by_processed = txn.open_table(BY_PROCESSED).unwrap();
        // (id, amount, processed_at, log key, job due)
        let rows: [V2Row; 3] = [
            (
                "v2-done",
                "0.1",
                Some(hour_ago + 10),
                key(hour_ago, 0),
                None,
            ),
            (
                "v2-overdue",
                "12345678901234567.89",
                None,
                key(hour_ago, 1),
                Some(hour_ago + 30_000),
            ),
            (
                "v2-later",
                "7",
                None,
                key(hour_ago + 5, 0),
                Some(now_ms() + 86_400_000),
            ),
        ];
        for (id, amount, processed, log_key, due) in rows {
            let record = RecordV2 {
                transaction_id: id,
                source_account: "s",
                destination_account: "d",
                amount: amount.parse::<rust_decimal::Decimal>().unwrap().serialize(),
                currency: *b"EUR",
                status: u32::from(processed.is_some()),
                created_at_ms: log_key >> 20,
                processed_at_ms: processed,
            };
            let mut value = vec![2];
            value.extend(
                bincode::serde::encode_to_vec(&record, bincode::config::standard()).unwrap(),
            );
            log.insert(log_key, value.as_slice()).unwrap();
            if id != "v2-later" {
                ids.insert(id, log_key).unwrap();
            }
            by_status
                .insert((u8::from(processed.is_some()), log_key), ())
                .unwrap();
            if let Some(at) = processed {
                by_processed.insert((at, log_key), ()).unwrap();
            }
            if let Some(due) = due {
                jobs.insert((due, log_key), ()).unwrap();
            }
        }
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("schema_version", 2).unwrap();
        meta.insert("ids_complete_upto", key(hour_ago, 1)).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_version_2_database_is_migrated_and_everything_in_it_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    write_version_2(dir.path());
    assert_eq!(
        check_totals_of_a_copy(dir.path()),
        CheckTotals {
            transactions: 3,
            processing: 2,
            processed: 1,
            pending_jobs: 2
        }
    );
    let daemon = start_migrating(dir.path(), &[(2, 3), (3, 4)]);
    let addr = daemon.addr;
    let done = get_transaction(addr, "v2-done").json();
    assert_eq!(done["status"], "PROCESSED");
    assert_eq!(done["amount"].to_string(), "0.1");
    wait_processed(addr, "v2-overdue", DEADLINE);
    assert!(
        get_transaction(addr, "v2-overdue")
            .body
            .contains(r#""amount":12345678901234567.89,"#)
    );
    // Found through the id map rebuilt from the log, and deduplicated
    // against the old record.
    assert_eq!(
        get_transaction(addr, "v2-later").json()["status"],
        "PROCESSING"
    );
    let again = common::post(
        addr,
        r#"{"transaction_id":"v2-later","source_account":"s","destination_account":"d","amount":7,"currency":"eur"}"#,
    );
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.json()["duplicate"], true);
    // v2-done and v2-overdue were in schema 3's `ids`, so these are found
    // through the rows the migration hashed from it.
    let changed = common::post(
        addr,
        r#"{"transaction_id":"v2-done","source_account":"s","destination_account":"d","amount":0.2,"currency":"EUR"}"#,
    );
    assert_eq!(changed.status, 409, "{}", changed.body);
    let again = common::post(
        addr,
        r#"{"transaction_id":"v2-overdue","source_account":"s","destination_account":"d","amount":12345678901234567.89,"currency":"EUR"}"#,
    );
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.json()["duplicate"], true);

    let pending = get(addr, "/v1/transactions?status=PROCESSING").json();
    let pending: Vec<&str> = pending["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(pending, ["v2-later"]);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(schema_version(dir.path()), webhookd::store::SCHEMA_VERSION);
    assert!(!has_v3_ids_table(dir.path()));
    assert_eq!(
        check_totals(dir.path()),
        CheckTotals {
            transactions: 3,
            processing: 1,
            processed: 2,
            pending_jobs: 1
        },
        "check after migration"
    );
}

/// Stores `ids` through a daemon, stops it cleanly (which merges every id
/// and row), requires `check` to pass, then applies `damage` to the file
/// behind webhookd's back in one write transaction and returns what
/// `check` says now.
fn check_after_damage(
    ids: &[&str],
    damage: impl FnOnce(&redb::WriteTransaction),
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    for id in ids {
        assert_eq!(
            common::post(daemon.addr, &common::payload(id, "1")).status,
            202
        );
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(check(dir.path()).0, Some(0));
    {
        let db = Database::open(dir.path().join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        damage(&txn);
        txn.commit().unwrap();
    }
    check(dir.path())
}

#[test]
fn check_reports_a_listing_index_that_disagrees_with_the_records() {
    // Damage: drop the record's listing row.
    let (code, stderr) = check_after_damage(&["indexed"], |txn| {
        let by_status: TableDefinition<(u8, u64), ()> = TableDefinition::new("log_by_status");
        txn.open_table(by_status)
            .unwrap()
            .retain(|_, ()| false)
            .unwrap();
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("\"indexed\" is missing from the listing index"),
        "{stderr}"
    );
}

#[test]
fn check_reports_an_id_index_that_disagrees_with_the_records() {
    // Damage: file one record under a hash that is not its id's, and drop
    // the other's row.
    let (code, stderr) = check_after_damage(&["hashed-a", "hashed-b"], |txn| {
        let id_hashes: TableDefinition<(u64, u64), ()> = TableDefinition::new("id_hashes");
        let mut table = txn.open_table(id_hashes).unwrap();
        let rows: Vec<(u64, u64)> = table
            .iter()
            .unwrap()
            .map(|row| row.unwrap().0.value())
            .collect();
        assert_eq!(rows.len(), 2, "one row per id after a clean stop");
        table.remove(rows[0]).unwrap();
        table.remove(rows[1]).unwrap();
        table.insert((rows[1].0 ^ 1, rows[1].1), ()).unwrap();
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("does not match the id of a stored transaction"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("is missing from the id index").count(),
        2,
        "{stderr}"
    );
}
