//! A schema 6 file (before delivery) is migrated to 7 on open: the
//! delivery tables are created empty, the stored transactions are read as
//! they are, and delivery works on them.

mod common;
#[path = "common/sink.rs"]
mod sink;

use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;

use common::{DEADLINE, Daemon, payload, post};
use sink::Sink;

fn schema_version(dir: &Path) -> u64 {
    let db = Database::create(dir.join("webhookd.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn
        .open_table(TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

#[test]
fn a_schema_6_file_gains_the_delivery_tables_and_its_transactions_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    assert_eq!(post(daemon.addr, &payload("txn_v6", "7.25")).status, 202);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    {
        // Back to what schema 6 wrote: no delivery tables.
        let db = Database::create(dir.path().join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(
            txn.delete_table(TableDefinition::<(u64, u32), &[u8]>::new("attempts"))
                .unwrap()
        );
        assert!(
            txn.delete_table(TableDefinition::<u64, u32>::new("attempts_open"))
                .unwrap()
        );
        assert!(
            txn.delete_table(TableDefinition::<u64, &[u8]>::new("redeliveries"))
                .unwrap()
        );
        txn.open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 6)
            .unwrap();
        txn.commit().unwrap();
    }
    assert_eq!(schema_version(dir.path()), 6);

    let sink = Sink::answering(200);
    let url = sink.url();
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--process-delay",
            "0s",
            "--deliver-to",
            &url,
            "--retry-schedule",
            "0s",
        ],
    );
    assert!(
        daemon
            .stderr_text()
            .contains("migrated the database from schema version 6 to 7"),
        "{}",
        daemon.stderr_text()
    );
    // Accepted with a 1 h delay before the upgrade: its job keeps its due time.
    assert_eq!(
        common::get_transaction(daemon.addr, "txn_v6").json()["status"],
        "PROCESSING"
    );
    assert_eq!(post(daemon.addr, &payload("txn_v7", "1")).status, 202);
    common::wait_processed(daemon.addr, "txn_v7", DEADLINE);
    assert_eq!(sink.count(), 1);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(schema_version(dir.path()), webhookd::store::SCHEMA_VERSION);
    let (code, stderr) =
        common::run_to_exit(&["--data-dir", dir.path().to_str().unwrap(), "check"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
}
