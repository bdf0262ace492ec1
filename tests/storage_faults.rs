//! Storage faults injected through redb's `StorageBackend` seam, under the
//! real server run in-process: while writes fail (ENOSPC, EIO) or fsyncs
//! fail (EIO), POSTs get 503 `unavailable` with `Retry-After`, `GET /` is
//! UNHEALTHY with a reason, stored transactions read back exactly, nothing
//! refused becomes visible, and no second webhookd can open the data dir.
//! Once the fault clears, the daemon recovers by itself and nothing
//! acknowledged has changed, over HTTP and on disk.

mod common;

use std::io;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use redb::{BackendError, StorageBackend};
use serde_json::Value;
use webhookd::store::{Access, FileOpener, StorageOpener};

use common::in_process::Server;
use common::{
    BIN, DEADLINE, assert_one_line_failure, get, get_transaction, millis, payload, poll_until,
    post, start_expecting_exit, wait_processed,
};

/// What the storage does right now; one switch per test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    Healthy = 0,
    /// Every write fails with ENOSPC (a full disk).
    WriteNoSpace = 1,
    /// Every write fails with EIO.
    WriteIo = 2,
    /// Writes reach the file (the page cache), every fsync fails with EIO.
    SyncIo = 3,
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// redb's file backend (through webhookd's default opener) with faults
/// switched on and off from the test.
#[derive(Debug)]
struct FaultyBackend {
    inner: Box<dyn StorageBackend>,
    switch: Arc<AtomicU8>,
}

impl FaultyBackend {
    fn fault(&self) -> u8 {
        self.switch.load(Ordering::SeqCst)
    }
}

impl StorageBackend for FaultyBackend {
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
        if self.fault() == Fault::SyncIo as u8 {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        match self.fault() {
            f if f == Fault::WriteNoSpace as u8 => Err(io::Error::from_raw_os_error(ENOSPC)),
            f if f == Fault::WriteIo as u8 => Err(io::Error::from_raw_os_error(EIO)),
            _ => self.inner.write(offset, data),
        }
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

struct FaultyOpener {
    switch: Arc<AtomicU8>,
}

impl StorageOpener for FaultyOpener {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(FaultyBackend {
            inner: FileOpener.open(path, access)?,
            switch: Arc::clone(&self.switch),
        }))
    }
}

/// Logs go to the test's captured output (shown when it fails).
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("webhookd=info")),
        )
        .with_test_writer()
        .try_init();
}

#[track_caller]
fn assert_unhealthy(addr: SocketAddr) {
    let health = get(addr, "/");
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.header("retry-after").is_some(),
        "{:?}",
        health.headers
    );
    let body = health.json();
    assert_eq!(body["status"], "UNHEALTHY", "{body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
}

#[track_caller]
fn assert_refused(addr: SocketAddr, id: &str) {
    let response = post(addr, &payload(id, "1"));
    response.assert_error(503, "unavailable");
    assert_eq!(
        response.header("retry-after"),
        Some("1"),
        "{:?}",
        response.headers
    );
}

#[track_caller]
fn assert_unchanged(addr: SocketAddr, acknowledged: &[(String, Value)]) {
    for (id, body) in acknowledged {
        let read = get_transaction(addr, id);
        assert_eq!(read.status, 200, "{id}: {}", read.body);
        assert_eq!(read.json(), *body, "{id} changed");
    }
}

/// The whole story for one kind of fault.
fn storage_fault_is_survived(fault: Fault) {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let switch = Arc::new(AtomicU8::new(Fault::Healthy as u8));
    let opener = FaultyOpener {
        switch: Arc::clone(&switch),
    };
    let server = Server::start(dir.path(), opener, &["--process-delay", "500ms"]);
    let addr = server.addr;

    let mut acknowledged = acknowledge_before_the_fault(addr);
    // Acknowledged just before the fault: normally it falls due while
    // writes fail, and is processed once they work again.
    let pending = "txn_pending";
    assert_eq!(post(addr, &payload(pending, "9.99")).status, 202);

    switch.store(fault as u8, Ordering::SeqCst);
    let refused: Vec<String> = (1..=3).map(|i| format!("txn_refused_{i}")).collect();
    while_storage_fails(addr, dir.path(), &acknowledged, pending, &refused);

    // The fault clears; no restart.
    switch.store(Fault::Healthy as u8, Ordering::SeqCst);
    let after = "txn_after";
    poll_until(DEADLINE, "a 202 once the fault cleared", || {
        let response = post(addr, &payload(after, "2.50"));
        if response.status != 202 {
            response.assert_error(503, "unavailable");
        }
        (response.status == 202).then_some(())
    });
    let health = poll_until(DEADLINE, "HEALTHY once the fault cleared", || {
        let health = get(addr, "/");
        (health.status == 200).then_some(health)
    });
    assert_eq!(health.json()["status"], "HEALTHY");
    assert_unchanged(addr, &acknowledged);
    for id in &refused {
        get_transaction(addr, id).assert_error(404, "not_found");
    }

    // Processing resumed: the pending transaction is processed once, no
    // sooner than its delay, and stays as it is.
    let pending_body = wait_processed(addr, pending, DEADLINE);
    assert!(millis(&pending_body["processed_at"]) >= millis(&pending_body["created_at"]) + 500);
    acknowledged.push((pending.to_owned(), pending_body));
    acknowledged.push((after.to_owned(), wait_processed(addr, after, DEADLINE)));
    // A 503 meant "not stored": the redelivery is new.
    let redelivery = post(addr, &payload(&refused[0], "1"));
    assert_eq!(redelivery.status, 202, "{}", redelivery.body);
    assert_eq!(redelivery.json()["duplicate"], false);
    acknowledged.push((
        refused[0].clone(),
        wait_processed(addr, &refused[0], DEADLINE),
    ));
    assert_unchanged(addr, &acknowledged);
    assert_listed(
        addr,
        &acknowledged
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
    );

    server.stop().expect("webhookd stopped without an error");
    assert_on_disk(dir.path(), &acknowledged);
}

