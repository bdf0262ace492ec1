//! Shared by the integration tests: start the real `webhookd` binary on
//! port 0 with a temporary data dir, talk raw HTTP/1.1 to it, kill it with
//! SIGKILL or stop it with a signal, and poll for conditions with deadlines.

#![allow(dead_code)] // each test file uses part of this

pub mod in_process;
pub mod requirements;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// How long a daemon may take to print its ready line on a busy machine.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Default deadline for conditions the tests wait for.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_webhookd");

/// A running webhookd. Dropping it SIGKILLs the process.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// Everything the daemon wrote to stderr so far, one line per line.
    stderr: Arc<Mutex<String>>,
    /// Drains the stderr pipe (so it never fills); ends at EOF.
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Starts webhookd on `data_dir` with `--listen 127.0.0.1:0` and `extra`
    /// arguments, and waits for its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(BIN);
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Daemon::spawn(command)
    }

    /// Spawns a prepared command and waits for `listening on IP:PORT`.
    pub fn spawn(mut command: Command) -> Daemon {
        let mut child = command.spawn().expect("start webhookd");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let log = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                // Only after the line is in the log, so callers can read it.
                if let Some(addr) = ready_address(&line)
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        // Disconnected (the process exited and closed stderr) fails at once.
        if let Ok(addr) = ready_rx.recv_timeout(READY_DEADLINE) {
            Daemon {
                child,
                addr,
                stderr,
                reader: Some(reader),
            }
        } else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "webhookd did not become ready; stderr:\n{}",
                stderr.lock().unwrap()
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM: graceful shutdown.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGINT: graceful shutdown, as from Ctrl-C.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// Sends signal `name` (e.g. `TERM`) with kill(1): the tests have no libc.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, failing the test after `deadline`;
    /// returns its status and everything it wrote to stderr.
    pub fn wait_exit(mut self, deadline: Duration) -> (ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                started.elapsed() < deadline,
                "webhookd did not exit within {deadline:?}; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipe reaches EOF once the process is gone: take the last lines.
        if let Some(reader) = self.reader.take() {
            let until = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                reader.join().expect("stderr reader");
            }
        }
        (status, self.stderr_text())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `listening on ` in a log line (text or JSON).
pub fn ready_address(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening on ")?;
    let rest = &line[at + "listening on ".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// An HTTP response as the tests see it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the API's error shape and code; returns the body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "unexpected status; body {}", self.body);
        let body = self.json();
        let top: Vec<&String> = body.as_object().expect("a JSON object").keys().collect();
        assert_eq!(top, ["error"], "error body has only `error`: {}", self.body);
        assert_eq!(body["error"]["code"], code, "body {}", self.body);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error message missing: {}",
            self.body
        );
        let keys: Vec<&String> = body["error"].as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| ["code", "message", "field"].contains(&k.as_str())),
            "unexpected key in {}",
            self.body
        );
        if code == "invalid_field" {
            assert!(body["error"]["field"].is_string(), "{}", self.body);
        } else {
            assert!(!keys.iter().any(|k| *k == "field"), "{}", self.body);
        }
        body
    }
}

/// Sends raw bytes and reads the whole response (the request should carry
/// `Connection: close`).
pub fn send_raw(addr: SocketAddr, request: &[u8]) -> Response {
    try_send_raw(addr, request).unwrap_or_else(|e| panic!("HTTP exchange with {addr}: {e}"))
}

/// Like [`send_raw`], but a connection or I/O failure is an `Err` (for
/// load that runs into a deliberate SIGKILL).
pub fn try_send_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = try_connect(addr)?;
    stream.write_all(request)?;
    try_read_response(&mut stream)
}

/// Connects with read and write timeouts, so a hung server fails the test.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

