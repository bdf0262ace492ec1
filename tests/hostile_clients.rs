//! Attacks an internet client can make without any secret, each against the
//! real binary: bodies in thousands of 1-byte chunks, clients that pipeline
//! requests and never read the answers, floods of health checks, HTTP/2
//! prior-knowledge connections, and clients that vanish before their
//! answer. Each test prints what it measured (`--nocapture` shows it).
//!
//! `WEBHOOKD_TEST_BIN=/path/to/webhookd` runs the same attacks against
//! another build, to compare the figures; settings are passed as
//! `WEBHOOKD_*` environment variables, so an older build that lacks one
//! still starts.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    BIN, DEADLINE, Daemon, connect, get, payload, poll_until, post, post_on, read_response,
    send_raw,
};

fn binary() -> String {
    std::env::var("WEBHOOKD_TEST_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// Starts the binary under test on `dir` (port 0) with `env` settings.
fn start(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new(binary());
    command
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Daemon::spawn(command)
}

/// A `VmRSS`-style line of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Open file descriptors of the process: its sockets, among others.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .count()
}

/// The value of the first sample line of `/metrics` starting with
/// `prefix`: a count (written `5` or `5.0`).
fn metric(addr: SocketAddr, prefix: &str) -> u64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| {
            let value = line.rsplit(' ').next()?;
            value.strip_suffix(".0").unwrap_or(value).parse().ok()
        })
        .unwrap_or_else(|| panic!("no {prefix} count in\n{text}"))
}

const CHUNKED_HEAD: &[u8] = b"POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn bodies_in_tiny_chunks_do_not_pin_memory_and_the_daemon_keeps_answering() {
    const CONNECTIONS: usize = 8;
    const CHUNKS: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let addr = daemon.addr;
    assert_eq!(get(addr, "/").status, 200);
    let before = proc_status_kib(daemon.pid(), "VmRSS");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..CONNECTIONS {
            scope.spawn(move || {
                let mut stream = connect(addr);
                stream.set_nodelay(true).unwrap();
                stream.write_all(CHUNKED_HEAD).unwrap();
                // One write per chunk, paced so that the server reads them
                // one by one: each read then has a buffer of its own.
                for _ in 0..CHUNKS {
                    if stream.write_all(b"1\r\n \r\n").is_err() {
                        break; // the server gave up on this body
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                let _ = stream.write_all(b"0\r\n\r\n");
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            });
        }
    });
    let after = proc_status_kib(daemon.pid(), "VmRSS");
    let peak = proc_status_kib(daemon.pid(), "VmHWM");
    eprintln!(
        "{CONNECTIONS} connections x {CHUNKS} one-byte chunks in {:?}: VmRSS {before} KiB before, {after} KiB after, peak (VmHWM) {peak} KiB",
        started.elapsed()
    );
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        peak < before + 64 * 1024,
        "RSS peaked at {peak} KiB from {before} KiB"
    );
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(post(addr, &payload("txn_after_chunks", "1")).status, 202);
}

#[test]
fn a_body_in_more_pieces_than_allowed_is_413_and_a_chunked_webhook_under_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let mut request = CHUNKED_HEAD.to_vec();
    for _ in 0..=webhookd::http::MAX_BODY_FRAMES {
        request.extend_from_slice(b"1\r\n \r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut stream = connect(daemon.addr);
    // The server may close before it has read everything.
    let _ = stream.write_all(&request);
    let response = read_response(&mut stream);
    let body = response.assert_error(413, "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&webhookd::http::MAX_BODY_FRAMES.to_string()),
        "{body}"
    );
    assert_eq!(response.header("connection"), Some("close"));

    // A real webhook a byte per chunk, within the bound, is stored intact.
    let body = payload("txn_byte_chunks", "12.34");
    let mut request = CHUNKED_HEAD.to_vec();
    for byte in body.bytes() {
        request.extend_from_slice(b"1\r\n");
        request.push(byte);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut stream = connect(daemon.addr);
    stream.write_all(&request).unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 202, "{}", response.body);
    let stored = common::get_transaction(daemon.addr, "txn_byte_chunks").json();
    assert_eq!(stored["amount"].to_string(), "12.34");
}

#[test]
fn the_413_message_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[("WEBHOOKD_MAX_BODY_BYTES", "100")]);
    let response = post(daemon.addr, &payload("txn_too_big", "1"));
    let body = response.assert_error(413, "payload_too_large");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-body-bytes"), "{message}");
    assert!(message.contains("100"), "{message}");
}

/// A client that sends `requests` pipelined requests and never reads. Its
/// receive buffer is small, and so is its segment size: on loopback the
/// server's send buffer starts at ten segments of 64 KiB, which would take
/// hundreds of answers to fill, where over a real network (and with 536
/// bytes here) it takes a few dozen kilobytes.
fn never_reading_client(addr: SocketAddr, requests: usize) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.try_clone().unwrap().into();
    let pipelined = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(requests);
    stream.write_all(pipelined.as_bytes()).unwrap();
    socket
}

