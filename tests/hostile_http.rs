//! Hostile and unusual HTTP: pipelining, oversized heads, HTTP/1.0,
//! `Expect: 100-continue`, deeply nested JSON, NUL bytes and huge numbers.
//! Each gets a clear answer, nothing is stored by mistake, and the daemon
//! keeps serving.

mod common;

use std::io::{BufRead, BufReader, Read, Write};

use common::{Daemon, connect, get, get_transaction, payload, send_raw};

fn post_request(body: &str, close: bool) -> String {
    format!(
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n{body}",
        if close { "Connection: close\r\n" } else { "" },
        body.len()
    )
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut stream = connect(daemon.addr);
    let pipelined = format!(
        "{}{}GET /v1/transactions/txn_pipe_1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        post_request(&payload("txn_pipe_1", "1"), false),
        post_request(&payload("txn_pipe_2", "2"), false),
    );
    stream.write_all(pipelined.as_bytes()).unwrap();
    let mut answers = common::read_responses(&mut stream, 3).into_iter();
    let (first, second, third) = (
        answers.next().unwrap(),
        answers.next().unwrap(),
        answers.next().unwrap(),
    );
    assert_eq!(first.json()["transaction_id"], "txn_pipe_1");
    assert_eq!(second.json()["transaction_id"], "txn_pipe_2");
    assert_eq!((first.status, second.status, third.status), (202, 202, 200));
    assert_eq!(third.json()["transaction_id"], "txn_pipe_1");
}

#[test]
fn a_100_kb_header_is_refused_with_431_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut stream = connect(daemon.addr);
    let head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    // Sent a kilobyte at a time, stopping as soon as an answer is waiting:
    // the server refuses the head once it passes its limit and closes, and
    // bytes it never read would turn its close into a reset that can
    // destroy the answer before it is read.
    let mut answer = Vec::new();
    let mut written = 0;
    for chunk in head.as_bytes().chunks(1024) {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0_u8; 1];
        match stream.read(&mut byte) {
            Ok(1) => {
                answer.push(byte[0]);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("connection ended after {written} bytes without an answer: {other:?}"),
        }
        stream.set_nonblocking(false).unwrap();
        stream.write_all(chunk).unwrap();
        written += chunk.len();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stream.set_nonblocking(false).unwrap();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "unexpected answer to an oversized head after {written} bytes: {answer:.80}"
    );
    assert!(
        written < head.len(),
        "the whole 100 KB head was read before the answer"
    );
    assert_eq!(get(daemon.addr, "/").status, 200);
}

#[test]
fn http_1_0_without_keep_alive_is_served_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let response = send_raw(daemon.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["status"], "HEALTHY");
}

#[test]
fn expect_100_continue_gets_continue_then_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let body = payload("txn_expect", "1");
    let mut stream = connect(daemon.addr);
    write!(
        stream,
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    line.clear();
    reader.read_line(&mut line).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    drop(reader);
    let response = common::read_response(&mut stream);
    assert_eq!(response.status, 202, "{}", response.body);
    assert_eq!(get_transaction(daemon.addr, "txn_expect").status, 200);
}

#[test]
fn deep_nesting_nul_bytes_and_huge_numbers_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let addr = daemon.addr;
    let valid = payload("txn_hostile", "1");

    // Deeply nested (unknown) field: parsed without a stack overflow; the
    // payload itself still lacks its fields.
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
    let error =
        send_raw(addr, post_request(&deep, true).as_bytes()).assert_error(422, "invalid_field");
    assert_eq!(error["error"]["field"], "transaction_id");
    // Deep nesting inside a known field is a wrong type, not a crash.
    let deep_amount = valid.replace(
        "\"amount\":1",
        &format!("\"amount\":{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
    );
    let error = send_raw(addr, post_request(&deep_amount, true).as_bytes())
        .assert_error(422, "invalid_field");
    assert_eq!(error["error"]["field"], "amount");

    // A raw NUL byte inside a string is not valid JSON.
    let nul = valid.replace("acc_user_789", "acc\u{0}user");
    send_raw(addr, post_request(&nul, true).as_bytes()).assert_error(400, "invalid_json");
    // An escaped NUL is valid JSON but a control character.
    let escaped = valid.replace("acc_user_789", "acc\\u0000user");
    let error =
        send_raw(addr, post_request(&escaped, true).as_bytes()).assert_error(422, "invalid_field");
    assert_eq!(error["error"]["field"], "source_account");

    // A 5,000-digit amount cannot be kept exactly.
    let huge = valid.replace(
        "\"amount\":1",
        &format!("\"amount\":1{}", "0".repeat(5_000)),
    );
    let error =
        send_raw(addr, post_request(&huge, true).as_bytes()).assert_error(422, "invalid_field");
    assert_eq!(error["error"]["field"], "amount");

    get_transaction(addr, "txn_hostile").assert_error(404, "not_found");
    assert_eq!(get(addr, "/").status, 200);
}
