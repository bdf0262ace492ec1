//! Idle and slow clients cannot hold the daemon: idle keep-alive
//! connections and dribbled heads are closed once `--header-read-timeout`
//! has passed (not before, and not long after),
//! dribbled bodies get 408 after `--body-read-timeout`, and at most
//! `--max-connections` are served at once while others wait their turn.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Daemon, connect, get, get_transaction, payload, poll_until, post, read_response};

/// True once the server has closed the connection (EOF or reset); a read
/// that would block means it is still open.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// A connection and when the test began to open it (the server's
/// header-read timer cannot start before).
struct Client {
    stream: TcpStream,
    opened: Instant,
    dribbler: bool,
}

#[test]
fn hundreds_of_idle_and_dribbling_connections_are_closed_at_the_header_read_timeout_without_blocking_others()
 {
    const TIMEOUT: Duration = Duration::from_secs(2);
    /// Room for a busy machine between the timeout and seeing the close.
    const SLACK: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--header-read-timeout", "2s"]);
    let addr = daemon.addr;
    // 700 connections: within a default limit of 1024 open files on both sides.
    let mut clients: Vec<Client> = (0..700)
        .map(|n| {
            let opened = Instant::now();
            let mut stream = connect(addr);
            let dribbler = n % 7 == 0;
            if dribbler {
                stream
                    .write_all(b"POST /v1/webhooks/transactions HTTP/1.1\r\nHo")
                    .unwrap();
            }
            Client {
                stream,
                opened,
                dribbler,
            }
        })
        .collect();
    let last_opened = clients.last().unwrap().opened;
    // Other clients are served at once.
    let started = Instant::now();
    assert_eq!(post(addr, &payload("txn_among_idle", "1")).status, 202);
    assert_eq!(get(addr, "/").status, 200);
    assert!(
        started.elapsed() < TIMEOUT,
        "served only after {:?}",
        started.elapsed()
    );
    // Dribblers keep sending a header byte every 200 ms, which must not
    // extend their deadline; every connection is closed by the server
    // once the timeout has passed since it opened, and soon after.
    let mut last_dribble = Instant::now();
    poll_until(
        TIMEOUT + SLACK + Duration::from_secs(5),
        "idle and dribbling connections closed",
        || {
            let dribble = last_dribble.elapsed() >= Duration::from_millis(200);
            if dribble {
                last_dribble = Instant::now();
            }
            clients.retain_mut(|client| {
                if !closed_by_server(&mut client.stream) {
                    if dribble && client.dribbler {
                        let _ = client.stream.write_all(b"s");
                    }
                    return true;
                }
                let open_for = client.opened.elapsed();
                assert!(
                    open_for >= TIMEOUT,
                    "a {} connection was closed after {open_for:?}, before the timeout",
                    if client.dribbler { "dribbling" } else { "idle" }
                );
                false
            });
            assert!(
                clients.is_empty() || last_opened.elapsed() < TIMEOUT + SLACK,
                "{} connections ({} dribbling) still open {:?} after the last one opened",
                clients.len(),
                clients.iter().filter(|c| c.dribbler).count(),
                last_opened.elapsed()
            );
            clients.is_empty().then_some(())
        },
    );
    assert_eq!(get_transaction(addr, "txn_among_idle").status, 200);
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--body-read-timeout", "1s"]);
    let body = payload("txn_slow_body", "1");
    // Before the server can have started its timer.
    let started = Instant::now();
    let mut stream = connect(daemon.addr);
    write!(
        stream,
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..10]
    )
    .unwrap();
    let response = read_response(&mut stream);
    response.assert_error(408, "request_timeout");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "408 after {:?}",
        started.elapsed()
    );
    get_transaction(daemon.addr, "txn_slow_body").assert_error(404, "not_found");
}

#[test]
fn connections_beyond_the_limit_wait_their_turn_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--max-connections", "4", "--header-read-timeout", "1s"],
    );
    // Before the server can have started the idle ones' timers.
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(daemon.addr)).collect();
    // Served once the idle ones time out and free their slots.
    let response = post(daemon.addr, &payload("txn_waited", "1"));
    assert_eq!(response.status, 202, "{}", response.body);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered after {:?} although every slot was taken",
        started.elapsed()
    );
    drop(idle);
}
