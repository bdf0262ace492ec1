//! Delivery to `--deliver-to`, through the real binary against a sink the
//! test starts: the request and its headers, what each kind of answer
//! leads to, the retry schedule and Retry-After, the journal of attempts,
//! and the new fields of the transaction view.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    DEADLINE, Daemon, get, get_transaction, millis, now_millis, payload, poll_until, post,
    transaction_path,
};
use serde_json::Value;
use sink::{Answer, Sink};
use webhookd::signature::{Scheme, Verifier};

/// Starts webhookd delivering to `sink` at once (`--process-delay 0s`).
fn deliver_to(dir: &Path, sink: &Sink, extra: &[&str]) -> Daemon {
    let url = sink.url();
    let mut args = vec!["--process-delay", "0s", "--deliver-to", url.as_str()];
    args.extend_from_slice(extra);
    Daemon::start(dir, &args)
}

fn view(addr: SocketAddr, id: &str) -> Value {
    let response = get_transaction(addr, id);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

/// Waits until the transaction has `status`; returns its view.
fn wait_status(addr: SocketAddr, id: &str, status: &str) -> Value {
    poll_until(DEADLINE, &format!("{id} {status}"), || {
        let view = view(addr, id);
        (view["status"] == status).then_some(view)
    })
}

fn attempts(addr: SocketAddr, id: &str) -> Vec<Value> {
    let response = get(addr, &format!("{}/attempts", transaction_path(id)));
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["attempts"].as_array().unwrap().clone()
}

#[test]
fn a_2xx_makes_the_transaction_processed_at_the_time_the_answer_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(204);
    let daemon = deliver_to(dir.path(), &sink, &[]);
    let accepted = post(daemon.addr, &payload("txn_ok", "12345678901234567.89"));
    assert_eq!(accepted.status, 202);
    assert_eq!(accepted.json()["status"], "PROCESSING");
    let done = wait_status(daemon.addr, "txn_ok", "PROCESSED");
    let seen = sink.seen();
    assert_eq!(seen.len(), 1);
    let processed_at = millis(&done["processed_at"]);
    // The answer went out after the sink saw the request, and the view
    // was read after processing.
    assert!(
        processed_at + 5 >= seen[0].at_ms,
        "{processed_at} vs {}",
        seen[0].at_ms
    );
    assert!(processed_at <= now_millis());
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["next_attempt_at"], Value::Null);
    assert_eq!(done["last_error"], Value::Null);
    assert_eq!(done["failed_at"], Value::Null);
    let journal = attempts(daemon.addr, "txn_ok");
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0]["attempt"], 1);
    assert_eq!(journal[0]["outcome"], "delivered");
    assert_eq!(journal[0]["status_code"], 204);
    assert_eq!(journal[0]["error"], Value::Null);
    assert!(journal[0]["duration_ms"].is_u64());
    assert_eq!(journal[0]["response_excerpt"], "");
    common::assert_millis_timestamp(&journal[0]["started_at"]);
    common::assert_millis_timestamp(&journal[0]["finished_at"]);
}

