//! Delivery under crashes: 10,000 webhooks posted while webhookd is
//! killed with SIGKILL at random moments (at least 30 times) and delivering to a
//! sink that fails about 10% of requests with 503 and hangs on about 2%,
//! with a short retry schedule. Afterwards, read from the data dir
//! through the library:
//! - every accepted transaction is PROCESSED or FAILED;
//! - every request the sink received has an attempt record with its number;
//! - per transaction the attempt numbers run 1..N without gaps, and N is
//!   the transaction's `attempts`;
//! - the 2xx answers the sink gave a transaction beyond its first are no
//!   more than its `interrupted` attempts.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Daemon, payload};
use sink::{Answer, Sink};
use webhookd::model::Status;
use webhookd::store::attempts::AttemptOutcome;
use webhookd::store::{NoProgress, Store};

const WEBHOOKS: usize = 10_000;
const MIN_KILLS: usize = 30;
const POSTERS: usize = 4;

/// About 10% 503, 2% hang, the rest 200: decided by a hash of the
/// request's id and attempt, so a retry gets a fresh draw.
fn answer(seen: &sink::Seen) -> Answer {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (seen.id(), seen.attempt()).hash(&mut hasher);
    match hasher.finish() % 100 {
        0..10 => Answer::status(503),
        10..12 => Answer::Hang,
        _ => Answer::status(200),
    }
}

fn start(dir: &std::path::Path, sink: &Sink) -> Daemon {
    let url = sink.url();
    Daemon::start(
        dir,
        &[
            "--process-delay",
            "0s",
            "--deliver-to",
            &url,
            "--deliver-timeout",
            "500ms",
            "--retry-schedule",
            "0s,100ms,100ms,100ms,100ms,100ms",
            "--deliver-concurrency",
            "32",
        ],
    )
}

