//! Crash and restart: SIGKILL during a concurrent load loses nothing that
//! was acknowledged and changes no field of it; jobs that fell due while
//! the daemon was down run within a second of its ready line; every job
//! runs exactly once across kills and restarts (counted: what `check` finds
//! pending after a kill is exactly what the next daemon processes, and
//! nothing is left pending), and `processed_at` never changes once set.
//!
//! Every webhook here differs from the others in every field, so a record
//! read back under the wrong id, or with another's accounts, amount or
//! currency, fails.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use common::{
    CheckTotals, DEADLINE, Daemon, check_totals, check_totals_of_a_copy, export, get_transaction,
    metric, millis, now_millis, poll_until, post, try_post, wait_processed,
};

const CURRENCIES: [&str; 5] = ["EUR", "USD", "INR", "JPY", "GBP"];

/// A webhook whose every field is derived from `id` and `n`, and so differs
/// from every other webhook's.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    source: String,
    destination: String,
    /// As sent (`12.50`) and as read back (`12.5`).
    amount: (String, String),
    currency: &'static str,
}

impl Sent {
    fn new(id: String, n: usize) -> Sent {
        let amount = format!("{}.{:02}", n + 1, n % 100);
        let canonical = amount
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned();
        Sent {
            source: format!("src_{id}"),
            destination: format!("dst_{id}"),
            amount: (amount, canonical),
            currency: CURRENCIES[n % CURRENCIES.len()],
            id,
        }
    }

    fn body(&self) -> String {
        format!(
            r#"{{"transaction_id":"{}","source_account":"{}","destination_account":"{}","amount":{},"currency":"{}"}}"#,
            self.id, self.source, self.destination, self.amount.0, self.currency
        )
    }

    /// Fails unless `record` is this webhook, field by field.
    #[track_caller]
    fn assert_is(&self, record: &Value) {
        assert_eq!(record["transaction_id"], self.id.as_str(), "{record}");
        assert_eq!(record["source_account"], self.source.as_str(), "{record}");
        assert_eq!(
            record["destination_account"],
            self.destination.as_str(),
            "{record}"
        );
        assert_eq!(record["amount"].to_string(), self.amount.1, "{record}");
        assert_eq!(record["currency"], self.currency, "{record}");
    }
}

/// Posts distinct webhooks from `workers` threads until the daemon has
/// acknowledged `kill_after` of them, then SIGKILLs it while the threads are
/// still sending. Returns what was acknowledged.
fn load_and_kill(daemon: Daemon, workers: usize, kill_after: usize, tag: &str) -> Vec<Sent> {
    let addr = daemon.addr;
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..workers {
            let (acknowledged, stop) = (&acknowledged, &stop);
            scope.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = Sent::new(format!("txn_{tag}_{worker}_{n}"), n * workers + worker);
                    // Connection errors are expected once the daemon is killed.
                    let Ok(response) = try_post(addr, &sent.body()) else {
                        break;
                    };
                    if response.status == 202 {
                        assert_eq!(response.json()["duplicate"], false, "{}", response.body);
                        acknowledged.lock().unwrap().push(sent);
                    }
                }
            });
        }
        poll_until(Duration::from_secs(60), "acknowledged webhooks", || {
            (acknowledged.lock().unwrap().len() >= kill_after).then_some(())
        });
        daemon.kill();
        stop.store(true, Ordering::Relaxed);
    });
    acknowledged.into_inner().unwrap()
}

/// Waits until the daemon has no pending job and requires that it
/// processed exactly `expected` transactions since it started.
#[track_caller]
fn assert_processes_exactly(addr: SocketAddr, expected: u64) {
    poll_until(Duration::from_secs(60), "no pending job", || {
        (metric(addr, "webhookd_pending_jobs") == 0).then_some(())
    });
    assert_eq!(
        metric(addr, "webhookd_transactions_processed_total"),
        expected,
        "processed since start"
    );
}