/// Five transactions, acknowledged and processed; their GET bodies.
fn acknowledge_before_the_fault(addr: SocketAddr) -> Vec<(String, Value)> {
    let ids: Vec<String> = (1..=5).map(|i| format!("txn_before_{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let response = post(addr, &payload(id, &format!("{i}.25")));
        assert_eq!(response.status, 202, "{}", response.body);
    }
    ids.into_iter()
        .map(|id| {
            let body = wait_processed(addr, &id, DEADLINE);
            (id, body)
        })
        .collect()
}

/// Writes are refused, reads answer, nothing refused shows, the dir stays
/// locked: at once, and still after several attempts to reopen (one a
/// second).
fn while_storage_fails(
    addr: SocketAddr,
    dir: &Path,
    acknowledged: &[(String, Value)],
    pending: &str,
    refused: &[String],
) {
    for id in refused {
        assert_refused(addr, id);
    }
    assert_unhealthy(addr);
    assert_unchanged(addr, acknowledged);
    for id in refused {
        get_transaction(addr, id).assert_error(404, "not_found");
    }
    let mut listed: Vec<&str> = acknowledged.iter().map(|(id, _)| id.as_str()).collect();
    listed.push(pending);
    assert_listed(addr, &listed);
    let (code, stderr) = start_expecting_exit(dir, &[]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains("in use"), "{line}");

    let window = Instant::now() + Duration::from_millis(2500);
    let mut round = 0;
    while Instant::now() < window {
        assert_refused(addr, &refused[0]);
        let i = round % acknowledged.len();
        assert_unchanged(addr, &acknowledged[i..=i]);
        get_transaction(addr, &refused[round % refused.len()]).assert_error(404, "not_found");
        round += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_unhealthy(addr);
}

/// The listing shows exactly these transactions.
#[track_caller]
fn assert_listed(addr: SocketAddr, ids: &[&str]) {
    let listed = get(addr, "/v1/transactions?limit=1000").json();
    let mut listed: Vec<&str> = listed["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = ids.to_vec();
    expected.sort_unstable();
    assert_eq!(listed, expected);
}

/// Read by the real binary after the stop: exactly what was acknowledged,
/// every index consistent, no stray job.
#[track_caller]
fn assert_on_disk(dir: &Path, acknowledged: &[(String, Value)]) {
    let data_dir = dir.to_str().unwrap();
    let export = std::process::Command::new(BIN)
        .args(["--data-dir", data_dir, "export", "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    let mut exported: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut bodies: Vec<Value> = acknowledged.iter().map(|(_, body)| body.clone()).collect();
    let key = |v: &Value| v["transaction_id"].as_str().unwrap().to_owned();
    exported.sort_by_key(key);
    bodies.sort_by_key(key);
    assert_eq!(exported, bodies);
    let check = std::process::Command::new(BIN)
        .args(["--data-dir", data_dir, "check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let n = acknowledged.len();
    assert_eq!(
        String::from_utf8(check.stdout).unwrap().trim(),
        format!("ok: {n} transactions (0 processing, {n} processed), 0 pending jobs")
    );
}

#[test]
fn writes_failing_with_enospc_are_refused_reads_go_on_and_it_recovers_alone() {
    storage_fault_is_survived(Fault::WriteNoSpace);
}

#[test]
fn writes_failing_with_eio_are_refused_reads_go_on_and_it_recovers_alone() {
    storage_fault_is_survived(Fault::WriteIo);
}

/// The hard case: the commit's pages and header reach the file, only the
/// fsync fails, so reopening the file shows the refused transactions as
/// committed; they must stay invisible and be gone after recovery.
#[test]
fn fsync_failing_with_eio_is_refused_reads_go_on_and_it_recovers_alone() {
    storage_fault_is_survived(Fault::SyncIo);
}
