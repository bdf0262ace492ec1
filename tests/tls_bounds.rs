//! What a hostile client can hold on the TLS socket, through the real
//! binary: connections that never start (or never finish) a handshake are
//! closed by their head deadline while webhooks keep getting 202; idle TLS
//! and HTTP/2 connections are closed like idle HTTP/1.1 ones; and the
//! HTTP/2 bounds hold: a rapid-reset flood gets `GOAWAY`, streams beyond
//! the limit are refused and stalled ones time out, an oversized header
//! list gets 431, and other clients are not stalled by any of it.

mod common;
mod tls_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{DEADLINE, Daemon, payload, poll_until, raise_open_files_limit};
use http_body_util::Full;
use tls_support::{
    ACK, CANCEL, Ca, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, Frame, GOAWAY, H2Client, HEADERS,
    Issued, PREFACE, REFUSED_STREAM, RST_STREAM, SETTINGS, TlsConnection, connect_async, frame,
    get_health_block, h2_config, http1_config, post_webhook_block, read_frame, runtime, tls_args,
};
use tokio::io::AsyncWriteExt;

fn https_daemon(dir: &std::path::Path, issued: &Issued, extra: &[&str]) -> Daemon {
    let mut args = tls_args(dir, issued);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&dir.join("data"), &args)
}

/// Whether the server has closed `stream` (EOF or reset), without waiting.
fn closed(mut stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Posts webhooks over new TLS connections until `stop`; returns how many
/// got 202 and the slowest exchange. Any other answer fails the test.
fn keep_posting(
    daemon_addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    prefix: &'static str,
) -> std::thread::JoinHandle<(u32, Duration)> {
    std::thread::spawn(move || {
        let (mut accepted, mut slowest) = (0, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut connection =
                TlsConnection::connect(daemon_addr, Arc::clone(&config), "localhost").unwrap();
            let response = connection.post(&payload(&format!("{prefix}_{accepted}"), "1"));
            assert_eq!(response.status, 202, "{}", response.body);
            slowest = slowest.max(started.elapsed());
            accepted += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (accepted, slowest)
    })
}

#[test]
fn a_thousand_connections_that_never_finish_a_handshake_are_closed_by_the_head_deadline() {
    raise_open_files_limit(1500);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let timeout = Duration::from_secs(4);
    let daemon = https_daemon(dir.path(), &issued, &["--header-read-timeout", "4s"]);

    let stop = Arc::new(AtomicBool::new(false));
    let posting = keep_posting(
        daemon.addr,
        http1_config(&ca),
        Arc::clone(&stop),
        "txn_during",
    );
    // 900 that never send a byte, 100 that stop half-way through a ClientHello.
    let opened_at = Instant::now();
    let mut attackers: Vec<TcpStream> = (0..1000)
        .map(|n| {
            let mut stream = TcpStream::connect(daemon.addr).unwrap();
            if n % 10 == 0 {
                stream
                    .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                    .unwrap();
            }
            stream
        })
        .collect();
    let all_opened = opened_at.elapsed();
    for stream in &attackers {
        stream.set_nonblocking(true).unwrap();
    }
    // The attack holds its connections for a while: it proves something.
    let held = attackers.iter().filter(|s| !closed(s)).count();
    assert!(
        held >= 900 || opened_at.elapsed() >= timeout,
        "only {held} of 1000 connections were held"
    );

    // All closed by the deadline (plus slack for a busy machine).
    let slack = Duration::from_secs(6);
    while !attackers.is_empty() {
        attackers.retain(|s| !closed(s));
        assert!(
            opened_at.elapsed() < all_opened + timeout + slack,
            "{} connections still open {:?} after they were opened",
            attackers.len(),
            opened_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all_closed = opened_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (accepted, slowest) = posting.join().unwrap();
    eprintln!(
        "1000 stalled handshakes opened in {all_opened:?}, all closed {all_closed:?} after the first; {accepted} webhooks got 202 meanwhile, the slowest in {slowest:?}"
    );
    assert!(
        all_closed + Duration::from_millis(500) >= timeout,
        "closed after {all_closed:?}, before the deadline: not the deadline at work"
    );
    assert!(accepted >= 5, "only {accepted} webhooks during the attack");
    assert!(
        slowest < Duration::from_secs(3),
        "a webhook took {slowest:?}"
    );
}

#[test]
fn idle_tls_and_http2_connections_are_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let daemon = https_daemon(dir.path(), &issued, &["--header-read-timeout", "2s"]);
    let started = Instant::now();

    // HTTP/1.1 over TLS: a handshake, then nothing.
    let mut silent = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    // HTTP/1.1 over TLS: one request, then idle.
    let mut idle = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(idle.get("/", "").status, 200);

    let runtime = runtime();
    // HTTP/2: a handshake and the preface, no request; and one request, then idle.
    let silent_h2 = runtime.block_on(H2Client::connect(daemon.addr, &ca));
    let mut idle_h2 = runtime.block_on(H2Client::connect(daemon.addr, &ca));
    assert_eq!(runtime.block_on(idle_h2.get("/", &[])).status, 200);

    poll_until(Duration::from_secs(15), "idle connections closed", || {
        (silent.closed_by_server()
            && idle.closed_by_server()
            && silent_h2.driver.is_finished()
            && idle_h2.driver.is_finished())
        .then_some(())
    });
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    // An HTTP/2 connection ends with GOAWAY, cleanly.
    let ended = runtime.block_on(idle_h2.driver).unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let mut fresh = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(fresh.post(&payload("txn_after_idle", "1")).status, 202);
}

/// Writes the HTTP/2 preface and an empty SETTINGS frame, then reads
/// frames into a channel until the connection ends.
async fn raw_h2(
    daemon: &Daemon,
    ca: &Ca,
) -> (
    tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tokio::sync::mpsc::UnboundedReceiver<Frame>,
) {
    let stream = connect_async(daemon.addr, h2_config(ca), "localhost")
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (frames, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(frame)) = read_frame(&mut reader).await {
            if frames.send(frame).is_err() {
                break;
            }
        }
    });
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    writer.write_all(&hello).await.unwrap();
    (writer, received)
}

/// The next frame matching `wanted` within the deadline; panics at the end
/// of the connection.
async fn next_frame(
    received: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>,
    wanted: impl Fn(&Frame) -> bool,
) -> Frame {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let frame = received.recv().await.expect("connection ended");
            if wanted(&frame) {
                return frame;
            }
        }
    })
    .await
    .expect("frame within the deadline")
}

