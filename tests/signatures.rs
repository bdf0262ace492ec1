//! Signature verification through the real binary: off by default; when a
//! scheme and secrets are configured, a POST without a valid signature is
//! 401 `invalid_signature` and nothing is stored. Standard Webhooks requests
//! are also signed by the real `svix` and `standardwebhooks` Python
//! libraries (`tests/clients/install.sh` installs them; `.ci/run` does).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{
    Daemon, assert_one_line_failure, get_transaction, payload, post, send_raw, start_expecting_exit,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const STANDARD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn signed_post(addr: std::net::SocketAddr, body: &str, extra_headers: &str) -> common::Response {
    send_raw(
        addr,
        format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn standard_headers(body: &str, timestamp: u64) -> String {
    let key = BASE64.decode(&STANDARD_SECRET["whsec_".len()..]).unwrap();
    let id = "msg_test_1";
    let signature = BASE64.encode(mac(
        &key,
        &[
            id.as_bytes(),
            b".",
            timestamp.to_string().as_bytes(),
            b".",
            body.as_bytes(),
        ],
    ));
    format!(
        "webhook-id: {id}\r\nwebhook-timestamp: {timestamp}\r\nwebhook-signature: v1,{signature}\r\n"
    )
}

fn secrets_file(dir: &std::path::Path, secrets: &str) -> String {
    let path = dir.join("secrets");
    std::fs::write(&path, secrets).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn standard_webhooks_signatures_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(
        dir.path(),
        &format!("# rotated in 2026\nwhsec_b2xkc2VjcmV0\n{STANDARD_SECRET}\n"),
    );
    let data = dir.path().join("data");
    let daemon = Daemon::start(
        &data,
        &[
            "--signature-scheme",
            "standard-webhooks",
            "--signing-secrets-file",
            &secrets,
        ],
    );
    let addr = daemon.addr;

    let body = payload("txn_signed", "10");
    let response = signed_post(addr, &body, &standard_headers(&body, now()));
    assert_eq!(response.status, 202, "{}", response.body);

    let unsigned = payload("txn_unsigned", "10");
    post(addr, &unsigned).assert_error(401, "invalid_signature");
    // A signature for another body, and one too old, are refused.
    let tampered = payload("txn_tampered", "10");
    signed_post(addr, &tampered, &standard_headers(&body, now()))
        .assert_error(401, "invalid_signature");
    signed_post(addr, &tampered, &standard_headers(&tampered, now() - 600))
        .assert_error(401, "invalid_signature");
    for id in ["txn_unsigned", "txn_tampered"] {
        get_transaction(addr, id).assert_error(404, "not_found");
    }
    assert_eq!(get_transaction(addr, "txn_signed").status, 200);
}

#[test]
fn stripe_and_plain_hmac_signatures_verify() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), "stripe_secret\n");
    let stripe = Daemon::start(
        &dir.path().join("stripe"),
        &[
            "--signature-scheme",
            "stripe",
            "--signing-secrets-file",
            &secrets,
        ],
    );
    let body = payload("txn_stripe", "1");
    let t = now().to_string();
    let signature = hex::encode(mac(
        b"stripe_secret",
        &[t.as_bytes(), b".", body.as_bytes()],
    ));
    let response = signed_post(
        stripe.addr,
        &body,
        &format!("Stripe-Signature: t={t},v1={signature}\r\n"),
    );
    assert_eq!(response.status, 202, "{}", response.body);
    signed_post(stripe.addr, &body, "Stripe-Signature: t=1,v1=00\r\n")
        .assert_error(401, "invalid_signature");

    let hmac = Daemon::start(
        &dir.path().join("hmac"),
        &[
            "--signature-scheme",
            "hmac-sha256",
            "--signing-secrets-file",
            &secrets,
            "--signature-header",
            "X-Razorpay-Signature",
        ],
    );
    let body = payload("txn_hmac", "1");
    let signature = hex::encode(mac(b"stripe_secret", &[body.as_bytes()]));
    let response = signed_post(
        hmac.addr,
        &body,
        &format!("X-Razorpay-Signature: {signature}\r\n"),
    );
    assert_eq!(response.status, 202, "{}", response.body);
    let other = payload("txn_hmac_bad", "1");
    signed_post(
        hmac.addr,
        &other,
        &format!("X-Razorpay-Signature: {signature}\r\n"),
    )
    .assert_error(401, "invalid_signature");
    get_transaction(hmac.addr, "txn_hmac_bad").assert_error(404, "not_found");
}

