//! The three endpoints of the API with well-formed requests: health,
//! receiving (new, redelivery, conflict), status, and processing.

mod common;

use std::time::Duration;

use common::{
    DEADLINE, Daemon, check_totals, get, get_transaction, metric, millis, now_millis, payload,
    post, request, settled_database, wait_processed,
};
use serde_json::value::RawValue;

#[test]
fn health_answers_healthy_with_the_current_utc_time() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let response = get(daemon.addr, "/");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body = response.json();
    assert_eq!(body["status"], "HEALTHY");
    let at = millis(&body["current_time"]);
    assert!(
        at.abs_diff(now_millis()) < 60_000,
        "current_time is off: {body}"
    );
}

#[test]
fn a_new_transaction_is_accepted_and_reads_back_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let before = now_millis();
    let response = post(
        daemon.addr,
        &payload("txn_abc123def456", "1500.50").replace("INR", "inr"),
    );
    assert_eq!(response.status, 202, "{}", response.body);
    assert_eq!(
        response.json(),
        serde_json::json!({"transaction_id": "txn_abc123def456", "status": "PROCESSING", "duplicate": false})
    );

    let read = get_transaction(daemon.addr, "txn_abc123def456");
    assert_eq!(read.status, 200);
    let body = read.json();
    assert_eq!(body["transaction_id"], "txn_abc123def456");
    assert_eq!(body["source_account"], "acc_user_789");
    assert_eq!(body["destination_account"], "acc_merchant_456");
    assert_eq!(body["currency"], "INR", "currency is stored upper-case");
    assert_eq!(body["status"], "PROCESSING");
    assert!(body["processed_at"].is_null());
    common::assert_millis_timestamp(&body["created_at"]);
    let created = millis(&body["created_at"]);
    assert!(created + 1000 >= before && created <= now_millis() + 1000);
    assert_eq!(body.as_object().unwrap().len(), 8, "{body}");
    assert_eq!(raw_amount(&read.body), "1500.5");
}

#[test]
fn unknown_transactions_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    get_transaction(daemon.addr, "never_sent").assert_error(404, "not_found");
}

#[test]
fn a_redelivery_is_a_duplicate_and_stores_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(
        post(daemon.addr, &payload("txn_redeliver", "1500.50")).status,
        202
    );
    let first = get_transaction(daemon.addr, "txn_redeliver").json();
    // Same value, different spelling of amount and currency case: the same transaction.
    for (amount, currency) in [
        ("1500.50", "INR"),
        ("1500.5", "inr"),
        ("1500.500", "Inr"),
        ("1.5005e3", "INR"),
    ] {
        let again = post(
            daemon.addr,
            &payload("txn_redeliver", amount).replace("INR", currency),
        );
        assert_eq!(again.status, 202, "{amount} {currency}: {}", again.body);
        assert_eq!(
            again.json(),
            serde_json::json!({"transaction_id": "txn_redeliver", "status": "PROCESSING", "duplicate": true}),
            "{amount} {currency}"
        );
    }
    assert_eq!(get_transaction(daemon.addr, "txn_redeliver").json(), first);
    // Nothing was written: no commit, not a byte of the file, one record.
    let (file, commits) = settled_database(daemon.addr, dir.path());
    for _ in 0..3 {
        let again = post(daemon.addr, &payload("txn_redeliver", "1500.5"));
        assert_eq!(again.json()["duplicate"], true);
    }
    assert_eq!(
        settled_database(daemon.addr, dir.path()).1,
        commits,
        "a redelivery was committed"
    );
    assert!(
        settled_database(daemon.addr, dir.path()).0 == file,
        "a redelivery changed the database file"
    );
    assert_eq!(
        metric(
            daemon.addr,
            r#"webhookd_webhooks_total{outcome="accepted"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            daemon.addr,
            r#"webhookd_webhooks_total{outcome="duplicate"}"#
        ),
        7
    );
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let totals = check_totals(dir.path());
    assert_eq!(
        (totals.transactions, totals.pending_jobs),
        (1, 1),
        "{totals:?}"
    );
}

