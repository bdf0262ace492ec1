//! A flood far beyond what one writer can commit, from 1,100 keep-alive
//! connections at once (more than 1,024, the usual default limit of open
//! files): the excess is answered at once with `503 unavailable` and
//! `Retry-After: 1` (no request waits for room in the queue), no
//! connection fails, memory stays bounded, accepted requests keep a
//! bounded latency, and every acknowledged transaction is processed
//! exactly once while no refused one is stored.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use common::{DEADLINE, Daemon, check_totals, metric, payload, poll_until, raise_open_files_limit};

const CONNECTIONS: usize = 1100;
const FLOOD: Duration = Duration::from_secs(4);

/// What one connection saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<(String, Duration)>,
    refused: Vec<(String, Duration)>,
    /// Answers that were neither 202 nor a well-formed 503.
    wrong: Vec<String>,
    /// Connection or I/O failures.
    errors: Vec<String>,
}

/// Posts distinct webhooks on one kept-alive connection (a hyper client)
/// until `until`.
async fn connection(addr: SocketAddr, number: usize, until: Instant) -> Seen {
    let mut seen = Seen::default();
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => {
            seen.errors.push(format!("connect: {e}"));
            return seen;
        }
    };
    let (mut sender, driver) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => {
                seen.errors.push(format!("handshake: {e}"));
                return seen;
            }
        };
    let driver = tokio::spawn(driver);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let id = format!("txn_flood_{number}_{n}");
        let request = Request::post("/v1/webhooks/transactions")
            .header(hyper::header::HOST, "t")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload(&id, "1"))))
            .unwrap();
        let sent = Instant::now();
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                seen.errors.push(format!("{id}: {e}"));
                break;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        let body = match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(e) => {
                seen.errors.push(format!("{id}: body: {e}"));
                break;
            }
        };
        let elapsed = sent.elapsed();
        let unavailable = || {
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|b| b["error"]["code"] == "unavailable")
        };
        match status {
            202 => seen.accepted.push((id, elapsed)),
            503 if retry_after.as_deref() == Some("1") && unavailable() => {
                seen.refused.push((id, elapsed));
            }
            _ => seen.wrong.push(format!(
                "{id}: {status}, Retry-After {retry_after:?}: {body}"
            )),
        }
    }
    drop(sender);
    let _ = driver.await;
    seen
}

/// Sockets the process holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// Runs the flood against `addr`; returns what the connections saw and the
/// most sockets the daemon (`pid`) held at once meanwhile.
fn flood(addr: SocketAddr, pid: u32) -> (Seen, usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let until = Instant::now() + FLOOD;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|number| runtime.spawn(connection(addr, number, until)))
        .collect();
    let mut most_sockets = 0;
    while Instant::now() < until {
        most_sockets = most_sockets.max(open_sockets(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut seen = Seen::default();
    for task in tasks {
        let one = runtime.block_on(task).unwrap();
        seen.accepted.extend(one.accepted);
        seen.refused.extend(one.refused);
        seen.wrong.extend(one.wrong);
        seen.errors.extend(one.errors);
    }
    (seen, most_sockets)
}

fn percentile(latencies: &mut [Duration], p: usize) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * p / 100).min(latencies.len() - 1)]
}

#[test]
fn a_flood_from_1100_connections_is_shed_at_once_and_everything_acknowledged_is_processed_once() {
    raise_open_files_limit(CONNECTIONS as u64 + 200);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--queue-depth", "32", "--process-delay", "0s"],
    );
    let addr = daemon.addr;
    let pid = daemon.pid();
    let (seen, most_sockets) = flood(addr, pid);
    assert!(
        seen.errors.is_empty(),
        "{} connection errors: {:?}",
        seen.errors.len(),
        &seen.errors[..seen.errors.len().min(5)]
    );
    assert!(
        seen.wrong.is_empty(),
        "{} wrong answers: {:?}",
        seen.wrong.len(),
        &seen.wrong[..seen.wrong.len().min(5)]
    );
    assert!(
        most_sockets >= 1024,
        "the daemon never held 1,024 connections at once (at most {most_sockets})"
    );
    assert!(
        !seen.refused.is_empty(),
        "the flood was not beyond capacity"
    );
    assert!(!seen.accepted.is_empty());

    // A refusal does not wait for room in the queue: 503s come back faster
    // than acceptances, which wait for a commit.
    let mut refused: Vec<Duration> = seen.refused.iter().map(|r| r.1).collect();
    let mut accepted: Vec<Duration> = seen.accepted.iter().map(|a| a.1).collect();
    let (refused_p50, refused_p99) = (percentile(&mut refused, 50), percentile(&mut refused, 99));
    let (accepted_p50, accepted_p99) =
        (percentile(&mut accepted, 50), percentile(&mut accepted, 99));
    eprintln!(
        "{} accepted (p50 {accepted_p50:?}, p99 {accepted_p99:?}), {} refused (p50 {refused_p50:?}, p99 {refused_p99:?}), {most_sockets} sockets at most",
        seen.accepted.len(),
        seen.refused.len()
    );
    assert!(
        refused_p50 < accepted_p50 && refused_p99 < Duration::from_secs(1),
        "503s wait: p50 {refused_p50:?} (202s: {accepted_p50:?}), p99 {refused_p99:?}"
    );
    assert!(
        accepted_p99 < Duration::from_secs(2),
        "p99 of accepted requests {accepted_p99:?}"
    );

    // Memory stays bounded: the queue holds at most 32 parsed webhooks.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("peak RSS {peak_kib} KiB");
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");

    // Every acknowledged transaction is processed, once; nothing refused
    // was stored.
    poll_until(Duration::from_secs(60), "every job processed", || {
        (metric(addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    let accepted = seen.accepted.len() as u64;
    assert_eq!(
        metric(addr, "webhookd_transactions_processed_total"),
        accepted
    );
    assert_eq!(
        metric(
            addr,
            r#"webhookd_webhook_rejections_total{code="unavailable"}"#
        ),
        seen.refused.len() as u64
    );
    for (id, _) in seen.refused.iter().step_by(97) {
        common::get_transaction(addr, id).assert_error(404, "not_found");
    }
    poll_until(DEADLINE, "health after the flood", || {
        (common::get(addr, "/").status == 200).then_some(())
    });
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let totals = check_totals(dir.path());
    assert_eq!(
        (totals.transactions, totals.processed),
        (accepted, accepted),
        "{totals:?}"
    );
}
