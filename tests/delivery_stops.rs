//! Delivery across stops: an attempt a SIGKILL cuts off is recorded
//! `interrupted` and tried again with the same id; on SIGTERM attempts in
//! flight finish within the grace, and those still running after it are
//! cut off and recorded `interrupted` at the next start. Also the delivery
//! metrics.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{DEADLINE, Daemon, get, get_transaction, payload, poll_until, post, transaction_path};
use serde_json::Value;
use sink::{Answer, Sink};

fn deliver_to(dir: &Path, sink: &Sink, extra: &[&str]) -> Daemon {
    let url = sink.url();
    let mut args = vec!["--process-delay", "0s", "--deliver-to", url.as_str()];
    args.extend_from_slice(extra);
    Daemon::start(dir, &args)
}

fn attempts(addr: std::net::SocketAddr, id: &str) -> Vec<Value> {
    get(addr, &format!("{}/attempts", transaction_path(id))).json()["attempts"]
        .as_array()
        .unwrap()
        .clone()
}

fn wait_processed(addr: std::net::SocketAddr, id: &str) -> Value {
    common::wait_processed(addr, id, DEADLINE)
}

#[test]
fn an_attempt_cut_off_by_sigkill_is_recorded_interrupted_and_tried_again_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Answer::Hang);
    let daemon = deliver_to(dir.path(), &sink, &[]);
    assert_eq!(post(daemon.addr, &payload("txn_cut", "5")).status, 202);
    poll_until(DEADLINE, "the request at the sink", || {
        (sink.count() == 1).then_some(())
    });
    let in_flight = get_transaction(daemon.addr, "txn_cut").json();
    assert_eq!(in_flight["attempts"], 1);
    assert_eq!(
        in_flight["next_attempt_at"],
        Value::Null,
        "in flight: no next attempt yet"
    );
    let open = attempts(daemon.addr, "txn_cut");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["outcome"], Value::Null);
    assert_eq!(open[0]["finished_at"], Value::Null);
    daemon.kill();

    sink.set(|_| Answer::status(200));
    let daemon = deliver_to(dir.path(), &sink, &[]);
    let done = wait_processed(daemon.addr, "txn_cut");
    assert_eq!(done["attempts"], 2);
    let journal = attempts(daemon.addr, "txn_cut");
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[0]["attempt"], 1);
    assert_eq!(journal[0]["outcome"], "interrupted");
    assert_eq!(journal[0]["finished_at"], Value::Null);
    assert_eq!(journal[1]["attempt"], 2);
    assert_eq!(journal[1]["outcome"], "delivered");
    let seen = sink.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].id(), seen[1].id());
    assert_eq!(
        seen[0].header("idempotency-key"),
        seen[1].header("idempotency-key")
    );
    assert_eq!(seen[1].attempt(), 2);
    let metrics = get(daemon.addr, "/metrics").body;
    assert!(
        metrics.contains("webhookd_delivery_attempts_total{outcome=\"interrupted\"} 1"),
        "{metrics}"
    );
}

#[test]
fn on_sigterm_attempts_in_flight_finish_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Answer::slow(200, Duration::from_millis(1500)));
    let daemon = deliver_to(dir.path(), &sink, &["--shutdown-grace", "10s"]);
    assert_eq!(post(daemon.addr, &payload("txn_drain", "5")).status, 202);
    poll_until(DEADLINE, "the request at the sink", || {
        (sink.count() == 1).then_some(())
    });
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    let daemon = deliver_to(dir.path(), &sink, &[]);
    let done = get_transaction(daemon.addr, "txn_drain").json();
    assert_eq!(done["status"], "PROCESSED", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        attempts(daemon.addr, "txn_drain")[0]["outcome"],
        "delivered"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.count(), 1, "delivered once");
}

#[test]
fn attempts_still_running_after_the_grace_are_cut_off_and_interrupted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Answer::Hang);
    let daemon = deliver_to(
        dir.path(),
        &sink,
        &["--shutdown-grace", "1s", "--deliver-timeout", "60s"],
    );
    assert_eq!(post(daemon.addr, &payload("txn_long", "5")).status, 202);
    poll_until(DEADLINE, "the request at the sink", || {
        (sink.count() == 1).then_some(())
    });
    let asked = Instant::now();
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(stderr.contains("cutting off delivery attempts"), "{stderr}");

    sink.set(|_| Answer::status(200));
    let daemon = deliver_to(dir.path(), &sink, &[]);
    wait_processed(daemon.addr, "txn_long");
    let journal = attempts(daemon.addr, "txn_long");
    let outcomes: Vec<&str> = journal
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["interrupted", "delivered"]);
    assert!(daemon.stderr_text().contains("interrupted"));
}

#[test]
fn metrics_count_attempts_by_outcome_and_failed_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|seen| {
        if seen.json()["transaction_id"] == "txn_m_gone" {
            Answer::status(410)
        } else if seen.attempt() == 1 {
            Answer::status(500)
        } else {
            Answer::status(200)
        }
    });
    let daemon = deliver_to(dir.path(), &sink, &["--retry-schedule", "0s,0s"]);
    assert_eq!(post(daemon.addr, &payload("txn_m_ok", "5")).status, 202);
    assert_eq!(post(daemon.addr, &payload("txn_m_gone", "5")).status, 202);
    wait_processed(daemon.addr, "txn_m_ok");
    poll_until(DEADLINE, "FAILED", || {
        (get_transaction(daemon.addr, "txn_m_gone").json()["status"] == "FAILED").then_some(())
    });
    let metrics = get(daemon.addr, "/metrics").body;
    for line in [
        "webhookd_delivery_attempts_total{outcome=\"delivered\"} 1",
        "webhookd_delivery_attempts_total{outcome=\"failed\"} 2",
        "webhookd_delivery_attempts_total{outcome=\"interrupted\"} 0",
        "webhookd_delivery_attempts_in_flight 0",
        "webhookd_delivery_paused 0",
        "webhookd_failed_transactions 1",
        "webhookd_delivery_attempt_duration_seconds_count 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    let health = get(daemon.addr, "/").json();
    assert_eq!(health["status"], "HEALTHY");
    assert_eq!(health["delivery"], "ok");
}