#[test]
fn unusable_signature_settings_are_one_line_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let bad_secret = secrets_file(dir.path(), "not-a-whsec-secret\n");
    let missing = dir.path().join("no-such-file");
    for (args, mentions) in [
        (
            vec!["--signature-scheme", "stripe"],
            "--signing-secrets-file",
        ),
        (
            vec![
                "--signature-scheme",
                "standard-webhooks",
                "--signing-secrets-file",
                &bad_secret,
            ],
            "whsec_",
        ),
        (
            vec![
                "--signature-scheme",
                "hmac-sha256",
                "--signing-secrets-file",
                &bad_secret,
            ],
            "--signature-header",
        ),
        (
            vec![
                "--signature-scheme",
                "stripe",
                "--signing-secrets-file",
                missing.to_str().unwrap(),
            ],
            "no-such-file",
        ),
    ] {
        // A configuration error: exit 2, which the unit does not restart.
        let (code, stderr) = start_expecting_exit(std::path::Path::new(data), &args);
        let line = assert_one_line_failure(code, &stderr, 2);
        assert!(line.contains(mentions), "{args:?}: {line}");
        assert!(
            !line.contains("not-a-whsec-secret"),
            "a secret leaked: {line}"
        );
    }
    assert!(
        !std::path::Path::new(data).exists(),
        "the data dir was touched"
    );
}

/// Headers for a standard-webhooks request under the `svix-*` names or the
/// `webhook-*` ones.
fn standard_set(prefix: &str, id: &str, timestamp: &str, signature: &str) -> String {
    format!(
        "{prefix}-id: {id}\r\n{prefix}-timestamp: {timestamp}\r\n{prefix}-signature: {signature}\r\n"
    )
}

fn standard_daemon(dir: &std::path::Path) -> Daemon {
    let secrets = secrets_file(dir, &format!("{STANDARD_SECRET}\n"));
    Daemon::start(
        &dir.join("data"),
        &[
            "--signature-scheme",
            "standard-webhooks",
            "--signing-secrets-file",
            &secrets,
        ],
    )
}

#[test]
fn svix_header_names_are_accepted_and_one_request_uses_one_set() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = standard_daemon(dir.path());
    let addr = daemon.addr;
    let key = BASE64.decode(&STANDARD_SECRET["whsec_".len()..]).unwrap();
    let sign = |id: &str, t: &str, body: &str| {
        format!(
            "v1,{}",
            BASE64.encode(mac(
                &key,
                &[id.as_bytes(), b".", t.as_bytes(), b".", body.as_bytes()]
            ))
        )
    };
    let t = now().to_string();

    let body = payload("txn_svix", "1");
    let headers = standard_set("svix", "msg_1", &t, &sign("msg_1", &t, &body));
    let response = signed_post(addr, &body, &headers);
    assert_eq!(response.status, 202, "{}", response.body);

    // Both sets: the webhook-* set decides.
    let body = payload("txn_both_good", "1");
    let headers = standard_set("svix", "msg_2", &t, "v1,AAAA")
        + &standard_set("webhook", "msg_2", &t, &sign("msg_2", &t, &body));
    let response = signed_post(addr, &body, &headers);
    assert_eq!(response.status, 202, "{}", response.body);
    let body = payload("txn_both_bad", "1");
    let headers = standard_set("svix", "msg_3", &t, &sign("msg_3", &t, &body))
        + &standard_set("webhook", "msg_3", &t, "v1,AAAA");
    signed_post(addr, &body, &headers).assert_error(401, "invalid_signature");

    // The sets are never mixed: with a webhook-id, the svix-* signature is not read.
    let body = payload("txn_mixed", "1");
    let headers = format!(
        "webhook-id: msg_4\r\nsvix-timestamp: {t}\r\nsvix-signature: {}\r\n",
        sign("msg_4", &t, &body)
    );
    signed_post(addr, &body, &headers).assert_error(401, "invalid_signature");

    for id in ["txn_both_bad", "txn_mixed"] {
        get_transaction(addr, id).assert_error(404, "not_found");
    }
    for id in ["txn_svix", "txn_both_good"] {
        assert_eq!(get_transaction(addr, id).status, 200, "{id}");
    }
}

