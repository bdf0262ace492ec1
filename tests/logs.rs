//! What webhookd logs: a start-up line with its settings and the pending
//! jobs it recovered, rejected requests at warn with their reason, and with
//! `--access-log` one line per request. Never payloads.

mod common;

use std::time::Duration;

use common::{Daemon, get, payload, poll_until, post};

fn json_lines(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .stderr_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn the_start_up_line_names_the_version_settings_and_recovered_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    for i in 0..3 {
        assert_eq!(
            post(daemon.addr, &payload(&format!("txn_log_{i}"), "1")).status,
            202
        );
    }
    daemon.kill();
    let daemon = Daemon::start(
        dir.path(),
        &["--process-delay", "1h", "--log-format", "json"],
    );
    let ready = json_lines(&daemon)
        .into_iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on"))
        })
        .expect("a JSON ready line");
    let fields = &ready["fields"];
    assert_eq!(fields["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(fields["pending_jobs"], 3);
    assert_eq!(fields["process_delay"], "1h");
    assert_eq!(fields["signatures"], "off");
}

#[test]
fn access_log_lines_and_rejections_never_carry_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--access-log", "--log-format", "json"]);
    let addr = daemon.addr;
    let secret_account = "acc_private_4711";
    let body = payload("txn_logged", "1").replace("acc_user_789", secret_account);
    assert_eq!(post(addr, &body).status, 202);
    assert_eq!(
        post(addr, &body.replace("\"1\"", "2").replace(":1,", ":2,")).status,
        409
    );
    assert_eq!(post(addr, "{\"transaction_id\":7}").status, 422);
    assert_eq!(get(addr, "/nope").status, 404);

    let lines = poll_until(Duration::from_secs(10), "four access lines", || {
        let lines = json_lines(&daemon);
        let access = lines
            .iter()
            .filter(|l| l["target"] == "webhookd::access")
            .count();
        (access >= 4).then_some(lines)
    });
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "webhookd::access")
        .collect();
    let accepted = access
        .iter()
        .find(|l| l["fields"]["status"] == 202)
        .expect("an access line for the 202");
    assert_eq!(accepted["fields"]["method"], "POST");
    assert_eq!(accepted["fields"]["path"], "/v1/webhooks/transactions");
    assert_eq!(accepted["fields"]["transaction_id"], "txn_logged");
    assert!(accepted["fields"]["latency_us"].is_u64());

    let warnings: Vec<_> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert!(
        warnings
            .iter()
            .any(|w| w["fields"]["code"] == "conflict"
                && w["fields"]["transaction_id"] == "txn_logged"),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w["fields"]["code"] == "invalid_field")
    );
    assert!(
        !warnings.iter().any(|w| w["fields"]["status"] == 404),
        "404 logged at warn"
    );
    assert!(
        !daemon.stderr_text().contains(secret_account),
        "a payload field reached the log"
    );
}