#[test]
fn the_request_carries_the_transaction_exactly_and_the_standard_webhooks_headers() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let (old, new) = ("whsec_c2VjcmV0", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    std::fs::write(&secrets, format!("# rotating\n{old}\n{new}\n")).unwrap();
    let sink = Sink::answering(200);
    let daemon = deliver_to(
        &dir.path().join("data"),
        &sink,
        &["--deliver-signing-secret-file", secrets.to_str().unwrap()],
    );
    let body = payload("txn_exact", "12345678901234567.89").replace("\"INR\"", "\"inr\"");
    assert_eq!(post(daemon.addr, &body).status, 202);
    assert_eq!(post(daemon.addr, &payload("txn_other", "0.1")).status, 202);
    let stored = wait_status(daemon.addr, "txn_exact", "PROCESSED");
    wait_status(daemon.addr, "txn_other", "PROCESSED");
    let seen = sink.seen();
    assert_eq!(seen.len(), 2);
    let request = seen
        .iter()
        .find(|s| s.json()["transaction_id"] == "txn_exact")
        .unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let text = String::from_utf8(request.body.clone()).unwrap();
    assert!(text.contains("\"amount\":12345678901234567.89"), "{text}");
    let json = request.json();
    let keys: HashSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "transaction_id",
            "source_account",
            "destination_account",
            "amount",
            "currency",
            "created_at"
        ])
    );
    assert_eq!(json["currency"], "INR");
    assert_eq!(json["source_account"], "acc_user_789");
    assert_eq!(json["destination_account"], "acc_merchant_456");
    assert_eq!(json["created_at"], stored["created_at"]);

    let id = request.id();
    assert!(id.is_ascii() && !id.is_empty());
    assert_eq!(request.header("idempotency-key"), Some(id));
    let other = seen
        .iter()
        .find(|s| s.json()["transaction_id"] == "txn_other")
        .unwrap();
    assert_ne!(other.id(), id, "each transaction has its own webhook-id");
    assert_eq!(request.attempt(), 1);
    let timestamp: u64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!(timestamp.abs_diff(request.at_ms / 1000) <= 2);
    let signature = request.header("webhook-signature").unwrap();
    assert_eq!(
        signature.split(' ').count(),
        2,
        "one v1 entry per secret: {signature}"
    );
    let mut headers = hyper::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).unwrap().parse().unwrap());
    }
    for secret in [old, new] {
        let verifier = Verifier::new(Scheme::StandardWebhooks, &[secret], None).unwrap();
        assert_eq!(verifier.verify(&headers, &request.body, timestamp), Ok(()));
    }
}

#[test]
fn a_failed_attempt_is_retried_after_the_schedule_with_the_same_id_and_the_next_number() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let sink = Sink::start(move |_| match counter.fetch_add(1, Ordering::SeqCst) {
        0 => Answer::with_body(500, "database down"),
        1 => Answer::Close,
        _ => Answer::status(200),
    });
    let daemon = deliver_to(dir.path(), &sink, &["--retry-schedule", "0s,1s,1s,1s"]);
    assert_eq!(post(daemon.addr, &payload("txn_retry", "5")).status, 202);
    let failing = poll_until(DEADLINE, "the first failure", || {
        let view = view(daemon.addr, "txn_retry");
        (view["attempts"] == 1 && view["next_attempt_at"].is_string()).then_some(view)
    });
    assert_eq!(failing["status"], "PROCESSING");
    assert_eq!(failing["last_error"], "HTTP 500 Internal Server Error");
    let done = wait_status(daemon.addr, "txn_retry", "PROCESSED");
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["last_error"], Value::Null);
    let seen = sink.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.id() == seen[0].id()));
    assert_eq!(
        seen.iter().map(sink::Seen::attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Each wait of 1 s ±20% counts from the end of the attempt before.
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].answered_at.unwrap();
        assert!(gap >= Duration::from_millis(750), "{gap:?}");
    }
    let journal = attempts(daemon.addr, "txn_retry");
    let outcomes: Vec<&str> = journal
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "delivered"]);
    assert_eq!(journal[0]["status_code"], 500);
    assert_eq!(journal[0]["response_excerpt"], "database down");
    assert_eq!(journal[1]["status_code"], Value::Null);
    assert!(
        journal[1]["error"].as_str().unwrap().len() > 3,
        "{}",
        journal[1]
    );
    assert_eq!(journal[1]["response_excerpt"], Value::Null);
}

#[test]
fn redirects_are_failures_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|seen| {
        if seen.path == "/hook" {
            Answer::with_header(307, "location", "/elsewhere")
        } else {
            Answer::status(200)
        }
    });
    let daemon = deliver_to(dir.path(), &sink, &["--retry-schedule", "0s,0s"]);
    assert_eq!(post(daemon.addr, &payload("txn_redirect", "5")).status, 202);
    let failed = wait_status(daemon.addr, "txn_redirect", "FAILED");
    assert_eq!(failed["attempts"], 2);
    assert!(sink.seen().iter().all(|s| s.path == "/hook"));
    let journal = attempts(daemon.addr, "txn_redirect");
    assert!(
        journal
            .iter()
            .all(|a| a["outcome"] == "failed" && a["status_code"] == 307)
    );
}