/// Posts webhooks `part`, `part + POSTERS`, … until each got a 202,
/// reconnecting to wherever the daemon listens now after a kill.
fn post_all(part: usize, addr: &RwLock<SocketAddr>, accepted: &AtomicUsize) {
    let mut i = part;
    let mut stream = None;
    while i < WEBHOOKS {
        let target = *addr.read().unwrap();
        let Some(mut connection) = stream
            .take()
            .or_else(|| std::net::TcpStream::connect(target).ok())
        else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = connection.set_read_timeout(Some(Duration::from_secs(10)));
        let body = payload(&format!("txn_crash_{i}"), "1");
        let request = format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answered = std::io::Write::write_all(&mut connection, request.as_bytes())
            .and_then(|()| common::try_read_response(&mut connection));
        match answered {
            Ok(response) if response.status == 202 => {
                accepted.fetch_add(1, Ordering::Relaxed);
                i += POSTERS;
                stream = Some(connection);
            }
            // 503 while the daemon starts or is loaded: try the same one again.
            Ok(_) => {
                std::thread::sleep(Duration::from_millis(10));
                stream = Some(connection);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn sigkills_during_delivery_leave_every_request_journaled_and_numbered_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(answer);
    let started = Instant::now();
    let kills = post_while_killing(dir.path(), &sink);
    let counts = check_journal(dir.path(), &sink);
    println!(
        "{WEBHOOKS} webhooks, {kills} SIGKILLs, {} requests at the sink, {} interrupted attempts, {} duplicate 2xx, {} FAILED, {:?}",
        counts.requests,
        counts.interrupted,
        counts.duplicates,
        counts.failed,
        started.elapsed()
    );
    assert!(kills >= MIN_KILLS);
}

/// Posts every webhook while killing and restarting webhookd, then lets
/// it finish and stops it; returns how many kills there were.
fn post_while_killing(dir: &std::path::Path, sink: &Sink) -> usize {
    let daemon = start(dir, sink);
    let addr = Arc::new(RwLock::new(daemon.addr));
    let accepted = Arc::new(AtomicUsize::new(0));
    let posting = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let (daemon, kills) = std::thread::scope(|scope| {
        let mut daemon = daemon;
        let mut kills = 0;
        let posters: Vec<_> = (0..POSTERS)
            .map(|part| {
                let (addr, accepted) = (Arc::clone(&addr), Arc::clone(&accepted));
                scope.spawn(move || post_all(part, &addr, &accepted))
            })
            .collect();
        {
            let posting = Arc::clone(&posting);
            scope.spawn(move || {
                for poster in posters {
                    poster.join().unwrap();
                }
                posting.store(false, Ordering::SeqCst);
            });
        }
        // Kill at random moments while posting goes on, and at least
        // MIN_KILLS times (some of them after posting, while only retries
        // and deliveries run).
        while posting.load(Ordering::SeqCst) || kills < MIN_KILLS {
            std::thread::sleep(Duration::from_millis(fastrand::u64(50..400)));
            daemon.kill();
            kills += 1;
            daemon = start(dir, sink);
            *addr.write().unwrap() = daemon.addr;
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "took too long"
            );
        }
        (daemon, kills)
    });
    assert_eq!(accepted.load(Ordering::SeqCst), WEBHOOKS);

    // Let it finish: nothing PROCESSING is left.
    common::poll_until(
        Duration::from_secs(120),
        "every transaction delivered or FAILED",
        || {
            let page =
                common::get(daemon.addr, "/v1/transactions?status=PROCESSING&limit=1").json();
            page["transactions"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(30)).0.success());

    kills
}

struct Counts {
    requests: usize,
    interrupted: usize,
    duplicates: usize,
    failed: usize,
}

/// Reads the stopped daemon's data dir through the library and checks the
/// journal against what the sink saw.
fn check_journal(dir: &std::path::Path, sink: &Sink) -> Counts {
    let store = Store::open(dir).unwrap();
    let report = store.check(&NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let mut records = Vec::new();
    store
        .for_each_transaction(&NoProgress, |key, record| {
            records.push((key, record.expect("every record decodes")));
            true
        })
        .unwrap();
    assert_eq!(
        records.len(),
        WEBHOOKS,
        "every accepted transaction is stored once"
    );
    let mut journal: HashMap<String, (Status, Vec<u32>, usize)> = HashMap::new();
    let (mut interrupted_total, mut failed) = (0, 0);
    for (key, record) in &records {
        assert!(
            matches!(record.status, Status::Processed | Status::Failed),
            "{} is {:?}",
            record.transaction.transaction_id,
            record.status
        );
        failed += usize::from(record.status == Status::Failed);
        let attempts = store.attempts_at(*key).unwrap();
        let numbers: Vec<u32> = attempts.iter().map(|a| a.number).collect();
        let expected: Vec<u32> = (1..=record.delivery.attempts).collect();
        assert_eq!(
            numbers, expected,
            "{}: attempt numbers",
            record.transaction.transaction_id
        );
        assert!(
            attempts.iter().all(|a| a.stored.outcome.is_some()),
            "an attempt left open"
        );
        let interrupted = attempts
            .iter()
            .filter(|a| a.stored.outcome == Some(AttemptOutcome::Interrupted))
            .count();
        interrupted_total += interrupted;
        journal.insert(
            format!("msg_{key:016x}"),
            (record.status, numbers, interrupted),
        );
    }
    let seen = sink.by_id();
    let mut duplicates = 0;
    for (id, requests) in &seen {
        let (_, numbers, interrupted) = journal
            .get(id)
            .unwrap_or_else(|| panic!("the sink saw {id}, which has no transaction"));
        let numbers: HashSet<u32> = numbers.iter().copied().collect();
        for request in requests {
            assert!(
                numbers.contains(&request.attempt()),
                "{id}: the sink saw attempt {} without an attempt record",
                request.attempt()
            );
        }
        let ok = requests.iter().filter(|r| r.status == Some(200)).count();
        let repeats = ok.saturating_sub(1);
        assert!(
            repeats <= *interrupted,
            "{id}: {ok} 2xx answers but {interrupted} interrupted attempts"
        );
        duplicates += repeats;
    }
    let requests: usize = seen.values().map(Vec::len).sum();
    Counts {
        requests,
        interrupted: interrupted_total,
        duplicates,
        failed,
    }
}
