//! Redelivery: one transaction, and durable bulk redeliveries that carry
//! on after a restart; and retention, which never purges FAILED ones.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{
    DEADLINE, Daemon, get, get_transaction, millis, payload, poll_until, post, transaction_path,
};
use serde_json::Value;
use sink::{Answer, Sink};

fn deliver_to(dir: &Path, sink: &Sink, extra: &[&str]) -> Daemon {
    let url = sink.url();
    let mut args = vec!["--process-delay", "0s", "--deliver-to", url.as_str()];
    args.extend_from_slice(extra);
    Daemon::start(dir, &args)
}

fn status_of(addr: SocketAddr, id: &str) -> Value {
    let response = get_transaction(addr, id);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

fn wait_status(addr: SocketAddr, id: &str, status: &str) -> Value {
    poll_until(DEADLINE, &format!("{id} {status}"), || {
        let view = status_of(addr, id);
        (view["status"] == status).then_some(view)
    })
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> common::Response {
    common::send_raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn redeliver(addr: SocketAddr, id: &str) -> common::Response {
    common::request(addr, "POST", &format!("{}/redeliver", transaction_path(id)))
}

#[test]
fn redelivering_one_transaction_restarts_its_schedule_and_continues_the_attempt_count() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(410);
    let daemon = deliver_to(dir.path(), &sink, &["--retry-schedule", "0s,0s"]);
    let addr = daemon.addr;
    assert_eq!(post(addr, &payload("txn_again", "5")).status, 202);
    wait_status(addr, "txn_again", "FAILED");

    redeliver(addr, "txn_unknown").assert_error(404, "not_found");
    sink.set(|_| Answer::status(500));
    let answer = redeliver(addr, "txn_again");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json()["transaction_id"], "txn_again");
    assert_eq!(answer.json()["status"], "PROCESSING");
    // Back to PROCESSING with a fresh schedule: two more attempts (the
    // schedule's length), numbered on from the first.
    let failed = wait_status(addr, "txn_again", "FAILED");
    assert_eq!(failed["attempts"], 3);
    let numbers: Vec<u32> = sink.seen().iter().map(sink::Seen::attempt).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(sink.seen().iter().all(|s| s.id() == sink.seen()[0].id()));

    sink.set(|_| Answer::Hang);
    assert_eq!(redeliver(addr, "txn_again").status, 202);
    poll_until(DEADLINE, "the hanging attempt", || {
        (sink.count() == 4).then_some(())
    });
    redeliver(addr, "txn_again").assert_error(409, "conflict");
}

#[test]
fn a_processed_transaction_can_be_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(200);
    let daemon = deliver_to(dir.path(), &sink, &[]);
    let addr = daemon.addr;
    assert_eq!(post(addr, &payload("txn_twice", "5")).status, 202);
    let first = wait_status(addr, "txn_twice", "PROCESSED");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(redeliver(addr, "txn_twice").status, 202);
    let second = poll_until(DEADLINE, "the second delivery", || {
        let view = status_of(addr, "txn_twice");
        (view["status"] == "PROCESSED" && view["attempts"] == 2).then_some(view)
    });
    assert!(millis(&second["processed_at"]) > millis(&first["processed_at"]));
    let seen = sink.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].attempt(), 2);
    assert_eq!(seen[0].id(), seen[1].id());
}

fn progress(addr: SocketAddr, id: &str) -> Value {
    let response = get(addr, &format!("/v1/redeliveries/{id}"));
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

#[test]
fn a_bulk_redelivery_puts_back_what_matches_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(410);
    let daemon = deliver_to(dir.path(), &sink, &[]);
    let addr = daemon.addr;
    for i in 0..30 {
        assert_eq!(
            post(addr, &payload(&format!("txn_old_{i}"), "1")).status,
            202
        );
    }
    for i in 0..30 {
        wait_status(addr, &format!("txn_old_{i}"), "FAILED");
    }
    std::thread::sleep(Duration::from_millis(50));
    let boundary = common::now_millis();
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..10 {
        assert_eq!(
            post(addr, &payload(&format!("txn_new_{i}"), "1")).status,
            202
        );
        wait_status(addr, &format!("txn_new_{i}"), "FAILED");
    }
    sink.set(|_| Answer::status(200));
    let before =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(boundary))
            .to_string();
    let created = post_json(
        addr,
        "/v1/redeliveries",
        &format!(r#"{{"status":"FAILED","created_before":"{before}"}}"#),
    );
    assert_eq!(created.status, 202, "{}", created.body);
    let id = created.json()["redelivery_id"].as_str().unwrap().to_owned();
    assert_eq!(created.json()["state"], "running");
    let done = poll_until(DEADLINE, "the bulk redelivery done", || {
        let p = progress(addr, &id);
        (p["state"] == "done").then_some(p)
    });
    assert_eq!(done["redelivery_id"], id.as_str());
    assert_eq!(done["matched"], 30);
    assert_eq!(done["done"], 30);
    for i in 0..30 {
        wait_status(addr, &format!("txn_old_{i}"), "PROCESSED");
    }
    for i in 0..10 {
        assert_eq!(status_of(addr, &format!("txn_new_{i}"))["status"], "FAILED");
    }
    get(addr, "/v1/redeliveries/rdl_999").assert_error(404, "not_found");
    get(addr, "/v1/redeliveries/nonsense").assert_error(404, "not_found");
}

