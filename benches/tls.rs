//! TLS: what HTTPS costs ingest. The same load, `POST
//! /v1/webhooks/transactions` with unique ids over keep-alive connections
//! (64 by default), each sending its next request once the previous answer
//! arrived, against a fresh webhookd in three modes, interleaved run by
//! run: plain HTTP/1.1, HTTPS with HTTP/1.1, and HTTPS with HTTP/2 (one
//! request at a time per connection). Prints requests per second, p50 and
//! p99 per mode (medians over `WEBHOOKD_BENCH_RUNS`, default 3) and the
//! throughput TLS costs against plain; the target is at most 25%.
//!
//! Run: `cargo bench --bench tls`
//! `WEBHOOKD_BENCH_TLS_REQUESTS` (default 200000) requests per run,
//! `WEBHOOKD_BENCH_TLS_CONNECTIONS` (default 64) connections,
//! `WEBHOOKD_BENCH_LOAD_THREADS` (default 2) load generator threads,
//! `WEBHOOKD_BENCH_DAEMON_ARGS` more arguments for webhookd (e.g.
//! `--process-delay 1h`). The certificate is an ECDSA P-256 one made by
//! rcgen at start.

#![allow(clippy::cast_precision_loss)] // figures for display

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
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

/// How a run talks to the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    TlsHttp1,
    TlsHttp2,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::TlsHttp1, Mode::TlsHttp2];

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain HTTP/1.1",
            Mode::TlsHttp1 => "TLS HTTP/1.1",
            Mode::TlsHttp2 => "TLS HTTP/2",
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// A certificate for `localhost` and the client config that trusts it.
struct Certificate {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
}

impl Certificate {
    fn make(dir: &Path) -> Certificate {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("make a certificate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the key");
        let mut roots = RootCertStore::empty();
        roots
            .add(made.cert.der().clone())
            .expect("trust the certificate");
        let config = |alpn: &[u8]| {
            let mut config = ClientConfig::builder_with_provider(webhookd::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("TLS 1.2 and 1.3")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        Certificate {
            cert,
            key,
            http1: config(b"http/1.1"),
            http2: config(b"h2"),
        }
    }
}

/// A webhookd started for one run; killed when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(data_dir: &Path, tls: Option<&Certificate>) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_webhookd"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,webhookd=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(tls) = tls {
            command
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        if let Ok(extra) = std::env::var("WEBHOOKD_BENCH_DAEMON_ARGS") {
            command.args(extra.split_whitespace());
        }
        let mut child = command.spawn().expect("start webhookd");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("webhookd exited before it was ready")
                .expect("read webhookd's stderr");
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || ".:".contains(c)))
                    .unwrap_or(rest.len());
                break rest[..end].parse().expect("address in the ready line");
            }
        };
        // Drains the rest of stderr so the daemon never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Daemon { child, addr }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unique, random-looking id for request `n` of run `seed`.
fn transaction_id(seed: u64, n: u64) -> String {
    let mut z = (seed << 40 ^ n).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("txn_{z:016x}{seed:04x}")
}

fn webhook(seed: u64, n: u64) -> Request<Full<Bytes>> {
    let id = transaction_id(seed, n);
    let body = format!(
        r#"{{"transaction_id":"{id}","source_account":"acc_user_789","destination_account":"acc_merchant_456","amount":1500.50,"currency":"INR"}}"#
    );
    Request::post("https://localhost/v1/webhooks/transactions")
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// One connection's request sender, whatever the protocol.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn open(addr: SocketAddr, mode: Mode, certificate: &Certificate) -> Sender {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = tcp.set_nodelay(true);
        if mode == Mode::Plain {
            return Sender::http1(TokioIo::new(tcp)).await;
        }
        let config = if mode == Mode::TlsHttp1 {
            &certificate.http1
        } else {
            &certificate.http2
        };
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        if mode == Mode::TlsHttp1 {
            Sender::http1(TokioIo::new(tls)).await
        } else {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("HTTP/2 handshake");
            tokio::spawn(connection);
            Sender::Http2(sender)
        }
    }

    async fn http1<I>(io: I) -> Sender
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        Sender::Http1(sender)
    }

    /// The answer's status, or `None` if the connection failed.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Option<StatusCode> {
        let response = match self {
            Sender::Http1(sender) => {
                sender.ready().await.ok()?;
                sender.send_request(request).await.ok()?
            }
            Sender::Http2(sender) => {
                sender.ready().await.ok()?;
                sender.send_request(request).await.ok()?
            }
        };
        let status = response.status();
        response.into_body().collect().await.ok()?;
        Some(status)
    }
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Answers other than 202.
    errors: u64,
    /// Connections that failed and were opened again.
    reconnects: u64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Sends `total` webhooks over `connections` connections in `mode`.
