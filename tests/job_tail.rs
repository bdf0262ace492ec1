//! Jobs of the log's tail: accepting a webhook writes only its log entry
//! (its record carries the due time), and the writer adds job and listing
//! rows in bulk later. Whether a job is still only in the log or already
//! has its rows, it runs once, at its own due time, shows in the listing
//! and the metrics, and survives SIGKILL; `webhookd check` agrees.
//!
//! What a test says happened to the rows is read from the file (a copy of
//! it, so the daemon later opens the file exactly as a kill left it).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use webhookd::model::Status;

use common::{
    CheckTotals, DEADLINE, Daemon, check_totals, check_totals_of_a_copy, connect, get,
    get_transaction, metric, payload, poll_until, post, post_on, try_read_response, wait_processed,
};

/// What the file holds, as far as the tail goes.
struct FileState {
    /// `rows_complete_upto`: every entry up to it has had its rows written
    /// (or was processed before they were).
    watermark: u64,
    /// (log key, transaction id, status) of every entry, in log order.
    entries: Vec<(u64, String, Status)>,
    /// Rows of `jobs_by_due`.
    job_rows: usize,
}

impl FileState {
    /// Reads a copy of `dir`'s database.
    fn read(dir: &Path) -> FileState {
        let copy = tempfile::tempdir().unwrap();
        let file = copy.path().join("copy.redb");
        std::fs::copy(dir.join("webhookd.redb"), &file).unwrap();
        let db = Database::open(&file).unwrap();
        let txn = db.begin_read().unwrap();
        let watermark = txn
            .open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .get("rows_complete_upto")
            .unwrap()
            .map_or(0, |v| v.value());
        let entries = txn
            .open_table(TableDefinition::<u64, &[u8]>::new("log"))
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (key, value) = row.unwrap();
                let record = webhookd::store::encoding::decode(value.value()).unwrap();
                (
                    key.value(),
                    record.transaction.transaction_id,
                    record.status,
                )
            })
            .collect();
        let job_rows = txn
            .open_table(TableDefinition::<(u64, u64), ()>::new("jobs_by_due"))
            .unwrap()
            .iter()
            .unwrap()
            .count();
        FileState {
            watermark,
            entries,
            job_rows,
        }
    }

    fn last_key(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.0)
    }

    /// Entries after the watermark: jobs that exist only in the log.
    fn only_in_the_log(&self) -> usize {
        self.entries.iter().filter(|e| e.0 > self.watermark).count()
    }

    /// PROCESSED entries after the watermark: processed before any rows
    /// were written for them.
    fn processed_without_rows(&self, prefix: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.0 > self.watermark && e.1.starts_with(prefix))
            .filter(|e| e.2 == Status::Processed)
            .count()
    }

    fn processed(&self, prefix: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.1.starts_with(prefix) && e.2 == Status::Processed)
            .count()
    }
}

/// `check` on the file as a SIGKILL left it: consistent, `total`
/// transactions, each PROCESSING or PROCESSED, exactly one job per
/// PROCESSING one.
#[track_caller]
fn assert_consistent_after_kill(dir: &Path, total: usize) -> CheckTotals {
    let totals = check_totals_of_a_copy(dir);
    assert_eq!(totals.transactions, total as u64, "{totals:?}");
    assert_eq!(
        totals.processing + totals.processed,
        total as u64,
        "{totals:?}"
    );
    assert_eq!(totals.pending_jobs, totals.processing, "{totals:?}");
    totals
}

