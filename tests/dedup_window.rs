//! `--dedup-window`: a transaction purged by `--retention` leaves a
//! tombstone, so a redelivery or replay within the window is a duplicate
//! and processes nothing; after the window the id is new again and the
//! tombstone is deleted. A schema 4 file gains the tombstone table on open.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{
    DEADLINE, Daemon, assert_one_line_failure, get, get_transaction, payload, poll_until, post,
    run_to_exit, start_expecting_exit, wait_processed,
};
use redb::{Database, ReadableDatabase, TableDefinition};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn processed(addr: SocketAddr) -> u64 {
    metric(addr, "webhookd_transactions_processed_total")
}

fn wait_purged(addr: SocketAddr, id: &str) {
    poll_until(DEADLINE, "purged", || {
        (get_transaction(addr, id).status == 404).then_some(())
    });
}

fn check_passes(dir: &Path) {
    let (code, stderr) = run_to_exit(&["--data-dir", dir.to_str().unwrap(), "check"], &[]);
    assert_eq!(code, Some(0), "check: {stderr}");
}

fn stop(daemon: Daemon) {
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
}

fn schema_version(dir: &Path) -> u64 {
    let db = Database::open(dir.join("webhookd.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

#[test]
fn a_replay_of_a_purged_transaction_within_the_window_is_a_duplicate_and_processes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--process-delay", "0s", "--retention", "1s"];
    let daemon = Daemon::start(dir.path(), &args);
    let addr = daemon.addr;
    let body = payload("replayed", "5");
    let first = post(addr, &body);
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["duplicate"], false);
    wait_purged(addr, "replayed");
    assert_eq!(processed(addr), 1);

    // Within the window (7 days by default): the replay is a duplicate of
    // a PROCESSED transaction, and the record stays gone.
    let replay = post(addr, &body);
    assert_eq!(replay.status, 202, "{}", replay.body);
    assert_eq!(
        replay.json(),
        serde_json::json!({"transaction_id": "replayed", "status": "PROCESSED", "duplicate": true})
    );
    // The same id with other fields conflicts, as before the purge.
    post(addr, &payload("replayed", "6")).assert_error(409, "conflict");
    assert_eq!(get_transaction(addr, "replayed").status, 404);
    assert_eq!(
        get(addr, "/v1/transactions").json()["transactions"],
        serde_json::json!([])
    );

    // Nothing was stored to process: a transaction accepted after the
    // replay is processed, and the count grows by that one alone.
    assert_eq!(post(addr, &payload("after-replay", "1")).status, 202);
    poll_until(DEADLINE, "after-replay processed", || {
        (processed(addr) >= 2).then_some(())
    });
    assert_eq!(processed(addr), 2);
    assert_eq!(
        metric(addr, "webhookd_webhooks_total{outcome=\"duplicate\"}"),
        1
    );

    // The tombstone is durable: after a restart the replay is still a duplicate.
    stop(daemon);
    let daemon = Daemon::start(dir.path(), &args);
    let replay = post(daemon.addr, &body);
    assert_eq!(replay.status, 202, "{}", replay.body);
    assert_eq!(replay.json()["duplicate"], true);
    assert_eq!(replay.json()["status"], "PROCESSED");
    stop(daemon);
    check_passes(dir.path());
}

#[test]
fn after_the_window_a_purged_id_is_new_again_and_its_tombstone_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--process-delay",
            "0s",
            "--retention",
            "1s",
            "--dedup-window",
            "2s",
        ],
    );
    let addr = daemon.addr;
    let body = payload("window", "5");
    assert_eq!(post(addr, &body).status, 202);
    wait_purged(addr, "window");
    assert_eq!(processed(addr), 1);
    // Duplicates until the window ends, then stored and processed anew.
    poll_until(DEADLINE, "the redelivery stored as new", || {
        let again = post(addr, &body);
        assert_eq!(again.status, 202, "{}", again.body);
        (again.json()["duplicate"] == false).then_some(())
    });
    poll_until(DEADLINE, "processed again", || {
        (processed(addr) == 2).then_some(())
    });
    // The expired tombstone is deleted by retention, with its id index row
    // (check below finds any row left behind).
    poll_until(DEADLINE, "the tombstone deleted", || {
        daemon
            .stderr_text()
            .contains("deleted the tombstones of purged ids whose dedup window ended")
            .then_some(())
    });
    stop(daemon);
    check_passes(dir.path());
}

#[test]
fn a_schema_4_database_gains_tombstones_on_open() {
    let dir = tempfile::tempdir().unwrap();
    // A schema 4 file: what this build writes, without the tombstone table
    // and with version 4 (schema 5 only adds that table).
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    for id in ["v4-a", "v4-b"] {
        assert_eq!(post(daemon.addr, &payload(id, "1")).status, 202);
        wait_processed(daemon.addr, id, DEADLINE);
    }
    stop(daemon);
    {
        let db = Database::open(dir.path().join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(
            txn.delete_table(TableDefinition::<u64, ()>::new("id_tombstones"))
                .unwrap()
        );
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 4)
            .unwrap();
        txn.commit().unwrap();
    }
    assert_eq!(schema_version(dir.path()), 4);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s", "--retention", "1s"]);
    assert!(
        daemon
            .stderr_text()
            .contains("migrated the database from schema version 4 to 5"),
        "{}",
        daemon.stderr_text()
    );
    wait_purged(daemon.addr, "v4-a");
    let replay = post(daemon.addr, &payload("v4-a", "1"));
    assert_eq!(replay.status, 202, "{}", replay.body);
    assert_eq!(replay.json()["duplicate"], true);
    stop(daemon);
    assert_eq!(schema_version(dir.path()), webhookd::store::SCHEMA_VERSION);
    check_passes(dir.path());
}

#[test]
fn the_dedup_window_needs_retention_and_a_positive_duration() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = start_expecting_exit(dir.path(), &["--dedup-window", "1h"]);
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("--dedup-window"), "{line}");
    assert!(line.contains("--retention"), "{line}");
    let data_dir = dir.path().to_str().unwrap();
    let (code, stderr) = run_to_exit(
        &["--data-dir", data_dir, "--listen", "127.0.0.1:0"],
        &[("WEBHOOKD_DEDUP_WINDOW", "1h")],
    );
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("--dedup-window"), "{line}");
    for bad in ["0s", "soon"] {
        let (code, stderr) =
            start_expecting_exit(dir.path(), &["--retention", "1h", "--dedup-window", bad]);
        let line = assert_one_line_failure(code, &stderr, 2);
        assert!(line.contains("--dedup-window"), "{line}");
    }
}
