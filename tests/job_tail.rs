//! Jobs of the log's tail: accepting a webhook writes only its log entry
//! (its record carries the due time), and the writer adds job and listing
//! rows in bulk later. Whether a job is still only in the log or already
//! has its rows, it runs once, at its own due time, shows in the listing
//! and the metrics, and survives SIGKILL; `webhookd check` agrees.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{
    DEADLINE, Daemon, connect, get, get_transaction, payload, poll_until, post, post_on,
    wait_processed,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `webhookd check`'s summary line; it must pass.
fn check_summary(dir: &Path) -> String {
    let output = std::process::Command::new(common::BIN)
        .args(["--data-dir", dir.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `webhookd check` on a file a SIGKILL left: it passes, counts `total`
/// transactions, each PROCESSING or PROCESSED, and exactly one job per
/// PROCESSING one.
fn assert_consistent_after_kill(dir: &Path, total: usize) {
    let summary = check_summary(dir);
    let counts: Vec<usize> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [stored, processing, processed, jobs] = counts[..] else {
        panic!("unexpected summary: {summary}");
    };
    assert_eq!(stored, total, "{summary}");
    assert_eq!(processing + processed, total, "{summary}");
    assert_eq!(jobs, processing, "{summary}");
}

/// Whether the file (left by a SIGKILL) has log entries after its rows
/// watermark, i.e. jobs without rows.
fn jobs_only_in_the_log(dir: &Path) -> bool {
    let (upto, last) = watermark_and_last_key(dir);
    last > upto
}

/// The rows watermark and the last log key of the file. Read from a copy,
/// so the daemon later opens the file exactly as the kill left it.
fn watermark_and_last_key(dir: &Path) -> (u64, u64) {
    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("copy.redb");
    std::fs::copy(dir.join("webhookd.redb"), &file).unwrap();
    let db = Database::open(&file).unwrap();
    let txn = db.begin_read().unwrap();
    let upto = txn
        .open_table(TableDefinition::<&str, u64>::new("meta"))
        .unwrap()
        .get("rows_complete_upto")
        .unwrap()
        .map_or(0, |v| v.value());
    let last = txn
        .open_table(TableDefinition::<u64, &[u8]>::new("log"))
        .unwrap()
        .last()
        .unwrap()
        .map_or(0, |(key, _)| key.value());
    (upto, last)
}

fn listed_ids(addr: SocketAddr, query: &str) -> Vec<String> {
    get(addr, &format!("/v1/transactions?{query}")).json()["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap().to_owned())
        .collect()
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
        if jobs_only_in_the_log(dir.path()) {
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
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(
        check_summary(dir.path()),
        "ok: 4 transactions (3 processing, 1 processed), 3 pending jobs"
    );
    // A clean stop wrote the rows: nothing is left only in the log.
    assert!(!jobs_only_in_the_log(dir.path()));
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    assert_eq!(
        listed_ids(daemon.addr, "status=PROCESSING"),
        ["tail-c", "tail-b", "tail-a"]
    );
    assert_eq!(metric(daemon.addr, "webhookd_pending_jobs"), 3);
}

#[test]
fn jobs_run_once_whether_processed_before_or_after_their_rows_are_written() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    // A short delay: many jobs fall due while their entries are still only
    // in the log, others after the writer wrote their rows (every few
    // thousand entries), and some are pending when the daemon is killed.
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let mut stream = connect(addr);
                for i in 0..PER_THREAD {
                    let response = post_on(&mut stream, &payload(&format!("run-{t}-{i}"), "1"));
                    assert_eq!(response.status, 202, "{}", response.body);
                }
            });
        }
    });
    // Some finished before the kill: their processed_at must never change.
    let first = wait_processed(addr, "run-0-0", DEADLINE);
    daemon.kill();
    // As the kill left it (redb repairs the file on open): consistent,
    // every transaction counted, each pending one with exactly one job.
    assert_consistent_after_kill(dir.path(), THREADS * PER_THREAD);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    poll_until(Duration::from_secs(60), "every job processed", || {
        (metric(addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    assert_eq!(get_transaction(addr, "run-0-0").json(), first);
    assert!(listed_ids(addr, "status=PROCESSING").is_empty());
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
            None => break,
        }
    }
    assert_eq!(processed, THREADS * PER_THREAD);
    for t in 0..THREADS {
        for i in (0..PER_THREAD).step_by(97) {
            let record = get_transaction(addr, &format!("run-{t}-{i}")).json();
            assert_eq!(record["status"], "PROCESSED");
        }
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    assert_eq!(
        check_summary(dir.path()),
        format!(
            "ok: {} transactions (0 processing, {} processed), 0 pending jobs",
            THREADS * PER_THREAD,
            THREADS * PER_THREAD
        )
    );
}

#[test]
fn a_long_burst_of_short_jobs_leaves_the_newest_only_in_the_log() {
    const THREADS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    // With a delay under 2 s, while webhooks keep coming the writer writes
    // rows only for entries at least 2 s old (or for all once more than
    // 32,768 jobs wait without rows): most jobs are processed without ever
    // getting rows, the few still pending at 2 s get them, and a kill
    // during the burst leaves the last 2 s only in the log (an idle moment
    // on a busy machine may write them all; the assertions hold either
    // way).
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    let started = std::time::Instant::now();
    let per_thread: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let mut stream = connect(addr);
                    let mut sent = 0;
                    while sent < 5_000 || started.elapsed() < Duration::from_secs(3) {
                        let response =
                            post_on(&mut stream, &payload(&format!("burst-{t}-{sent}"), "1"));
                        assert_eq!(response.status, 202, "{}", response.body);
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    daemon.kill();
    let total: usize = per_thread.iter().sum();
    let (upto, last) = watermark_and_last_key(dir.path());
    assert!(upto <= last, "watermark {upto} past the log's end {last}");
    assert_consistent_after_kill(dir.path(), total);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    poll_until(Duration::from_secs(60), "every job processed", || {
        (metric(addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    assert!(listed_ids(addr, "status=PROCESSING").is_empty());
    for (t, &sent) in per_thread.iter().enumerate() {
        for i in [0, sent / 2, sent - 1] {
            let record = get_transaction(addr, &format!("burst-{t}-{i}")).json();
            assert_eq!(record["status"], "PROCESSED");
        }
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    // A clean stop moves the watermark to the end of the log.
    let (upto, last) = watermark_and_last_key(dir.path());
    assert_eq!(upto, last);
    assert_eq!(
        check_summary(dir.path()),
        format!("ok: {total} transactions (0 processing, {total} processed), 0 pending jobs")
    );
}
