//! An empty webhook body is answered 400 `invalid_json` saying the body is
//! empty, not with the JSON parser's "EOF while parsing" wording.

mod common;

use common::{Daemon, send_raw};

#[test]
fn an_empty_body_is_refused_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let head = "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n";
    for request in [
        format!("{head}Content-Length: 0\r\n\r\n"),
        format!("{head}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("{head}Content-Length: 3\r\n\r\n \r\n"),
    ] {
        let body = send_raw(daemon.addr, request.as_bytes()).assert_error(400, "invalid_json");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("body is empty"), "{request:?}: {message}");
        assert!(!message.contains("EOF"), "{message}");
    }
}