#[test]
fn bulk_redelivery_requests_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(200);
    let daemon = deliver_to(dir.path(), &sink, &[]);
    let addr = daemon.addr;
    let field = |body: &str| {
        post_json(addr, "/v1/redeliveries", body).assert_error(422, "invalid_field")["error"]
            ["field"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(field("{}"), "status");
    assert_eq!(field(r#"{"status":"PROCESSING"}"#), "status");
    assert_eq!(
        field(r#"{"status":"FAILED","created_after":"monday"}"#),
        "created_after"
    );
    assert_eq!(field(r#"{"status":"FAILED","stauts":"x"}"#), "stauts");
    post_json(addr, "/v1/redeliveries", "{").assert_error(400, "invalid_json");
    common::send_raw(
        addr,
        b"POST /v1/redeliveries HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    )
    .assert_error(415, "unsupported_media_type");
    common::request(addr, "GET", "/v1/redeliveries").assert_error(405, "method_not_allowed");

    let plain = Daemon::start(&dir.path().join("plain"), &[]);
    post_json(plain.addr, "/v1/redeliveries", r#"{"status":"FAILED"}"#)
        .assert_error(409, "conflict");
}

#[test]
fn a_bulk_redelivery_survives_a_crash_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(410);
    let daemon = deliver_to(dir.path(), &sink, &["--deliver-concurrency", "64"]);
    let addr = daemon.addr;
    // Enough for several chunks of 256.
    let total = 1500;
    std::thread::scope(|scope| {
        for part in 0..4 {
            scope.spawn(move || {
                let mut stream = common::connect(addr);
                for i in (part..total).step_by(4) {
                    let answer =
                        common::post_on(&mut stream, &payload(&format!("txn_bulk_{i}"), "1"));
                    assert_eq!(answer.status, 202);
                }
            });
        }
    });
    poll_until(Duration::from_secs(60), "all FAILED", || {
        let page = get(addr, "/v1/transactions?status=PROCESSING&limit=1").json();
        page["transactions"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    // The destination recovers, and nothing answers for a moment: the
    // redelivered transactions stay in flight while the daemon is killed.
    sink.set(|_| Answer::Hang);
    let created = post_json(addr, "/v1/redeliveries", r#"{"status":"FAILED"}"#);
    assert_eq!(created.status, 202, "{}", created.body);
    let id = created.json()["redelivery_id"].as_str().unwrap().to_owned();
    poll_until(DEADLINE, "the first chunk", || {
        (progress(addr, &id)["done"].as_u64().unwrap() > 0).then_some(())
    });
    let part = progress(addr, &id);
    daemon.kill();
    assert_eq!(part["matched"], total);

    sink.set(|_| Answer::status(200));
    let daemon = deliver_to(dir.path(), &sink, &["--deliver-concurrency", "64"]);
    let done = poll_until(Duration::from_secs(60), "the bulk redelivery done", || {
        let p = progress(daemon.addr, &id);
        (p["state"] == "done").then_some(p)
    });
    assert_eq!(done["done"], total, "{done}");
    poll_until(Duration::from_secs(60), "all PROCESSED", || {
        let empty = |status: &str| {
            get(
                daemon.addr,
                &format!("/v1/transactions?status={status}&limit=1"),
            )
            .json()["transactions"]
                .as_array()
                .unwrap()
                .is_empty()
        };
        (empty("FAILED") && empty("PROCESSING")).then_some(())
    });
    for i in (0..total).step_by(97) {
        assert_eq!(
            status_of(daemon.addr, &format!("txn_bulk_{i}"))["status"],
            "PROCESSED"
        );
    }
}

#[test]
fn retention_never_purges_failed_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|seen| {
        if seen.json()["transaction_id"] == "txn_dead" {
            Answer::status(410)
        } else {
            Answer::status(200)
        }
    });
    let daemon = deliver_to(dir.path(), &sink, &["--retention", "1s"]);
    let addr = daemon.addr;
    assert_eq!(post(addr, &payload("txn_dead", "1")).status, 202);
    assert_eq!(post(addr, &payload("txn_fine", "1")).status, 202);
    wait_status(addr, "txn_dead", "FAILED");
    poll_until(Duration::from_secs(30), "the PROCESSED one purged", || {
        (get_transaction(addr, "txn_fine").status == 404).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status_of(addr, "txn_dead")["status"], "FAILED");
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    // The purged transaction's attempt went with it; the FAILED one's stays.
    let db = redb::Database::create(dir.path().join("webhookd.redb")).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let journal = txn
        .open_table(redb::TableDefinition::<(u64, u32), &[u8]>::new("attempts"))
        .unwrap();
    assert_eq!(redb::ReadableTableMetadata::len(&journal).unwrap(), 1);
}
