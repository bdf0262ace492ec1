//! A destination that is down does not burn attempts: at steady load, the
//! sink refuses everything for a while; after 10 failures in a row
//! delivery pauses (`GET /` stays HEALTHY and says `"delivery":"paused"`,
//! webhooks are still accepted) and only one probe goes out every 30 s.
//! Once the sink recovers, the next probe succeeds, delivery resumes,
//! oldest due first, and everything is delivered; nothing is FAILED.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, get, payload, poll_until, post};
use sink::{Answer, Sink};

/// Failed attempts in a row that pause delivery.
const THRESHOLD: usize = 10;
/// While paused, one probe this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the sink stays down: past one probe.
const DOWN_FOR: Duration = Duration::from_secs(40);

#[test]
fn a_down_destination_pauses_delivery_and_burns_only_the_threshold_and_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let is_down = Arc::clone(&down);
    let sink = Sink::start(move |_| {
        if is_down.load(Ordering::SeqCst) {
            Answer::status(503)
        } else {
            Answer::status(200)
        }
    });
    let url = sink.url();
    // Up to 10 in flight: no more than the threshold can fail before the pause.
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--process-delay",
            "0s",
            "--deliver-to",
            &url,
            "--deliver-concurrency",
            "8",
        ],
    );
    let addr = daemon.addr;
    let mut posted = 0;
    let mut saw_paused = false;
    let started = Instant::now();
    // Steady load, 10 webhooks a second, while the destination is down.
    while started.elapsed() < DOWN_FOR {
        let answer = post(addr, &payload(&format!("txn_down_{posted}"), "1"));
        assert_eq!(answer.status, 202, "webhooks are accepted while paused");
        posted += 1;
        let health = get(addr, "/");
        assert_eq!(health.status, 200);
        assert_eq!(health.json()["status"], "HEALTHY");
        saw_paused |= health.json()["delivery"] == "paused";
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_paused, "GET / never said the delivery was paused");
    let while_down = sink.seen();
    // Past the threshold, only probes, PROBE_INTERVAL apart.
    assert!(
        while_down.len() > THRESHOLD,
        "{} requests",
        while_down.len()
    );
    let probes = &while_down[THRESHOLD..];
    let allowed = 1 + (DOWN_FOR.as_secs() / PROBE_INTERVAL.as_secs()) as usize;
    assert!(
        probes.len() <= allowed,
        "{} attempts while down: more than {THRESHOLD} and {allowed} probes",
        while_down.len()
    );
    for pair in probes.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(29_500), "probes {gap:?} apart");
    }

    down.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    poll_until(
        PROBE_INTERVAL + Duration::from_secs(60),
        "everything delivered",
        || {
            let empty = |status: &str| {
                get(addr, &format!("/v1/transactions?status={status}&limit=1")).json()["transactions"]
                .as_array()
                .unwrap()
                .is_empty()
            };
            (empty("PROCESSING") && empty("FAILED")).then_some(())
        },
    );
    assert_eq!(get(addr, "/").json()["delivery"], "ok");
    let after: Vec<_> = sink
        .seen()
        .into_iter()
        .filter(|s| s.at >= recovered)
        .collect();
    assert!(
        after.len() >= posted,
        "{} deliveries for {posted} transactions",
        after.len()
    );
    // Oldest due first: the first deliveries after the pause are of the
    // oldest transactions (the first, failed ones wait 5 s ±20% each).
    let first: Vec<usize> = after[..8]
        .iter()
        .map(|s| {
            s.json()["transaction_id"].as_str().unwrap()["txn_down_".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        first.iter().all(|&n| n < 60),
        "first delivered after resuming: {first:?}"
    );
}
