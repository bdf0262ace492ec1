//! Socket activation as systemd does it (`webhookd.socket`): the listening
//! socket arrives as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the
//! daemon's pid. The test owns the socket, as systemd would, and hands it
//! to the daemon through `sh` (`exec 3<&0`: std's `Command` can only set
//! fds 0-2), so it outlives each daemon: connections made while no daemon
//! runs wait in its backlog and are answered by the next one.

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{BIN, DEADLINE, Daemon, assert_one_line_failure, get, payload, post, read_response};

/// `sh` moves the socket from fd 0 to fd 3, sets `LISTEN_PID` to its own
/// pid (which `exec` keeps) and `LISTEN_FDS`, then becomes webhookd.
const ACTIVATE: &str =
    r#"exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS="$1"; shift; exec "$@""#;

/// webhookd on `data` with `fd` as fd 3 and `LISTEN_FDS=count`; `extra`
/// arguments after the data dir.
fn activated(fd: OwnedFd, count: &str, data: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", ACTIVATE, "sh", count, BIN, "--data-dir"])
        .arg(data)
        .args(extra)
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn socket(listener: &TcpListener) -> OwnedFd {
    OwnedFd::from(listener.try_clone().expect("dup the listening socket"))
}

#[test]
fn the_passed_socket_is_served_and_listen_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    // --listen names an address in use: binding it would fail the start.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let daemon = Daemon::spawn(activated(
        socket(&passed),
        "1",
        dir.path(),
        &["--listen", &taken_addr],
    ));
    assert_eq!(daemon.addr, passed.local_addr().unwrap());
    assert!(
        daemon.stderr_text().contains("--listen is not used"),
        "{}",
        daemon.stderr_text()
    );
    let stored = post(daemon.addr, &payload("txn_activated", "1"));
    assert_eq!(stored.status, 202, "{}", stored.body);
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}\n{stderr}");
}

#[test]
fn connections_made_while_it_restarts_are_answered_by_the_next_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let first = Daemon::spawn(activated(socket(&listener), "1", dir.path(), &[]));
    assert_eq!(post(addr, &payload("txn_before_restart", "1")).status, 202);
    first.terminate();
    let (status, stderr) = first.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}\n{stderr}");

    // No daemon runs now; the socket still listens, so these connect and
    // wait in its backlog with their requests sent.
    let waiting: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).expect("connect while no daemon runs");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let request = format!(
                "GET /v1/transactions/txn_before_restart HTTP/1.1\r\nHost: test\r\nX-Waiting: {i}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).unwrap();
            stream
        })
        .collect();

    let second = Daemon::spawn(activated(socket(&listener), "1", dir.path(), &[]));
    assert_eq!(second.addr, addr);
    for mut stream in waiting {
        let response = read_response(&mut stream);
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.json()["transaction_id"], "txn_before_restart");
    }
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn listen_fds_for_another_process_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let daemon = Daemon::spawn(command);
    assert_eq!(get(daemon.addr, "/").status, 200);
    assert!(!daemon.stderr_text().contains("--listen is not used"));
}

/// Runs a start that must fail; returns (exit code, stderr).
fn failed_start(command: &mut Command) -> (Option<i32>, String) {
    let output = command.output().expect("run webhookd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn more_than_one_passed_socket_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = failed_start(&mut activated(socket(&listener), "2", dir.path(), &[]));
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("LISTEN_FDS=2"), "{line}");
    assert!(
        !dir.path().join("webhookd.redb").exists(),
        "the database was touched"
    );
}

#[test]
fn a_passed_descriptor_that_is_not_a_tcp_socket_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("not-a-socket")).unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = failed_start(&mut activated(OwnedFd::from(file), "1", &data, &[]));
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("not a TCP stream socket"), "{line}");
    assert!(!data.exists(), "the data dir was created");
}
