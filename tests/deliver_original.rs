//! `--deliver-body original` forwards the body a mapped webhook arrived
//! with, byte for byte, with the provider's `Content-Type`, signed over
//! exactly those bytes; the default is unchanged; a transaction stored
//! without its body is delivered as webhookd's JSON (logged once); a body
//! that cannot be read fails the attempt without sending anything; the
//! flag refuses to start without `--deliver-to` or `--payload-map`; and
//! `?include=payload` keeps the delivery fields of the view.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use common::{
    DEADLINE, Daemon, Response, get, get_transaction, payload, poll_until, post, refused_at_start,
    send_raw, transaction_path,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;
use sink::{Answer, Seen, Sink};
use webhookd::signature::{Scheme, Verifier};

/// Takes `{"ref", "from", "cents", "ccy"}` in any key order.
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

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");

/// The fallback's log line, as a fragment.
const FALLBACK_LOG: &str = "stored without its original body";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn post_bytes(addr: SocketAddr, content_type: &str, body: &[u8]) -> Response {
    let mut request = format!(
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    send_raw(addr, &request)
}

/// Bodies a JSON parser would not give back as they were: CRLF, tabs and
/// odd spacing, key order, escapes beside the characters they stand for,
/// number spellings, a key twice where the map does not look, spaces
/// around the object; each with its own `Content-Type` spelling.
fn awkward_bodies() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "ord_1",
            "application/json; charset=utf-8",
            b"{\r\n\t\"ccy\" : \"inr\" ,\n  \"cents\":150050,\"ref\":\"ord_1\",\"from\":\"c\\u00e9\\/x\"}\r\n"
                .to_vec(),
        ),
        (
            "ord_2",
            "application/json",
            "{\"z\":1.50E+2,\"note\":\"caf\u{e9} \u{1f4b8} \\ud83d\\udcb8\",\"ref\":\"ord_2\",\"from\":\"\u{e9}\",\"cents\":1.5e3,\"ccy\":\"JPY\",\"nested\":{\"b\":[1, 2 ,3],\"a\":-0.0}}"
                .as_bytes()
                .to_vec(),
        ),
        (
            "ord_3",
            "Application/JSON;charset=UTF-8",
            b"   {\"ref\":\"ord_3\",\"from\":\"c\",\"cents\":12345,\"ccy\":\"kwd\",\"dup\":1,\"dup\":2}   "
                .to_vec(),
        ),
    ]
}

fn view(addr: SocketAddr, id: &str) -> Value {
    let response = get_transaction(addr, id);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

fn with_payload(addr: SocketAddr, id: &str) -> Value {
    let response = get(addr, &format!("{}?include=payload", transaction_path(id)));
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

fn wait_status(addr: SocketAddr, id: &str, status: &str) -> Value {
    poll_until(DEADLINE, &format!("{id} {status}"), || {
        let view = view(addr, id);
        (view["status"] == status).then_some(view)
    })
}

fn redeliver(addr: SocketAddr, id: &str) {
    let answer = common::request(addr, "POST", &format!("{}/redeliver", transaction_path(id)));
    assert_eq!(answer.status, 202, "{}", answer.body);
}

fn stop(daemon: Daemon) -> String {
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    stderr
}

/// Asserts the Standard Webhooks signature of `seen` verifies over the
/// bytes it carried.
#[track_caller]
fn assert_signed(seen: &Seen) {
    let mut headers = hyper::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, seen.header(name).unwrap().parse().unwrap());
    }
    let timestamp: u64 = seen.header("webhook-timestamp").unwrap().parse().unwrap();
    let verifier = Verifier::new(Scheme::StandardWebhooks, &[SECRET], None).unwrap();
    assert_eq!(verifier.verify(&headers, &seen.body, timestamp), Ok(()));
}

