//! SIGHUP reloads the certificate and key: connections opened before keep
//! working, connections opened after see the new certificate; a reload
//! with a broken file keeps the previous certificate in use and logs one
//! line saying why; SIGHUP never ends the daemon.

mod common;
mod tls_support;

use common::{DEADLINE, Daemon, payload, poll_until};
use tls_support::{
    Ca, H2Client, TlsConnection, assert_holds_no_secret, http1_config, key_fragments, runtime,
    tls_args, write_file,
};

/// Lines of the daemon's stderr containing `text`.
fn lines_with(daemon: &Daemon, text: &str) -> Vec<String> {
    daemon
        .stderr_text()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_owned)
        .collect()
}

/// Sends SIGHUP and waits until `text` has been logged `count` times.
fn reload_and_wait(daemon: &Daemon, text: &str, count: usize) -> Vec<String> {
    daemon.signal("HUP");
    poll_until(DEADLINE, text, || {
        let lines = lines_with(daemon, text);
        (lines.len() >= count).then_some(lines)
    })
}

/// The certificate a new connection is given.
fn presented(daemon: &Daemon, ca: &Ca) -> Vec<u8> {
    TlsConnection::connect(daemon.addr, http1_config(ca), "localhost")
        .unwrap()
        .server_certificate()
}

#[test]
fn a_reload_gives_new_connections_the_new_certificate_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(&["localhost"]);
    let second = ca.issue(&["localhost"]);
    let args = tls_args(dir.path(), &first);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&dir.path().join("data"), &args);
    let runtime = runtime();

    let mut open_h1 = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(open_h1.server_certificate(), first.leaf_der);
    assert_eq!(open_h1.post(&payload("txn_before_h1", "1")).status, 202);
    let mut open_h2 = runtime.block_on(H2Client::connect(daemon.addr, &ca));
    let posted = runtime.block_on(open_h2.post(&payload("txn_before_h2", "1")));
    assert_eq!(posted.status, 202);

    // New files alone change nothing until SIGHUP.
    write_file(dir.path(), "cert.pem", &second.chain_pem, 0o600);
    write_file(dir.path(), "key.pem", &second.key_pem, 0o600);
    assert_eq!(presented(&daemon, &ca), first.leaf_der);
    reload_and_wait(&daemon, "SIGHUP: reloaded", 1);

    assert_eq!(presented(&daemon, &ca), second.leaf_der);
    // The connections opened before are not cut: more requests on each.
    assert_eq!(open_h1.post(&payload("txn_after_h1", "1")).status, 202);
    assert_eq!(
        open_h1.get("/v1/transactions/txn_before_h2", "").status,
        200
    );
    assert_eq!(open_h1.server_certificate(), first.leaf_der);
    let read = runtime.block_on(open_h2.get("/v1/transactions/txn_after_h1", &[]));
    assert_eq!(read.status, 200, "{}", read.body);

    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    let mut secrets = key_fragments(&first.key_pem);
    secrets.extend(key_fragments(&second.key_pem));
    assert_holds_no_secret("stderr", &stderr, &secrets);
}

#[test]
fn a_reload_with_a_broken_file_keeps_the_previous_certificate_and_logs_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(&["localhost"]);
    let second = ca.issue(&["localhost"]);
    let args = tls_args(dir.path(), &first);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&dir.path().join("data"), &args);
    let mut open = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    let failed = "SIGHUP: reload failed";

    // A key file cut short.
    let key = write_file(dir.path(), "key.pem", &second.key_pem[..100], 0o600);
    let lines = reload_and_wait(&daemon, failed, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("--tls-key"), "{}", lines[0]);
    assert!(lines[0].contains(key.to_str().unwrap()), "{}", lines[0]);
    assert_eq!(presented(&daemon, &ca), first.leaf_der);

    // A new certificate with the old key.
    write_file(dir.path(), "cert.pem", &second.chain_pem, 0o600);
    write_file(dir.path(), "key.pem", &first.key_pem, 0o600);
    let lines = reload_and_wait(&daemon, failed, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("is not the key"), "{}", lines[1]);
    assert_eq!(presented(&daemon, &ca), first.leaf_der);
    assert_eq!(open.post(&payload("txn_between", "1")).status, 202);

    // Fixed: the next SIGHUP takes it.
    write_file(dir.path(), "key.pem", &second.key_pem, 0o600);
    reload_and_wait(&daemon, "SIGHUP: reloaded", 1);
    assert_eq!(presented(&daemon, &ca), second.leaf_der);
    assert_eq!(open.get("/v1/transactions/txn_between", "").status, 200);

    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    // One line per failed reload: nothing else mentions a failure.
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        2,
        "{stderr}"
    );
    let mut secrets = key_fragments(&first.key_pem);
    secrets.extend(key_fragments(&second.key_pem));
    assert_holds_no_secret("stderr", &stderr, &secrets);
}

#[test]
fn sighup_with_nothing_to_reload_does_not_end_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for n in 1..=3 {
        reload_and_wait(&daemon, "nothing to reload", n);
        assert_eq!(
            common::post(daemon.addr, &payload(&format!("txn_hup_{n}"), "1")).status,
            202
        );
    }
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
}
