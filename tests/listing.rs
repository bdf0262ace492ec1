//! `GET /v1/transactions`: newest first, filters, stable cursor paging
//! while new transactions arrive, the page-size cap, and every parameter
//! error in the API's error shape.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;

use common::{
    DEADLINE, Daemon, get, millis, payload, post, request, transaction_path, wait_processed,
};
use serde_json::Value;

/// One listing page: its transactions and its `next_cursor`.
fn list(addr: SocketAddr, query: &str) -> (Vec<Value>, Option<String>) {
    let response = get(addr, &format!("/v1/transactions?{query}"));
    assert_eq!(response.status, 200, "{query}: {}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let body = response.json();
    let transactions = body["transactions"]
        .as_array()
        .unwrap_or_else(|| panic!("no transactions array: {body}"))
        .clone();
    let next = match &body["next_cursor"] {
        Value::Null => None,
        Value::String(cursor) => Some(cursor.clone()),
        other => panic!("next_cursor must be a string or null, got {other}"),
    };
    (transactions, next)
}

fn ids(transactions: &[Value]) -> Vec<String> {
    transactions
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Newest first: `created_at` never increases down the list.
fn assert_newest_first(transactions: &[Value]) {
    let times: Vec<u64> = transactions
        .iter()
        .map(|t| millis(&t["created_at"]))
        .collect();
    for pair in times.windows(2) {
        assert!(pair[0] >= pair[1], "not newest first: {pair:?}");
    }
}

/// Follows cursors from `first_query` to the end, calling `between` before
/// each next page; returns every transaction seen, in order.
fn all_pages(addr: SocketAddr, first_query: &str, mut between: impl FnMut()) -> Vec<Value> {
    let (mut seen, mut next) = list(addr, first_query);
    let mut pages = 1;
    while let Some(cursor) = next {
        between();
        let (page, after) = list(addr, &format!("{first_query}&cursor={cursor}"));
        assert!(
            !page.is_empty(),
            "a cursor was handed out for an empty page"
        );
        seen.extend(page);
        next = after;
        pages += 1;
        assert!(pages < 1000, "paging does not end");
    }
    seen
}

#[test]
fn pages_newest_first_and_stay_stable_while_new_transactions_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    let mut stored = Vec::new();
    for i in 0..25 {
        let id = format!("list-{i:02}");
        assert_eq!(post(addr, &payload(&id, "1.50")).status, 202);
        stored.push(id);
    }

    let (first, next) = list(addr, "limit=10");
    assert_eq!(first.len(), 10);
    assert!(next.is_some());
    assert_newest_first(&first);
    // The page holds exactly the ten newest, in reverse arrival order,
    // with the full transaction view.
    let mut newest = stored.clone();
    newest.reverse();
    assert_eq!(ids(&first), newest[..10]);
    assert_eq!(first[0]["status"], "PROCESSING");
    assert_eq!(first[0]["amount"].to_string(), "1.5");
    assert_eq!(first[0]["currency"], "INR");
    assert!(first[0]["processed_at"].is_null());

    // New arrivals between pages never shift what the cursor continues with.
    let mut arrivals = 0;
    let seen = all_pages(addr, "limit=7", || {
        arrivals += 1;
        let id = format!("late-{arrivals}");
        assert_eq!(post(addr, &payload(&id, "2")).status, 202);
    });
    assert_newest_first(&seen);
    let seen_ids = ids(&seen);
    let unique: HashSet<&String> = seen_ids.iter().collect();
    assert_eq!(unique.len(), seen_ids.len(), "a transaction came twice");
    for id in &stored {
        assert!(unique.contains(id), "{id} was skipped while paging");
    }
    assert!(
        seen_ids.iter().all(|id| id.starts_with("list-")),
        "arrivals after the first page showed up in later pages: {seen_ids:?}"
    );

    // Without a limit: 50 per page.
    for i in 0..40 {
        assert_eq!(post(addr, &payload(&format!("more-{i}"), "3")).status, 202);
    }
    let (page, next) = list(addr, "");
    assert_eq!(page.len(), 50);
    assert!(next.is_some());
    let (page, next) = list(addr, "limit=1000");
    assert_eq!(page.len(), 25 + 40 + arrivals);
    assert!(next.is_none());
}

#[test]
fn status_and_creation_time_filters() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    for i in 0..3 {
        let id = format!("done-{i}");
        assert_eq!(post(daemon.addr, &payload(&id, "1")).status, 202);
        wait_processed(daemon.addr, &id, DEADLINE);
    }
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status}: {stderr}");
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    for i in 0..4 {
        assert_eq!(post(addr, &payload(&format!("open-{i}"), "1")).status, 202);
    }

    let (processed, next) = list(addr, "status=PROCESSED");
    assert!(next.is_none());
    assert_eq!(ids(&processed).len(), 3);
    assert!(processed.iter().all(|t| t["status"] == "PROCESSED"
        && t["transaction_id"].as_str().unwrap().starts_with("done-")
        && !t["processed_at"].is_null()));
    let (open, _) = list(addr, "status=PROCESSING&limit=2");
    assert_eq!(open.len(), 2);
    let open = all_pages(addr, "status=PROCESSING&limit=2", || {});
    assert_eq!(open.len(), 4);
    assert!(open.iter().all(|t| t["status"] == "PROCESSING"));
    assert_newest_first(&open);

    // Both statuses together, merged newest first.
    let everything = all_pages(addr, "limit=3", || {});
    assert_eq!(everything.len(), 7);
    assert_newest_first(&everything);

    // created_after / created_before are exclusive bounds on created_at.
    let times: Vec<u64> = everything
        .iter()
        .map(|t| millis(&t["created_at"]))
        .collect();
    let pivot = &everything[3]["created_at"];
    let pivot_ms = millis(pivot);
    let pivot = pivot.as_str().unwrap();
    let expect = |keep: &dyn Fn(u64) -> bool| times.iter().filter(|&&t| keep(t)).count();
    let after = all_pages(addr, &format!("created_after={pivot}&limit=2"), || {});
    assert_eq!(after.len(), expect(&|t| t > pivot_ms));
    assert!(after.iter().all(|t| millis(&t["created_at"]) > pivot_ms));
    let before = all_pages(addr, &format!("created_before={pivot}&limit=2"), || {});
    assert_eq!(before.len(), expect(&|t| t < pivot_ms));
    assert!(before.iter().all(|t| millis(&t["created_at"]) < pivot_ms));
    let (none, next) = list(
        addr,
        &format!("created_after={pivot}&created_before={pivot}"),
    );
    assert!(none.is_empty() && next.is_none());
    // All three filters at once: the first run's transactions are older
    // than the oldest of the second run's.
    let oldest_open = open.last().unwrap()["created_at"].as_str().unwrap();
    let first_run = format!("created_after=2000-01-01T00:00:00Z&created_before={oldest_open}");
    let both = all_pages(
        addr,
        &format!("status=PROCESSED&{first_run}&limit=2"),
        || {},
    );
    assert_eq!(both.len(), 3);
    let (none, _) = list(addr, &format!("status=PROCESSING&{first_run}"));
    assert!(none.is_empty());
}

#[test]
fn bad_parameters_are_422_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let addr = daemon.addr;
    for (query, field) in [
        ("status=DONE", "status"),
        ("status=processing", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01T00:00:00Z", "created_before"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=", "cursor"),
        ("stauts=PROCESSED", "stauts"),
        ("limit=5&limit=6", "limit"),
    ] {
        let response = get(addr, &format!("/v1/transactions?{query}"));
        let body = response.assert_error(422, "invalid_field");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    // The cap itself is accepted.
    assert_eq!(get(addr, "/v1/transactions?limit=1000").status, 200);
    // Listing is read-only.
    let response = request(addr, "POST", "/v1/transactions");
    response.assert_error(405, "method_not_allowed");
    assert_eq!(response.header("allow"), Some("GET"));
    // An id that looks like the listing path is still readable by id.
    assert_eq!(post(addr, &payload("?status=x", "1")).status, 202);
    assert_eq!(get(addr, &transaction_path("?status=x")).status, 200);
}
