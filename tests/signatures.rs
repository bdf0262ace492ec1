//! Signature verification through the real binary: off by default; when a
//! scheme and secrets are configured, a POST without a valid signature is
//! 401 `invalid_signature` and nothing is stored.

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
        let (code, stderr) = start_expecting_exit(std::path::Path::new(data), &args);
        let line = assert_one_line_failure(code, &stderr, 1);
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
