//! systemd's notify protocol, driven through a Unix datagram socket the
//! test owns (`NOTIFY_SOCKET`), with no systemd: start-up asks for more
//! time while the database opens, `READY=1` comes once the socket is bound
//! and the store open, `STATUS=` lines follow what is pending, `WATCHDOG=1`
//! is sent only while the store writer makes progress, and `STOPPING=1` is
//! the last message before exit.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::ops::Bound;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use redb::{BackendError, StorageBackend};
use webhookd::RunOptions;
use webhookd::cli::Config;
use webhookd::store::{Access, FileOpener, StorageOpener};

use common::{DEADLINE, Daemon, READY_DEADLINE, get, payload, poll_until, post};

/// One datagram: when it arrived and its `KEY=value` lines.
#[derive(Debug, Clone)]
struct Message {
    at: Instant,
    lines: Vec<String>,
}

impl Message {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The notify socket: every datagram it receives, in order. When one says
/// `READY=1`, the address in its `STATUS=` is connected to at once, which
/// shows whether the socket was bound by then.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<Message>>>,
    connected_on_ready: Arc<Mutex<Option<io::Result<()>>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let connected_on_ready = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let messages = Arc::clone(&messages);
            let connected_on_ready = Arc::clone(&connected_on_ready);
            let stop = Arc::clone(&stop);
            move || {
                let mut buf = vec![0; 64 * 1024];
                while !stop.load(Ordering::SeqCst) {
                    let Ok(n) = socket.recv(&mut buf) else {
                        continue;
                    };
                    let message = Message {
                        at: Instant::now(),
                        lines: String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .map(str::to_owned)
                            .collect(),
                    };
                    if message.has("READY=1") {
                        let connected = message
                            .value("STATUS")
                            .and_then(common::ready_address)
                            .ok_or_else(|| io::Error::other("no address in the READY status"))
                            .and_then(|addr| TcpStream::connect(addr).map(drop));
                        *connected_on_ready.lock().unwrap() = Some(connected);
                    }
                    messages.lock().unwrap().push(message);
                }
            }
        });
        NotifySocket {
            path,
            messages,
            connected_on_ready,
            stop,
            reader: Some(reader),
        }
    }

    fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for a message `matches` accepts, after the `skip` first ones.
    #[track_caller]
    fn wait_for(&self, what: &str, skip: usize, matches: impl Fn(&Message) -> bool) -> Message {
        poll_until(DEADLINE, what, || {
            self.messages().into_iter().skip(skip).find(|m| matches(m))
        })
    }

    /// Index of the first message with `line`.
    fn position(&self, line: &str) -> Option<usize> {
        self.messages().iter().position(|m| m.has(line))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[test]
fn ready_status_watchdog_and_stopping_come_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let data = dir.path().join("data");
    let daemon = Daemon::start_with_env(
        &data,
        &["--process-delay", "1h"],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            // 1 s: a ping every 250 ms.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let ready = notify.wait_for("READY=1", 0, |m| m.has("READY=1"));
    let ready_at = notify.position("READY=1").unwrap();

    // Start-up asked for time while the database opened, before READY.
    let extend = notify
        .messages()
        .iter()
        .position(|m| m.value("EXTEND_TIMEOUT_USEC").is_some())
        .expect("EXTEND_TIMEOUT_USEC while the database opened");
    assert!(extend < ready_at, "{:?}", notify.messages());
    // READY came with the address, which was bound and listening then.
    let status = ready.value("STATUS").expect("a status with READY");
    assert_eq!(common::ready_address(status), Some(daemon.addr), "{status}");
    let connected = notify.connected_on_ready.lock().unwrap().take();
    assert!(
        matches!(connected, Some(Ok(()))),
        "connecting when READY=1 arrived: {connected:?}"
    );
    assert!(status.contains("pending 0, due 0"), "{status}");
    assert!(
        !status.contains("in flight"),
        "delivery figures without --deliver-to: {status}"
    );
    // No watchdog ping before READY.
    assert!(
        notify.messages()[..ready_at]
            .iter()
            .all(|m| !m.has("WATCHDOG=1")),
        "{:?}",
        notify.messages()
    );

    // Pings keep coming while all is well.
    poll_until(DEADLINE, "three watchdog pings", || {
        (notify
            .messages()
            .iter()
            .filter(|m| m.has("WATCHDOG=1"))
            .count()
            >= 3)
            .then_some(())
    });

    // The status follows what is pending.
    assert_eq!(post(daemon.addr, &payload("txn_status_1", "1")).status, 202);
    assert_eq!(post(daemon.addr, &payload("txn_status_2", "2")).status, 202);
    let seen = notify.messages().len();
    let refreshed = notify.wait_for("a STATUS with 2 pending", seen, |m| {
        m.value("STATUS")
            .is_some_and(|s| s.contains("pending 2, due 0"))
    });
    assert!(
        refreshed.value("STATUS").unwrap().contains("writes ok"),
        "{refreshed:?}"
    );

    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}\n{stderr}");
    let messages = notify.messages();
    let stopping = messages
        .iter()
        .position(|m| m.has("STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1 before exit: {messages:?}"));
    assert_eq!(
        stopping,
        messages.len() - 1,
        "STOPPING=1 is the last message: {messages:?}"
    );
}