/// The totals of a file a SIGKILL left: consistent, at least every
/// acknowledged webhook stored, at most one more per client thread (a
/// commit whose answer the kill cut off), one job per pending one.
#[track_caller]
fn assert_killed_file_holds(
    dir: &std::path::Path,
    acknowledged: usize,
    workers: usize,
) -> CheckTotals {
    let totals = check_totals_of_a_copy(dir);
    let stored = usize::try_from(totals.transactions).unwrap();
    assert!(
        (acknowledged..=acknowledged + workers).contains(&stored),
        "{acknowledged} acknowledged, {stored} stored: {totals:?}"
    );
    assert_eq!(totals.processing, totals.pending_jobs, "{totals:?}");
    totals
}

#[test]
fn sigkill_during_concurrent_posts_loses_no_acknowledged_transaction() {
    const WORKERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let acknowledged = load_and_kill(daemon, WORKERS, 500, "kill");
    let at_kill = assert_killed_file_holds(dir.path(), acknowledged.len(), WORKERS);

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    for sent in &acknowledged {
        let read = get_transaction(daemon.addr, &sent.id);
        assert_eq!(
            read.status, 200,
            "acknowledged {} lost: {}",
            sent.id, read.body
        );
        sent.assert_is(&read.json());
    }
    // What was pending at the kill is processed now, once each.
    assert_processes_exactly(daemon.addr, at_kill.processing);
    for sent in &acknowledged {
        sent.assert_is(&wait_processed(daemon.addr, &sent.id, DEADLINE));
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    let totals = check_totals(dir.path());
    assert_eq!(
        totals,
        CheckTotals {
            transactions: at_kill.transactions,
            processing: 0,
            processed: at_kill.transactions,
            pending_jobs: 0
        }
    );
}

#[test]
fn jobs_that_fell_due_while_stopped_run_within_a_second_of_start() {
    const DELAY_MS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    let sent: Vec<Sent> = (0..50)
        .map(|i| Sent::new(format!("txn_overdue_{i}"), i))
        .collect();
    for webhook in &sent {
        assert_eq!(post(daemon.addr, &webhook.body()).status, 202);
    }
    let latest_created = sent
        .iter()
        .map(|s| millis(&get_transaction(daemon.addr, &s.id).json()["created_at"]))
        .max()
        .unwrap();
    daemon.kill();
    // None ran before the kill: all 50 are pending in the file it left.
    let at_kill = check_totals_of_a_copy(dir.path());
    assert_eq!(
        (
            at_kill.transactions,
            at_kill.processing,
            at_kill.pending_jobs
        ),
        (50, 50, 50),
        "{at_kill:?}"
    );
    // Wait (by the clock) until every job is overdue.
    poll_until(Duration::from_secs(20), "all jobs due", || {
        (now_millis() > latest_created + DELAY_MS + 100).then_some(())
    });

    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    // Taken once the ready line has been read, so at or after it.
    let ready = now_millis();
    for webhook in &sent {
        let body = wait_processed(daemon.addr, &webhook.id, DEADLINE);
        webhook.assert_is(&body);
        let processed = millis(&body["processed_at"]);
        assert!(
            processed <= ready + 1000,
            "{} processed {} ms after the ready line",
            webhook.id,
            processed.saturating_sub(ready)
        );
        assert!(
            processed >= millis(&body["created_at"]) + DELAY_MS,
            "{body}"
        );
    }
    assert_processes_exactly(daemon.addr, 50);
}

#[test]
fn processed_at_never_changes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let sent = Sent::new("txn_stable".to_owned(), 3);
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(post(daemon.addr, &sent.body()).status, 202);
    let processed = wait_processed(daemon.addr, "txn_stable", DEADLINE);
    sent.assert_is(&processed);
    daemon.kill();
    // The job went in the same commit that set PROCESSED: nothing can run again.
    let at_kill = check_totals_of_a_copy(dir.path());
    assert_eq!(
        (
            at_kill.transactions,
            at_kill.processed,
            at_kill.pending_jobs
        ),
        (1, 1, 0),
        "{at_kill:?}"
    );

    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(get_transaction(daemon.addr, "txn_stable").json(), processed);
    // A redelivery after the restart changes nothing either.
    let again = post(daemon.addr, &sent.body());
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["status"], "PROCESSED");
    assert_eq!(get_transaction(daemon.addr, "txn_stable").json(), processed);
    assert_processes_exactly(daemon.addr, 0);
    daemon.terminate();
    let (status, _) = daemon.wait_exit(DEADLINE);
    assert!(status.success());

    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(get_transaction(daemon.addr, "txn_stable").json(), processed);
    assert_processes_exactly(daemon.addr, 0);
}

