//! No secret reaches the log, the metrics or an answer: one daemon runs
//! with every secret configured (TLS key, admin token, signing secret),
//! at the most verbose log level and with the access log on, and is put
//! through every error that involves them (bad signatures, bad tokens,
//! failed handshakes, plain HTTP on the TLS port, failed and successful
//! reloads); then everything it wrote and answered is searched for the
//! secrets' bytes.

mod common;
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{DEADLINE, Daemon, now_millis, payload, poll_until};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;
use tls_support::{
    Ca, H2Client, TlsConnection, assert_holds_no_secret, http1_config, key_fragments, runtime,
    tls_args, write_file,
};

const TOKEN: &str = "adm_Qm9vdHN0cmFwVG9rZW5Gb3JUZXN0cw";
const NEW_TOKEN: &str = "adm_U2Vjb25kVG9rZW5BZnRlclJlbG9hZA";
const SIGNING_SECRET: &str = "whsk_c3RyaXBlU2lnbmluZ1NlY3JldEZvclRlc3Q";

/// A Stripe-Signature header for `body`, signed now with `secret`.
fn stripe_signature(body: &str, secret: &str) -> String {
    let t = now_millis() / 1000;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn signed_post(body: &str, signature: &str, authorization: &str) -> String {
    format!(
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nStripe-Signature: {signature}\r\n{authorization}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Signed, badly signed and unsigned webhooks; tokens right and wrong;
/// over HTTP/1.1 and HTTP/2. Returns every answer's body.
fn requests_with_and_without_secrets(daemon: &Daemon, ca: &Ca) -> String {
    let mut answers = String::new();
    let mut h1 = TlsConnection::connect(daemon.addr, http1_config(ca), "localhost").unwrap();
    let body = payload("txn_secret_1", "1");
    let signature = stripe_signature(&body, SIGNING_SECRET);
    let get = |path: &str, authorization: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {authorization}\r\n\r\n")
    };
    let exchanges = [
        (signed_post(&body, &signature, ""), 202),
        (
            signed_post(&body, &stripe_signature(&body, "another secret"), ""),
            401,
        ),
        (signed_post(&body, "t=1,v1=00", ""), 401),
        (
            signed_post(
                &body,
                &signature,
                &format!("Authorization: Bearer {TOKEN}\r\n"),
            ),
            202,
        ),
        (get("/v1/transactions", &format!("Bearer {TOKEN}x")), 401),
        (get("/v1/transactions", &format!("Basic {TOKEN}")), 401),
        (
            get("/v1/transactions/txn_secret_1", &format!("Bearer {TOKEN}")),
            200,
        ),
    ];
    for (request, status) in exchanges {
        let response = h1.exchange(&request).unwrap();
        assert_eq!(response.status, status, "{request}\n{}", response.body);
        answers.push_str(&response.body);
    }
    runtime().block_on(async {
        let mut h2 = H2Client::connect(daemon.addr, ca).await;
        let body = payload("txn_secret_2", "2");
        for (signature, status) in [
            (stripe_signature(&body, SIGNING_SECRET), 202),
            (stripe_signature(&body, TOKEN), 401),
        ] {
            let request = hyper::Request::post("https://localhost/v1/webhooks/transactions")
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let response = h2.send(request).await.unwrap();
            assert_eq!(response.status, status, "{}", response.body);
            answers.push_str(&response.body);
        }
        let wrong = format!("Bearer {NEW_TOKEN}");
        let refused = h2.get("/metrics", &[("authorization", &wrong)]).await;
        assert_eq!(refused.status, 401);
        answers.push_str(&refused.body);
    });
    answers
}

/// A client trusting another CA, plain HTTP, and a garbage record.
fn failed_handshakes(daemon: &Daemon) {
    assert!(TlsConnection::connect(daemon.addr, http1_config(&Ca::new()), "localhost").is_err());
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut stream = TcpStream::connect(daemon.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
}

/// Reloads that fail (a key cut short, a malformed token file), then one
/// that puts `NEW_TOKEN` in force.
fn reloads(daemon: &Daemon, dir: &Path, key_pem: &str) {
    let logged = |text: &str| daemon.stderr_text().matches(text).count();
    write_file(dir, "key.pem", &key_pem[..200], 0o600);
    daemon.signal("HUP");
    poll_until(DEADLINE, "failed reload", || {
        (logged("reload failed") == 1).then_some(())
    });
    write_file(dir, "key.pem", key_pem, 0o600);
    write_file(dir, "token", &format!("{NEW_TOKEN} {TOKEN}\n"), 0o600);
    daemon.signal("HUP");
    poll_until(DEADLINE, "failed reload", || {
        (logged("reload failed") == 2).then_some(())
    });
    write_file(dir, "token", NEW_TOKEN, 0o644);
    daemon.signal("HUP");
    poll_until(DEADLINE, "reload", || {
        (logged("SIGHUP: reloaded") == 1).then_some(())
    });
}

#[test]
fn no_key_token_or_signing_secret_reaches_the_log_the_metrics_or_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let token_file = write_file(dir.path(), "token", TOKEN, 0o600);
    let secrets_file = write_file(dir.path(), "signing", SIGNING_SECRET, 0o600);
    let mut args = tls_args(dir.path(), &issued);
    args.extend(
        [
            "--admin-token-file",
            token_file.to_str().unwrap(),
            "--signature-scheme",
            "stripe",
            "--signing-secrets-file",
            secrets_file.to_str().unwrap(),
            "--access-log",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(&dir.path().join("data"), &args, &[("RUST_LOG", "trace")]);

    let answers = requests_with_and_without_secrets(&daemon, &ca);
    failed_handshakes(&daemon);
    reloads(&daemon, dir.path(), &issued.key_pem);
    let mut h1 = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    let metrics = h1.get(
        "/metrics",
        &format!("Authorization: Bearer {NEW_TOKEN}\r\n"),
    );
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert!(metrics.body.contains("webhookd_http_requests_total"));

    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    // The daemon logged at trace level: the search covers a lot.
    assert!(stderr.lines().count() > 100, "{stderr}");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
    assert!(stderr.contains("can be read by other users"), "{stderr}");

    let mut secrets = key_fragments(&issued.key_pem);
    secrets.extend([TOKEN, NEW_TOKEN, SIGNING_SECRET].map(str::to_owned));
    // Parts of them too: a secret cut or split in a log line still leaks.
    for secret in [TOKEN, NEW_TOKEN, SIGNING_SECRET] {
        secrets.push(secret[4..20].to_owned());
        secrets.push(hex::encode(secret.as_bytes())[..24].to_owned());
    }
    assert_holds_no_secret("stderr", &stderr, &secrets);
    assert_holds_no_secret("the answers", &answers, &secrets);
    assert_holds_no_secret("/metrics", &metrics.body, &secrets);
}
