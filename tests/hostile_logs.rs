//! What clients can make webhookd write, through the real binary: text
//! they choose is escaped in error messages and in the log (text and JSON
//! formats), so no request writes a line of its own; a flood of bad
//! requests writes a bounded number of warnings plus one line counting the
//! rest; a 503 tells the client a short reason and the log the detail; and
//! a port open beyond this host without signatures is warned about at start.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, DEADLINE, Daemon, connect, get, payload, poll_until, post};
use serde_json::Value;

/// A query parameter whose name, percent-decoded, would start a new log
/// line that looks like an ERROR from webhookd.
const FORGED: &str =
    "/v1/transactions?x%0A2026-11-30T00:00:00.000000Z%20ERROR%20webhookd:%20forged%20line=1";

fn json_lines(daemon: &Daemon) -> Vec<Value> {
    daemon
        .stderr_text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// The 422 for the forged name: the name is named, escaped, on one line.
fn request_forged_line(daemon: &Daemon) {
    let response = get(daemon.addr, FORGED);
    let body = response.assert_error(422, "invalid_field");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(
        message.contains(r"x\n2026-11-30T00:00:00.000000Z ERROR webhookd: forged line"),
        "{message:?}"
    );
    let field = body["error"]["field"].as_str().unwrap();
    assert!(!field.chars().any(char::is_control), "{field:?}");
}

#[test]
fn a_forged_line_in_a_parameter_name_stays_inside_one_escaped_text_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    request_forged_line(&daemon);
    let lines = poll_until(DEADLINE, "the rejection logged", || {
        let text = daemon.stderr_text();
        text.contains("request rejected").then_some(text)
    });
    let forged: Vec<&str> = lines.lines().filter(|l| l.contains("forged")).collect();
    assert_eq!(forged.len(), 1, "{lines}");
    assert!(
        forged[0].contains(" WARN ") && forged[0].contains("request rejected"),
        "{lines}"
    );
    assert!(
        !lines
            .lines()
            .any(|l| l.starts_with("2026-11-30T00:00:00.000000Z")),
        "a forged line reached the log:\n{lines}"
    );
}

#[test]
fn a_forged_line_in_a_parameter_name_stays_inside_one_escaped_json_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--log-format", "json"]);
    request_forged_line(&daemon);
    let lines = poll_until(DEADLINE, "the rejection logged", || {
        let lines = json_lines(&daemon);
        lines.iter().any(|l| l["level"] == "WARN").then_some(lines)
    });
    let forged: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("forged"))
        .collect();
    assert_eq!(forged.len(), 1, "{lines:?}");
    let message = forged[0]["fields"]["message"].as_str().unwrap();
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(message.contains(r"x\n2026-11-30"), "{message:?}");
}

#[test]
fn a_flood_of_bad_requests_writes_a_bounded_number_of_warnings_and_counts_the_rest() {
    const CONNECTIONS: usize = 5;
    const PER_CONNECTION: usize = 100;
    let total = CONNECTIONS * PER_CONNECTION;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--log-format", "json"]);
    let addr = daemon.addr;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..CONNECTIONS {
            scope.spawn(move || {
                let mut stream = connect(addr);
                let request = "GET /v1/transactions?bogus=1 HTTP/1.1\r\nHost: t\r\n";
                let mut pipelined = format!("{request}\r\n").repeat(PER_CONNECTION - 1);
                pipelined.push_str(request);
                pipelined.push_str("Connection: close\r\n\r\n");
                stream.write_all(pipelined.as_bytes()).unwrap();
                let mut answers = String::new();
                stream.read_to_string(&mut answers).unwrap();
                assert_eq!(
                    answers.matches("HTTP/1.1 422 ").count(),
                    PER_CONNECTION,
                    "{answers}"
                );
            });
        }
    });
    let elapsed = started.elapsed();
    let limit = webhookd::http::MAX_WARNINGS_PER_SECOND as usize;
    // Once every window is over, each rejection is either a line of its
    // own or counted in a summary line.
    let (written, suppressed) = poll_until(DEADLINE, "every rejection accounted for", || {
        let lines = json_lines(&daemon);
        let warnings = lines.iter().filter(|l| l["level"] == "WARN");
        let written = warnings
            .clone()
            .filter(|l| l["fields"]["code"] == "invalid_field")
            .count();
        let suppressed: u64 = warnings
            .filter_map(|l| l["fields"]["suppressed"].as_u64())
            .sum();
        let suppressed = usize::try_from(suppressed).unwrap();
        (written + suppressed == total).then_some((written, suppressed))
    });
    eprintln!(
        "{total} rejected requests in {elapsed:?}: {written} warning lines, {suppressed} counted in summary lines"
    );
    let windows = usize::try_from(elapsed.as_secs()).unwrap() + 2;
    assert!(
        written <= limit * windows,
        "{written} warnings in {elapsed:?}"
    );
    assert!(suppressed > 0, "the flood was not limited");
}