/// The keys of webhookd's own delivery body.
fn transaction_keys() -> HashSet<String> {
    [
        "transaction_id",
        "source_account",
        "destination_account",
        "amount",
        "currency",
        "created_at",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Asserts `seen` carries webhookd's JSON of the transaction `stored`.
#[track_caller]
fn assert_transaction_body(seen: &Seen, stored: &Value) {
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let json = seen.json();
    let keys: HashSet<String> = json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, transaction_keys());
    for key in transaction_keys() {
        assert_eq!(json[&key], stored[&key], "{key}");
    }
}

#[test]
fn the_original_body_is_delivered_byte_for_byte_with_its_content_type_and_signed_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(dir.path(), "map.toml", MAP);
    let secrets = write(dir.path(), "secrets", &format!("{SECRET}\n"));
    // The first request of each transaction fails: its retry must carry
    // the same bytes.
    let mut failed_once = HashSet::new();
    let sink = Sink::start(move |seen| {
        if failed_once.insert(seen.id().to_owned()) {
            Answer::status(503)
        } else {
            Answer::status(200)
        }
    });
    let url = sink.url();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &[
            "--process-delay",
            "0s",
            "--payload-map",
            &map,
            "--deliver-to",
            &url,
            "--deliver-body",
            "original",
            "--retry-schedule",
            "0s,0s",
            "--deliver-signing-secret-file",
            &secrets,
        ],
    );
    let addr = daemon.addr;
    let bodies = awkward_bodies();
    for (id, content_type, body) in &bodies {
        let response = post_bytes(addr, content_type, body);
        assert_eq!(response.status, 202, "{id}: {}", response.body);
    }
    for (id, _, _) in &bodies {
        assert_eq!(wait_status(addr, id, "PROCESSED")["attempts"], 2, "{id}");
    }
    let by_id = sink.by_id();
    assert_eq!(by_id.len(), bodies.len());
    let mut matched = HashSet::new();
    for requests in by_id.values() {
        assert_eq!(requests.len(), 2);
        let (id, content_type, body) = bodies
            .iter()
            .find(|(_, _, body)| *body == requests[0].body)
            .unwrap_or_else(|| {
                panic!(
                    "the sink got a body that was not posted: {:?}",
                    String::from_utf8_lossy(&requests[0].body)
                )
            });
        matched.insert(*id);
        for (number, seen) in requests.iter().enumerate() {
            assert_eq!(seen.body, *body, "{id} attempt {}", number + 1);
            assert_eq!(seen.header("content-type"), Some(*content_type), "{id}");
            assert_eq!(seen.attempt() as usize, number + 1, "{id}");
            assert_eq!(seen.header("idempotency-key"), Some(seen.id()));
            assert_signed(seen);
        }
        assert_eq!(requests[0].id(), requests[1].id());
    }
    assert_eq!(matched.len(), bodies.len(), "every body was delivered");
    stop(daemon);
}

#[test]
fn by_default_and_with_deliver_body_transaction_webhookds_json_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(dir.path(), "map.toml", MAP);
    let (id, _, body) = awkward_bodies().remove(0);
    for (name, env) in [
        ("default", &[][..]),
        ("env", &[("WEBHOOKD_DELIVER_BODY", "transaction")][..]),
    ] {
        let sink = Sink::answering(200);
        let url = sink.url();
        let daemon = Daemon::start_with_env(
            &dir.path().join(name),
            &[
                "--process-delay",
                "0s",
                "--payload-map",
                &map,
                "--deliver-to",
                &url,
            ],
            env,
        );
        assert_eq!(
            post_bytes(daemon.addr, "application/json; charset=utf-8", &body).status,
            202
        );
        let stored = wait_status(daemon.addr, id, "PROCESSED");
        let seen = sink.seen();
        assert_eq!(seen.len(), 1, "{name}");
        assert_transaction_body(&seen[0], &stored);
        assert_eq!(seen[0].json()["amount"], 1500.5, "{name}");
        assert_eq!(seen[0].json()["source_account"], "c\u{e9}/x", "{name}");
        assert_ne!(seen[0].body, body, "{name}");
        stop(daemon);
    }
}