/// Signs `body` with the real Python `library`; returns (id, timestamp, signature).
fn sign_with_python(library: &str, id: &str, body: &str) -> (String, String, String) {
    use std::io::Write as _;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/sign_standard_webhooks.py"
    );
    let mut child = std::process::Command::new("python3")
        .args([script, library, STANDARD_SECRET, id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{library} could not sign: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let field = |name: &str| signed[name].as_str().unwrap().to_owned();
    (field("id"), field("timestamp"), field("signature"))
}

#[test]
#[cfg_attr(
    webhookd_no_python_clients,
    ignore = "needs python3 with svix and standardwebhooks (tests/clients/install.sh); never ignored under CI=true"
)]
fn requests_signed_by_the_svix_and_standardwebhooks_libraries_are_accepted() {
    common::require(common::requirements::Need::PythonClients);
    let dir = tempfile::tempdir().unwrap();
    let daemon = standard_daemon(dir.path());
    let addr = daemon.addr;
    for library in ["svix", "standardwebhooks"] {
        // Svix sends svix-* headers by default; the standard names webhook-*.
        for prefix in ["svix", "webhook"] {
            let txn = format!("txn_{library}_{prefix}");
            let body = payload(&txn, "12.50");
            let (id, timestamp, signature) =
                sign_with_python(library, &format!("msg_{txn}"), &body);
            let response = signed_post(
                addr,
                &body,
                &standard_set(prefix, &id, &timestamp, &signature),
            );
            assert_eq!(
                response.status, 202,
                "{library}, {prefix}-*: {}",
                response.body
            );
            assert_eq!(get_transaction(addr, &txn).status, 200);
            // The library's signature is for this body only.
            let other = payload(&format!("{txn}_tampered"), "12.50");
            signed_post(
                addr,
                &other,
                &standard_set(prefix, &id, &timestamp, &signature),
            )
            .assert_error(401, "invalid_signature");
        }
    }
}

/// A 64 KiB body (the default `--max-body-bytes`).
fn body_of_64_kib() -> String {
    let body = format!("{{\"x\":\"{}\"}}", "a".repeat(65536 - 8));
    assert_eq!(body.len(), 65536);
    body
}

#[test]
fn thousands_of_signature_entries_are_refused_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = standard_daemon(dir.path());
    let addr = daemon.addr;
    let body = body_of_64_kib();
    let t = now().to_string();
    // 4,000 empty entries: each used to cost an HMAC over the whole body.
    let attack = vec!["v1,"; 4000].join(" ");
    let response = signed_post(addr, &body, &standard_set("webhook", "msg_1", &t, &attack));
    let error = response.assert_error(401, "invalid_signature");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("more than 16"), "{message}");

    // Up to the cap, a matching entry after 15 others is found.
    let key = BASE64.decode(&STANDARD_SECRET["whsec_".len()..]).unwrap();
    let good = payload("txn_at_cap", "1");
    let signature = BASE64.encode(mac(&key, &[b"msg_2.", t.as_bytes(), b".", good.as_bytes()]));
    let entries = format!("{}v1,{signature}", "v1, ".repeat(15));
    let response = signed_post(addr, &good, &standard_set("webhook", "msg_2", &t, &entries));
    assert_eq!(response.status, 202, "{}", response.body);
    // One more entry is over the cap, even with the matching one among them.
    let over = payload("txn_over_cap", "1");
    let signature = BASE64.encode(mac(&key, &[b"msg_3.", t.as_bytes(), b".", over.as_bytes()]));
    let entries = format!("{}v1,{signature}", "v1, ".repeat(16));
    signed_post(addr, &over, &standard_set("webhook", "msg_3", &t, &entries))
        .assert_error(401, "invalid_signature");
    get_transaction(addr, "txn_over_cap").assert_error(404, "not_found");

    // Stripe's header the same way.
    let secrets = secrets_file(dir.path(), "stripe_secret\n");
    let stripe = Daemon::start(
        &dir.path().join("stripe"),
        &[
            "--signature-scheme",
            "stripe",
            "--signing-secrets-file",
            &secrets,
        ],
    );
    let header = format!("Stripe-Signature: t={t}{}\r\n", ",v1=".repeat(4000));
    let error = signed_post(stripe.addr, &body, &header).assert_error(401, "invalid_signature");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("more than 16"), "{message}");
}