#[test]
#[cfg_attr(
    webhookd_no_tmpfs,
    ignore = "needs root (CAP_SYS_ADMIN) to mount a tmpfs; never ignored under CI=true"
)]
fn a_full_disk_gives_clients_a_short_reason_and_the_log_the_detail() {
    let mount = common::Tmpfs::mounted("size=1m");
    let daemon = Daemon::start(mount.path(), &["--log-format", "json"]);
    let big = |n: usize| {
        payload(&format!("{}_{n}", "p".repeat(240)), "1")
            .replace("acc_user_789", &"s".repeat(250))
            .replace("acc_merchant_456", &"d".repeat(250))
    };
    let mut n = 0;
    let refused = poll_until(Duration::from_secs(120), "a 503 on a full disk", || {
        n += 1;
        let response = post(daemon.addr, &big(n));
        (response.status != 202).then_some(response)
    });
    let body = refused.assert_error(503, "unavailable");
    assert_eq!(
        body["error"]["message"],
        "not stored, try again later: storage is failing"
    );
    let health = get(daemon.addr, "/");
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["reason"], "storage is failing");
    // The operator gets what failed.
    let detail = poll_until(DEADLINE, "the rejection's detail logged", || {
        json_lines(&daemon).into_iter().find_map(|l| {
            (l["fields"]["code"] == "unavailable")
                .then(|| l["fields"]["detail"].as_str().map(str::to_owned))
                .flatten()
        })
    });
    assert!(detail.contains("storage"), "{detail}");
    assert_ne!(detail, "storage is failing");
}

/// Starts webhookd with exactly these arguments (no `--listen` added).
fn start_with(dir: &Path, args: &[&str]) -> Daemon {
    let mut command = Command::new(BIN);
    command
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Daemon::spawn(command)
}

fn exposure_warnings(daemon: &Daemon) -> usize {
    daemon
        .stderr_text()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("--signature-scheme"))
        .count()
}

#[test]
fn a_port_open_beyond_this_host_without_signatures_is_warned_about_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let open = start_with(&dir.path().join("open"), &["--listen", "0.0.0.0:0"]);
    assert_eq!(exposure_warnings(&open), 1, "{}", open.stderr_text());
    assert_eq!(get(open.addr, "/").status, 200);
    assert_eq!(exposure_warnings(&open), 1, "{}", open.stderr_text());

    let local = start_with(&dir.path().join("local"), &["--listen", "127.0.0.1:0"]);
    assert_eq!(exposure_warnings(&local), 0, "{}", local.stderr_text());

    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "a_secret\n").unwrap();
    let signed = start_with(
        &dir.path().join("signed"),
        &[
            "--listen",
            "0.0.0.0:0",
            "--signature-scheme",
            "hmac-sha256",
            "--signing-secrets-file",
            secrets.to_str().unwrap(),
            "--signature-header",
            "X-Signature",
        ],
    );
    assert_eq!(exposure_warnings(&signed), 0, "{}", signed.stderr_text());
}
