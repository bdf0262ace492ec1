//! Real providers' webhooks through the real binary with the payload maps
//! webhookd ships (`packaging/examples/`, installed under
//! `/usr/share/doc/webhookd/examples/`): Stripe's `payment_intent.succeeded`
//! signed the way Stripe signs (`Stripe-Signature: t=…,v1=<hex HMAC of
//! "t.body">`) and Razorpay's `payment.captured` signed the way Razorpay
//! signs (hex HMAC of the body in `X-Razorpay-Signature`), written from
//! the providers' published examples. Each becomes its transaction with
//! the exact amount, a redelivery is a duplicate, and other event types
//! are answered 200 IGNORED and store nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{BIN, DEADLINE, Daemon, Response, get, get_transaction, send_raw};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const STRIPE_SECRET: &str = "whsec_test_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH";
const RAZORPAY_SECRET: &str = "razorpay-webhook-secret-7Qm2";

fn examples(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/examples")
        .join(file)
}

fn test_data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex_hmac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` with the provider's `Content-Type` and extra headers.
fn post_as(addr: std::net::SocketAddr, content_type: &str, headers: &str, body: &str) -> Response {
    send_raw(
        addr,
        format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: {content_type}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// As Stripe sends an event: `application/json; charset=utf-8`, signed
/// over `{t}.{body}` with the endpoint secret's bytes.
fn post_stripe(addr: std::net::SocketAddr, body: &str) -> Response {
    let t = now().to_string();
    let v1 = hex_hmac(
        STRIPE_SECRET.as_bytes(),
        &[t.as_bytes(), b".", body.as_bytes()],
    );
    post_as(
        addr,
        "application/json; charset=utf-8",
        &format!("Stripe-Signature: t={t},v1={v1}\r\n"),
        body,
    )
}

/// As Razorpay sends an event: hex HMAC-SHA256 of the raw body.
fn post_razorpay(addr: std::net::SocketAddr, body: &str) -> Response {
    let signature = hex_hmac(RAZORPAY_SECRET.as_bytes(), &[body.as_bytes()]);
    post_as(
        addr,
        "application/json",
        &format!("X-Razorpay-Signature: {signature}\r\n"),
        body,
    )
}

/// `text` with `from` replaced by `to`, which must occur exactly `times`.
#[track_caller]
fn replaced(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(text.matches(from).count(), times, "{from:?} in the sample");
    text.replace(from, to)
}

/// The shipped Stripe sample as another payment intent in another currency.
fn stripe_event(pi: &str, amount: u64, currency: &str) -> String {
    let sample = read(&examples("stripe-payment_intent.succeeded.json"));
    let body = replaced(&sample, "pi_3QkGz5LkdIwHu7ix1Jd6YxQb", pi, 2);
    let body = replaced(&body, "150050", &amount.to_string(), 2);
    replaced(
        &body,
        "\"currency\": \"inr\"",
        &format!("\"currency\": \"{currency}\""),
        1,
    )
}

/// Starts webhookd with a shipped map and a signature scheme.
fn start(dir: &Path, map: &str, secret: &str, signature: &[&str]) -> Daemon {
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{secret}\n")).unwrap();
    let map = examples(map);
    let mut args = vec![
        "--process-delay",
        "1h",
        "--payload-map",
        map.to_str().unwrap(),
        "--signing-secrets-file",
        secrets.to_str().unwrap(),
    ];
    args.extend(signature);
    Daemon::start(&dir.join("data"), &args)
}

/// Stops the daemon and runs `webhookd check` on its data dir; returns stdout.
fn stop_and_check(daemon: Daemon, dir: &Path) -> String {
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "check: {stderr}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[track_caller]
fn assert_accepted(response: &Response, id: &str, duplicate: bool) {
    assert_eq!(response.status, 202, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"transaction_id": id, "status": "PROCESSING", "duplicate": duplicate})
    );
}

/// The stored transaction's fields, the amount as its exact JSON text.
fn stored(addr: std::net::SocketAddr, id: &str) -> (String, String, String, String) {
    let response = get_transaction(addr, id);
    assert_eq!(response.status, 200, "{}", response.body);
    // The amount's text, as the server wrote it (not through f64).
    let raw: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(&response.body).unwrap();
    let body = response.json();
    let text = |key: &str| body[key].as_str().unwrap().to_owned();
    (
        text("source_account"),
        text("destination_account"),
        raw["amount"].get().to_owned(),
        text("currency"),
    )
}

fn webhooks_metric(addr: std::net::SocketAddr, outcome: &str) -> u64 {
    let text = get(addr, "/metrics").body;
    let prefix = format!("webhookd_webhooks_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn stripe_events_become_transactions_with_exact_amounts_and_other_types_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(
        dir.path(),
        "stripe.toml",
        STRIPE_SECRET,
        &["--signature-scheme", "stripe"],
    );
    let addr = daemon.addr;

    // The shipped sample: 150050 minor units of INR.
    let inr = read(&examples("stripe-payment_intent.succeeded.json"));
    let response = post_stripe(addr, &inr);
    assert_accepted(&response, "pi_3QkGz5LkdIwHu7ix1Jd6YxQb", false);
    assert_eq!(
        stored(addr, "pi_3QkGz5LkdIwHu7ix1Jd6YxQb"),
        (
            "cus_RdlPq3uNsbSQ0x".to_owned(),
            "platform".to_owned(),
            "1500.5".to_owned(),
            "INR".to_owned()
        )
    );
    // Yen have no minor unit: the amount is unchanged.
    let jpy = stripe_event("pi_3QkJpyLkdIwHu7ix0Yen00001", 5000, "jpy");
    assert_accepted(
        &post_stripe(addr, &jpy),
        "pi_3QkJpyLkdIwHu7ix0Yen00001",
        false,
    );
    assert_eq!(stored(addr, "pi_3QkJpyLkdIwHu7ix0Yen00001").2, "5000");
    // Kuwaiti dinar: three decimal places.
    let kwd = stripe_event("pi_3QkKwdLkdIwHu7ix0Fils0001", 12_345, "kwd");
    assert_accepted(
        &post_stripe(addr, &kwd),
        "pi_3QkKwdLkdIwHu7ix0Fils0001",
        false,
    );
    let (_, _, amount, currency) = stored(addr, "pi_3QkKwdLkdIwHu7ix0Fils0001");
    assert_eq!((amount.as_str(), currency.as_str()), ("12.345", "KWD"));
    // A Connect event names the connected account it comes from.
    let connect = replaced(
        &stripe_event("pi_3QkConnLkdIwHu7ix0Acct0001", 2000, "usd"),
        "\"object\": \"event\",",
        "\"object\": \"event\",\n  \"account\": \"acct_1Q0ConnectedAcct\",",
        1,
    );
    assert_accepted(
        &post_stripe(addr, &connect),
        "pi_3QkConnLkdIwHu7ix0Acct0001",
        false,
    );
    assert_eq!(
        stored(addr, "pi_3QkConnLkdIwHu7ix0Acct0001").1,
        "acct_1Q0ConnectedAcct"
    );

    // Stripe's redelivery of an event (signed anew) is a duplicate.
    assert_accepted(
        &post_stripe(addr, &inr),
        "pi_3QkGz5LkdIwHu7ix1Jd6YxQb",
        true,
    );

    // Another event type: 200 IGNORED, nothing stored.
    let failed = read(&test_data("stripe-payment_intent.payment_failed.json"));
    let response = post_stripe(addr, &failed);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"status": "IGNORED", "event": "payment_intent.payment_failed"})
    );
    get_transaction(addr, "pi_3QkH4tLkdIwHu7ix0WbR8yTe").assert_error(404, "not_found");
    assert_eq!(webhooks_metric(addr, "ignored"), 1);
    assert_eq!(webhooks_metric(addr, "accepted"), 4);

    // Unsigned, or signed with another secret: refused before mapping.
    post_as(addr, "application/json", "", &inr).assert_error(401, "invalid_signature");

    let listed = get(addr, "/v1/transactions").json();
    assert_eq!(listed["transactions"].as_array().unwrap().len(), 4);
    assert_eq!(
        stop_and_check(daemon, dir.path()),
        "ok: 4 transactions (4 processing, 0 processed), 4 pending jobs, 4 original bodies"
    );
}

#[test]
fn razorpay_events_become_transactions_with_exact_amounts_and_other_events_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(
        dir.path(),
        "razorpay.toml",
        RAZORPAY_SECRET,
        &[
            "--signature-scheme",
            "hmac-sha256",
            "--signature-header",
            "X-Razorpay-Signature",
        ],
    );
    let addr = daemon.addr;

    let captured = read(&examples("razorpay-payment.captured.json"));
    assert_accepted(&post_razorpay(addr, &captured), "pay_DESlfW9H8K9uqM", false);
    assert_eq!(
        stored(addr, "pay_DESlfW9H8K9uqM"),
        (
            "gaurav.kumar@example.com".to_owned(),
            "acc_BFQ7uQEaa7j2z7".to_owned(),
            "1500.5".to_owned(),
            "INR".to_owned()
        )
    );
    // With a customer id, that is the source; a Bahraini dinar amount
    // keeps three places.
    let bhd = replaced(
        &replaced(
            &replaced(&captured, "pay_DESlfW9H8K9uqM", "pay_BhdPayment0001", 1),
            "\"currency\": \"INR\"",
            "\"currency\": \"BHD\"",
            1,
        ),
        "\"email\":",
        "\"customer_id\": \"cust_BtQNqzmBlAXyTY\",\n        \"email\":",
        1,
    );
    assert_accepted(&post_razorpay(addr, &bhd), "pay_BhdPayment0001", false);
    let (source, _, amount, currency) = stored(addr, "pay_BhdPayment0001");
    assert_eq!(
        (source.as_str(), amount.as_str(), currency.as_str()),
        ("cust_BtQNqzmBlAXyTY", "150.05", "BHD")
    );

    assert_accepted(&post_razorpay(addr, &captured), "pay_DESlfW9H8K9uqM", true);

    let failed = read(&test_data("razorpay-payment.failed.json"));
    let response = post_razorpay(addr, &failed);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"status": "IGNORED", "event": "payment.failed"})
    );
    get_transaction(addr, "pay_DESrEjb0eCkBUj").assert_error(404, "not_found");

    // The signature covers the raw body: one changed byte is refused.
    let tampered = captured.replace("150050", "150051");
    let signature = hex_hmac(RAZORPAY_SECRET.as_bytes(), &[captured.as_bytes()]);
    post_as(
        addr,
        "application/json",
        &format!("X-Razorpay-Signature: {signature}\r\n"),
        &tampered,
    )
    .assert_error(401, "invalid_signature");

    assert_eq!(
        stop_and_check(daemon, dir.path()),
        "ok: 2 transactions (2 processing, 0 processed), 2 pending jobs, 2 original bodies"
    );
}

/// `webhookd check-map MAP SAMPLE`: exit code, stdout as JSON, stderr.
fn check_map(map: &Path, sample: &Path) -> (Option<i32>, Value, String) {
    let output = Command::new(BIN)
        .arg("check-map")
        .arg(map)
        .arg(sample)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    (
        output.status.code(),
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_map_shows_what_the_shipped_samples_become_under_the_shipped_maps() {
    let (code, transaction, _) = check_map(
        &examples("stripe.toml"),
        &examples("stripe-payment_intent.succeeded.json"),
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        transaction,
        json!({
            "transaction_id": "pi_3QkGz5LkdIwHu7ix1Jd6YxQb",
            "source_account": "cus_RdlPq3uNsbSQ0x",
            "destination_account": "platform",
            "amount": 1500.5,
            "currency": "INR"
        })
    );
    let (code, transaction, _) = check_map(
        &examples("razorpay.toml"),
        &examples("razorpay-payment.captured.json"),
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        transaction,
        json!({
            "transaction_id": "pay_DESlfW9H8K9uqM",
            "source_account": "gaurav.kumar@example.com",
            "destination_account": "acc_BFQ7uQEaa7j2z7",
            "amount": 1500.5,
            "currency": "INR"
        })
    );

    // An event the map does not take: what the daemon would answer.
    let (code, answer, stderr) = check_map(
        &examples("stripe.toml"),
        &test_data("stripe-payment_intent.payment_failed.json"),
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        answer,
        json!({"status": "IGNORED", "event": "payment_intent.payment_failed"})
    );
    assert!(stderr.contains("ignored"), "{stderr}");
    let (code, answer, _) = check_map(
        &examples("razorpay.toml"),
        &test_data("razorpay-payment.failed.json"),
    );
    assert_eq!(
        (code, answer["status"].as_str()),
        (Some(0), Some("IGNORED"))
    );

    // A body the map cannot resolve: the exact error, exit 1.
    let (code, error, stderr) = check_map(
        &examples("razorpay.toml"),
        &examples("stripe-payment_intent.succeeded.json"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        error,
        json!({"error": {
            "code": "invalid_field",
            "message": "event is required (nothing at /event)",
            "field": "event"
        }})
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("422"), "{stderr}");
}
