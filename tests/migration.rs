//! Upgrading from schema version 1 (webhookd before listing and retention):
//! a version 1 file, written here table by table with redb exactly as the
//! old layout was, is migrated on start; every record, job and status
//! survives, listing and retention work on the old records, and
//! `webhookd check` passes.

mod common;

use std::path::Path;

use common::{DEADLINE, Daemon, get, get_transaction, poll_until, run_to_exit, wait_processed};
use redb::{Database, ReadableDatabase, TableDefinition};
use webhookd::model::{Status, parse_payload};
use webhookd::store::encoding::encode_into;

const TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
const JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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
        let mut buf = Vec::new();
        let mut put = |id: &str, amount: &str, status, processed| {
            let body = format!(
                r#"{{"transaction_id":"{id}","source_account":"s","destination_account":"d","amount":{amount},"currency":"eur"}}"#
            );
            let transaction = parse_payload(body.as_bytes()).unwrap();
            encode_into(&transaction, status, hour_ago, processed, &mut buf);
            transactions.insert(id, buf.as_slice()).unwrap();
        };
        put("v1-done", "0.1", Status::Processed, Some(hour_ago + 10));
        put(
            "v1-overdue",
            "12345678901234567.89",
            Status::Processing,
            None,
        );
        put("v1-later", "7", Status::Processing, None);
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
        let by_status: TableDefinition<(u8, u64, &str), ()> =
            TableDefinition::new("transactions_by_status");
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