#[test]
fn a_rapid_reset_flood_gets_goaway_and_does_not_stall_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let daemon = https_daemon(dir.path(), &issued, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let posting = keep_posting(
        daemon.addr,
        http1_config(&ca),
        Arc::clone(&stop),
        "txn_calm",
    );
    let runtime = runtime();
    let goaways = runtime.block_on(async {
        let mut codes = Vec::new();
        for _ in 0..3 {
            let (mut writer, mut received) = raw_h2(&daemon, &ca).await;
            // 10,000 requests, each reset at once.
            let mut flood = Vec::new();
            for n in 0..10_000u32 {
                let stream = 1 + 2 * n;
                flood.extend(frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    stream,
                    &get_health_block(),
                ));
                flood.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
            }
            // The server may close before it has read all of it.
            let _ = writer.write_all(&flood).await;
            let goaway = next_frame(&mut received, |f| f.kind == GOAWAY).await;
            codes.push(goaway.error_code());
        }
        codes
    });
    assert_eq!(goaways, [ENHANCE_YOUR_CALM; 3]);
    stop.store(true, Ordering::Relaxed);
    let (accepted, slowest) = posting.join().unwrap();
    assert!(accepted >= 1, "no webhook during the flood");
    assert!(
        slowest < Duration::from_secs(5),
        "a webhook took {slowest:?}"
    );
    let mut fresh = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(fresh.get("/", "").status, 200);
}