fn try_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// Reads one response: head, then the body by Content-Length, chunked, or to EOF.
/// POSTs a webhook on a kept-alive connection and reads the answer.
pub fn post_on(stream: &mut TcpStream, body: &str) -> Response {
    let request = format!(
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    read_response(stream)
}

pub fn read_response(stream: &mut TcpStream) -> Response {
    try_read_response(stream).unwrap_or_else(|e| panic!("reading the response: {e}"))
}

fn bad_response(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// [`read_response`] with failures as `Err`.
pub fn try_read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    read_one(&mut BufReader::new(stream))
}

/// Reads `count` responses that follow each other on `stream` (answers to
/// pipelined requests) through one buffer, so bytes of a later answer that
/// arrive with an earlier one are not lost.
pub fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<Response> {
    let mut reader = BufReader::new(stream);
    (0..count)
        .map(|i| read_one(&mut reader).unwrap_or_else(|e| panic!("reading response {i}: {e}")))
        .collect()
}

fn read_one(reader: &mut BufReader<&mut TcpStream>) -> std::io::Result<Response> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_response(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad_response(format!("header without a colon: {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v): &(String, String)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = find("content-length") {
        let length = length
            .parse()
            .map_err(|_| bad_response(format!("bad Content-Length {length:?}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| bad_response(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).map_err(|e| bad_response(format!("body: {e}")))?,
    })
}

pub fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    send_raw(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path)
}

/// POST to the webhook endpoint with `Content-Type: application/json`.
pub fn post(addr: SocketAddr, body: &str) -> Response {
    post_with_type(addr, Some("application/json"), body)
}

pub fn post_with_type(addr: SocketAddr, content_type: Option<&str>, body: &str) -> Response {
    send_raw(addr, post_request(content_type, body).as_bytes())
}

/// [`post`] with connection and I/O failures as `Err`.
pub fn try_post(addr: SocketAddr, body: &str) -> std::io::Result<Response> {
    try_send_raw(
        addr,
        post_request(Some("application/json"), body).as_bytes(),
    )
}

fn post_request(content_type: Option<&str>, body: &str) -> String {
    let content_type = content_type
        .map(|t| format!("Content-Type: {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A valid webhook body.
pub fn payload(id: &str, amount: &str) -> String {
    format!(
        r#"{{"transaction_id":{},"source_account":"acc_user_789","destination_account":"acc_merchant_456","amount":{amount},"currency":"INR"}}"#,
        serde_json::to_string(id).unwrap()
    )
}

/// `/v1/transactions/{id}` with every byte outside `[A-Za-z0-9_-]` percent-encoded.
pub fn transaction_path(id: &str) -> String {
    use std::fmt::Write as _;
    let mut path = String::from("/v1/transactions/");
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            path.push(byte as char);
        } else {
            write!(path, "%{byte:02X}").unwrap();
        }
    }
    path
}

pub fn get_transaction(addr: SocketAddr, id: &str) -> Response {
    get(addr, &transaction_path(id))
}

/// The value of one series in `GET /metrics`, named exactly as exposed
/// (e.g. `webhookd_pending_jobs` or
/// `webhookd_webhooks_total{outcome="accepted"}`).
#[track_caller]
pub fn metric(addr: SocketAddr, series: &str) -> u64 {
    let text = get(addr, "/metrics").body;
    metric_in(&text, series)
}

/// [`metric`] in an already fetched exposition.
#[track_caller]
pub fn metric_in(text: &str, series: &str) -> u64 {
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim();
    // Whole numbers, some of them written as floats (`3.0`).
    value
        .strip_suffix(".0")
        .unwrap_or(value)
        .parse()
        .unwrap_or_else(|e| panic!("{series} {value}: {e}"))
}

/// Waits until the daemon on `data_dir` has nothing left to write by
/// itself (every id merged into the on-disk id index, which happens in the
/// same commit as the job rows of an idle writer), then returns the
/// database file's bytes and the number of commits so far. Anything that
/// writes after this changes one or both.
pub fn settled_database(addr: SocketAddr, data_dir: &Path) -> (Vec<u8>, u64) {
    poll_until(DEADLINE, "every id merged into the id index", || {
        (metric(addr, "webhookd_unindexed_ids") == 0).then_some(())
    });
    let file = std::fs::read(data_dir.join("webhookd.redb")).expect("read the database file");
    (file, metric(addr, "webhookd_commit_batch_size_count"))
}

/// What `webhookd check` counted in a data dir (it must pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckTotals {
    pub transactions: u64,
    pub processing: u64,
    pub processed: u64,
    pub pending_jobs: u64,
}

/// Runs `webhookd --data-dir DIR check`, requires exit 0, and returns its
/// totals (from `ok: N transactions (P processing, Q processed), J pending jobs`).
#[track_caller]
pub fn check_totals(dir: &Path) -> CheckTotals {
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .arg("check")
        .output()
        .expect("run webhookd check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "webhookd check failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let numbers: Vec<u64> = stdout
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [transactions, processing, processed, pending_jobs] = numbers[..] else {
        panic!("unexpected check summary: {stdout}");
    };
    assert!(
        stdout.starts_with("ok: "),
        "unexpected check summary: {stdout}"
    );
    CheckTotals {
        transactions,
        processing,
        processed,
        pending_jobs,
    }
}

/// [`check_totals`] on a copy of the data dir's database: `check` repairs
/// a file a SIGKILL left, and the daemon must later open it exactly as
/// the kill left it.
#[track_caller]
pub fn check_totals_of_a_copy(dir: &Path) -> CheckTotals {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("webhookd.redb"), copy.path().join("webhookd.redb"))
        .expect("copy the database file");
    check_totals(copy.path())
}

/// Every record `webhookd export --format jsonl` writes for a stopped
/// daemon's data dir, in the order written.
#[track_caller]
pub fn export(dir: &Path) -> Vec<Value> {
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["export", "--format", "jsonl"])
        .output()
        .expect("run webhookd export");
    assert!(
        output.status.success(),
        "webhookd export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 export")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `deadline`.
#[track_caller]
pub fn poll_until<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the transaction reads back PROCESSED; returns its body.
pub fn wait_processed(addr: SocketAddr, id: &str, deadline: Duration) -> Value {
    poll_until(deadline, "PROCESSED", || {
        let body = get_transaction(addr, id).json();
        (body["status"] == "PROCESSED").then_some(body)
    })
}

/// Milliseconds since the epoch of an RFC 3339 timestamp (must end in Z).
pub fn millis(timestamp: &Value) -> u64 {
    let text = timestamp.as_str().expect("timestamp is a string");
    assert!(text.ends_with('Z'), "{text} is not UTC with Z");
    let time = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    u64::try_from(
        time.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub fn now_millis() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Runs webhookd expecting it to exit by itself (within 30 s); returns the
/// exit code and stderr.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start webhookd");
    // Read stderr while it runs, so a chatty process cannot block on the pipe.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut stderr = Vec::new();
        let _ = pipe.read_to_end(&mut stderr);
        String::from_utf8_lossy(&stderr).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "webhookd {args:?} did not exit within 30 s; stderr:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().expect("stderr reader"))
}

/// Runs webhookd on `data` (which must not exist) with `args` and `env`,
/// expecting a configuration error: exit 2, one line on stderr, and no
/// data dir created. Returns the line.
#[track_caller]
pub fn refused_at_start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut full = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    full.extend(args);
    let (code, stderr) = run_to_exit(&full, env);
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(
        !data.exists(),
        "{args:?} {env:?} created the data dir: {line}"
    );
    line
}

/// Starts webhookd on `dir` (port 0) expecting it to exit by itself, as
/// a refused start-up does; returns the exit code and stderr.
pub fn start_expecting_exit(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["--data-dir", dir.to_str().expect("UTF-8 path")];
    args.extend(["--listen", "127.0.0.1:0"]);
    args.extend(extra);
    run_to_exit(&args, &[])
}

/// Asserts a start-up failure: exit 1, one non-empty line, no panic.
#[track_caller]
pub fn assert_one_line_failure(code: Option<i32>, stderr: &str, expected_code: i32) -> String {
    assert_eq!(code, Some(expected_code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    lines[0].to_owned()
}

/// Asserts `value` is a timestamp like `2026-11-22T10:30:00.123Z`: RFC 3339
/// in UTC with exactly three fractional digits.
#[track_caller]
pub fn assert_millis_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"));
    let shape_ok = text.len() == 24
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(shape_ok, "{text} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
}

/// A tmpfs mounted on a fresh temporary directory for one test, unmounted
/// when dropped (also when the test fails).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=1m`, `ro,size=1m`); fails
    /// the test, naming what is missing, where this machine does not allow
    /// it (see [`requirements::Need::TmpfsMount`]).
    #[track_caller]
    pub fn mounted(options: &str) -> Tmpfs {
        require(requirements::Need::TmpfsMount);
        Tmpfs::mount(options).unwrap_or_else(|| panic!("mount -t tmpfs -o {options} failed"))
    }

    /// Mounts a tmpfs with `options`; `None` where this machine does not
    /// allow it (mounting needs root). A test should use [`Tmpfs::mounted`]:
    /// it fails, or is marked ignored, instead of passing without running.
    pub fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the mount options in place (e.g. `remount,size=16m`).
    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", options])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fails the test, naming what is missing, unless this machine has what
/// `need` describes. A test that calls this is also marked
/// `#[cfg_attr(webhookd_no_..., ignore = "...")]`, so outside CI it is
/// listed as ignored where build.rs found the requirement missing.
#[track_caller]
pub fn require(need: requirements::Need) {
    if let Err(missing) = need.check() {
        panic!(
            "cannot run this test here: {missing}. (Without CI=true, a build that \
             finds this missing marks the test ignored instead.)"
        );
    }
}

/// Whether the tests run as root (some need to mount or drop privileges).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The soft and hard limits on open files of this process.
pub fn open_files_limit() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/self/limits");
    let mut numbers = line.split_whitespace().skip(3).map(|w| {
        if w == "unlimited" {
            u64::MAX
        } else {
            w.parse().expect("a limit")
        }
    });
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// Raises this process's soft limit (which the daemon inherits) to its
/// hard limit with prlimit(1) (util-linux), so that both ends of every
/// connection (this process and the daemon) can hold `needed` open files; fails naming the limit if the hard one is lower.
pub fn raise_open_files_limit(needed: u64) {
    let (soft, hard) = open_files_limit();
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard} (raise it with ulimit -Hn)"
    );
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("run prlimit (util-linux) to raise the open files limit");
    assert!(status.success(), "prlimit failed");
}