#[test]
fn an_attempt_that_outlasts_the_timeout_fails_and_the_schedule_running_out_makes_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Answer::Hang);
    let daemon = deliver_to(
        dir.path(),
        &sink,
        &["--deliver-timeout", "1s", "--retry-schedule", "0s,0s"],
    );
    assert_eq!(post(daemon.addr, &payload("txn_hang", "5")).status, 202);
    let failed = wait_status(daemon.addr, "txn_hang", "FAILED");
    assert_eq!(failed["attempts"], 2);
    assert!(
        failed["last_error"].as_str().unwrap().contains("timed out"),
        "{failed}"
    );
    let failed_at = millis(&failed["failed_at"]);
    assert!(
        failed_at >= millis(&failed["created_at"]) + 2000,
        "two timeouts of 1 s"
    );
    assert_eq!(failed["next_attempt_at"], Value::Null);
    assert_eq!(failed["processed_at"], Value::Null);
    let journal = attempts(daemon.addr, "txn_hang");
    assert_eq!(journal.len(), 2);
    for attempt in &journal {
        assert_eq!(attempt["outcome"], "failed");
        let took = attempt["duration_ms"].as_u64().unwrap();
        assert!((1000..5000).contains(&took), "{attempt}");
    }
    assert_eq!(sink.count(), 2);
}

#[test]
fn a_410_fails_the_transaction_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Answer::with_body(410, "no such order"));
    let daemon = deliver_to(dir.path(), &sink, &[]);
    assert_eq!(post(daemon.addr, &payload("txn_gone", "5")).status, 202);
    let failed = wait_status(daemon.addr, "txn_gone", "FAILED");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["last_error"], "HTTP 410 Gone");
    common::assert_millis_timestamp(&failed["failed_at"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.count(),
        1,
        "the default schedule's second attempt is 5 s away: none"
    );
    let listed = get(daemon.addr, "/v1/transactions?status=FAILED").json();
    let ids: Vec<&str> = listed["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["txn_gone"]);
    assert_eq!(listed["transactions"][0]["status"], "FAILED");
}

#[test]
fn retry_after_on_429_and_503_waits_at_least_that_long_and_at_most_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let sink = Sink::start(move |seen| {
        if seen.json()["transaction_id"] == "txn_day" {
            return Answer::with_header(503, "retry-after", "86400");
        }
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 => Answer::with_header(429, "retry-after", "2"),
            _ => Answer::status(200),
        }
    });
    let daemon = deliver_to(dir.path(), &sink, &["--retry-schedule", "0s,0s,0s"]);
    assert_eq!(post(daemon.addr, &payload("txn_slow", "5")).status, 202);
    wait_status(daemon.addr, "txn_slow", "PROCESSED");
    let seen: Vec<_> = sink
        .seen()
        .into_iter()
        .filter(|s| s.json()["transaction_id"] == "txn_slow")
        .collect();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].answered_at.unwrap();
    assert!(gap >= Duration::from_millis(1990), "{gap:?}");

    assert_eq!(post(daemon.addr, &payload("txn_day", "5")).status, 202);
    let waiting = poll_until(DEADLINE, "the 503 recorded", || {
        let view = view(daemon.addr, "txn_day");
        view["last_error"].is_string().then_some(view)
    });
    let finished = millis(&attempts(daemon.addr, "txn_day")[0]["finished_at"]);
    let wait = millis(&waiting["next_attempt_at"]) - finished;
    assert_eq!(wait, 3_600_000, "capped at one hour");
    assert_eq!(waiting["last_error"], "HTTP 503 Service Unavailable");
}

#[test]
fn the_response_excerpt_keeps_the_first_4_kib_of_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(10_000);
    let sink = Sink::start(move |_| Answer::with_body(200, &big));
    let daemon = deliver_to(dir.path(), &sink, &[]);
    assert_eq!(post(daemon.addr, &payload("txn_big", "5")).status, 202);
    wait_status(daemon.addr, "txn_big", "PROCESSED");
    let journal = attempts(daemon.addr, "txn_big");
    assert_eq!(journal[0]["response_excerpt"].as_str().unwrap().len(), 4096);
}

