//! The body a mapped webhook arrived with is kept with its transaction:
//! `GET /v1/transactions/{id}?include=payload` gives it back byte for
//! byte with its `Content-Type`; a transaction stored without a payload
//! map has none; retention deletes it with its transaction; `webhookd
//! check` covers it; a schema 5 file gains the empty table on upgrade.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, DEADLINE, Daemon, Response, get, payload, poll_until, post, send_raw};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde_json::Value;

/// Takes `{"ref", "from", "cents", "ccy"}` at any depth of key order.
const MAP: &str = r#"
[transaction_id]
pointer = "/ref"
[source_account]
pointer = "/from"
[destination_account]
value = "shop"
[amount]
pointer = "/cents"
units = "minor"
[currency]
pointer = "/ccy"
"#;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn map_file(dir: &Path) -> String {
    let path = dir.join("map.toml");
    std::fs::write(&path, MAP).unwrap();
    path.to_str().unwrap().to_owned()
}

fn post_bytes(addr: std::net::SocketAddr, content_type: &str, body: &[u8]) -> Response {
    let mut request = format!(
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    send_raw(addr, &request)
}

fn with_payload(addr: std::net::SocketAddr, id: &str) -> Value {
    let response = get(
        addr,
        &format!("{}?include=payload", common::transaction_path(id)),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

fn stop(daemon: Daemon) {
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
}

fn check(data: &Path) -> String {
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "check: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Bodies whose bytes a JSON parser would not reproduce: whitespace of
/// every kind, key order, number spellings, escapes beside the characters
/// they stand for, a BOM-free UTF-8 mix, a trailing newline.
fn awkward_bodies() -> Vec<(String, &'static str, Vec<u8>)> {
    vec![
        (
            "ord_1".to_owned(),
            "application/json; charset=utf-8",
            b"{\r\n\t\"ccy\" : \"inr\" ,\n  \"cents\":150050,\"ref\":\"ord_1\",\"from\":\"c\\u00e9\\/x\"}\n"
                .to_vec(),
        ),
        (
            "ord_2".to_owned(),
            "application/json",
            "{\"z\":1.50E+2,\"note\":\"caf\u{e9} \u{1f4b8} \\ud83d\\udcb8\",\"ref\":\"ord_2\",\"from\":\"\u{e9}\",\"cents\":1.5e3,\"ccy\":\"JPY\",\"nested\":{\"b\":[1, 2 ,3],\"a\":-0.0}}"
                .as_bytes()
                .to_vec(),
        ),
        (
            "ord_3".to_owned(),
            "Application/JSON;charset=UTF-8",
            b"   {\"ref\":\"ord_3\",\"from\":\"c\",\"cents\":12345,\"ccy\":\"kwd\",\"dup\":1,\"dup\":2}   "
                .to_vec(),
        ),
    ]
}

#[test]
fn the_original_body_round_trips_byte_for_byte_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let map = map_file(dir.path());
    let data = dir.path().join("data");
    let args = ["--process-delay", "1h", "--payload-map", &map];
    let daemon = Daemon::start(&data, &args);
    let addr = daemon.addr;
    let bodies = awkward_bodies();
    for (id, content_type, body) in &bodies {
        let response = post_bytes(addr, content_type, body);
        assert_eq!(response.status, 202, "{id}: {}", response.body);
    }
    let check_all = |addr| {
        for (id, content_type, body) in &bodies {
            let view = with_payload(addr, id);
            // A JSON string decodes to exactly the text it was made of.
            let returned = view["payload"].as_str().expect("payload is a string");
            assert_eq!(returned.as_bytes(), body.as_slice(), "{id}");
            assert_eq!(view["payload_content_type"], *content_type, "{id}");
            // Beside the transaction, as GET shows it without the parameter.
            let mut plain = view.clone();
            let object = plain.as_object_mut().unwrap();
            object.remove("payload");
            object.remove("payload_content_type");
            assert_eq!(plain, common::get_transaction(addr, id).json(), "{id}");
        }
    };
    check_all(addr);
    assert_eq!(with_payload(addr, "ord_2")["amount"], 1500);
    assert_eq!(with_payload(addr, "ord_3")["amount"], 12.345);

    // Durable: the same after a SIGKILL and a restart.
    daemon.kill();
    let daemon = Daemon::start(&data, &args);
    check_all(daemon.addr);
    stop(daemon);

    // Without the map, webhookd's own shape is stored with no body kept.
    let daemon = Daemon::start(&data, &["--process-delay", "1h"]);
    assert_eq!(post(daemon.addr, &payload("own_1", "10")).status, 202);
    let view = with_payload(daemon.addr, "own_1");
    assert_eq!(view["payload"], Value::Null);
    assert_eq!(view["payload_content_type"], Value::Null);
    // What was kept before is still there.
    check_all(daemon.addr);
    stop(daemon);
    assert_eq!(
        check(&data),
        "ok: 4 transactions (4 processing, 0 processed), 4 pending jobs, 3 original bodies"
    );
}

#[test]
fn include_accepts_only_payload() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    assert_eq!(post(addr, &payload("t1", "1")).status, 202);
    for (query, field) in [
        ("include=attempts", "include"),
        ("include=", "include"),
        ("include=payload&include=payload", "include"),
        ("inclde=payload", "inclde"),
    ] {
        let error =
            get(addr, &format!("/v1/transactions/t1?{query}")).assert_error(422, "invalid_field");
        assert_eq!(error["error"]["field"], field, "{query}");
    }
    // An unknown id is still 404 with the parameter.
    get(addr, "/v1/transactions/nope?include=payload").assert_error(404, "not_found");
    assert_eq!(get(addr, "/v1/transactions/t1").status, 200);
}

#[test]
fn retention_deletes_the_original_body_with_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let map = map_file(dir.path());
    let data = dir.path().join("data");
    let daemon = Daemon::start(
        &data,
        &[
            "--process-delay",
            "0s",
            "--retention",
            "1s",
            "--payload-map",
            &map,
        ],
    );
    let addr = daemon.addr;
    let body = br#"{"ref":"old_1","from":"c","cents":100,"ccy":"EUR"}"#;
    assert_eq!(post_bytes(addr, "application/json", body).status, 202);
    assert_eq!(
        with_payload(addr, "old_1")["payload"]
            .as_str()
            .unwrap()
            .as_bytes(),
        body
    );
    poll_until(Duration::from_secs(30), "old_1 purged", || {
        (common::get_transaction(addr, "old_1").status == 404).then_some(())
    });
    stop(daemon);
    // No original body is left without its transaction (check reports one).
    assert_eq!(
        check(&data),
        "ok: 0 transactions (0 processing, 0 processed), 0 pending jobs"
    );
}

fn schema_version(data: &Path) -> u64 {
    let db = Database::open(data.join("webhookd.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

#[test]
fn a_schema_5_file_gains_the_table_of_original_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, &["--process-delay", "1h"]);
    assert_eq!(post(daemon.addr, &payload("before", "1")).status, 202);
    stop(daemon);
    // The same file as schema 5 wrote it: no `payloads` table.
    {
        let db = Database::open(data.join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(
            txn.delete_table(TableDefinition::<u64, &[u8]>::new("payloads"))
                .unwrap()
        );
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 5)
            .unwrap();
        txn.commit().unwrap();
    }
    let map = map_file(dir.path());
    let daemon = Daemon::start(&data, &["--process-delay", "1h", "--payload-map", &map]);
    assert!(
        daemon
            .stderr_text()
            .contains("migrated the database from schema version 5 to 6"),
        "{}",
        daemon.stderr_text()
    );
    let body = br#"{"ref":"after","from":"c","cents":250,"ccy":"USD"}"#;
    assert_eq!(
        post_bytes(daemon.addr, "application/json", body).status,
        202
    );
    assert_eq!(with_payload(daemon.addr, "before")["payload"], Value::Null);
    assert_eq!(
        with_payload(daemon.addr, "after")["payload"]
            .as_str()
            .unwrap()
            .as_bytes(),
        body
    );
    stop(daemon);
    assert_eq!(schema_version(&data), webhookd::store::SCHEMA_VERSION);
    assert_eq!(
        check(&data),
        "ok: 2 transactions (2 processing, 0 processed), 2 pending jobs, 1 original bodies"
    );
}

#[test]
fn check_reports_an_original_body_without_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, &["--process-delay", "1h"]);
    stop(daemon);
    {
        let db = Database::open(data.join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, &[u8]>::new("payloads"))
            .unwrap()
            .insert(42, [1_u8, 0, 0, b'{', b'}'].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("original body at log key 42 has no stored transaction"),
        "{stderr}"
    );
}