#[test]
fn streams_beyond_the_limit_are_refused_and_stalled_ones_time_out_without_stalling_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let daemon = https_daemon(dir.path(), &issued, &["--body-read-timeout", "2s"]);
    let limit = webhookd::http::http2::MAX_CONCURRENT_STREAMS;
    let runtime = runtime();
    runtime.block_on(async {
        let (mut writer, mut received) = raw_h2(&daemon, &ca).await;
        let settings =
            next_frame(&mut received, |f| f.kind == SETTINGS && f.flags & ACK == 0).await;
        // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) is announced.
        let announced = settings
            .payload
            .chunks(6)
            .find(|s| s[..2] == [0, 3])
            .map(|s| u32::from_be_bytes(s[2..].try_into().unwrap()));
        assert_eq!(announced, Some(limit));
        writer
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        next_frame(&mut received, |f| f.kind == SETTINGS && f.flags & ACK != 0).await;

        // `limit` webhooks whose 100-byte bodies never come, then one more.
        let mut opening = Vec::new();
        for n in 0..=limit {
            opening.extend(frame(
                HEADERS,
                END_HEADERS,
                1 + 2 * n,
                &post_webhook_block(100),
            ));
        }
        writer.write_all(&opening).await.unwrap();
        let extra = 1 + 2 * limit;
        let refused = next_frame(&mut received, |f| f.kind == RST_STREAM).await;
        assert_eq!(
            (refused.stream, refused.error_code()),
            (extra, REFUSED_STREAM)
        );

        // Meanwhile other clients are served at once.
        let other = tokio::task::spawn_blocking({
            let addr = daemon.addr;
            let config = http1_config(&ca);
            move || {
                let started = Instant::now();
                let mut connection = TlsConnection::connect(addr, config, "localhost").unwrap();
                let status = connection.post(&payload("txn_beside_streams", "1")).status;
                (status, started.elapsed())
            }
        });
        let mut h2 = H2Client::connect(daemon.addr, &ca).await;
        assert_eq!(
            h2.post(&payload("txn_beside_streams_h2", "1")).await.status,
            202
        );
        let (status, took) = other.await.unwrap();
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(2), "took {took:?}");

        // Each stalled stream is answered (408) once its body is overdue.
        let mut ended = std::collections::BTreeSet::new();
        while ended.len() < limit as usize {
            let frame = next_frame(&mut received, |f| {
                f.stream != 0 && (f.flags & END_STREAM != 0 || f.kind == RST_STREAM)
            })
            .await;
            ended.insert(frame.stream);
        }
        // With the streams freed, the connection takes new ones.
        let next = extra + 2;
        let request = frame(HEADERS, END_HEADERS | END_STREAM, next, &get_health_block());
        writer.write_all(&request).await.unwrap();
        let answered = next_frame(&mut received, |f| {
            f.stream == next && f.flags & END_STREAM != 0
        })
        .await;
        assert_ne!(answered.kind, RST_STREAM);
    });
    let stderr = daemon.stderr_text();
    assert!(
        stderr.matches("request_timeout").count() >= limit as usize,
        "each stalled stream got 408: {stderr}"
    );
}

#[test]
fn an_oversized_http2_header_list_gets_431_and_the_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let daemon = https_daemon(dir.path(), &issued, &[]);
    let runtime = runtime();
    runtime.block_on(async {
        let mut client = H2Client::connect(daemon.addr, &ca).await;
        let big = "x".repeat(webhookd::http::MAX_HEAD_BYTES + 1024);
        let request = hyper::Request::get("https://localhost/")
            .header("x-padding", big)
            .body(Full::<Bytes>::default())
            .unwrap();
        let refused = client.send(request).await.unwrap();
        assert_eq!(refused.status, 431);
        assert_eq!(client.get("/", &[]).await.status, 200);
        assert_eq!(
            client.post(&payload("txn_after_431", "1")).await.status,
            202
        );
    });
}
