//! Delivery end to end: webhookd with `--deliver-to` an in-bench sink
//! (`tests/common/sink.rs`, counting only) that answers 200.
//!
//! 1. **Throughput**: POSTs at 64 connections for `WEBHOOKD_BENCH_SECONDS`
//!    (default 60) with `--process-delay 0s`: per 10 s window, webhooks
//!    accepted and delivered per second, the due backlog and RSS; the
//!    backlog must stay flat. Target: at least 10,000 delivered/s.
//! 2. **Latency**: 1,000 webhooks/s offered for `WEBHOOKD_BENCH_SECONDS`
//!    (default 60, at most 30 used here): the time from each 202 to the
//!    transaction's `processed_at`, read back afterwards. Target: p99 at
//!    most 50 ms.
//! 3. **Pending**: `WEBHOOKD_BENCH_PENDING` (default 1,000,000) webhooks
//!    accepted with `--process-delay 1h` (deliveries pending, not due):
//!    RSS, then a SIGTERM and a restart: time to the ready line and RSS.
//!    Targets: RSS at most 100 MB, ready within 0.5 s.
//!
//! `--deliver-concurrency` is `WEBHOOKD_BENCH_DELIVER_CONCURRENCY`
//! (default 256: an attempt holds its slot through the journal commit before
//! its request, so more slots than the commit time needs); `WEBHOOKD_BENCH_PARTS` picks parts (e.g. `1,3`).
//! Run: `cargo bench --bench delivery`

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;
#[path = "../tests/common/sink.rs"]
mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Limit, Server, metric, payload, run_load_until, transaction_id};
use hdrhistogram::Histogram;
use sink::Sink;

const CONNECTIONS: usize = 64;
const WINDOW_SECONDS: u64 = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    common::reference::run_if_asked();
    let parts = std::env::var("WEBHOOKD_BENCH_PARTS").unwrap_or_else(|_| "1,2,3".to_owned());
    let seconds = env_u64("WEBHOOKD_BENCH_SECONDS", 60);
    let concurrency = env_u64("WEBHOOKD_BENCH_DELIVER_CONCURRENCY", 256).to_string();
    if parts.contains('1') {
        throughput(seconds, &concurrency);
    }
    if parts.contains('2') {
        latency(seconds.min(30), &concurrency);
    }
    if parts.contains('3') {
        pending(env_u64("WEBHOOKD_BENCH_PENDING", 1_000_000), &concurrency);
    }
}

fn daemon(dir: &std::path::Path, sink: &Sink, delay: &str, concurrency: &str) -> Server {
    Server::webhookd(
        dir,
        &[
            "--process-delay",
            delay,
            "--deliver-to",
            &sink.url(),
            "--deliver-concurrency",
            concurrency,
        ],
    )
}