#[test]
fn clients_that_never_read_their_answers_are_closed_within_the_write_timeout() {
    const CLIENTS: usize = 500;
    let write_timeout = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    // Only the write timeout can close them: their heads are all in.
    let daemon = start(
        dir.path(),
        &[
            ("WEBHOOKD_WRITE_TIMEOUT", "3s"),
            ("WEBHOOKD_HEADER_READ_TIMEOUT", "1h"),
        ],
    );
    let (addr, pid) = (daemon.addr, daemon.pid());
    assert_eq!(get(addr, "/").status, 200);
    let fds_before = open_fds(pid);
    let rss_before = proc_status_kib(pid, "VmRSS");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| never_reading_client(addr, 64))
        .collect();
    let opened = Instant::now();
    let held_at_start = open_fds(pid).saturating_sub(fds_before);
    eprintln!(
        "{CLIENTS} never-reading clients opened: {held_at_start} connections held, VmRSS {} KiB (before: {rss_before} KiB)",
        proc_status_kib(pid, "VmRSS")
    );
    // Webhooks on other connections keep getting 202 meanwhile, until
    // every never-reading connection is closed by the server.
    let mut n = 0;
    let mut held_most = held_at_start;
    let closed_after = poll_until(
        write_timeout + DEADLINE,
        "never-reading clients closed",
        || {
            n += 1;
            let response = post(addr, &payload(&format!("txn_among_stalled_{n}"), "1"));
            assert_eq!(response.status, 202, "{}", response.body);
            let held = open_fds(pid).saturating_sub(fds_before);
            held_most = held_most.max(held);
            (held <= 2).then(|| opened.elapsed())
        },
    );
    let rss_after = proc_status_kib(pid, "VmRSS");
    eprintln!(
        "{CLIENTS} never-reading clients: {held_at_start} connections held once opened (at most {held_most}), all closed {closed_after:?} after they were opened; VmRSS {rss_before} KiB before, {rss_after} KiB after; {n} webhooks got 202 meanwhile"
    );
    assert!(
        held_most >= CLIENTS / 2,
        "the attack did not hold connections ({held_most}): it proves nothing"
    );
    // The last ones are closed too, with no request of ours in flight. Only
    // then may the clients read: reading would let a connection still open
    // finish its answers and then sit idle, no longer stalled.
    poll_until(
        write_timeout + DEADLINE,
        "every never-reading connection closed",
        || (open_fds(pid) <= fds_before).then_some(()),
    );
    // Closed by the server, its unsent answers dropped: each client reads
    // what had reached it, then the reset (or EOF).
    for socket in clients {
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = Vec::new();
        match stream.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn a_flood_of_health_checks_costs_at_most_one_commit_a_second() {
    const CLIENTS: usize = 8;
    const CHECKS: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let addr = daemon.addr;
    let commits = "webhookd_commit_batch_size_count";
    let before = metric(addr, commits);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(move || {
                let mut stream = connect(addr);
                for _ in 0..CHECKS {
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                        .unwrap();
                    let response = read_response(&mut stream);
                    assert_eq!(response.status, 200, "{}", response.body);
                    assert_eq!(response.json()["status"], "HEALTHY");
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let added = metric(addr, commits) - before;
    eprintln!(
        "{} health checks in {elapsed:?} added {added} commits",
        CLIENTS * CHECKS
    );
    // One probe per started second, one more for the window boundary.
    let allowed = elapsed.as_secs() + 2;
    assert!(added <= allowed, "{added} commits in {elapsed:?}");
}

#[test]
fn http2_prior_knowledge_is_refused_with_goaway_http_1_1_required_and_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let mut stream = connect(daemon.addr);
    // The preface, then an empty SETTINGS frame, as an h2c client sends.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut answer = Vec::new();
    // A clean close: everything the server sent, then EOF (not a reset).
    stream.read_to_end(&mut answer).expect("EOF, not a reset");
    let frames = h2_frames(&answer);
    assert_eq!(frames.first().map(|f| f.0), Some(0x4), "SETTINGS first");
    let goaway = frames
        .iter()
        .find(|f| f.0 == 0x7)
        .unwrap_or_else(|| panic!("no GOAWAY in {answer:?}"));
    assert_eq!(&goaway.1[..4], &[0, 0, 0, 0], "no stream was processed");
    assert_eq!(&goaway.1[4..8], &[0, 0, 0, 0xd], "HTTP_1_1_REQUIRED");
    // HTTP/1.1 on the same port is unaffected.
    assert_eq!(get(daemon.addr, "/").status, 200);
}

/// (type, payload) of each HTTP/2 frame in `bytes`.
fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        assert!(bytes.len() >= 9 + length, "truncated frame in {bytes:?}");
        frames.push((bytes[3], bytes[9..9 + length].to_vec()));
        bytes = &bytes[9 + length..];
    }
    assert!(bytes.is_empty(), "trailing bytes {bytes:?}");
    frames
}

#[test]
#[cfg_attr(
    webhookd_no_curl,
    ignore = "needs curl (apt-get install curl); never ignored under CI=true"
)]
fn curl_sees_a_refusal_for_http2_prior_knowledge_and_http_1_1_for_an_upgrade() {
    common::require(common::requirements::Need::Curl);
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let url = format!("http://{}/", daemon.addr);
    let prior = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            &url,
        ])
        .output()
        .unwrap();
    let verbose = String::from_utf8_lossy(&prior.stderr);
    assert!(!prior.status.success(), "{verbose}");
    assert!(
        verbose.contains("GOAWAY") && verbose.contains("error=13"),
        "curl did not see GOAWAY HTTP_1_1_REQUIRED:\n{verbose}"
    );
    assert!(!verbose.contains("not closed cleanly"), "{verbose}");
    // `--http2` over plain HTTP asks to upgrade; the answer is HTTP/1.1.
    let upgrade = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2",
            "-w",
            "%{http_version}",
            &url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&upgrade.stdout);
    assert!(upgrade.status.success(), "{upgrade:?}");
    assert!(
        stdout.contains("HEALTHY") && stdout.ends_with("1.1"),
        "{stdout}"
    );
}

