//! Idle and slow clients cannot hold the daemon: idle keep-alive
//! connections and dribbled heads are closed after `--header-read-timeout`,
//! dribbled bodies get 408 after `--body-read-timeout`, and at most
//! `--max-connections` are served at once while others wait their turn.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Daemon, connect, get, get_transaction, payload, poll_until, post, read_response};

/// True once the server has closed the connection (EOF or reset); a read
/// that times out means it is still open.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn hundreds_of_idle_and_slow_connections_neither_block_others_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--header-read-timeout", "2s"]);
    let addr = daemon.addr;
    // 700 connections: within a default limit of 1024 open files on both sides.
    let mut idle: Vec<TcpStream> = (0..600).map(|_| connect(addr)).collect();
    let mut dribblers: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut stream = connect(addr);
            stream
                .write_all(b"POST /v1/webhooks/transactions HTTP/1.1\r\nHo")
                .unwrap();
            stream
        })
        .collect();
    // Other clients are served at once.
    let started = Instant::now();
    assert_eq!(post(addr, &payload("txn_among_idle", "1")).status, 202);
    assert_eq!(get(addr, "/").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served only after {:?}",
        started.elapsed()
    );
    // Keep dribbling one header byte at a time: it does not extend the deadline.
    for stream in &mut dribblers {
        let _ = stream.write_all(b"s");
    }
    // Every idle and dribbling connection is closed by the server.
    poll_until(Duration::from_secs(20), "idle connections closed", || {
        idle.retain_mut(|s| !closed_by_server(s));
        dribblers.retain_mut(|s| !closed_by_server(s));
        (idle.is_empty() && dribblers.is_empty()).then_some(())
    });
    assert_eq!(get_transaction(addr, "txn_among_idle").status, 200);
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--body-read-timeout", "1s"]);
    let body = payload("txn_slow_body", "1");
    let mut stream = connect(daemon.addr);
    write!(
        stream,
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..10]
    )
    .unwrap();
    let started = Instant::now();
    let response = read_response(&mut stream);
    response.assert_error(408, "request_timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    get_transaction(daemon.addr, "txn_slow_body").assert_error(404, "not_found");
}

#[test]
fn connections_beyond_the_limit_wait_their_turn_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--max-connections", "4", "--header-read-timeout", "1s"],
    );
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(daemon.addr)).collect();
    // Served once the idle ones time out and free their slots.
    let started = Instant::now();
    let response = post(daemon.addr, &payload("txn_waited", "1"));
    assert_eq!(response.status, 202, "{}", response.body);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered after {:?} although every slot was taken",
        started.elapsed()
    );
    drop(idle);
}
