//! SIGTERM/SIGINT: stop accepting, finish in-flight requests within the
//! grace period, keep everything acknowledged, exit 0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Daemon, connect, get_transaction, payload, poll_until, post, read_response};

/// Sends a POST head with `Expect: 100-continue` and waits for the
/// server's `100 Continue`, which hyper sends once the handler starts
/// reading the body: from then on the request is provably in flight.
fn in_flight_request(addr: SocketAddr, length: usize) -> TcpStream {
    let mut stream = connect(addr);
    write!(
        stream,
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {line:?}"
    );
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "\r\n");
    stream
}

#[test]
fn sigterm_exits_zero_and_keeps_every_acknowledged_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for i in 0..20 {
        assert_eq!(
            post(daemon.addr, &payload(&format!("txn_term_{i}"), "1")).status,
            202
        );
    }
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");

    let daemon = Daemon::start(dir.path(), &[]);
    for i in 0..20 {
        assert_eq!(
            get_transaction(daemon.addr, &format!("txn_term_{i}")).status,
            200
        );
    }
}

#[test]
fn sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    daemon.interrupt();
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn an_in_flight_request_finishes_after_sigterm_and_new_connections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let addr = daemon.addr;
    let body = payload("txn_in_flight", "12.34");
    let (first, rest) = body.split_at(body.len() / 2);
    let mut stream = in_flight_request(addr, body.len());
    stream.write_all(first.as_bytes()).unwrap();
    daemon.terminate();
    poll_until(Duration::from_secs(10), "the listener to close", || {
        TcpStream::connect(addr).is_err().then_some(())
    });
    stream.write_all(rest.as_bytes()).unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 202, "{}", response.body);
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");

    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(get_transaction(daemon.addr, "txn_in_flight").status, 200);
}

#[test]
fn a_request_that_never_finishes_does_not_hold_shutdown_past_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--shutdown-grace", "2s"]);
    let mut stream = in_flight_request(daemon.addr, 100);
    stream.write_all(b"{\"transaction_id\":").unwrap();
    let signalled = Instant::now();
    daemon.terminate();
    // The grace period is honoured, and not stretched: exit comes after
    // it (the request held shutdown that long), and before twice as long.
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        took >= Duration::from_secs(2),
        "exited {took:?} after SIGTERM, before the grace period ended"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM with a 2 s grace period"
    );
    assert!(
        stderr.contains("shutdown grace period over"),
        "no grace period warning: {stderr}"
    );
    drop(stream);
}
