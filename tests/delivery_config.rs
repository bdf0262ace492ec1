//! Delivery settings that cannot work stop start-up with exit code 2 and
//! one line naming the flag, before the data directory is touched.

mod common;

use common::{assert_one_line_failure, refused_at_start, run_to_exit};

/// Runs webhookd with `args` on a data dir that must not exist afterwards;
/// returns the one line it printed.
#[track_caller]
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    refused_at_start(&dir.path().join("data"), args, &[])
}

#[test]
fn bad_destinations_are_refused_naming_the_flag() {
    for url in [
        "ftp://example.com/hook",
        "example.com/hook",
        "http://",
        "https://user:pw@h/x",
        "not a url",
    ] {
        let line = refused(&["--deliver-to", url]);
        assert!(line.contains("--deliver-to"), "{url}: {line}");
    }
}

#[test]
fn delivery_options_without_deliver_to_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "whsec_c2VjcmV0\n").unwrap();
    let file = file.to_str().unwrap();
    for (flag, value) in [
        ("--deliver-signing-secret-file", file),
        ("--retry-schedule", "0s,5s"),
        ("--deliver-timeout", "5s"),
        ("--deliver-concurrency", "4"),
        ("--deliver-ca-file", file),
    ] {
        let line = refused(&[flag, value]);
        assert!(
            line.contains(flag) && line.contains("--deliver-to"),
            "{line}"
        );
    }
    let (code, stderr) = run_to_exit(
        &[
            "--data-dir",
            dir.path().join("env").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("WEBHOOKD_RETRY_SCHEDULE", "1s")],
    );
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("--retry-schedule"), "{line}");
}

#[test]
fn bad_schedules_files_and_half_mutual_tls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let plain_secret = dir.path().join("secret");
    std::fs::write(&plain_secret, "hunter2\n").unwrap();
    let plain_secret = plain_secret.to_str().unwrap();
    let http = ["--deliver-to", "http://127.0.0.1:9/hook"];
    let https = ["--deliver-to", "https://localhost:9/hook"];
    for (args, flag) in [
        (vec!["--retry-schedule", ""], "--retry-schedule"),
        (vec!["--retry-schedule", "1s,soon"], "--retry-schedule"),
        (vec!["--deliver-timeout", "0s"], "--deliver-timeout"),
        (vec!["--deliver-concurrency", "0"], "--deliver-concurrency"),
        (
            vec!["--deliver-signing-secret-file", missing],
            "--deliver-signing-secret-file",
        ),
        (
            vec!["--deliver-signing-secret-file", plain_secret],
            "--deliver-signing-secret-file",
        ),
        (vec!["--deliver-ca-file", garbage], "--deliver-ca-file"),
        (
            vec!["--deliver-client-cert", garbage],
            "--deliver-client-key",
        ),
        (
            vec!["--deliver-client-key", garbage],
            "--deliver-client-cert",
        ),
    ] {
        let base: &[&str] = if flag.contains("ca-file") || flag.contains("client") {
            &https
        } else {
            &http
        };
        let mut all = base.to_vec();
        all.extend(args);
        let line = refused(&all);
        assert!(line.contains(flag), "{all:?}: {line}");
        assert!(!line.contains("hunter2"), "a secret was printed: {line}");
    }
    let line = refused(&[
        "--deliver-to",
        "https://localhost:9/hook",
        "--deliver-ca-file",
        missing,
    ]);
    assert!(
        line.contains("--deliver-ca-file") && line.contains("missing.pem"),
        "{line}"
    );
    let line = refused(&[
        "--deliver-to",
        "http://localhost:9/hook",
        "--deliver-ca-file",
        garbage,
    ]);
    assert!(
        line.contains("--deliver-ca-file") && line.contains("https://"),
        "{line}"
    );
}
