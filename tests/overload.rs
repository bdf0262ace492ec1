//! A flood far beyond what one writer can commit: the excess is answered
//! at once with 503 + Retry-After (no request hangs), memory stays bounded,
//! accepted requests keep a bounded latency, and every acknowledged
//! transaction is processed.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Daemon, payload, poll_until, post, wait_processed};

#[test]
fn a_flood_is_shed_with_503_and_everything_acknowledged_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--queue-depth", "32", "--process-delay", "0s"],
    );
    let addr = daemon.addr;
    let accepted = Mutex::new(Vec::new());
    let mut refused = 0_usize;
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..200)
            .map(|worker| {
                let accepted = &accepted;
                scope.spawn(move || {
                    let (mut refused, mut latencies) = (0, Vec::new());
                    let mut n = 0;
                    while Instant::now() < until {
                        n += 1;
                        let id = format!("txn_flood_{worker}_{n}");
                        let started = Instant::now();
                        let response = post(addr, &payload(&id, "1"));
                        match response.status {
                            202 => {
                                latencies.push(started.elapsed());
                                accepted.lock().unwrap().push(id);
                            }
                            503 => {
                                response.assert_error(503, "unavailable");
                                assert!(response.header("retry-after").is_some());
                                refused += 1;
                            }
                            other => panic!("unexpected {other}: {}", response.body),
                        }
                    }
                    (refused, latencies)
                })
            })
            .collect();
        for worker in workers {
            let (r, l) = worker.join().unwrap();
            refused += r;
            latencies.extend(l);
        }
    });
    let accepted = accepted.into_inner().unwrap();
    assert!(refused > 0, "the flood was not beyond capacity");
    assert!(!accepted.is_empty());
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_secs(2),
        "p99 of accepted requests {p99:?}"
    );

    // Memory stays bounded: the queue holds at most 32 parsed webhooks.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");

    // Every acknowledged transaction is processed.
    for id in &accepted {
        wait_processed(addr, id, Duration::from_secs(30));
    }
    poll_until(Duration::from_secs(5), "health after the flood", || {
        (common::get(addr, "/").status == 200).then_some(())
    });
}
