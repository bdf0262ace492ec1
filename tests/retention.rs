//! `--retention`: PROCESSED transactions older than the retention age are
//! deleted (with their listing rows), pending ones never are, a purged id
//! is no longer deduplicated once its dedup window has passed, and the
//! database stays consistent.

mod common;

use std::time::Duration;

use common::{
    DEADLINE, Daemon, assert_one_line_failure, get, get_transaction, payload, poll_until, post,
    run_to_exit, start_expecting_exit,
};

#[test]
fn processed_transactions_are_purged_after_the_retention_age_and_can_then_be_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--process-delay",
            "0s",
            "--retention",
            "1s",
            "--dedup-window",
            "1s",
        ],
    );
    let addr = daemon.addr;
    for id in ["old-a", "old-b"] {
        assert_eq!(post(addr, &payload(id, "5")).status, 202);
    }
    for id in ["old-a", "old-b"] {
        poll_until(DEADLINE, "purged after processing", || {
            (get_transaction(addr, id).status == 404).then_some(())
        });
    }
    let listed = get(addr, "/v1/transactions").json();
    assert_eq!(listed["transactions"], serde_json::json!([]));
    let metrics = get(addr, "/metrics").body;
    assert!(
        metrics.contains("webhookd_transactions_purged_total 2"),
        "{metrics}"
    );

    // Once its dedup window has passed, a purged id is no longer
    // deduplicated: the redelivery is new (before, it is a duplicate).
    let again = poll_until(DEADLINE, "the dedup window to pass", || {
        let again = post(addr, &payload("old-a", "5"));
        assert_eq!(again.status, 202);
        (again.json()["duplicate"] == false).then_some(again)
    });
    assert_eq!(again.json()["duplicate"], false);

    daemon.terminate();
    let (status, _) = daemon.wait_exit(DEADLINE);
    assert!(status.success());
    let (code, stderr) = run_to_exit(&["--data-dir", dir.path().to_str().unwrap(), "check"], &[]);
    assert_eq!(code, Some(0), "check after purging: {stderr}");
}

#[test]
fn pending_transactions_are_never_purged_however_old() {
    let dir = tempfile::tempdir().unwrap();
    // Processing comes 3 s after acceptance, retention is 1 s: for two
    // seconds the transaction is older than the retention age but pending.
    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s", "--retention", "1s"]);
    let addr = daemon.addr;
    assert_eq!(post(addr, &payload("slow", "1")).status, 202);
    // Every read until it is processed finds it: it was never purged while
    // PROCESSING.
    let processed_at = poll_until(Duration::from_secs(30), "processed", || {
        let response = get_transaction(addr, "slow");
        assert_eq!(
            response.status, 200,
            "a pending transaction disappeared: {}",
            response.body
        );
        let body = response.json();
        (body["status"] == "PROCESSED").then(|| body["processed_at"].clone())
    });
    assert!(!processed_at.is_null());
    // Then, a second after processing, it goes.
    poll_until(DEADLINE, "purged after processing", || {
        (get_transaction(addr, "slow").status == 404).then_some(())
    });
}

#[test]
fn retention_must_be_a_positive_duration() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0s", "soon", "1 fortnight"] {
        let (code, stderr) = start_expecting_exit(dir.path(), &["--retention", bad]);
        let line = assert_one_line_failure(code, &stderr, 2);
        assert!(line.contains("--retention"), "{line}");
    }
}
