//! `--admin-token-file` through the real binary: the admin routes need
//! `Authorization: Bearer <token>` (401 `unauthorized` when it is missing,
//! wrong, or under another scheme), over HTTP/1.1, TLS and HTTP/2; the
//! public routes never ask for it; SIGHUP reloads it; an empty or
//! unreadable token file refuses to start; and the token never shows in
//! the log or an answer.

mod common;
mod tls_support;

use std::net::SocketAddr;

use common::{
    DEADLINE, Daemon, Response, assert_one_line_failure, payload, poll_until, run_to_exit, send_raw,
};
use tls_support::{
    Ca, H2Client, TlsConnection, assert_holds_no_secret, http1_config, runtime, tls_args,
    write_file,
};

const TOKEN: &str = "adm_9f8e7d6c5b4a39281706f5e4d3c2b1a0";

/// `GET path` with `headers` (complete lines).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Response {
    send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Asserts a 401 `unauthorized` in the error shape with a Bearer challenge.
#[track_caller]
fn assert_unauthorized(response: &Response, secrets: &[String]) {
    response.assert_error(401, "unauthorized");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"webhookd admin\""),
        "{response:?}"
    );
    assert_holds_no_secret("the 401 body", &response.body, secrets);
}

#[test]
fn admin_routes_need_the_bearer_token_and_public_routes_never_ask_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(dir.path(), "token", &format!("{TOKEN}\n"), 0o600);
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    let addr = daemon.addr;
    let secrets = vec![TOKEN.to_owned()];

    // Public routes: no token needed, and a wrong one is not even looked at.
    assert_eq!(common::get(addr, "/").status, 200);
    assert_eq!(common::post(addr, &payload("txn_admin", "1")).status, 202);
    assert_eq!(get_with(addr, "/", &bearer("wrong")).status, 200);
    let body = payload("txn_admin_2", "1");
    let posted = send_raw(
        addr,
        format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: test\r\nAuthorization: Basic Zm9vOmJhcg==\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(posted.status, 202, "{}", posted.body);
    assert_eq!(common::get(addr, "/no/such/path").status, 404);

    for path in ["/v1/transactions/txn_admin", "/v1/transactions", "/metrics"] {
        let refusals = [
            String::new(),
            bearer("wrong"),
            bearer(&TOKEN[..TOKEN.len() - 1]),
            bearer(&format!("{TOKEN}x")),
            format!("Authorization: Basic {TOKEN}\r\n"),
            format!("Authorization: Token {TOKEN}\r\n"),
            format!("Authorization: {TOKEN}\r\n"),
            format!("{}{}", bearer(TOKEN), bearer(TOKEN)),
        ];
        for headers in &refusals {
            let refused = get_with(addr, path, headers);
            assert_unauthorized(&refused, &secrets);
        }
        for headers in [bearer(TOKEN), format!("authorization: bearer {TOKEN}\r\n")] {
            let allowed = get_with(addr, path, &headers);
            assert_eq!(allowed.status, 200, "{path}: {}", allowed.body);
        }
    }
    // The token is checked before the method: no route is probed without it.
    assert_unauthorized(
        &common::request(addr, "DELETE", "/v1/transactions/txn_admin"),
        &secrets,
    );
    let wrong_method = send_raw(
        addr,
        format!(
            "DELETE /metrics HTTP/1.1\r\nHost: test\r\n{}Connection: close\r\n\r\n",
            bearer(TOKEN)
        )
        .as_bytes(),
    );
    wrong_method.assert_error(405, "method_not_allowed");

    // The refusals are counted, by route and status.
    let metrics = get_with(addr, "/metrics", &bearer(TOKEN)).body;
    assert!(
        metrics.contains(r#"webhookd_http_requests_total{route="/metrics",status="401"} 8"#),
        "{metrics}"
    );
    assert_holds_no_secret("/metrics", &metrics, &secrets);

    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("admin_token=\"on\""), "{stderr}");
    assert!(
        stderr.contains("unauthorized"),
        "refusals are logged: {stderr}"
    );
    assert_holds_no_secret("stderr", &stderr, &secrets);
}