#[test]
fn a_different_payload_under_a_stored_id_conflicts_and_leaves_the_record_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(
        post(daemon.addr, &payload("txn_conflict", "10")).status,
        202
    );
    let stored = get_transaction(daemon.addr, "txn_conflict").body;
    let (file, commits) = settled_database(daemon.addr, dir.path());
    for changed in [
        payload("txn_conflict", "10.01"),
        payload("txn_conflict", "10").replace("INR", "EUR"),
        payload("txn_conflict", "10").replace("acc_user_789", "acc_other"),
        payload("txn_conflict", "10").replace("acc_merchant_456", "acc_other"),
    ] {
        post(daemon.addr, &changed).assert_error(409, "conflict");
    }
    assert_eq!(get_transaction(daemon.addr, "txn_conflict").body, stored);
    let (after, commits_after) = settled_database(daemon.addr, dir.path());
    assert_eq!(commits_after, commits, "a conflict was committed");
    assert!(after == file, "a conflict changed the database file");
    assert_eq!(
        metric(
            daemon.addr,
            r#"webhookd_webhooks_total{outcome="conflict"}"#
        ),
        4
    );
}

#[test]
fn amounts_come_back_with_exactly_the_same_decimal_value() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for (i, (sent, returned)) in [
        ("0.1", "0.1"),
        ("12345678901234567.89", "12345678901234567.89"),
        ("1500.50", "1500.5"),
        ("1e2", "100"),
        (
            "0.000000000000000000000000001",
            "0.000000000000000000000000001",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("txn_amount_{i}");
        let response = post(daemon.addr, &payload(&id, sent));
        assert_eq!(response.status, 202, "{sent}: {}", response.body);
        assert_eq!(
            raw_amount(&get_transaction(daemon.addr, &id).body),
            returned,
            "{sent}"
        );
    }
}

#[test]
fn ids_with_slash_space_and_non_ascii_are_read_back_through_percent_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for id in [
        "txn/with/slashes",
        "txn with spaces",
        "txn_ünïcødé_€_日本",
        "a%2Fb?#",
    ] {
        assert_eq!(post(daemon.addr, &payload(id, "1")).status, 202, "{id}");
        let read = get_transaction(daemon.addr, id);
        assert_eq!(read.status, 200, "{id}: {}", read.body);
        assert_eq!(read.json()["transaction_id"], id);
    }
}

#[test]
fn a_transaction_is_processed_once_after_the_delay_and_stays_processed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    assert_eq!(post(daemon.addr, &payload("txn_delay", "5")).status, 202);
    let body = wait_processed(daemon.addr, "txn_delay", Duration::from_secs(20));
    let created = millis(&body["created_at"]);
    let processed = millis(&body["processed_at"]);
    assert!(processed >= created + 1000, "processed before due: {body}");
    assert!(
        processed <= created + 2000,
        "processed more than a second after due: {body}"
    );
    // Redelivery after processing reports the current status, changes nothing.
    let again = post(daemon.addr, &payload("txn_delay", "5"));
    assert_eq!(
        again.json(),
        serde_json::json!({"transaction_id": "txn_delay", "status": "PROCESSED", "duplicate": true})
    );
    assert_eq!(get_transaction(daemon.addr, "txn_delay").json(), body);
    // Its one job ran once and is gone.
    common::poll_until(DEADLINE, "no pending job", || {
        (metric(daemon.addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    assert_eq!(
        metric(daemon.addr, "webhookd_transactions_processed_total"),
        1
    );
}

#[test]
fn zero_delay_processes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(post(daemon.addr, &payload("txn_now", "5")).status, 202);
    let body = wait_processed(daemon.addr, "txn_now", Duration::from_secs(20));
    assert!(millis(&body["processed_at"]) <= millis(&body["created_at"]) + 1000);
}

#[test]
fn unknown_paths_are_json_404() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for path in [
        "/nope",
        "/v1/transactions/",
        "/v1/transactionsx",
        "/v1/webhooks",
        "/v2/",
    ] {
        get(daemon.addr, path).assert_error(404, "not_found");
    }
}

#[test]
fn wrong_methods_on_known_paths_are_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for (method, path, allow) in [
        ("POST", "/", "GET"),
        ("DELETE", "/", "GET"),
        ("GET", "/v1/webhooks/transactions", "POST"),
        ("PUT", "/v1/webhooks/transactions", "POST"),
        ("DELETE", "/v1/transactions/x", "GET"),
        ("POST", "/v1/transactions/x", "GET"),
    ] {
        let response = request(daemon.addr, method, path);
        response.assert_error(405, "method_not_allowed");
        assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
    }
}

/// The `amount` of a JSON body exactly as written on the wire.
fn raw_amount(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Amount<'a> {
        #[serde(borrow)]
        amount: &'a RawValue,
    }
    let parsed: Amount<'_> = serde_json::from_str(body).expect("body with amount");
    parsed.amount.get().to_owned()
}
