//! The id index: transactions are stored in arrival order and their ids
//! reach the on-disk `ids` table in merged batches, held in memory until
//! then. Whatever state an id is in (just accepted, in the middle of a
//! merge cycle, merged, or rebuilt from the log after a SIGKILL), a
//! redelivery is a duplicate, a changed payload is a conflict, and a read
//! finds it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    DEADLINE, Daemon, connect, get, get_transaction, payload, poll_until, post, post_on,
    run_to_exit,
};

/// Ids not yet merged into the on-disk id index, from `GET /metrics`.
fn unindexed(addr: SocketAddr) -> u64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix("webhookd_unindexed_ids "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no webhookd_unindexed_ids in:\n{text}"))
}

fn assert_redelivery_is_duplicate(addr: SocketAddr, id: &str) {
    let again = post(addr, &payload(id, "1"));
    assert_eq!(again.status, 202, "{id}: {}", again.body);
    assert_eq!(again.json()["duplicate"], true, "{id} was stored twice");
    post(addr, &payload(id, "2")).assert_error(409, "conflict");
    assert_eq!(get_transaction(addr, id).status, 200, "{id}");
}

fn check(dir: &std::path::Path) {
    let (code, stderr) = run_to_exit(&["--data-dir", dir.to_str().unwrap(), "check"], &[]);
    assert_eq!(code, Some(0), "webhookd check: {stderr}");
}

#[test]
fn ids_merged_while_idle_still_deduplicate_conflict_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    let ids: Vec<String> = (0..300).map(|i| format!("idle-merge-{i}")).collect();
    for id in &ids {
        assert_eq!(post(addr, &payload(id, "1")).status, 202);
    }
    // Just accepted: found through memory.
    assert_redelivery_is_duplicate(addr, &ids[0]);
    // Idle: the writer merges them into the id index by itself.
    poll_until(DEADLINE, "every id merged into the id index", || {
        (unindexed(addr) == 0).then_some(())
    });
    for id in ids.iter().step_by(7) {
        assert_redelivery_is_duplicate(addr, id);
    }
    // After SIGKILL nothing needs rebuilding, and nothing is forgotten.
    daemon.kill();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    assert_eq!(unindexed(daemon.addr), 0);
    for id in ids.iter().step_by(11) {
        assert_redelivery_is_duplicate(daemon.addr, id);
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    check(dir.path());
}

/// More ids than one merge cycle takes in, so a cycle runs while webhooks
/// keep arriving; meanwhile redeliveries of acknowledged ids must always
/// be duplicates. Then SIGKILL mid-way through whatever merge is running,
/// and the same must hold after the restart.
#[test]
fn a_merge_cycle_under_load_never_loses_track_of_an_id() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 9_000; // 72,000 in all, over MERGE_THRESHOLD
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));

    let redeliveries = {
        let acknowledged = Arc::clone(&acknowledged);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut stream = connect(addr);
            let mut checked = 0_u64;
            let mut n = 0_usize;
            while !done.load(Ordering::SeqCst) {
                let id = {
                    let list = acknowledged.lock().unwrap();
                    if list.is_empty() {
                        None
                    } else {
                        n = n.wrapping_mul(31).wrapping_add(17);
                        Some(list[n % list.len()].clone())
                    }
                };
                let Some(id) = id else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let again = post_on(&mut stream, &payload(&id, "1"));
                assert_eq!(again.status, 202, "{id}: {}", again.body);
                assert_eq!(
                    again.json()["duplicate"],
                    true,
                    "{id} was stored twice during a merge"
                );
                checked += 1;
            }
            checked
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                for i in 0..PER_THREAD {
                    let id = format!("cycle-{t}-{i}");
                    let response = post_on(&mut stream, &payload(&id, "1"));
                    assert_eq!(response.status, 202, "{id}: {}", response.body);
                    assert_eq!(response.json()["duplicate"], false, "{id}");
                    acknowledged.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("load thread");
    }
    done.store(true, Ordering::SeqCst);
    let checked = redeliveries.join().expect("redelivery thread");
    assert!(checked > 100, "only {checked} redeliveries were checked");

    let all = acknowledged.lock().unwrap().clone();
    assert_eq!(all.len(), THREADS * PER_THREAD);
    daemon.kill();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    for id in all.iter().step_by(997) {
        assert_redelivery_is_duplicate(daemon.addr, id);
    }
    poll_until(DEADLINE, "every id merged after the restart", || {
        (unindexed(daemon.addr) == 0).then_some(())
    });
    for id in all.iter().skip(5).step_by(1009) {
        assert_redelivery_is_duplicate(daemon.addr, id);
    }
    daemon.terminate();
    assert!(daemon.wait_exit(DEADLINE).0.success());
    check(dir.path());
}
