//! Many copies of one transaction at the same moment, on different
//! connections, give one record, one job and exactly one `duplicate:
//! false`; the job runs once; and copies of a stored transaction write
//! nothing at all, however many arrive together.

mod common;

use std::io;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

use redb::{BackendError, StorageBackend};
use serde_json::Value;
use webhookd::metrics::Metrics;
use webhookd::store::writer::{self, AcceptOutcome};
use webhookd::store::{Access, FileOpener, NoProgress, StorageOpener, Store};

use common::{
    DEADLINE, Daemon, check_totals, get_transaction, metric, payload, poll_until, wait_processed,
};

const COPIES: usize = 100;

/// Sends `body` from `COPIES` connections at once; returns the answers.
fn post_copies_at_once(addr: SocketAddr, body: &str) -> Vec<Value> {
    let barrier = Barrier::new(COPIES);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..COPIES)
            .map(|_| {
                scope.spawn(|| {
                    let mut stream = common::connect(addr);
                    let request = format!(
                        "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    barrier.wait();
                    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
                    let response = common::read_response(&mut stream);
                    assert_eq!(response.status, 202, "{}", response.body);
                    response.json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_hundred_concurrent_copies_store_one_record_processed_once_and_later_copies_write_nothing() {
    const ID: &str = "txn_concurrent_copies";
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    let body = payload(ID, "99.99");

    let answers = post_copies_at_once(addr, &body);
    let originals = answers.iter().filter(|a| a["duplicate"] == false).count();
    assert_eq!(
        originals, 1,
        "exactly one copy is the original: {answers:?}"
    );
    assert!(answers.iter().all(|a| a["transaction_id"] == ID));
    assert_eq!(
        metric(addr, r#"webhookd_webhooks_total{outcome="accepted"}"#),
        1
    );
    assert_eq!(
        metric(addr, r#"webhookd_webhooks_total{outcome="duplicate"}"#),
        COPIES as u64 - 1
    );

    // Processed once: its one job runs, and nothing is left to run.
    let processed = wait_processed(addr, ID, DEADLINE);
    poll_until(DEADLINE, "no pending job", || {
        (metric(addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    assert_eq!(metric(addr, "webhookd_transactions_processed_total"), 1);

    // Once the id is in the on-disk index nothing else is waiting to be
    // written; from then on copies must not write a byte.
    poll_until(DEADLINE, "the id merged into the id index", || {
        (metric(addr, "webhookd_unindexed_ids") == 0).then_some(())
    });
    let file = dir.path().join("webhookd.redb");
    let before = std::fs::read(&file).unwrap();
    let commits = metric(addr, "webhookd_commit_batch_size_count");
    let answers = post_copies_at_once(addr, &body);
    assert!(
        answers
            .iter()
            .all(|a| a["duplicate"] == true && a["status"] == "PROCESSED"),
        "{answers:?}"
    );
    assert_eq!(
        metric(addr, "webhookd_commit_batch_size_count"),
        commits,
        "copies of a stored transaction were committed"
    );
    assert!(
        std::fs::read(&file).unwrap() == before,
        "copies of a stored transaction changed the database file"
    );
    assert_eq!(
        metric(addr, r#"webhookd_webhooks_total{outcome="accepted"}"#),
        1
    );
    assert_eq!(metric(addr, "webhookd_transactions_processed_total"), 1);
    assert_eq!(get_transaction(addr, ID).json(), processed);

    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let totals = check_totals(dir.path());
    assert_eq!(
        (totals.transactions, totals.processed, totals.pending_jobs),
        (1, 1, 0),
        "{totals:?}"
    );
}

/// Holds every fsync while closed, so the test can make commands queue up
/// behind a commit in progress.
#[derive(Debug, Default)]
struct Gate {
    /// (closed, syncs waiting at the gate)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        if state.0 {
            state.1 += 1;
            self.changed.notify_all();
            while state.0 {
                state = self.changed.wait(state).unwrap();
            }
            state.1 -= 1;
        }
    }

    fn close(&self) {
        self.state.lock().unwrap().0 = true;
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.changed.notify_all();
    }

    fn wait_for_a_sync(&self) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, DEADLINE, |s| s.1 == 0)
            .unwrap();
        assert!(
            !timeout.timed_out() && state.1 > 0,
            "no commit reached its fsync"
        );
    }
}

#[derive(Debug)]
struct GatedBackend {
    inner: Box<dyn StorageBackend>,
    gate: Arc<Gate>,
}

impl StorageBackend for GatedBackend {
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
        self.gate.pass();
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

struct GatedOpener(Arc<Gate>);

impl StorageOpener for GatedOpener {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(GatedBackend {
            inner: FileOpener.open(path, access)?,
            gate: Arc::clone(&self.0),
        }))
    }
}

/// Commits that carried more than 32 commands, from the
/// `webhookd_commit_batch_size` histogram.
fn commits_over_32_commands(metrics: &Metrics, store: &Store) -> u64 {
    let text = metrics.render(
        webhookd::metrics::Format::OpenMetrics,
        &store.job_stats(webhookd::clock::now_ms()).unwrap(),
        webhookd::clock::now_ms(),
        0,
    );
    // Count of commits with at most `le` commands (`None`: all of them).
    let bucket = |le: Option<f64>| {
        text.lines()
            .filter_map(|l| l.strip_prefix("webhookd_commit_batch_size_bucket{le=\""))
            .find_map(|rest| {
                let (bound, count) = rest.split_once("\"}")?;
                let matches = match le {
                    None => bound == "+Inf",
                    Some(le) => bound.parse::<f64>().is_ok_and(|b| (b - le).abs() < 0.5),
                };
                matches.then(|| count.trim().parse::<u64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no bucket le={le:?} in:\n{text}"))
    };
    bucket(None) - bucket(Some(32.0))
}

/// Through the library: 50 copies of a new id queued while a commit holds
/// the writer are applied in ONE batch and ONE commit (the commit size
/// histogram shows it), and that batch sees its own first copy: one
/// record, one job, one `Created`.
#[test]
fn copies_in_one_writer_batch_share_one_commit_and_give_one_record_and_one_job() {
    const BATCHED: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let store = Store::open_with(dir.path(), &GatedOpener(Arc::clone(&gate)), &NoProgress).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (handle, thread) = writer::spawn(
        store.clone(),
        Duration::from_secs(3600),
        1024,
        Arc::clone(&metrics),
        |_| {},
    )
    .unwrap();
    let parse = |id: &str| webhookd::model::parse_payload(payload(id, "1").as_bytes()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcomes: Vec<AcceptOutcome> = runtime.block_on(async {
        // Another webhook's commit stops at its fsync and holds the writer.
        gate.close();
        let blocker = tokio::spawn({
            let handle = handle.clone();
            let transaction = parse("txn_blocker");
            async move { handle.accept(transaction).await.unwrap() }
        });
        tokio::task::yield_now().await;
        gate.wait_for_a_sync();
        // Meanwhile every copy is queued: each task sends its command the
        // first time it runs, which is before this task runs again.
        let copies: Vec<_> = (0..BATCHED)
            .map(|_| {
                tokio::spawn({
                    let handle = handle.clone();
                    let transaction = parse("txn_batch");
                    async move { handle.accept(transaction).await.unwrap() }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.open();
        assert_eq!(blocker.await.unwrap(), AcceptOutcome::Created);
        let mut outcomes = Vec::new();
        for task in copies {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == AcceptOutcome::Created)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        commits_over_32_commands(&metrics, &store),
        1,
        "the copies did not share one commit"
    );
    assert_eq!(
        store.pending_jobs().unwrap(),
        2,
        "txn_blocker and txn_batch"
    );
    drop(handle);
    thread.join().unwrap();
    assert!(store.get("txn_batch").unwrap().is_some());
    let mut records = 0;
    store
        .for_each_transaction(&NoProgress, |_, record| {
            record.unwrap();
            records += 1;
            true
        })
        .unwrap();
    assert_eq!(records, 2, "txn_blocker and txn_batch");
}
