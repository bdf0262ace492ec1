//! Every error answer to a bad request, in the API's error shape, and
//! proof that a refused request stores nothing. Also the 503s:
//! a full writer queue and a full disk.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{
    Daemon, connect, get, get_transaction, payload, poll_until, post, post_with_type,
    read_response, send_raw,
};

fn valid(id: &str) -> String {
    payload(id, "1500.50")
}

#[test]
fn bodies_that_are_not_json_objects_are_400_invalid_json() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let truncated = valid("txn_400");
    let truncated = &truncated[..truncated.len() - 5];
    for body in [
        "", "not json", truncated, "[1,2]", "\"txn\"", "12", "null", "{} x",
    ] {
        post(daemon.addr, body).assert_error(400, "invalid_json");
    }
    // Invalid UTF-8 inside a string.
    let mut raw = b"POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n".to_vec();
    raw.extend_from_slice(b"{\"transaction_id\":\"\xff\"}");
    send_raw(daemon.addr, &raw).assert_error(400, "invalid_json");
    get_transaction(daemon.addr, "txn_400").assert_error(404, "not_found");
}

#[test]
fn posts_without_a_json_content_type_are_415() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        post_with_type(daemon.addr, content_type, &valid("txn_415"))
            .assert_error(415, "unsupported_media_type");
    }
    get_transaction(daemon.addr, "txn_415").assert_error(404, "not_found");
    // Parameters and letter case do not matter.
    let ok = post_with_type(
        daemon.addr,
        Some("Application/JSON; charset=utf-8"),
        &valid("txn_415"),
    );
    assert_eq!(ok.status, 202, "{}", ok.body);
}

#[test]
fn an_oversized_content_length_is_refused_without_reading_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut stream = connect(daemon.addr);
    // Announce 10 MB, send a few bytes, never the rest: the answer must come anyway.
    stream
        .write_all(b"POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"transaction_id\":\"txn_413\"")
        .unwrap();
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    read_response(&mut stream).assert_error(413, "payload_too_large");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "413 took {:?}",
        started.elapsed()
    );
    drop(stream);
    get_transaction(daemon.addr, "txn_413").assert_error(404, "not_found");
    assert_eq!(get(daemon.addr, "/").status, 200);
}

#[test]
fn a_chunked_body_over_the_limit_is_cut_off_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--max-body-bytes", "1024"]);
    let mut stream = connect(daemon.addr);
    stream
        .write_all(b"POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let body = format!(
        "{{\"transaction_id\":\"txn_chunked\",\"pad\":\"{}\"}}",
        "x".repeat(4000)
    );
    for chunk in body.as_bytes().chunks(500) {
        // The server may close the connection as soon as the limit is passed.
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| stream.write_all(chunk))
            .and_then(|()| stream.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    read_response(&mut stream).assert_error(413, "payload_too_large");
    get_transaction(daemon.addr, "txn_chunked").assert_error(404, "not_found");
}

#[test]
fn a_body_exactly_at_the_limit_is_accepted_and_one_byte_more_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let body = valid("txn_limit");
    let limit = body.len().to_string();
    let daemon = Daemon::start(dir.path(), &["--max-body-bytes", &limit]);
    let response = post(daemon.addr, &body);
    assert_eq!(response.status, 202, "{}", response.body);
    post(daemon.addr, &format!("{body} ")).assert_error(413, "payload_too_large");
}

