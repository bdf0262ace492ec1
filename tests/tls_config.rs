//! TLS settings through the real binary: a certificate without its key (or
//! the reverse), and an unreadable or malformed certificate or key, stop
//! start-up with exit code 2 and one line naming the flag and the file,
//! before the data dir is touched and without printing key bytes; a key
//! that other users can read gets a warning at start.

mod common;
mod tls_support;

use std::path::Path;

use common::{Daemon, refused_at_start};
use tls_support::{Ca, assert_holds_no_secret, key_fragments, write_file};

/// An environment variable and its value.
type Env<'a> = (&'a str, &'a str);

#[test]
fn a_certificate_without_its_key_or_the_reverse_refuses_to_start_naming_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let issued = Ca::new().issue(&["localhost"]);
    let cert = write_file(dir.path(), "cert.pem", &issued.chain_pem, 0o600);
    let key = write_file(dir.path(), "key.pem", &issued.key_pem, 0o600);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let cases: [(Vec<&str>, Vec<Env>); 4] = [
        (vec!["--tls-cert", cert], vec![]),
        (vec!["--tls-key", key], vec![]),
        (vec![], vec![("WEBHOOKD_TLS_CERT", cert)]),
        (vec![], vec![("WEBHOOKD_TLS_KEY", key)]),
    ];
    for (args, env) in cases {
        let line = refused_at_start(&data, &args, &env);
        assert!(
            line.contains("--tls-cert") && line.contains("--tls-key"),
            "{args:?} {env:?}: {line}"
        );
    }
    // Both through the environment is a whole configuration.
    let daemon = Daemon::start_with_env(
        &data,
        &[],
        &[("WEBHOOKD_TLS_CERT", cert), ("WEBHOOKD_TLS_KEY", key)],
    );
    assert!(daemon.stderr_text().contains("listening on"));
}

#[test]
fn unreadable_or_malformed_certificates_and_keys_refuse_to_start_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let other = ca.issue(&["localhost"]);
    let cert = write_file(dir.path(), "cert.pem", &issued.chain_pem, 0o600);
    let key = write_file(dir.path(), "key.pem", &issued.key_pem, 0o600);
    let other_key = write_file(dir.path(), "other-key.pem", &other.key_pem, 0o600);
    let garbage = write_file(dir.path(), "garbage.pem", "not a PEM file at all\n", 0o600);
    let body_line = issued.key_pem.lines().nth(1).unwrap();
    let damaged = write_file(
        dir.path(),
        "damaged-key.pem",
        &issued
            .key_pem
            .replacen(body_line, &format!("{}%%%", &body_line[..20]), 1),
        0o600,
    );
    let missing = dir.path().join("missing.pem");
    // Reading a directory fails even for root, unlike a mode-000 file.
    let directory = dir.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let cases = [
        (
            path(&missing),
            path(&key),
            "cannot read --tls-cert",
            &missing,
        ),
        (
            path(&cert),
            path(&missing),
            "cannot read --tls-key",
            &missing,
        ),
        (
            path(&directory),
            path(&key),
            "cannot read --tls-cert",
            &directory,
        ),
        (
            path(&cert),
            path(&directory),
            "cannot read --tls-key",
            &directory,
        ),
        (path(&garbage), path(&key), "no certificate", &garbage),
        (path(&cert), path(&garbage), "no private key", &garbage),
        (path(&cert), path(&cert), "no private key", &cert),
        (path(&cert), path(&damaged), "damaged PEM", &damaged),
        (path(&cert), path(&other_key), "is not the key", &other_key),
    ];
    let mut secrets = key_fragments(&issued.key_pem);
    secrets.extend(key_fragments(&other.key_pem));
    for (cert, key, expected, named) in cases {
        let line = refused_at_start(&data, &["--tls-cert", &cert, "--tls-key", &key], &[]);
        assert!(line.contains(expected), "{line}");
        assert!(
            line.contains(named.to_str().unwrap()),
            "names the file: {line}"
        );
        assert_holds_no_secret("the refusal", &line, &secrets);
    }
}

#[test]
fn a_key_other_users_can_read_gets_a_warning_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let cert = write_file(dir.path(), "cert.pem", &issued.chain_pem, 0o644);
    let private = write_file(dir.path(), "private.pem", &issued.key_pem, 0o600);
    let shared = write_file(dir.path(), "shared.pem", &issued.key_pem, 0o640);
    let (cert, private, shared) = (
        cert.to_str().unwrap(),
        private.to_str().unwrap(),
        shared.to_str().unwrap(),
    );

    let daemon = Daemon::start(
        &dir.path().join("one"),
        &["--tls-cert", cert, "--tls-key", private],
    );
    let stderr = daemon.stderr_text();
    assert!(!stderr.contains("other users"), "{stderr}");

    let daemon = Daemon::start(
        &dir.path().join("two"),
        &["--tls-cert", cert, "--tls-key", shared],
    );
    let stderr = daemon.stderr_text();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("can be read by other users"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("--tls-key"), "{}", warnings[0]);
    assert!(warnings[0].contains(shared), "{}", warnings[0]);
    assert!(warnings[0].contains("0640"), "{}", warnings[0]);
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    // A warning, not a refusal: it serves.
    let mut connection = tls_support::TlsConnection::connect(
        daemon.addr,
        tls_support::http1_config(&ca),
        "localhost",
    )
    .unwrap();
    assert_eq!(connection.get("/", "").status, 200);
    assert_holds_no_secret("stderr", &stderr, &key_fragments(&issued.key_pem));
}
