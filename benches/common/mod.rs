//! Shared by the end-to-end benches: start the real daemon (or a
//! reference server), drive it with `wrk` or the built-in hyper client
//! (see [`Client`]), and print figures as a table.

#![allow(dead_code)] // each bench uses part of this
#![allow(clippy::cast_precision_loss)] // figures for display

pub mod reference;
pub mod wrk;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
pub use reference::Reference;

/// A webhookd (or reference server) process started by a bench.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// From spawn to the `listening on` line.
    pub ready_after: Duration,
    pub spawned_at: Instant,
}

impl Server {
    /// Starts the release webhookd on `data_dir` with extra arguments.
    pub fn webhookd(data_dir: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_webhookd"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn,webhookd=info");
        Server::spawn(command)
    }

    /// Starts this bench binary again as a reference server (see
    /// [`reference`]); a durable one keeps its file in `dir`, sized for
    /// `requests` bodies.
    pub fn reference(kind: Reference, dir: &Path, requests: u64) -> Server {
        let mut command = Command::new(std::env::current_exe().expect("bench executable path"));
        command.args([reference::REFERENCE_FLAG, kind.name()]);
        if kind != Reference::NoStorage {
            // Bodies are about 170 bytes; room for 256 each.
            let bytes = requests.saturating_mul(256).max(1 << 20);
            command.arg(dir.join(kind.name())).arg(bytes.to_string());
        }
        Server::spawn(command)
    }

    fn spawn(mut command: Command) -> Server {
        let spawned_at = Instant::now();
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start server");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before it was ready")
                .expect("read server stderr");
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                    .unwrap_or(rest.len());
                break rest[..end].parse().expect("address in ready line");
            }
        };
        let ready_after = spawned_at.elapsed();
        std::thread::spawn(move || lines.for_each(drop));
        Server {
            child,
            addr,
            ready_after,
            spawned_at,
        }
    }

    /// Resident set size now and at its peak, in KiB (from /proc).
    pub fn rss_kib(&self) -> (u64, u64) {
        rss_kib(self.child.id())
    }

    /// SIGTERM and wait for exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Result of one load run.
pub struct LoadResult {
    /// Answered 202.
    pub accepted: u64,
    /// Answered with any other status.
    pub other: u64,
    /// Connections that could not be made or broke (each is reopened), and
    /// requests that got no answer because of it.
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of the answers, milliseconds: p50, p99, p99.9, max.
    pub latency_ms: [f64; 4],
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p50(&self) -> f64 {
        self.latency_ms[0]
    }

    pub fn p99(&self) -> f64 {
        self.latency_ms[1]
    }

    pub fn p999(&self) -> f64 {
        self.latency_ms[2]
    }

    pub fn max(&self) -> f64 {
        self.latency_ms[3]
    }
}

/// A unique, random-looking transaction id for request `n` of run `seed`
/// (splitmix64 is a bijection, so ids never repeat within a run).
pub fn transaction_id(seed: u64, n: u64) -> String {
    let mut z = (seed << 40 ^ n).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("txn_{z:016x}{seed:04x}")
}

pub fn payload(id: &str) -> String {
    format!(
        r#"{{"transaction_id":"{id}","source_account":"acc_user_789","destination_account":"acc_merchant_456","amount":1500.50,"currency":"INR"}}"#
    )
}

/// Load generator threads (`WEBHOOKD_BENCH_LOAD_THREADS`, default 2, as
/// `wrk -t2`); the server under test shares the machine.
pub fn load_threads() -> usize {
    env_count("WEBHOOKD_BENCH_LOAD_THREADS", 2)
}

/// A positive count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// The load generator a bench drives servers with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// `wrk` (Debian's package; `benches/install-wrk.sh`), with
    /// `benches/wrk/webhooks.lua` for unique ids. A C event loop: it drives
    /// harder than the built-in client on the same cores.
    Wrk,
    /// The built-in hyper client ([`run_load_until`]).
    Hyper,
}

impl Client {
    /// `WEBHOOKD_BENCH_CLIENT=wrk|hyper`; by default `wrk` where it is on
    /// the `PATH`, else the built-in client.
    pub fn from_env() -> Client {
        match std::env::var("WEBHOOKD_BENCH_CLIENT").as_deref() {
            Ok("wrk") => Client::Wrk,
            Ok("hyper") => Client::Hyper,
            Ok(other) => panic!("WEBHOOKD_BENCH_CLIENT={other}: expected wrk or hyper"),
            Err(_) if on_path("wrk") => Client::Wrk,
            Err(_) => Client::Hyper,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Client::Wrk => "wrk",
            Client::Hyper => "built-in hyper client",
        }
    }