#[test]
fn never_two_attempts_in_flight_for_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    // Every answer is slow, and a third of them fail, so retries overlap
    // with other transactions' first attempts.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let sink = Sink::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let delay = Duration::from_millis(20);
        if n.is_multiple_of(3) {
            Answer::slow(500, delay)
        } else {
            Answer::slow(200, delay)
        }
    });
    let daemon = deliver_to(
        dir.path(),
        &sink,
        &[
            "--retry-schedule",
            "0s,0s,0s,0s,0s,0s",
            "--deliver-concurrency",
            "8",
        ],
    );
    for i in 0..40 {
        assert_eq!(
            post(daemon.addr, &payload(&format!("txn_one_{i}"), "1")).status,
            202
        );
    }
    for i in 0..40 {
        wait_status(daemon.addr, &format!("txn_one_{i}"), "PROCESSED");
    }
    for (id, requests) in sink.by_id() {
        for pair in requests.windows(2) {
            assert!(
                pair[1].at >= pair[0].answered_at.unwrap(),
                "{id}: attempt {} began before attempt {} was answered",
                pair[1].attempt(),
                pair[0].attempt()
            );
        }
    }
}

#[test]
fn without_deliver_to_nothing_about_delivery_shows() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    assert_eq!(post(daemon.addr, &payload("txn_plain", "5")).status, 202);
    let done = common::wait_processed(daemon.addr, "txn_plain", DEADLINE);
    for field in ["attempts", "next_attempt_at", "last_error", "failed_at"] {
        assert!(done.get(field).is_none(), "{field} in {done}");
    }
    let health = get(daemon.addr, "/").json();
    assert!(health.get("delivery").is_none(), "{health}");
    assert_eq!(attempts(daemon.addr, "txn_plain"), Vec::<Value>::new());
    let redeliver = common::request(
        daemon.addr,
        "POST",
        &format!("{}/redeliver", transaction_path("txn_plain")),
    );
    redeliver.assert_error(409, "conflict");
    let metrics = get(daemon.addr, "/metrics").body;
    assert!(!metrics.contains("webhookd_delivery"), "{metrics}");
}

#[test]
fn no_more_attempts_run_at_once_than_deliver_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_| Answer::slow(200, Duration::from_millis(300)));
    let url = sink.url();
    // Through the environment this time.
    let daemon = Daemon::start_with_env(
        dir.path(),
        &["--process-delay", "0s"],
        &[
            ("WEBHOOKD_DELIVER_TO", url.as_str()),
            ("WEBHOOKD_DELIVER_CONCURRENCY", "3"),
        ],
    );
    for i in 0..12 {
        assert_eq!(
            post(daemon.addr, &payload(&format!("txn_par_{i}"), "1")).status,
            202
        );
    }
    for i in 0..12 {
        wait_status(daemon.addr, &format!("txn_par_{i}"), "PROCESSED");
    }
    let seen = sink.seen();
    let most = seen
        .iter()
        .map(|s| {
            seen.iter()
                .filter(|o| o.at <= s.at && o.answered_at.unwrap() > s.at)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(most, 3, "requests at the sink at once");
}

#[test]
fn the_first_wait_counts_from_the_due_time_with_jitter() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(200);
    let daemon = deliver_to(dir.path(), &sink, &["--retry-schedule", "2s,0s"]);
    let ids: Vec<String> = (0..8).map(|i| format!("txn_wait_{i}")).collect();
    for id in &ids {
        assert_eq!(post(daemon.addr, &payload(id, "1")).status, 202);
    }
    let waits: Vec<u64> = ids
        .iter()
        .map(|id| {
            let done = wait_status(daemon.addr, id, "PROCESSED");
            let seen = sink
                .seen()
                .into_iter()
                .find(|s| s.json()["transaction_id"] == id.as_str())
                .unwrap();
            seen.at_ms - millis(&done["created_at"])
        })
        .collect();
    // 2 s ±20%, plus a little for the request itself.
    assert!(
        waits.iter().all(|&w| (1600..2900).contains(&w)),
        "{waits:?}"
    );
    let spread = waits.iter().max().unwrap() - waits.iter().min().unwrap();
    assert!(spread >= 50, "no jitter: {waits:?}");
}

#[test]
fn connections_to_the_destination_are_kept_alive_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::answering(200);
    let daemon = deliver_to(dir.path(), &sink, &["--deliver-concurrency", "1"]);
    for i in 0..20 {
        let id = format!("txn_reuse_{i}");
        assert_eq!(post(daemon.addr, &payload(&id, "1")).status, 202);
        wait_status(daemon.addr, &id, "PROCESSED");
    }
    assert_eq!(sink.count(), 20);
    assert_eq!(sink.connections(), 1, "one connection for every delivery");
}