#[test]
fn with_deliver_to_the_status_shows_attempts_in_flight_failed_and_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    // 410 makes a transaction FAILED at its first attempt.
    let sink = sink::Sink::answering(410);
    let daemon = Daemon::start_with_env(
        &dir.path().join("data"),
        &["--process-delay", "0s", "--deliver-to", &sink.url()],
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    let ready = notify.wait_for("READY=1", 0, |m| m.has("READY=1"));
    let status = ready.value("STATUS").expect("a status with READY");
    assert!(
        status.contains("in flight 0, failed 0, delivery ok"),
        "{status}"
    );
    assert_eq!(
        post(daemon.addr, &payload("txn_status_failed", "1")).status,
        202
    );
    let seen = notify.messages().len();
    notify.wait_for("a STATUS with 1 failed", seen, |m| {
        m.value("STATUS")
            .is_some_and(|s| s.contains("pending 0, due 0") && s.contains("failed 1, delivery ok"))
    });
    assert_eq!(sink.count(), 1);
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}\n{stderr}");
}

#[test]
fn without_notify_socket_nothing_changes() {
    // The same daemon without NOTIFY_SOCKET serves as before (the systemd
    // code stays out of the way); READY and friends have nowhere to go.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_env(dir.path(), &[], &[("WATCHDOG_USEC", "1000000")]);
    assert_eq!(get(daemon.addr, "/").status, 200);
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(!stderr.contains("systemd"), "{stderr}");
}

// --- The watchdog with a writer stuck in fsync --------------------------------

/// Set in the child process the next test runs itself in.
const CHILD: &str = "WEBHOOKD_TEST_STUCK_WRITER_CHILD";
const TEST_NAME: &str = "watchdog_pings_stop_while_the_writer_is_stuck_and_resume_after";
/// Watchdog timeout given to the child: pings every 500 ms, a thread busy
/// for more than 1 s is stuck.
const WATCHDOG: Duration = Duration::from_secs(2);
/// How long the child keeps fsync blocked while the database opens (more
/// than one `EXTEND_TIMEOUT_USEC` period), and later under a webhook.
const OPEN_BLOCKED: Duration = Duration::from_millis(11_500);
const WRITER_BLOCKED: Duration = Duration::from_secs(6);

/// redb's file backend whose fsync waits while `blocked` is set.
#[derive(Debug)]
struct BlockingBackend {
    inner: Box<dyn StorageBackend>,
    blocked: Arc<AtomicBool>,
}

impl StorageBackend for BlockingBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        while self.blocked.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

struct BlockingOpener {
    blocked: Arc<AtomicBool>,
}

impl StorageOpener for BlockingOpener {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(BlockingBackend {
            inner: FileOpener.open(path, access)?,
            blocked: Arc::clone(&self.blocked),
        }))
    }
}

/// A marker in the notify socket's stream, sent by the child itself, so
/// the parent sees when fsync was blocked and released in the same order
/// as the daemon's own messages.
fn mark(socket: &str, what: &str) {
    let sender = UnixDatagram::unbound().unwrap();
    sender
        .send_to(format!("TEST={what}\n").as_bytes(), socket)
        .expect("send a marker");
}