fn throughput(seconds: u64, concurrency: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::counting(200);
    let server = daemon(dir.path(), &sink, "0s", concurrency);
    let (addr, pid) = (server.addr, server.child.id());
    println!(
        "delivery throughput: {CONNECTIONS} connections, {seconds} s, --process-delay 0s, --deliver-concurrency {concurrency}"
    );
    println!("| window | accepted/s | delivered/s | due backlog | RSS (MiB) |");
    println!("|---:|---:|---:|---:|---:|");
    let (mut second, mut accepted_before, mut delivered_before) = (0, 0.0, 0);
    let mut backlogs = Vec::new();
    let started = Instant::now();
    let result = run_load_until(
        addr,
        CONNECTIONS,
        11,
        Limit::Duration(Duration::from_secs(seconds)),
        || {
            second += 1;
            if second % WINDOW_SECONDS == 0 || second == seconds {
                let span = (second - (second - 1) / WINDOW_SECONDS * WINDOW_SECONDS) as f64;
                let accepted = metric(addr, r#"webhookd_webhooks_total{outcome="accepted"}"#);
                let delivered = sink.count() as u64;
                let due = metric(addr, "webhookd_due_jobs");
                let (rss, _) = common::rss_kib(pid);
                println!(
                    "| to {second} s | {:.0} | {:.0} | {due:.0} | {:.1} |",
                    (accepted - accepted_before) / span,
                    (delivered - delivered_before) as f64 / span,
                    rss as f64 / 1024.0
                );
                accepted_before = accepted;
                delivered_before = delivered;
                backlogs.push(due);
            }
        },
    );
    let delivered = sink.count();
    println!(
        "total: {} accepted, {delivered} delivered in {:.1} s = {:.0} delivered/s; p99 of the 202s {:.2} ms; backlog first {:.0}, last {:.0}",
        result.accepted,
        started.elapsed().as_secs_f64(),
        delivered as f64 / started.elapsed().as_secs_f64(),
        result.p99(),
        backlogs.first().copied().unwrap_or(0.0),
        backlogs.last().copied().unwrap_or(0.0),
    );
    server.stop();
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Offers `rate` webhooks a second for `seconds` from one paced thread of
/// keep-alive connections; returns (id, time of its 202 in ms).
fn paced(addr: SocketAddr, rate: u64, seconds: u64) -> Vec<(String, u64)> {
    use std::io::Write;
    let total = rate * seconds;
    let lanes = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let results: Vec<Vec<(String, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes)
            .map(|lane| {
                let stop = Arc::clone(&stop);
                scope.spawn(move || {
                    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                    let _ = stream.set_nodelay(true);
                    let mut done = Vec::new();
                    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                    for n in (lane..total).step_by(lanes as usize) {
                        // Open loop: request n is due at n / rate seconds.
                        let due = started + Duration::from_micros(n * 1_000_000 / rate);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = transaction_id(21, n);
                        let body = payload(&id);
                        write!(
                            stream,
                            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .expect("send");
                        if read_status(&mut reader) == 202 {
                            done.push((id, now_ms()));
                        }
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("lane"))
            .collect()
    });
    results.into_iter().flatten().collect()
}

/// Reads one response with a Content-Length body; returns its status.
fn read_status(reader: &mut impl std::io::BufRead) -> u16 {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    status
}

fn latency(seconds: u64, concurrency: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::counting(200);
    let server = daemon(dir.path(), &sink, "0s", concurrency);
    let rate = 1000;
    println!("delivery latency: {rate} webhooks/s offered for {seconds} s, --process-delay 0s");
    let accepted = paced(server.addr, rate, seconds);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.count() < accepted.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("bounds");
    let mut unprocessed = 0;
    for (id, accepted_ms) in &accepted {
        let body = common::http_get(server.addr, &format!("/v1/transactions/{id}"));
        let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        match view["processed_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        {
            Some(at) => {
                let at = u64::try_from(
                    at.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_millis(),
                )
                .unwrap();
                histogram.saturating_record(at.saturating_sub(*accepted_ms).max(1));
            }
            None => unprocessed += 1,
        }
    }
    println!(
        "202 -> processed_at over {} webhooks (ms resolution): p50 {} ms, p99 {} ms, max {} ms; {unprocessed} not PROCESSED",
        accepted.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
    server.stop();
}

fn pending(count: u64, concurrency: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::counting(200);
    let server = daemon(dir.path(), &sink, "1h", concurrency);
    let result = run_load_until(server.addr, CONNECTIONS, 31, Limit::Requests(count), || {});
    let pending = metric(server.addr, "webhookd_pending_jobs");
    let (rss, peak) = server.rss_kib();
    println!(
        "pending: {} accepted in {:.1} s, {pending:.0} deliveries pending; RSS {:.1} MiB (peak {:.1} MiB)",
        result.accepted,
        result.elapsed.as_secs_f64(),
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    server.stop();
    let restarted = daemon(dir.path(), &sink, "1h", concurrency);
    let (rss, peak) = restarted.rss_kib();
    println!(
        "restart with {pending:.0} pending: ready after {:.3} s; RSS {:.1} MiB (peak {:.1} MiB); {} delivered (none due)",
        restarted.ready_after.as_secs_f64(),
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        sink.count()
    );
    restarted.stop();
}