#[test]
fn the_admin_token_is_required_over_tls_and_http_2_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let token_file = write_file(dir.path(), "token", TOKEN, 0o600);
    let mut args = tls_args(dir.path(), &issued);
    args.extend([
        "--admin-token-file".to_owned(),
        token_file.to_str().unwrap().to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&dir.path().join("data"), &args);
    let secrets = vec![TOKEN.to_owned()];

    let mut h1 = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(h1.post(&payload("txn_tls_admin", "1")).status, 202);
    assert_unauthorized(&h1.get("/v1/transactions/txn_tls_admin", ""), &secrets);
    assert_eq!(
        h1.get("/v1/transactions/txn_tls_admin", &bearer(TOKEN))
            .status,
        200
    );

    runtime().block_on(async {
        let mut h2 = H2Client::connect(daemon.addr, &ca).await;
        assert_eq!(h2.get("/", &[]).await.status, 200);
        let refused = h2
            .get("/v1/transactions", &[("authorization", "Bearer nope")])
            .await;
        assert_eq!(refused.status, 401);
        assert_eq!(refused.json()["error"]["code"], "unauthorized");
        let authorization = format!("Bearer {TOKEN}");
        let allowed = h2
            .get("/v1/transactions", &[("authorization", &authorization)])
            .await;
        assert_eq!(allowed.status, 200, "{}", allowed.body);
        assert_eq!(
            allowed.json()["transactions"][0]["transaction_id"],
            "txn_tls_admin"
        );
    });
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    assert_holds_no_secret("stderr", &stderr, &secrets);
}

#[test]
fn sighup_reloads_the_token_and_a_bad_token_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(dir.path(), "token", "first-token\n", 0o600);
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    let addr = daemon.addr;
    let status_with = |token: &str| get_with(addr, "/v1/transactions", &bearer(token)).status;
    let logged = |text: &str| daemon.stderr_text().matches(text).count();
    assert_eq!(status_with("first-token"), 200);

    // Rotation: both listed, then only the new one.
    write_file(dir.path(), "token", "first-token\nsecond-token\n", 0o600);
    daemon.signal("HUP");
    poll_until(DEADLINE, "reload", || {
        (logged("SIGHUP: reloaded") == 1).then_some(())
    });
    assert_eq!(
        (status_with("first-token"), status_with("second-token")),
        (200, 200)
    );
    write_file(dir.path(), "token", "# rotated\nsecond-token\n", 0o600);
    daemon.signal("HUP");
    poll_until(DEADLINE, "reload", || {
        (logged("SIGHUP: reloaded") == 2).then_some(())
    });
    assert_eq!(
        (status_with("first-token"), status_with("second-token")),
        (401, 200)
    );

    // An emptied file keeps the token in force.
    write_file(dir.path(), "token", "  \n", 0o600);
    daemon.signal("HUP");
    poll_until(DEADLINE, "failed reload", || {
        (logged("SIGHUP: reload failed") == 1).then_some(())
    });
    assert_eq!(status_with("second-token"), 200);

    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("reload failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert!(
        failures[0].contains("--admin-token-file"),
        "{}",
        failures[0]
    );
    assert_holds_no_secret(
        "stderr",
        &stderr,
        &["first-token".to_owned(), "second-token".to_owned()],
    );
}

#[test]
fn an_empty_blank_malformed_or_unreadable_token_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let empty = write_file(dir.path(), "empty", "", 0o600);
    let blank = write_file(dir.path(), "blank", " \n\t\n", 0o600);
    let spaced = write_file(dir.path(), "spaced", "secret with spaces\n", 0o600);
    let missing = dir.path().join("missing");
    for (file, expected) in [
        (&empty, "holds no token"),
        (&blank, "holds no token"),
        (&spaced, "printable ASCII without spaces"),
        (&missing, "cannot read --admin-token-file"),
    ] {
        let file = file.to_str().unwrap();
        for (args, env) in [
            (vec!["--admin-token-file", file], vec![]),
            (vec![], vec![("WEBHOOKD_ADMIN_TOKEN_FILE", file)]),
        ] {
            let mut full = vec![
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ];
            full.extend(&args);
            let (code, stderr) = run_to_exit(&full, &env);
            let line = assert_one_line_failure(code, &stderr, 2);
            assert!(line.contains("--admin-token-file"), "{line}");
            assert!(line.contains(file), "{line}");
            assert!(line.contains(expected), "{line}");
            assert!(!line.contains("with spaces"), "quotes the token: {line}");
            assert!(!data.exists(), "the data dir was created");
        }
    }
}

#[test]
fn a_token_file_other_users_can_read_gets_a_warning_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(dir.path(), "token", TOKEN, 0o644);
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    let stderr = daemon.stderr_text();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("can be read by other users"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("--admin-token-file"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("0644"), "{}", warnings[0]);
    // A warning only: the token is in force.
    assert_eq!(
        get_with(daemon.addr, "/metrics", &bearer(TOKEN)).status,
        200
    );
    assert_eq!(common::get(daemon.addr, "/metrics").status, 401);
    assert_holds_no_secret("stderr", &stderr, &[TOKEN.to_owned()]);
}
