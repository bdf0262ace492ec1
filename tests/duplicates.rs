//! Many copies of one new transaction at the same moment, on different
//! connections, give one record, one job and exactly one `duplicate: false`.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Daemon, get_transaction, payload, post, wait_processed};

#[test]
fn a_hundred_concurrent_copies_of_a_new_id_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1s"]);
    let addr = daemon.addr;
    let body = payload("txn_concurrent_copies", "99.99");
    let barrier = Barrier::new(100);
    let answers: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
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
    });
    let originals = answers.iter().filter(|a| a["duplicate"] == false).count();
    assert_eq!(
        originals, 1,
        "exactly one copy is the original: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a["transaction_id"] == "txn_concurrent_copies")
    );

    // One record, processed once: processed_at is set once and never moves.
    let processed = wait_processed(addr, "txn_concurrent_copies", Duration::from_secs(20));
    let again = post(addr, &body);
    assert_eq!(again.json()["status"], "PROCESSED");
    assert_eq!(again.json()["duplicate"], true);
    // Give a hypothetical second job the time it would need to fire.
    let deadline = common::millis(&processed["processed_at"]) + 2000;
    common::poll_until(
        Duration::from_secs(20),
        "two seconds after processing",
        || (common::now_millis() > deadline).then_some(()),
    );
    assert_eq!(
        get_transaction(addr, "txn_concurrent_copies").json(),
        processed
    );
}

/// Through the library: copies queued together land in one write batch;
/// the batch sees its own writes, so there is one record and one job.
#[test]
fn copies_in_one_writer_batch_give_one_record_and_one_job() {
    use webhookd::store::Store;
    use webhookd::store::writer::{self, AcceptOutcome};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (handle, thread) = writer::spawn(
        store.clone(),
        Duration::from_secs(3600),
        1024,
        Arc::default(),
        |_| {},
    )
    .unwrap();
    let transaction = webhookd::model::parse_payload(payload("txn_batch", "1").as_bytes()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcomes: Vec<AcceptOutcome> = runtime.block_on(async {
        // All 50 are queued before this task yields, so the writer finds
        // them together (at most the first is taken alone).
        let pending: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn({
                    let handle = handle.clone();
                    let transaction = transaction.clone();
                    async move { handle.accept(transaction).await.unwrap() }
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in pending {
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
    assert_eq!(store.pending_jobs().unwrap(), 1);
    drop(handle);
    thread.join().unwrap();
    assert!(store.get("txn_batch").unwrap().is_some());
}