    /// Drives `addr` with POSTs of unique ids over `connections` keep-alive
    /// connections until `limit`, calling `each_second` about once a
    /// second meanwhile. `wrk` runs only for a duration.
    pub fn drive(
        self,
        addr: SocketAddr,
        connections: usize,
        seed: u64,
        limit: Limit,
        each_second: impl FnMut(),
    ) -> LoadResult {
        match (self, limit) {
            (Client::Hyper, _) => run_load_until(addr, connections, seed, limit, each_second),
            (Client::Wrk, Limit::Duration(duration)) => {
                wrk::run(addr, connections, seed, duration, each_second)
            }
            (Client::Wrk, Limit::Requests(_)) => {
                panic!("wrk runs for a duration, not a number of requests")
            }
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Sends `total` POSTs over `connections` keep-alive connections, each
/// sending its next request as soon as the previous answer arrived.
pub fn run_load(addr: SocketAddr, connections: usize, total: u64, seed: u64) -> LoadResult {
    run_load_until(addr, connections, seed, Limit::Requests(total), || {})
}

/// When a load run stops.
#[derive(Clone, Copy)]
pub enum Limit {
    Requests(u64),
    Duration(Duration),
}

/// The built-in client: like [`run_load`], with a stop condition and a
/// callback every second. A connection that fails is counted in
/// [`LoadResult::errors`] and opened again, so the number of connections
/// driving the server stays as asked.
pub fn run_load_until(
    addr: SocketAddr,
    connections: usize,
    seed: u64,
    limit: Limit,
    mut each_second: impl FnMut(),
) -> LoadResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(load_threads())
        .enable_all()
        .build()
        .expect("load runtime");
    let next = Arc::new(AtomicU64::new(0));
    let (total, deadline) = match limit {
        Limit::Requests(n) => (n, None),
        Limit::Duration(d) => (u64::MAX, Some(d)),
    };
    let started = Instant::now();
    let stop_at = deadline.map(|d| started + d);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let next = Arc::clone(&next);
            runtime.spawn(connection(addr, next, total, seed, stop_at))
        })
        .collect();
    let mut last_tick = started;
    while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(20));
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick += Duration::from_secs(1);
            each_second();
        }
    }
    let elapsed = started.elapsed();
    let mut latency = new_histogram();
    let (mut other, mut errors) = (0, 0);
    for task in tasks {
        let counts = runtime.block_on(task).expect("load task");
        latency.add(&counts.latency).expect("same bounds");
        other += counts.other;
        errors += counts.errors;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    LoadResult {
        // Every 202 recorded one latency sample.
        accepted: latency.len(),
        other,
        errors,
        elapsed,
        latency_ms: [
            ms(latency.value_at_quantile(0.50)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.value_at_quantile(0.999)),
            ms(latency.max()),
        ],
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// What one connection task of the built-in client counted.
struct Counts {
    /// Latency of each 202, microseconds.
    latency: Histogram<u64>,
    other: u64,
    errors: u64,
}

/// Consecutive failures after which a connection task gives up (the
/// server is gone).
const MAX_CONSECUTIVE_ERRORS: u64 = 100;

async fn connection(
    addr: SocketAddr,
    next: Arc<AtomicU64>,
    total: u64,
    seed: u64,
    stop_at: Option<Instant>,
) -> Counts {
    let mut counts = Counts {
        latency: new_histogram(),
        other: 0,
        errors: 0,
    };
    let mut consecutive_errors = 0;
    let stopped = || stop_at.is_some_and(|t| Instant::now() >= t);
    'connect: while !stopped() && consecutive_errors < MAX_CONSECUTIVE_ERRORS {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            counts.errors += 1;
            consecutive_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, driver)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            counts.errors += 1;
            consecutive_errors += 1;
            continue;
        };
        let driver = tokio::spawn(driver);
        while !stopped() {
            if sender.ready().await.is_err() {
                counts.errors += 1;
                consecutive_errors += 1;
                continue 'connect;
            }
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= total {
                break 'connect;
            }
            let request = Request::post("/v1/webhooks/transactions")
                .header(hyper::header::HOST, "bench")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(payload(&transaction_id(seed, n)))))
                .expect("request");
            let sent = Instant::now();
            let answered = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    response.into_body().collect().await.map(|_| status)
                }
                Err(e) => Err(e),
            };
            let Ok(status) = answered else {
                counts.errors += 1;
                consecutive_errors += 1;
                continue 'connect;
            };
            consecutive_errors = 0;
            if status == StatusCode::ACCEPTED {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                counts.latency.saturating_record(micros.max(1));
            } else {
                counts.other += 1;
            }
        }
        drop(sender);
        let _ = driver.await;
        break;
    }
    counts
}

/// Median of a non-empty list.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Number of repetitions (`WEBHOOKD_BENCH_RUNS`, default 3).
pub fn runs() -> usize {
    env_count("WEBHOOKD_BENCH_RUNS", 3)
}

/// A plain HTTP/1.1 GET (one connection, `Connection: close`); returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// One sample from `GET /metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = http_get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from: {text}"))
}
