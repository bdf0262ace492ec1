//! `--admin-listen`: the public socket serves `GET /` and the webhook
//! only, the admin socket everything else plus `GET /`; its ready line
//! follows the public one. A public socket beyond loopback without an
//! admin socket is warned about at start.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{BIN, Daemon, get, payload, post, request, transaction_path};

/// The address in the `admin listening on IP:PORT` line.
/// It comes right after the public ready line, which `Daemon::start` waits for.
fn admin_address(daemon: &Daemon) -> SocketAddr {
    common::poll_until(common::DEADLINE, "the admin ready line", || {
        let stderr = daemon.stderr_text();
        let line = stderr.lines().find(|l| l.contains("admin listening on "))?;
        common::ready_address(&line[line.find("admin listening on ").unwrap() + 6..])
    })
}

fn start(dir: &Path, args: &[&str]) -> Daemon {
    let mut command = Command::new(BIN);
    command
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Daemon::spawn(command)
}

#[test]
fn with_an_admin_socket_the_public_one_serves_only_health_and_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--admin-listen", "127.0.0.1:0", "--process-delay", "1h"],
    );
    let public = daemon.addr;
    let admin = admin_address(&daemon);
    assert_ne!(public, admin);
    let stderr = daemon.stderr_text();
    let public_line = stderr
        .lines()
        .position(|l| l.contains("listening on") && !l.contains("admin listening"))
        .unwrap();
    let admin_line = stderr
        .lines()
        .position(|l| l.contains("admin listening on"))
        .unwrap();
    assert!(public_line < admin_line, "{stderr}");

    assert_eq!(get(public, "/").status, 200);
    assert_eq!(post(public, &payload("txn_public", "5")).status, 202);
    for path in [
        transaction_path("txn_public"),
        "/v1/transactions".to_owned(),
        "/metrics".to_owned(),
        format!("{}/attempts", transaction_path("txn_public")),
        "/v1/redeliveries/rdl_1".to_owned(),
    ] {
        get(public, &path).assert_error(404, "not_found");
    }
    request(
        public,
        "POST",
        &format!("{}/redeliver", transaction_path("txn_public")),
    )
    .assert_error(404, "not_found");
    request(public, "POST", "/v1/redeliveries").assert_error(404, "not_found");

    assert_eq!(get(admin, "/").status, 200);
    assert_eq!(get(admin, &transaction_path("txn_public")).status, 200);
    assert_eq!(get(admin, "/v1/transactions").status, 200);
    assert_eq!(get(admin, "/metrics").status, 200);
    assert_eq!(
        get(
            admin,
            &format!("{}/attempts", transaction_path("txn_public"))
        )
        .status,
        200
    );
    post(admin, &payload("txn_admin", "5")).assert_error(404, "not_found");
}

#[test]
fn without_an_admin_socket_the_public_one_serves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    assert_eq!(post(daemon.addr, &payload("txn_both", "5")).status, 202);
    assert_eq!(get(daemon.addr, &transaction_path("txn_both")).status, 200);
    assert_eq!(get(daemon.addr, "/metrics").status, 200);
    assert!(!daemon.stderr_text().contains("admin listening on"));
}

fn exposure_warnings(daemon: &Daemon) -> Vec<String> {
    daemon
        .stderr_text()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("beyond this host"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_public_socket_beyond_loopback_without_an_admin_socket_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "whsec_c2VjcmV0\n").unwrap();
    let signed = [
        "--signature-scheme",
        "standard-webhooks",
        "--signing-secrets-file",
        secrets.to_str().unwrap(),
    ];
    let mut args = vec!["--listen", "0.0.0.0:0"];
    args.extend(signed);
    let open = start(&dir.path().join("open"), &args);
    let warnings = exposure_warnings(&open);
    assert_eq!(warnings.len(), 1, "{}", open.stderr_text());
    assert!(
        warnings[0].contains("transaction data is readable by anyone"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("--admin-listen"), "{}", warnings[0]);

    args.extend(["--admin-listen", "127.0.0.1:0"]);
    let closed = start(&dir.path().join("closed"), &args);
    assert_eq!(exposure_warnings(&closed), Vec::<String>::new());

    let unsigned = start(
        &dir.path().join("unsigned"),
        &["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"],
    );
    let warnings = exposure_warnings(&unsigned);
    assert_eq!(warnings.len(), 1, "{}", unsigned.stderr_text());
    assert!(
        warnings[0].contains("--signature-scheme"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("readable"), "{}", warnings[0]);

    let local = start(&dir.path().join("local"), &["--listen", "127.0.0.1:0"]);
    assert_eq!(exposure_warnings(&local), Vec::<String>::new());
}
