//! Upgrading from schema version 1 (webhookd before listing and retention):
//! a version 1 file, written here table by table with redb exactly as the
//! old layout was, is migrated on start; every record, job and status
//! survives, listing and retention work on the old records, and
//! `webhookd check` passes.

mod common;

use std::path::Path;

use common::{DEADLINE, Daemon, get, get_transaction, poll_until, run_to_exit, wait_processed};
use redb::{Database, ReadableDatabase, TableDefinition};
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

fn check(dir: &Path) -> (Option<i32>, String) {
    run_to_exit(&["--data-dir", dir.to_str().unwrap(), "check"], &[])
}

#[test]
fn a_version_1_database_is_migrated_and_everything_in_it_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    // The old file is consistent by the old rules, and check reads it as it is.
    assert_eq!(schema_version(dir.path()), 1);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    assert!(
        daemon
            .stderr_text()
            .contains("migrated the database from schema version 1 to 2"),
        "{}",
        daemon.stderr_text()
    );

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
    assert_eq!(schema_version(dir.path()), 2);
    let (code, stderr) = check(dir.path());
    assert_eq!(code, Some(0), "check after migration: {stderr}");

    // Retention applies to records processed before the upgrade.
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h", "--retention", "30m"]);
    poll_until(DEADLINE, "the hour-old processed record purged", || {
        (get_transaction(daemon.addr, "v1-done").status == 404).then_some(())
    });
    assert_eq!(get_transaction(daemon.addr, "v1-overdue").status, 200);
    assert_eq!(get_transaction(daemon.addr, "v1-later").status, 200);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let (code, stderr) = check(dir.path());
    assert_eq!(code, Some(0), "check after purging: {stderr}");
}

#[test]
fn check_reports_a_listing_index_that_disagrees_with_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    assert_eq!(
        common::post(daemon.addr, &common::payload("indexed", "1")).status,
        202
    );
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(check(dir.path()).0, Some(0));

    // Damage: drop the record's listing row behind webhookd's back.
    {
        let by_status: TableDefinition<(u8, u64), ()> = TableDefinition::new("log_by_status");
        let db = Database::open(dir.path().join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(by_status)
            .unwrap()
            .retain(|_, ()| false)
            .unwrap();
        txn.commit().unwrap();
    }
    let (code, stderr) = check(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("\"indexed\" is missing from the listing index"),
        "{stderr}"
    );
}