fn listed_ids(addr: SocketAddr, query: &str) -> Vec<String> {
    get(addr, &format!("/v1/transactions?{query}")).json()["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every PROCESSED transaction, through the listing, page by page.
fn count_listed_processed(addr: SocketAddr) -> usize {
    let mut processed = 0;
    let mut cursor = String::new();
    loop {
        let page = get(
            addr,
            &format!("/v1/transactions?status=PROCESSED&limit=1000{cursor}"),
        )
        .json();
        processed += page["transactions"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return processed,
        }
    }
}

/// Waits until nothing is pending and requires that exactly `expected`
/// transactions were processed since the daemon started.
#[track_caller]
fn assert_processes_exactly(addr: SocketAddr, expected: u64) {
    poll_until(Duration::from_secs(60), "every job processed", || {
        (metric(addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    assert_eq!(
        metric(addr, "webhookd_transactions_processed_total"),
        expected
    );
}

#[test]
fn jobs_only_in_the_log_survive_sigkill_and_keep_their_due_time() {
    let ids = ["tail-a", "tail-b", "tail-c"];
    // The writer writes the rows by itself once idle for a moment; a kill
    // right after the answers nearly always comes first. Try again if not.
    let mut attempts = 0;
    let dir = loop {
        attempts += 1;
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
        for id in ids {
            assert_eq!(post(daemon.addr, &payload(id, "1")).status, 202);
        }
        daemon.kill();
        let state = FileState::read(dir.path());
        if state.only_in_the_log() == ids.len() && state.job_rows == 0 {
            break dir;
        }
        assert!(attempts < 5, "the rows were written before every kill");
    };

    // Restarted with a much shorter delay: the stored jobs keep the due
    // time they were accepted with, an hour away.
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    for id in ids {
        assert_eq!(get_transaction(addr, id).json()["status"], "PROCESSING");
    }
    assert_eq!(
        listed_ids(addr, "status=PROCESSING"),
        ["tail-c", "tail-b", "tail-a"]
    );
    assert!(listed_ids(addr, "status=PROCESSED").is_empty());
    assert_eq!(metric(addr, "webhookd_pending_jobs"), 3);
    assert_eq!(metric(addr, "webhookd_due_jobs"), 0);
    let again = post(addr, &payload("tail-b", "1"));
    assert_eq!(again.json()["duplicate"], true);
    post(addr, &payload("tail-b", "2")).assert_error(409, "conflict");

    assert_eq!(post(addr, &payload("tail-d", "1")).status, 202);
    wait_processed(addr, "tail-d", DEADLINE);
    for id in ids {
        assert_eq!(get_transaction(addr, id).json()["status"], "PROCESSING");
    }
    assert_eq!(metric(addr, "webhookd_pending_jobs"), 3);
    assert_eq!(metric(addr, "webhookd_transactions_processed_total"), 1);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(
        check_totals(dir.path()),
        CheckTotals {
            transactions: 4,
            processing: 3,
            processed: 1,
            pending_jobs: 3
        }
    );
    // A clean stop wrote the rows: nothing is left only in the log.
    let state = FileState::read(dir.path());
    assert_eq!(state.only_in_the_log(), 0);
    assert_eq!(state.job_rows, 3);
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    assert_eq!(
        listed_ids(daemon.addr, "status=PROCESSING"),
        ["tail-c", "tail-b", "tail-a"]
    );
    assert_eq!(metric(daemon.addr, "webhookd_pending_jobs"), 3);
}

/// Posts `{prefix}-{t}-{i}` from four keep-alive connections until
/// `stop`; returns how many each sent with a 202 (ids 0 to n-1).
fn post_until(addr: SocketAddr, prefix: &str, stop: &AtomicBool) -> Vec<usize> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || {
                    let mut stream = connect(addr);
                    let mut sent = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let body = payload(&format!("{prefix}-{t}-{sent}"), "1");
                        let request = format!(
                            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        // Connection errors are expected once the daemon is killed.
                        if std::io::Write::write_all(&mut stream, request.as_bytes()).is_err() {
                            break;
                        }
                        let Ok(response) = try_read_response(&mut stream) else {
                            break;
                        };
                        assert_eq!(response.status, 202, "{}", response.body);
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

/// Some jobs are processed after their rows were written (they were
/// accepted with a 3 s delay and the clean stop wrote their rows), others
/// while still only in the log (accepted with a 1 s delay under a steady
/// load, so no rows merge covers them yet); the kill comes while both
/// kinds are being processed. Each runs exactly once: what the kill left
/// pending is exactly what the next daemon processes.
#[test]
fn jobs_run_once_whether_processed_before_or_after_their_rows_are_written() {
    const WITH_ROWS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    let addr = daemon.addr;
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                let mut stream = connect(addr);
                for i in 0..WITH_ROWS / 4 {
                    let response = post_on(&mut stream, &payload(&format!("rows-{t}-{i}"), "1"));
                    assert_eq!(response.status, 202, "{}", response.body);
                }
            });
        }
    });
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let state = FileState::read(dir.path());
    assert_eq!(state.only_in_the_log(), 0, "the clean stop wrote every row");
    assert_eq!(state.job_rows, WITH_ROWS);
    assert_eq!(state.processed("rows-"), 0);

    // The rows-* jobs fall due while tail-* webhooks keep arriving.
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    let stop = AtomicBool::new(false);
    let (sent, first) = std::thread::scope(|scope| {
        let load = scope.spawn(|| post_until(addr, "tail", &stop));
        let first = poll_until(Duration::from_secs(60), "both kinds processed", || {
            let with_rows = get_transaction(addr, "rows-0-0").json();
            let tail = get_transaction(addr, "tail-0-0").json();
            (with_rows["status"] == "PROCESSED" && tail["status"] == "PROCESSED")
                .then_some((with_rows, tail))
        });
        daemon.kill();
        stop.store(true, Ordering::SeqCst);
        (load.join().unwrap(), first)
    });
    let total = WITH_ROWS + sent.iter().sum::<usize>();
    let state = FileState::read(dir.path());
    assert!(
        state.processed("rows-") > 0,
        "no job was processed after its rows were written"
    );
    assert!(
        state.processed_without_rows("tail-") > 0,
        "no job was processed while only in the log"
    );
    // A webhook whose answer the kill cut off may be stored too.
    let stored = state.entries.len();
    assert!(
        (total..=total + 4).contains(&stored),
        "{total} acknowledged, {stored} stored"
    );
    let at_kill = assert_consistent_after_kill(dir.path(), stored);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    assert_processes_exactly(addr, at_kill.processing);
    assert_eq!(get_transaction(addr, "rows-0-0").json(), first.0);
    assert_eq!(get_transaction(addr, "tail-0-0").json(), first.1);
    assert!(listed_ids(addr, "status=PROCESSING").is_empty());
    assert_eq!(count_listed_processed(addr), stored);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let stored = stored as u64;
    assert_eq!(
        check_totals(dir.path()),
        CheckTotals {
            transactions: stored,
            processing: 0,
            processed: stored,
            pending_jobs: 0
        }
    );
}

/// With a delay under 2 s, while webhooks keep coming the writer writes
/// rows only for entries at least 2 s old (or for all once more than
/// 32,768 jobs wait without rows), so a kill during a long burst leaves
/// the newest entries only in the log, some of them already processed.
#[test]
fn a_long_burst_of_short_jobs_leaves_the_newest_only_in_the_log() {
    // An idle moment of a busy machine during the burst lets the writer
    // write every row; a fresh attempt then tries again.
    let mut attempts = 0;
    let (dir, sent, state) = loop {
        attempts += 1;
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
        let addr = daemon.addr;
        let stop = AtomicBool::new(false);
        let sent = std::thread::scope(|scope| {
            let load = scope.spawn(|| post_until(addr, "burst", &stop));
            let started = Instant::now();
            poll_until(Duration::from_secs(60), "3 s of burst", || {
                (started.elapsed() >= Duration::from_secs(3)).then_some(())
            });
            daemon.kill();
            stop.store(true, Ordering::SeqCst);
            load.join().unwrap()
        });
        let state = FileState::read(dir.path());
        if state.only_in_the_log() > 0 && state.processed_without_rows("burst") > 0 {
            break (dir, sent, state);
        }
        assert!(
            attempts < 3,
            "every attempt's rows were all written before the kill"
        );
    };
    assert!(state.watermark < state.last_key());
    let acknowledged: usize = sent.iter().sum();
    let stored = state.entries.len();
    assert!(
        (acknowledged..=acknowledged + 4).contains(&stored),
        "{acknowledged} acknowledged, {stored} stored"
    );
    let at_kill = assert_consistent_after_kill(dir.path(), stored);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    assert_processes_exactly(addr, at_kill.processing);
    assert!(listed_ids(addr, "status=PROCESSING").is_empty());
    for (t, &sent) in sent.iter().enumerate() {
        for i in [0, sent / 2, sent - 1] {
            let record = get_transaction(addr, &format!("burst-{t}-{i}")).json();
            assert_eq!(record["status"], "PROCESSED");
        }
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    // A clean stop moves the watermark to the end of the log.
    let state = FileState::read(dir.path());
    assert_eq!(state.only_in_the_log(), 0);
    let stored = stored as u64;
    assert_eq!(
        check_totals(dir.path()),
        CheckTotals {
            transactions: stored,
            processing: 0,
            processed: stored,
            pending_jobs: 0
        }
    );
}