#[test]
fn jobs_not_yet_due_at_shutdown_run_after_the_next_start() {
    const DELAY_MS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let sent = Sent::new("txn_later".to_owned(), 7);
    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    assert_eq!(post(daemon.addr, &sent.body()).status, 202);
    let created = millis(&get_transaction(daemon.addr, "txn_later").json()["created_at"]);
    daemon.terminate();
    let (status, _) = daemon.wait_exit(DEADLINE);
    assert!(status.success());
    // Stopped before it fell due: still pending, with its job.
    let stopped = check_totals(dir.path());
    assert_eq!(
        (stopped.processing, stopped.pending_jobs),
        (1, 1),
        "{stopped:?}"
    );

    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    let body = get_transaction(daemon.addr, "txn_later").json();
    // Exact, not a timing guess: an answer received before the due time
    // describes a state before it.
    if now_millis() < created + DELAY_MS {
        assert_eq!(body["status"], "PROCESSING", "processed before due: {body}");
    }
    let body = wait_processed(daemon.addr, "txn_later", DEADLINE);
    sent.assert_is(&body);
    assert!(
        millis(&body["processed_at"]) >= created + DELAY_MS,
        "processed before due: {body}"
    );
    assert_processes_exactly(daemon.addr, 1);
}

/// 20 cycles of concurrent load, SIGKILL at a varying moment (also while
/// jobs are being processed), restart. Then every acknowledged webhook is
/// stored exactly once with every field as sent, every stored transaction
/// is processed exactly once, and `processed_at` does not move.
#[test]
fn twenty_kill_and_restart_cycles_lose_nothing_and_process_everything_once() {
    const CYCLES: usize = 20;
    const WORKERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<Sent> = Vec::new();
    for cycle in 0..CYCLES {
        let daemon = Daemon::start(dir.path(), &["--process-delay", "200ms"]);
        // Kill after a different number of acknowledgements each cycle.
        let kill_after = 20 + (cycle * 37) % 150;
        acknowledged.extend(load_and_kill(
            daemon,
            WORKERS,
            kill_after,
            &format!("loop_{cycle}"),
        ));
    }
    let at_last_kill = check_totals_of_a_copy(dir.path());
    let stored = usize::try_from(at_last_kill.transactions).unwrap();
    assert!(
        (acknowledged.len()..=acknowledged.len() + CYCLES * WORKERS).contains(&stored),
        "{} acknowledged: {at_last_kill:?}",
        acknowledged.len()
    );

    let daemon = Daemon::start(dir.path(), &["--process-delay", "200ms"]);
    assert_processes_exactly(daemon.addr, at_last_kill.processing);
    let mut processed_at = Vec::new();
    for sent in &acknowledged {
        let body = wait_processed(daemon.addr, &sent.id, DEADLINE);
        sent.assert_is(&body);
        processed_at.push(body["processed_at"].clone());
    }
    // processed_at does not move after another kill and restart.
    daemon.kill();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "200ms"]);
    for (sent, at) in acknowledged.iter().zip(&processed_at) {
        assert_eq!(
            &get_transaction(daemon.addr, &sent.id).json()["processed_at"],
            at,
            "{}",
            sent.id
        );
    }
    assert_processes_exactly(daemon.addr, 0);
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());

    // Exactly one record per id, each as sent, all processed, no job left.
    let totals = check_totals(dir.path());
    assert_eq!(
        totals,
        CheckTotals {
            transactions: at_last_kill.transactions,
            processing: 0,
            processed: at_last_kill.transactions,
            pending_jobs: 0
        }
    );
    let mut records: HashMap<String, Vec<Value>> = HashMap::new();
    for record in export(dir.path()) {
        let id = record["transaction_id"].as_str().unwrap().to_owned();
        records.entry(id).or_default().push(record);
    }
    assert_eq!(records.len(), stored, "ids in the export");
    for (id, copies) in &records {
        assert_eq!(copies.len(), 1, "{id} is stored {} times", copies.len());
        assert_eq!(copies[0]["status"], "PROCESSED", "{}", copies[0]);
    }
    for sent in &acknowledged {
        sent.assert_is(&records[&sent.id][0]);
    }
}