/// In the child: the real server in-process on storage whose fsync blocks,
/// first while the database opens, then under a webhook.
fn stuck_writer_child() {
    let socket = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET in the child");
    let dir = tempfile::tempdir().unwrap();
    let blocked = Arc::new(AtomicBool::new(true));
    let config = Config::try_parse_from([
        "webhookd",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    let (shutdown, requested) = tokio::sync::oneshot::channel::<()>();
    let options = RunOptions::default()
        .storage(BlockingOpener {
            blocked: Arc::clone(&blocked),
        })
        .shutdown_on(async move {
            let _ = requested.await;
        });
    let (ready, bound) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        webhookd::run_with(&config, options, move |addr| {
            let _ = ready.send(addr);
        })
    });
    // Opening the database waits on fsync this long.
    mark(&socket, "open-blocked");
    std::thread::sleep(OPEN_BLOCKED);
    mark(&socket, "open-released");
    blocked.store(false, Ordering::SeqCst);
    let addr: SocketAddr = match bound.recv_timeout(READY_DEADLINE) {
        Ok(addr) => addr,
        Err(RecvTimeoutError::Timeout) => panic!("not ready within {READY_DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("did not start: {:?}", server.join()),
    };
    // A few pings while healthy.
    std::thread::sleep(WATCHDOG * 2);

    blocked.store(true, Ordering::SeqCst);
    mark(&socket, "writer-blocked");
    let webhook = std::thread::spawn(move || post(addr, &payload("txn_stuck", "1")).status);
    std::thread::sleep(WRITER_BLOCKED);
    mark(&socket, "writer-released");
    blocked.store(false, Ordering::SeqCst);
    assert_eq!(
        webhook.join().unwrap(),
        202,
        "the webhook is stored once fsync returns"
    );
    // Pings again.
    std::thread::sleep(WATCHDOG * 2);
    mark(&socket, "done");
    let _ = shutdown.send(());
    server
        .join()
        .expect("no panic")
        .expect("stopped without an error");
}

#[test]
fn watchdog_pings_stop_while_the_writer_is_stuck_and_resume_after() {
    if std::env::var_os(CHILD).is_some() {
        return stuck_writer_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let output = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env_remove("WATCHDOG_PID")
        .output()
        .expect("run the child");
    let child_output = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child failed:\n{child_output}");
    // The last datagrams may still be on their way to the reader.
    notify.wait_for("STOPPING=1", 0, |m| m.has("STOPPING=1"));
    let messages = notify.messages();
    let at = |marker: &str| {
        messages
            .iter()
            .find(|m| m.value("TEST") == Some(marker))
            .unwrap_or_else(|| panic!("no marker {marker}: {messages:?}"))
            .at
    };
    let between = |from: Instant, to: Instant, line: &str| {
        messages
            .iter()
            .filter(|m| m.at >= from && m.at <= to && m.has(line))
            .count()
    };
    let all = messages.first().expect("messages").at;

    // While the database opened: EXTEND_TIMEOUT_USEC at once and again
    // after each period, no READY and no ping.
    let open_blocked = at("open-blocked");
    let open_released = at("open-released");
    assert!(
        between(all, open_released, "READY=1") == 0
            && between(all, open_released, "WATCHDOG=1") == 0,
        "{messages:?}"
    );
    let extends = messages
        .iter()
        .filter(|m| m.at <= open_released && m.value("EXTEND_TIMEOUT_USEC").is_some())
        .count();
    assert!(
        extends >= 2,
        "EXTEND_TIMEOUT_USEC sent {extends} times in {OPEN_BLOCKED:?} of a blocked open: {messages:?}"
    );
    let ready = messages
        .iter()
        .find(|m| m.has("READY=1"))
        .expect("READY=1")
        .at;
    assert!(ready > open_blocked);

    // Healthy: pings. Stuck: none from half the timeout (plus a ping
    // interval and slack for a busy machine) on. Released: pings again.
    let writer_blocked = at("writer-blocked");
    let writer_released = at("writer-released");
    let done = at("done");
    assert!(
        between(ready, writer_blocked, "WATCHDOG=1") >= 2,
        "{messages:?}"
    );
    let silent_from = writer_blocked + WATCHDOG / 2 + WATCHDOG / 4 + Duration::from_secs(1);
    assert_eq!(
        between(silent_from, writer_released, "WATCHDOG=1"),
        0,
        "pings while the writer was stuck: {messages:?}"
    );
    assert!(
        between(writer_released, done, "WATCHDOG=1") >= 1,
        "no ping after the writer moved again: {messages:?}"
    );
}