#[test]
fn transactions_stored_without_their_body_are_delivered_as_webhookds_json_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let map = write(dir.path(), "map.toml", MAP);
    let sink = Sink::answering(200);
    let url = sink.url();
    // Accepted before there was a map: no body kept.
    let daemon = Daemon::start(&data, &["--process-delay", "0s", "--deliver-to", &url]);
    for id in ["own_1", "own_2"] {
        assert_eq!(post(daemon.addr, &payload(id, "10.25")).status, 202);
        wait_status(daemon.addr, id, "PROCESSED");
    }
    stop(daemon);
    let before = sink.count();
    assert_eq!(before, 2);

    let daemon = Daemon::start(
        &data,
        &[
            "--process-delay",
            "0s",
            "--payload-map",
            &map,
            "--deliver-to",
            &url,
            "--deliver-body",
            "original",
        ],
    );
    let addr = daemon.addr;
    let (mapped_id, content_type, body) = awkward_bodies().remove(1);
    assert_eq!(post_bytes(addr, content_type, &body).status, 202);
    wait_status(addr, mapped_id, "PROCESSED");
    for id in ["own_1", "own_2"] {
        redeliver(addr, id);
    }
    let stored: HashMap<&str, Value> = ["own_1", "own_2"]
        .into_iter()
        .map(|id| {
            poll_until(DEADLINE, &format!("{id} delivered again"), || {
                let view = view(addr, id);
                (view["status"] == "PROCESSED" && view["attempts"] == 2).then_some((id, view))
            })
        })
        .collect();
    let seen = sink.seen();
    assert_eq!(seen.len(), before + 3);
    for request in &seen[before..] {
        if request.body == body {
            assert_eq!(request.header("content-type"), Some(content_type));
            continue;
        }
        let id = request.json()["transaction_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_transaction_body(request, &stored[id.as_str()]);
        assert_eq!(request.attempt(), 2, "{id}");
    }
    assert_eq!(
        seen[before..].iter().filter(|s| s.body == body).count(),
        1,
        "the mapped one went as received"
    );
    let stderr = stop(daemon);
    assert_eq!(
        stderr.matches(FALLBACK_LOG).count(),
        1,
        "logged once for the run: {stderr}"
    );
}

#[test]
fn an_original_body_that_cannot_be_read_fails_the_attempt_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let map = write(dir.path(), "map.toml", MAP);
    let sink = Sink::answering(410);
    let url = sink.url();
    let args = [
        "--process-delay",
        "0s",
        "--payload-map",
        &map,
        "--deliver-to",
        &url,
        "--deliver-body",
        "original",
        "--retry-schedule",
        "0s",
    ];
    let daemon = Daemon::start(&data, &args);
    let (id, content_type, body) = awkward_bodies().remove(0);
    assert_eq!(post_bytes(daemon.addr, content_type, &body).status, 202);
    wait_status(daemon.addr, id, "FAILED");
    stop(daemon);
    assert_eq!(sink.count(), 1);
    // Damage the stored body: a row of a format no webhookd wrote.
    {
        let db = Database::open(data.join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(PAYLOADS).unwrap();
            let keys: Vec<u64> = table
                .iter()
                .unwrap()
                .map(|row| row.unwrap().0.value())
                .collect();
            assert_eq!(keys.len(), 1);
            table.insert(keys[0], &[9_u8, 0, 0][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let daemon = Daemon::start(&data, &args);
    let addr = daemon.addr;
    redeliver(addr, id);
    let failed = poll_until(DEADLINE, "failed again", || {
        let view = view(addr, id);
        (view["status"] == "FAILED" && view["attempts"] == 2).then_some(view)
    });
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("cannot read the original body"), "{error}");
    let journal = get(addr, &format!("{}/attempts", transaction_path(id))).json();
    let second = &journal["attempts"][1];
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["outcome"], "failed");
    assert_eq!(second["status_code"], Value::Null);
    assert_eq!(second["error"], failed["last_error"]);
    // Nothing else went out: no other body in its place.
    assert_eq!(sink.count(), 1);
    // Read through the API, the damage is an error, not another body.
    get(addr, &format!("{}?include=payload", transaction_path(id)))
        .assert_error(503, "unavailable");
    stop(daemon);
}

#[test]
fn include_payload_with_deliver_to_keeps_the_delivery_fields() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let map = write(dir.path(), "map.toml", MAP);
    let sink = Sink::start(|seen| match seen.json()["transaction_id"].as_str() {
        Some("ord_1") => Answer::status(410),
        _ => Answer::status(503),
    });
    let url = sink.url();
    let daemon = Daemon::start(
        &data,
        &[
            "--process-delay",
            "0s",
            "--payload-map",
            &map,
            "--deliver-to",
            &url,
            "--retry-schedule",
            "0s,1h",
        ],
    );
    let addr = daemon.addr;
    let bodies = awkward_bodies();
    for (_, content_type, body) in &bodies[..2] {
        assert_eq!(post_bytes(addr, content_type, body).status, 202);
    }
    wait_status(addr, "ord_1", "FAILED");
    poll_until(DEADLINE, "ord_2 waiting for its retry", || {
        let view = view(addr, "ord_2");
        (view["last_error"] != Value::Null && view["next_attempt_at"] != Value::Null).then_some(())
    });
    let check = |addr: SocketAddr, index: usize| {
        let (id, content_type, body) = &bodies[index];
        let full = with_payload(addr, id);
        assert_eq!(
            full["payload"].as_str().unwrap().as_bytes(),
            body.as_slice()
        );
        assert_eq!(full["payload_content_type"], *content_type);
        let mut plain = full.clone();
        let object = plain.as_object_mut().unwrap();
        object.remove("payload");
        object.remove("payload_content_type");
        for key in ["attempts", "next_attempt_at", "last_error", "failed_at"] {
            assert!(object.contains_key(key), "{id}: {key} missing: {full}");
        }
        assert_eq!(plain, view(addr, id), "{id}");
        full
    };
    let gone = check(addr, 0);
    assert_eq!(gone["status"], "FAILED");
    assert_eq!(gone["attempts"], 1);
    assert_eq!(gone["last_error"], "HTTP 410 Gone");
    common::assert_millis_timestamp(&gone["failed_at"]);
    assert_eq!(gone["next_attempt_at"], Value::Null);
    let waiting = check(addr, 1);
    assert_eq!(waiting["status"], "PROCESSING");
    assert_eq!(waiting["attempts"], 1);
    assert_eq!(waiting["last_error"], "HTTP 503 Service Unavailable");
    common::assert_millis_timestamp(&waiting["next_attempt_at"]);
    assert_eq!(waiting["failed_at"], Value::Null);
    stop(daemon);

    // Without the map now: what was kept is still shown, a new transaction
    // has none, and both keep the delivery fields.
    let daemon = Daemon::start(
        &data,
        &[
            "--process-delay",
            "0s",
            "--deliver-to",
            &url,
            "--retry-schedule",
            "0s,1h",
        ],
    );
    let addr = daemon.addr;
    check(addr, 0);
    assert_eq!(post(addr, &payload("own_1", "5")).status, 202);
    let own = poll_until(DEADLINE, "own_1 failed once", || {
        let full = with_payload(addr, "own_1");
        (full["attempts"] == 1 && full["last_error"] != Value::Null).then_some(full)
    });
    assert_eq!(own["payload"], Value::Null);
    assert_eq!(own["payload_content_type"], Value::Null);
    let mut plain = own.clone();
    let object = plain.as_object_mut().unwrap();
    object.remove("payload");
    object.remove("payload_content_type");
    assert_eq!(plain, view(addr, "own_1"));
    stop(daemon);
}

