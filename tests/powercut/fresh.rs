//! A fresh server on the file a cut left: it processes every pending job
//! exactly once (its processed counter equals the PROCESSING transactions
//! the file held; with deliveries, its destination gets one request for
//! each), changes no `processed_at` already set, answers redeliveries of
//! stored and purged ids as duplicates, a changed payload as a conflict,
//! and stores a new id; the file it leaves passes `check` with no pending
//! job, FAILED transactions as they were, and every attempt the cut left
//! open recorded `interrupted`.

use std::collections::HashMap;
use std::path::Path;

use webhookd::model::{Record, Status};
use webhookd::store::attempts::AttemptOutcome;
use webhookd::store::{NoProgress, Store};

use crate::common::{DEADLINE, now_millis, poll_until};
use crate::disk::DiskOpener;
use crate::server::{Client, Server};
use crate::sink::Sink;
use crate::verify::{Cut, Tables, stored_records};
use crate::workload::{payload, transaction_id};

/// A fresh server on the file: processing, redeliveries, a conflict, a new
/// id; then the file it leaves. Returns how many jobs it processed.
pub fn run(
    cut: &Cut<'_>,
    opener: &DiskOpener,
    dir: &Path,
    stored: &HashMap<usize, Record>,
    keys: &HashMap<usize, u64>,
    tables: &Tables,
) -> Result<u64, String> {
    let pending = stored
        .values()
        .filter(|r| r.status == Status::Processing)
        .count() as u64;
    let destination = cut.scenario.deliver.then(|| Sink::answering(200));
    let mut flags = vec!["--process-delay".to_owned(), "0s".to_owned()];
    if let Some(sink) = &destination {
        flags.extend(crate::deliveries::flags(&sink.url()));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    opener.stand_in(dir);
    let server = Server::start(dir, opener.clone(), &flags);
    let mut client = Client::new(server.addr);
    redeliveries(cut, &mut client, stored, tables)?;
    // A new id is stored and processed too.
    let new = cut.expect.len() + 1;
    let r = post(&mut client, new, false)?;
    if r.status != 202 || r.json()["duplicate"] != false {
        return Err(format!("a new id answered {} {}", r.status, r.body));
    }
    let expected = pending + 1;
    let processed = poll_until(
        DEADLINE,
        "the fresh server to process every pending job",
        || {
            let pending_now = metric(&mut client, "webhookd_pending_jobs")?;
            let processed = metric(&mut client, "webhookd_transactions_processed_total")?;
            (pending_now == 0 && processed >= expected).then_some(processed)
        },
    );
    if processed != expected {
        return Err(format!(
            "the fresh server processed {processed} jobs; the file held {pending} pending and one was posted"
        ));
    }
    server
        .stop()
        .map_err(|e| format!("the fresh server stopped with: {e}"))?;
    if let Some(sink) = destination {
        // Every request answered 200: one per pending transaction.
        let by_id = sink.by_id();
        if by_id.len() as u64 != expected || by_id.values().any(|seen| seen.len() != 1) {
            return Err(format!(
                "the fresh server's destination got {} requests for {} transactions; {expected} were pending, one each",
                sink.count(),
                by_id.len()
            ));
        }
    }
    after_processing(cut, opener, dir, stored, keys, tables, new)?;
    Ok(processed)
}

fn post(client: &mut Client, n: usize, conflict: bool) -> Result<crate::common::Response, String> {
    client
        .post(&payload(n, conflict))
        .map_err(|e| format!("POST to the fresh server failed: {e}"))
}

/// A value of the fresh server's metrics.
fn metric(client: &mut Client, name: &str) -> Option<u64> {
    let text = client.get("/metrics").ok()?.body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Redeliveries of a few stored ids and of a few purged acknowledged ids
/// (duplicates), and a changed payload under a stored id (a conflict).
fn redeliveries(
    cut: &Cut<'_>,
    client: &mut Client,
    stored: &HashMap<usize, Record>,
    tables: &Tables,
) -> Result<(), String> {
    let mut stored_ids: Vec<usize> = stored.keys().copied().collect();
    stored_ids.sort_unstable();
    for &n in stored_ids
        .iter()
        .step_by((stored_ids.len() / 3).max(1))
        .take(3)
    {
        let r = post(client, n, false)?;
        if r.status != 202 || r.json()["duplicate"] != true {
            return Err(format!(
                "redelivery of stored {} answered {} {}",
                transaction_id(n),
                r.status,
                r.body
            ));
        }
    }
    if let Some(&n) = stored_ids.first() {
        let r = post(client, n, true)?;
        if r.status != 409 {
            return Err(format!(
                "conflict on stored {} answered {} {}",
                transaction_id(n),
                r.status,
                r.body
            ));
        }
    }
    // Only those whose window is open for a while yet.
    let now = now_millis();
    let purged: Vec<usize> = (0..cut.expect.len())
        .filter(|&n| {
            cut.expect[n].acked_at.is_some_and(|at| at <= cut.moment)
                && !stored.contains_key(&n)
                && tables
                    .tombstones
                    .get(&transaction_id(n))
                    .is_some_and(|&until| until > now + 60_000)
        })
        .collect();
    for &n in purged.iter().step_by((purged.len() / 3).max(1)).take(3) {
        let r = post(client, n, false)?;
        let body = r.json();
        if r.status != 202 || body["duplicate"] != true || body["status"] != "PROCESSED" {
            return Err(format!(
                "redelivery of purged {} answered {} {}",
                transaction_id(n),
                r.status,
                r.body
            ));
        }
    }
    Ok(())
}

/// The file the fresh server left: consistent, no pending job, every
/// transaction it held still there with its fields, each PROCESSING one
/// now PROCESSED, each PROCESSED one with its `processed_at` unchanged,
/// and the new id processed.
fn after_processing(
    cut: &Cut<'_>,
    opener: &DiskOpener,
    dir: &Path,
    stored: &HashMap<usize, Record>,
    keys: &HashMap<usize, u64>,
    tables: &Tables,
    new: usize,
) -> Result<(), String> {
    opener.stand_in(dir);
    let store =
        Store::open_with(dir, opener, &NoProgress).map_err(|e| format!("does not reopen: {e}"))?;
    let report = store
        .check(&NoProgress)
        .map_err(|e| format!("check after processing failed: {e}"))?;
    if !report.problems.is_empty() || report.pending_jobs != 0 {
        return Err(format!("after processing, check found {report:#?}"));
    }
    let (after, _) = stored_records(&store)?;
    for &(key, attempt) in &tables.open_attempts {
        let outcome = store
            .attempts_at(key)
            .map_err(|e| format!("reading the attempts of log key {key} failed: {e}"))?
            .into_iter()
            .find(|a| a.number == attempt)
            .and_then(|a| a.stored.outcome);
        if outcome != Some(AttemptOutcome::Interrupted) {
            let id = keys.iter().find(|&(_, &k)| k == key).map(|(&n, _)| n);
            return Err(format!(
                "attempt {attempt} of {:?} was open in the file the cut left, and after a restart it is {outcome:?}, not interrupted",
                id.map(transaction_id)
            ));
        }
    }
    for (n, before) in stored {
        let Some(now) = after.get(n) else {
            return Err(format!(
                "{} vanished while the fresh server ran",
                transaction_id(*n)
            ));
        };
        let same =
            now.transaction == before.transaction && now.created_at_ms == before.created_at_ms;
        let ok = match before.status {
            Status::Processed => {
                same && now.status == Status::Processed
                    && now.processed_at_ms == before.processed_at_ms
            }
            Status::Processing => {
                same && now.status == Status::Processed && now.processed_at_ms.is_some()
            }
            // Only a delivery fails a transaction, and FAILED stays.
            Status::Failed => cut.scenario.deliver && now == before,
        };
        if !ok {
            return Err(format!(
                "{}: before the fresh server {before:?}, after {now:?}",
                transaction_id(*n)
            ));
        }
    }
    if after
        .get(&new)
        .is_none_or(|r| r.status != Status::Processed)
        || after.len() != stored.len() + 1
    {
        return Err(format!(
            "after the fresh server: {} stored, expected {} and the new id",
            after.len(),
            stored.len()
        ));
    }
    Ok(())
}
