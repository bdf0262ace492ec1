//! Configuration errors through the real binary: anything wrong with the
//! flags, the environment or a file they name exits 2 (which the systemd
//! unit does not restart) with one line, before the data dir is touched; a
//! half-configured signature setting refuses to start; an empty `WEBHOOKD_*`
//! variable counts as unset; a bad value from the environment is reported
//! under its variable's name.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{BIN, Daemon, assert_one_line_failure, payload, post, refused_at_start, run_to_exit};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An environment variable and its value.
type Env<'a> = (&'a str, &'a str);

#[test]
fn half_configured_signatures_refuse_to_start_naming_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secrets = write(dir.path(), "secrets", "stripe_secret\n");
    let cases: [(Vec<&str>, &[Env], [&str; 2]); 6] = [
        // A secrets file alone used to start with signatures silently off.
        (
            vec!["--signing-secrets-file", &secrets],
            &[],
            ["--signing-secrets-file", "--signature-scheme"],
        ),
        (
            vec![],
            &[("WEBHOOKD_SIGNING_SECRETS_FILE", secrets.as_str())],
            ["--signing-secrets-file", "--signature-scheme"],
        ),
        (
            vec!["--signature-scheme", "standard-webhooks"],
            &[],
            ["--signature-scheme", "--signing-secrets-file"],
        ),
        (
            vec![
                "--signature-scheme",
                "hmac-sha256",
                "--signing-secrets-file",
                &secrets,
            ],
            &[],
            ["--signature-scheme hmac-sha256", "--signature-header"],
        ),
        (
            vec![
                "--signature-scheme",
                "stripe",
                "--signing-secrets-file",
                &secrets,
                "--signature-header",
                "X-Signature",
            ],
            &[],
            ["--signature-header", "--signature-scheme hmac-sha256"],
        ),
        (
            vec!["--signature-header", "X-Signature"],
            &[],
            ["--signature-header", "--signature-scheme"],
        ),
    ];
    for (args, env, flags) in cases {
        let line = refused_at_start(&data, &args, env);
        for flag in flags {
            assert!(
                line.contains(flag),
                "{args:?} {env:?}: {line} should name {flag}"
            );
        }
        assert!(!line.contains("stripe_secret"), "a secret leaked: {line}");
        // Named by the flags, not blamed on the secrets file.
        assert!(!line.contains("(in "), "{line}");
    }
}

#[test]
fn unusable_files_named_by_the_settings_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("no-such-file");
    let missing = missing.to_str().unwrap();
    let a_directory = dir.path().to_str().unwrap();
    let only_comments = write(dir.path(), "comments", "# rotated out\n\n");
    let malformed = write(dir.path(), "malformed", "not-a-whsec-secret\n");
    let good = write(dir.path(), "good", "secret\n");
    for (args, mentions) in [
        (
            vec![
                "--signature-scheme",
                "stripe",
                "--signing-secrets-file",
                missing,
            ],
            missing,
        ),
        (
            vec![
                "--signature-scheme",
                "stripe",
                "--signing-secrets-file",
                a_directory,
            ],
            "--signing-secrets-file",
        ),
        (
            vec![
                "--signature-scheme",
                "stripe",
                "--signing-secrets-file",
                &only_comments,
            ],
            "no secret",
        ),
        (
            vec![
                "--signature-scheme",
                "standard-webhooks",
                "--signing-secrets-file",
                &malformed,
            ],
            "whsec_",
        ),
        (
            vec![
                "--signature-scheme",
                "hmac-sha256",
                "--signing-secrets-file",
                &good,
                "--signature-header",
                "not a header",
            ],
            "--signature-header",
        ),
    ] {
        let line = refused_at_start(&data, &args, &[]);
        assert!(line.contains(mentions), "{args:?}: {line}");
        assert!(line.contains("--signing-secrets-file") || line.contains("--signature-header"));
        assert!(
            !line.contains("not-a-whsec-secret"),
            "a secret leaked: {line}"
        );
    }
}

/// Every `WEBHOOKD_*` variable, as `--help` lists them.
fn environment_variables() -> Vec<String> {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut names: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("WEBHOOKD_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "too few variables in --help: {names:?}");
    names
}

#[test]
fn an_empty_environment_variable_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let variables = environment_variables();
    let mut command = Command::new(BIN);
    // Every variable empty, as `VAR=` lines in the environment file give;
    // the listen address on the command line, which wins anyway.
    command
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .envs(variables.iter().map(|name| (name.as_str(), "")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let daemon = Daemon::spawn(command);
    let ready = daemon
        .stderr_text()
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap()
        .to_owned();
    // Every setting is its default: the data dir, signatures off, no retention.
    for default in [
        "data_dir=./webhookd-data",
        "process_delay=30s",
        "max_body_bytes=65536",
        "queue_depth=4096",
        "max_connections=4096",
        "signatures=\"off\"",
        "access_log=false",
        "retention=off",
    ] {
        assert!(ready.contains(default), "{default} missing from: {ready}");
    }
    assert!(dir.path().join("webhookd-data/webhookd.redb").exists());
    assert_eq!(
        post(daemon.addr, &payload("txn_empty_env", "1")).status,
        202
    );
}

#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (variable, value, flag) in [
        ("WEBHOOKD_PROCESS_DELAY", "abc", "--process-delay"),
        ("WEBHOOKD_RETENTION", "0s", "--retention"),
        ("WEBHOOKD_LOG_FORMAT", "xml", "--log-format"),
        ("WEBHOOKD_MAX_BODY_BYTES", "-1", "--max-body-bytes"),
        ("WEBHOOKD_QUEUE_DEPTH", "0", "--queue-depth"),
        (
            "WEBHOOKD_HEADER_READ_TIMEOUT",
            "soon",
            "--header-read-timeout",
        ),
        ("WEBHOOKD_ACCESS_LOG", "maybe", "--access-log"),
        ("WEBHOOKD_SIGNATURE_SCHEME", "rsa", "--signature-scheme"),
    ] {
        let line = refused_at_start(&data, &[], &[(variable, value)]);
        assert!(
            line.contains(&format!("invalid value '{value}' for {variable} ({flag})")),
            "{line}"
        );
    }

    // The listen address comes from the environment here (not the command line).
    let (code, stderr) = run_to_exit(
        &["--data-dir", data.to_str().unwrap()],
        &[("WEBHOOKD_LISTEN", "nowhere")],
    );
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(
        line.contains("'nowhere' for WEBHOOKD_LISTEN (--listen)"),
        "{line}"
    );
    assert!(!data.exists());

    // A bad value on the command line is named by its flag, whatever the
    // variable holds; and the command line wins over a bad variable.
    let line = refused_at_start(
        &data,
        &["--process-delay", "abc"],
        &[("WEBHOOKD_PROCESS_DELAY", "1s")],
    );
    assert!(line.contains("'--process-delay <DURATION>'"), "{line}");
    assert!(!line.contains("WEBHOOKD_"), "{line}");
    let daemon = Daemon::start_with_env(
        &data,
        &["--process-delay", "1s"],
        &[("WEBHOOKD_PROCESS_DELAY", "abc")],
    );
    assert_eq!(post(daemon.addr, &payload("txn_cli_wins", "1")).status, 202);
}