/// Runs webhookd with `args` on a data dir that must not exist afterwards;
/// returns the one line it printed (exit 2).
#[track_caller]
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    refused_at_start(&dir.path().join("data"), args, env)
}

#[test]
fn deliver_body_is_refused_without_deliver_to_or_original_without_a_payload_map() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(dir.path(), "map.toml", MAP);
    let to = ["--deliver-to", "http://127.0.0.1:9/hook"];

    for value in ["original", "transaction"] {
        let line = refused(&["--payload-map", &map, "--deliver-body", value], &[]);
        assert!(
            line.contains("--deliver-body") && line.contains("--deliver-to"),
            "{line}"
        );
    }
    let line = refused(&[], &[("WEBHOOKD_DELIVER_BODY", "original")]);
    assert!(
        line.contains("--deliver-body") && line.contains("--deliver-to"),
        "{line}"
    );

    let line = refused(&[to[0], to[1], "--deliver-body", "original"], &[]);
    assert!(
        line.contains("--deliver-body original") && line.contains("--payload-map"),
        "{line}"
    );
    let line = refused(&to, &[("WEBHOOKD_DELIVER_BODY", "original")]);
    assert!(
        line.contains("--deliver-body original") && line.contains("--payload-map"),
        "{line}"
    );

    let line = refused(&[to[0], to[1], "--deliver-body", "raw"], &[]);
    assert!(line.contains("--deliver-body"), "{line}");
    let line = refused(&to, &[("WEBHOOKD_DELIVER_BODY", "raw")]);
    assert!(line.contains("WEBHOOKD_DELIVER_BODY"), "{line}");
}
