//! Crash and restart: SIGKILL during a concurrent load loses nothing that
//! was acknowledged; jobs that fell due while the daemon was down run
//! within a second of start; `processed_at` never changes across restarts.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Daemon, get_transaction, millis, now_millis, payload, poll_until, post, try_post,
    wait_processed,
};

#[test]
fn sigkill_during_concurrent_posts_loses_no_acknowledged_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..16 {
            let (acknowledged, stop) = (&acknowledged, &stop);
            scope.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("txn_kill_{worker}_{n}");
                    // Connection errors are expected once the daemon is killed.
                    let Ok(response) = try_post(addr, &payload(&id, "7.5")) else {
                        break;
                    };
                    if response.status == 202 {
                        acknowledged.lock().unwrap().push(id);
                    }
                }
            });
        }
        poll_until(Duration::from_secs(60), "500 acknowledged webhooks", || {
            (acknowledged.lock().unwrap().len() >= 500).then_some(())
        });
        // Kill while the workers are still sending.
        daemon.kill();
        stop.store(true, Ordering::Relaxed);
    });
    let acknowledged = acknowledged.into_inner().unwrap();

    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    for id in &acknowledged {
        let read = get_transaction(daemon.addr, id);
        assert_eq!(read.status, 200, "acknowledged {id} lost: {}", read.body);
        assert_eq!(read.json()["amount"], 7.5);
    }
    for id in &acknowledged {
        wait_processed(daemon.addr, id, Duration::from_secs(30));
    }
}

#[test]
fn jobs_that_fell_due_while_stopped_run_within_a_second_of_start() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "2s"]);
    let ids: Vec<String> = (0..50).map(|i| format!("txn_overdue_{i}")).collect();
    for id in &ids {
        assert_eq!(post(daemon.addr, &payload(id, "1")).status, 202);
    }
    let latest_created = ids
        .iter()
        .map(|id| millis(&get_transaction(daemon.addr, id).json()["created_at"]))
        .max()
        .unwrap();
    daemon.kill();
    // Wait (by the clock) until every job is overdue.
    poll_until(Duration::from_secs(20), "all jobs due", || {
        (now_millis() > latest_created + 2000 + 100).then_some(())
    });

    let start = now_millis();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "2s"]);
    for id in &ids {
        let body = wait_processed(daemon.addr, id, Duration::from_secs(20));
        let processed = millis(&body["processed_at"]);
        assert!(
            processed <= start + 1000,
            "{id} processed {} ms after start",
            processed - start
        );
    }
}

#[test]
fn processed_at_never_changes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(post(daemon.addr, &payload("txn_stable", "3")).status, 202);
    let processed = wait_processed(daemon.addr, "txn_stable", Duration::from_secs(20));
    daemon.kill();

    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(get_transaction(daemon.addr, "txn_stable").json(), processed);
    // A redelivery after the restart changes nothing either.
    assert_eq!(
        post(daemon.addr, &payload("txn_stable", "3")).json()["duplicate"],
        true
    );
    daemon.terminate();
    let (status, _) = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success());

    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(get_transaction(daemon.addr, "txn_stable").json(), processed);
}

#[test]
fn jobs_not_yet_due_at_shutdown_run_after_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    assert_eq!(post(daemon.addr, &payload("txn_later", "3")).status, 202);
    daemon.terminate();
    let (status, _) = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success());

    let started = Instant::now();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "3s"]);
    let body = get_transaction(daemon.addr, "txn_later").json();
    if started.elapsed() < Duration::from_secs(2) {
        assert_eq!(body["status"], "PROCESSING", "processed before due: {body}");
    }
    let body = wait_processed(daemon.addr, "txn_later", Duration::from_secs(20));
    assert!(millis(&body["processed_at"]) >= millis(&body["created_at"]) + 3000);
}

/// 20 cycles of concurrent load, SIGKILL at a varying moment, restart.
#[test]
fn twenty_kill_and_restart_cycles_lose_nothing_and_process_everything_once() {
    const CYCLES: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for cycle in 0..CYCLES {
        let daemon = Daemon::start(dir.path(), &["--process-delay", "200ms"]);
        let addr = daemon.addr;
        let acked = Mutex::new(Vec::new());
        let stop = AtomicBool::new(false);
        // Kill after a different number of acknowledgements each cycle.
        let kill_after = 20 + (cycle as usize * 37) % 150;
        std::thread::scope(|scope| {
            for worker in 0..8 {
                let (acked, stop) = (&acked, &stop);
                scope.spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("txn_loop_{cycle}_{worker}_{n}");
                        let amount = format!("{n}.{cycle:02}");
                        let Ok(response) = try_post(addr, &payload(&id, &amount)) else {
                            break;
                        };
                        if response.status == 202 {
                            acked.lock().unwrap().push((id, amount));
                        }
                    }
                });
            }
            poll_until(Duration::from_secs(60), "acknowledgements", || {
                (acked.lock().unwrap().len() >= kill_after).then_some(())
            });
            daemon.kill();
            stop.store(true, Ordering::Relaxed);
        });
        acknowledged.extend(acked.into_inner().unwrap());
    }

    let daemon = Daemon::start(dir.path(), &["--process-delay", "200ms"]);
    let mut processed_at = Vec::new();
    for (id, amount) in &acknowledged {
        let body = wait_processed(daemon.addr, id, Duration::from_secs(30));
        assert_eq!(body["source_account"], "acc_user_789", "{id}");
        assert_eq!(
            body["amount"].to_string(),
            amount.trim_end_matches('0').trim_end_matches('.'),
            "{id}"
        );
        processed_at.push(body["processed_at"].clone());
    }
    // Processed exactly once: processed_at does not move after another restart.
    daemon.kill();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "200ms"]);
    for ((id, _), at) in acknowledged.iter().zip(&processed_at) {
        assert_eq!(
            &get_transaction(daemon.addr, id).json()["processed_at"],
            at,
            "{id}"
        );
    }
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).0.success());
    // The database opens cleanly and holds exactly one record per id.
    let store = webhookd::store::Store::open(dir.path()).expect("database opens cleanly");
    assert_eq!(store.pending_jobs().unwrap(), 0);
    for (id, _) in &acknowledged {
        assert!(store.get(id).unwrap().is_some(), "{id}");
    }
}