#[test]
fn each_invalid_field_is_422_naming_the_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let base = valid("txn_422");
    let long_id = "x".repeat(256);
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace(r#""transaction_id":"txn_422","#, ""),
            "transaction_id",
        ),
        (
            base.replace(r#""source_account":"acc_user_789","#, ""),
            "source_account",
        ),
        (
            base.replace(r#""destination_account":"acc_merchant_456","#, ""),
            "destination_account",
        ),
        (base.replace(r#""amount":1500.50,"#, ""), "amount"),
        (base.replace(r#","currency":"INR""#, ""), "currency"),
        (base.replace("1500.50", "\"1500.50\""), "amount"),
        (base.replace("\"txn_422\"", "422"), "transaction_id"),
        (base.replace("\"INR\"", "356"), "currency"),
        (base.replace("\"txn_422\"", "\"\""), "transaction_id"),
        (base.replace("txn_422", &long_id), "transaction_id"),
        (
            base.replace("acc_user_789", "acc\\u0001user"),
            "source_account",
        ),
        (
            base.replace("acc_merchant_456", "acc\\nmerchant"),
            "destination_account",
        ),
        (base.replace("1500.50", "0"), "amount"),
        (base.replace("1500.50", "-5"), "amount"),
        (base.replace("1500.50", "1e-40"), "amount"),
        (
            base.replace("1500.50", "123456789012345678901234567890.5"),
            "amount",
        ),
        (base.replace("1500.50", "1e30"), "amount"),
        (base.replace("1500.50", "null"), "amount"),
        (base.replace("\"INR\"", "\"IN\""), "currency"),
        (base.replace("\"INR\"", "\"INRR\""), "currency"),
        (base.replace("\"INR\"", "\"1NR\""), "currency"),
        (base.replace("\"INR\"", "\"ÄBC\""), "currency"),
        (
            base.replace(
                r#""transaction_id":"txn_422","#,
                r#""transaction_id":"txn_422","transaction_id":"txn_other","#,
            ),
            "transaction_id",
        ),
    ];
    for (body, field) in cases {
        let error = post(daemon.addr, &body).assert_error(422, "invalid_field");
        assert_eq!(error["error"]["field"], field, "body {body}");
    }
    get_transaction(daemon.addr, "txn_422").assert_error(404, "not_found");
    get_transaction(daemon.addr, "txn_other").assert_error(404, "not_found");

    // The boundary values are fine: 255 bytes, and unknown extra fields.
    let ok = post(daemon.addr, &base.replace("txn_422", &"y".repeat(255)));
    assert_eq!(ok.status, 202, "{}", ok.body);
    let extra = base.replacen('{', r#"{"extra":{"nested":[1,2,3]},"note":"x","#, 1);
    assert_eq!(post(daemon.addr, &extra).status, 202);
}

#[test]
fn checks_run_in_the_documented_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--max-body-bytes", "100"]);
    // The route first: a wrong path or method wins over the content type,
    // the size and the JSON.
    let oversized_text = "x".repeat(500);
    for (method, path, content_type, status, code) in [
        ("POST", "/nope", None, 404, "not_found"),
        ("POST", "/nope", Some("text/plain"), 404, "not_found"),
        ("POST", "/", Some("text/plain"), 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/webhooks/transactions",
            None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/transactions/x",
            Some("text/plain"),
            405,
            "method_not_allowed",
        ),
    ] {
        let content_type = content_type
            .map(|t| format!("Content-Type: {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{oversized_text}",
            oversized_text.len()
        );
        send_raw(daemon.addr, request.as_bytes()).assert_error(status, code);
    }
    // 415 before 413 before 400.
    post_with_type(daemon.addr, Some("text/plain"), &oversized_text)
        .assert_error(415, "unsupported_media_type");
    post(daemon.addr, &oversized_text).assert_error(413, "payload_too_large");
    // 400 before 422: a duplicate key in an otherwise broken body.
    post(daemon.addr, r#"{"amount":1,"amount":2"#).assert_error(400, "invalid_json");
}

#[test]
fn a_full_writer_queue_answers_503_with_retry_after_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--queue-depth", "1"]);
    let addr = daemon.addr;
    let mut round = 0;
    let (accepted, refused) = poll_until(Duration::from_secs(60), "a 503 under a burst", || {
        round += 1;
        let results: Vec<(String, common::Response)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..64)
                .map(|i| {
                    scope.spawn(move || {
                        let id = format!("txn_burst_{round}_{i}");
                        let response = post(addr, &valid(&id));
                        (id, response)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (refused, accepted): (Vec<_>, Vec<_>) =
            results.into_iter().partition(|(_, r)| r.status == 503);
        (!refused.is_empty()).then_some((accepted, refused))
    });
    for (_, response) in &refused {
        response.assert_error(503, "unavailable");
        assert_eq!(response.header("retry-after"), Some("1"));
    }
    for (id, response) in &accepted {
        assert_eq!(response.status, 202, "{}", response.body);
        assert_eq!(get_transaction(addr, id).status, 200, "{id}");
    }
    for (id, _) in &refused {
        get_transaction(addr, id).assert_error(404, "not_found");
    }
}

/// Mounts a tiny tmpfs (root only) and fills it through the API.
#[test]
#[cfg_attr(
    webhookd_no_tmpfs,
    ignore = "needs root (CAP_SYS_ADMIN) to mount a tmpfs; never ignored under CI=true"
)]
fn a_full_disk_answers_503_says_unhealthy_and_recovers_without_a_restart() {
    let mount = common::Tmpfs::mounted("size=1m");
    let daemon = Daemon::start(mount.path(), &[]);
    // Big (but valid) fields fill the 1 MiB quickly: ~750 bytes a record.
    let pad = "p".repeat(240);
    let big = |id: &str| {
        payload(id, "1")
            .replace("acc_user_789", &"s".repeat(250))
            .replace("acc_merchant_456", &"d".repeat(250))
    };
    let mut accepted = Vec::new();
    let mut n = 0;
    let refused = poll_until(Duration::from_secs(120), "a 503 on a full disk", || {
        n += 1;
        let id = format!("{pad}_{n}");
        let response = post(daemon.addr, &big(&id));
        if response.status == 202 {
            accepted.push(id);
            None
        } else {
            Some((id, response))
        }
    });
    refused.1.assert_error(503, "unavailable");
    assert_eq!(refused.1.header("retry-after"), Some("1"));

    let health = get(daemon.addr, "/");
    assert_eq!(health.status, 503, "{}", health.body);
    let body = health.json();
    assert_eq!(body["status"], "UNHEALTHY");
    assert!(body["current_time"].is_string());
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));

    // Reads keep working while writes fail, and nothing half-written shows.
    for id in &accepted {
        assert_eq!(get_transaction(daemon.addr, id).status, 200, "{id}");
    }
    get_transaction(daemon.addr, &refused.0).assert_error(404, "not_found");

    // The fault clears (the filesystem grows): the daemon recovers by itself.
    mount.remount("remount,size=16m");
    poll_until(
        Duration::from_secs(30),
        "a 202 after the disk has room",
        || (post(daemon.addr, &payload("txn_after_fault", "1")).status == 202).then_some(()),
    );
    poll_until(Duration::from_secs(30), "HEALTHY after the fault", || {
        (get(daemon.addr, "/").status == 200).then_some(())
    });
    for id in &accepted {
        assert_eq!(get_transaction(daemon.addr, id).status, 200, "{id}");
    }
    get_transaction(daemon.addr, &refused.0).assert_error(404, "not_found");
    assert_eq!(get_transaction(daemon.addr, "txn_after_fault").status, 200);
    daemon.kill();
}

#[test]
fn a_body_of_exactly_the_default_limit_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let base = valid("txn_big_body");
    let with_pad = |pad: &str| base.replacen('}', &format!(r#","pad":"{pad}"}}"#), 1);
    let body = with_pad(&"x".repeat(65_536 - with_pad("").len()));
    assert_eq!(body.len(), 65_536);
    let response = post(daemon.addr, &body);
    assert_eq!(response.status, 202, "{}", response.body);
}