#[test]
fn webhooks_whose_clients_vanish_are_counted_as_accepted_when_they_are_stored() {
    const VANISHING: usize = 200;
    const MAX_ROUNDS: usize = 10;
    const ANSWERED: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[("WEBHOOKD_PROCESS_DELAY", "1h")]);
    let (addr, pid) = (daemon.addr, daemon.pid());
    assert_eq!(get(addr, "/").status, 200);
    let fds_before = open_fds(pid);
    // Whether the server reads a request before its client's close arrives
    // depends on timing: on a busy machine a round may store none of them.
    // Rounds go on until one did, so the case is really exercised.
    let mut sent = 0;
    for round in 0..MAX_ROUNDS {
        std::thread::scope(|scope| {
            for worker in 0..8 {
                scope.spawn(move || {
                    for i in (worker..VANISHING).step_by(8) {
                        let body = payload(&format!("txn_vanished_{round}_{i}"), "1");
                        let mut stream = connect(addr);
                        let request = format!(
                            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        stream.write_all(request.as_bytes()).unwrap();
                        // Gone before the answer.
                        drop(stream);
                    }
                });
            }
        });
        sent += VANISHING;
        let stored_this_round = (0..VANISHING)
            .filter(|i| {
                common::get_transaction(addr, &format!("txn_vanished_{round}_{i}")).status == 200
            })
            .count();
        if stored_this_round > 0 {
            break;
        }
    }
    let mut stream = connect(addr);
    for i in 0..ANSWERED {
        let response = post_on(&mut stream, &payload(&format!("txn_answered_{i}"), "1"));
        assert_eq!(response.status, 202, "{}", response.body);
    }
    drop(stream);
    // Every vanished connection is closed on the server's side, so what
    // each one queued is in the writer; a last webhook commits after it.
    poll_until(DEADLINE, "vanished connections closed", || {
        (open_fds(pid) <= fds_before).then_some(())
    });
    assert_eq!(post(addr, &payload("txn_last", "1")).status, 202);
    let accepted = metric(addr, "webhookd_webhooks_total{outcome=\"accepted\"}");
    daemon.terminate();
    let (status, _) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    let check = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("check")
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let summary = String::from_utf8_lossy(&check.stdout);
    // "ok: N transactions (…)"
    let stored: u64 = summary
        .strip_prefix("ok: ")
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("unexpected check output {summary:?}"));
    let from_vanished = stored - (ANSWERED as u64 + 1);
    eprintln!(
        "{sent} clients vanished after sending: {from_vanished} of their webhooks stored; check counts {stored} transactions, the accepted counter said {accepted}"
    );
    assert!(
        from_vanished >= 1,
        "no vanished client's webhook was stored: the case was not exercised"
    );
    assert_eq!(accepted, stored, "{summary}");
}

/// Telling HTTP/2 from HTTP/1 changes nothing for HTTP/1 clients, also
/// for one whose request starts like the HTTP/2 preface.
#[test]
fn http_1_clients_are_served_as_before_the_preface_check() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let response = send_raw(daemon.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    // A request line that starts like the preface but is not one.
    let response = send_raw(
        daemon.addr,
        b"PRI /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    response.assert_error(404, "not_found");
}