fn run(addr: SocketAddr, mode: Mode, certificate: &Arc<Certificate>, seed: u64) -> Figures {
    let total = env_number("WEBHOOKD_BENCH_TLS_REQUESTS", 200_000);
    let connections = env_number("WEBHOOKD_BENCH_TLS_CONNECTIONS", 64);
    let threads = usize::try_from(env_number("WEBHOOKD_BENCH_LOAD_THREADS", 2)).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("load runtime");
    let next = Arc::new(AtomicU64::new(0));
    // Handshakes first, so the timed part is the keep-alive load.
    let senders: Vec<Sender> = runtime.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..connections {
            senders.push(Sender::open(addr, mode, certificate).await);
        }
        senders
    });
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let next = Arc::clone(&next);
            let certificate = Arc::clone(certificate);
            runtime.spawn(async move {
                let (mut latency, mut errors, mut reconnects) = (new_histogram(), 0u64, 0u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let sent = Instant::now();
                    match sender.send(webhook(seed, n)).await {
                        Some(StatusCode::ACCEPTED) => {
                            let micros =
                                u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            latency.saturating_record(micros.max(1));
                        }
                        Some(_) => errors += 1,
                        None => {
                            // Counted, and opened again: no connection is dropped silently.
                            reconnects += 1;
                            sender = Sender::open(addr, mode, &certificate).await;
                        }
                    }
                }
                (latency, errors, reconnects)
            })
        })
        .collect();
    let mut latency = new_histogram();
    let (mut errors, mut reconnects) = (0, 0);
    for task in tasks {
        let (histogram, failed, reopened) = runtime.block_on(task).expect("load task");
        latency.add(&histogram).expect("same bounds");
        errors += failed;
        reconnects += reopened;
    }
    let elapsed = started.elapsed();
    runtime.shutdown_timeout(Duration::from_secs(5));
    Figures {
        per_second: latency.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: latency.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
        reconnects,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_number("WEBHOOKD_BENCH_RUNS", 3);
    let dir = tempfile::tempdir().expect("temporary directory");
    let certificate = Arc::new(Certificate::make(dir.path()));
    let mut results: Vec<Vec<Figures>> = Mode::ALL.iter().map(|_| Vec::new()).collect();
    for run_number in 0..runs {
        // The order rotates run by run, so a machine whose speed drifts favours no mode.
        let first = usize::try_from(run_number).unwrap_or(0) % Mode::ALL.len();
        for slot in (0..Mode::ALL.len()).map(|i| (first + i) % Mode::ALL.len()) {
            let mode = Mode::ALL[slot];
            let data_dir = dir.path().join(format!("run{run_number}-{slot}"));
            let tls = (mode != Mode::Plain).then_some(&*certificate);
            let daemon = Daemon::start(&data_dir, tls);
            let seed = run_number * 8 + slot as u64;
            let figures = run(daemon.addr, mode, &certificate, seed);
            eprintln!(
                "run {}: {:<15} {:>9.0} req/s  p99 {:>6.2} ms",
                run_number + 1,
                mode.name(),
                figures.per_second,
                figures.p99_ms
            );
            results[slot].push(figures);
            drop(daemon);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
    let connections = env_number("WEBHOOKD_BENCH_TLS_CONNECTIONS", 64);
    println!("\ningest at {connections} keep-alive connections, medians of {runs} run(s)\n");
    println!(
        "| mode | 202/s | p50 ms | p99 ms | non-202 | conn errors | throughput cost vs plain |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let plain = median(results[0].iter().map(|f| f.per_second).collect());
    for (mode, figures) in Mode::ALL.into_iter().zip(&results) {
        let rate = median(figures.iter().map(|f| f.per_second).collect());
        let cost = if mode == Mode::Plain {
            "-".to_owned()
        } else {
            format!("{:.1}%", 100.0 * (1.0 - rate / plain))
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            mode.name(),
            rate,
            median(figures.iter().map(|f| f.p50_ms).collect()),
            median(figures.iter().map(|f| f.p99_ms).collect()),
            figures.iter().map(|f| f.errors).sum::<u64>(),
            figures.iter().map(|f| f.reconnects).sum::<u64>(),
            cost
        );
    }
    println!("\ntarget: TLS costs at most 25% of plain throughput");
}
