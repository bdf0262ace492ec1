//! Checks on the file one cut left, against what had been answered by the
//! moment of the cut.
//!
//! 1. It opens (redb's repair allowed) and `check` finds it consistent.
//! 2. Every stored transaction is one that was posted, with exactly the
//!    fields of that post (never a conflicting payload), findable by id.
//! 3. Every id answered 202 before the cut is stored, with the status,
//!    `created_at` and `processed_at` any answer before the cut showed; or
//!    retention purged it, which leaves a tombstone whose window started no
//!    sooner than the purge could have; or that tombstone's window could
//!    have ended before the cut.
//! 4. A fresh server on the file processes every pending job exactly once
//!    (its processed counter equals the PROCESSING transactions the file
//!    held), changes no `processed_at` already set, answers redeliveries
//!    of stored and purged ids as duplicates, a changed payload as a
//!    conflict, and stores a new id; the file it leaves passes `check`
//!    with no pending job.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use webhookd::model::{NewTransaction, Record, Status};
use webhookd::store::{Access, NoProgress, SCHEMA_VERSION, Store};

use crate::common::{DEADLINE, now_millis, poll_until};
use crate::disk::{Disk, DiskOpener};
use crate::server::{Client, Server};
use crate::workload::{Exchange, Kind, Scenario, id_number, payload, transaction_id};

// The tables these checks read directly (the store has no API for them).
const TOMBSTONES: TableDefinition<u64, (u64, [u8; 32], &str)> =
    TableDefinition::new("id_tombstones");
const ID_HASHES: TableDefinition<(u64, u64), ()> = TableDefinition::new("id_hashes");
const JOBS_BY_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_by_due");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// What the ledger says about one id.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    /// When its payload was first sent (ms).
    pub first_sent_ms: Option<u64>,
    /// The earliest moment a 202 for it was read.
    pub acked_at: Option<usize>,
    /// Answers that showed it PROCESSED: (moment read, `processed_at` if shown).
    pub processed: Vec<(usize, Option<u64>)>,
    /// Reads that showed its `created_at`: (moment read, ms).
    pub created: Vec<(usize, u64)>,
    /// The earliest moment a read found it gone (purged).
    pub gone_at: Option<usize>,
}

/// The ledger, per id (numbers `0..ids`).
pub fn expectations(exchanges: &[Exchange], ids: usize) -> Vec<Expect> {
    let mut expect = vec![Expect::default(); ids];
    for ex in exchanges {
        let e = &mut expect[ex.id];
        if ex.kind == Kind::Post {
            e.first_sent_ms = Some(e.first_sent_ms.map_or(ex.sent_ms, |ms| ms.min(ex.sent_ms)));
        }
        if ex.kind == Kind::Post && ex.status == 202 {
            e.acked_at = Some(
                e.acked_at
                    .map_or(ex.answered_at, |at| at.min(ex.answered_at)),
            );
        }
        if ex.shown_status.as_deref() == Some("PROCESSED") {
            e.processed.push((ex.answered_at, ex.processed_ms));
        }
        if let Some(created) = ex.created_ms {
            e.created.push((ex.answered_at, created));
        }
        if ex.kind == Kind::Read && ex.status == 404 {
            e.gone_at = Some(
                e.gone_at
                    .map_or(ex.answered_at, |at| at.min(ex.answered_at)),
            );
        }
    }
    expect
}

/// What the checks of one cut found beside a failure.
#[derive(Debug, Default)]
pub struct Found {
    pub needed_repair: bool,
    pub open_time: Duration,
    /// Ids answered 202 before the cut: stored, purged (tombstone), expired.
    pub acked_stored: usize,
    pub acked_purged: usize,
    pub acked_expired: usize,
    /// Stored without a 202 before the cut (in flight, or answered after).
    pub unacked_stored: usize,
    pub processing: usize,
    pub tombstones: usize,
    /// Ids only in the log's tail (after the id merge's watermark), and
    /// whether an id merge was part-way (rows past the watermark).
    pub tail_ids: usize,
    pub id_merge_part_way: bool,
    pub job_rows: usize,
    /// Jobs the fresh server processed.
    pub processed_after: u64,
}

/// One cut: the scenario it was recorded under, the ledger, its moment.
pub struct Cut<'a> {
    pub scenario: &'static Scenario,
    pub expect: &'a [Expect],
    /// The moment of the disk at the cut, and its wall time (ms).
    pub moment: usize,
    pub wall_ms: u64,
}

/// Runs every check on `image`, the file a cut left. `dir` is a scratch
/// data dir. An error says what is wrong.
pub fn check_cut(cut: &Cut<'_>, image: Vec<u8>, dir: &Path) -> Result<Found, String> {
    let mut found = Found::default();
    let disk = Disk::holding(image);
    let opener = DiskOpener(Arc::clone(&disk));
    found.needed_repair = needs_repair(&disk);
    opener.stand_in(dir);
    let started = Instant::now();
    let store =
        Store::open_with(dir, &opener, &NoProgress).map_err(|e| format!("does not open: {e}"))?;
    found.open_time = started.elapsed();
    let report = store
        .check(&NoProgress)
        .map_err(|e| format!("check failed: {e}"))?;
    if !report.problems.is_empty() {
        return Err(format!("check found: {:#?}", report.problems));
    }
    let stored = stored_records(&store)?;
    for (n, record) in &stored {
        same_fields(*n, record)?;
        if !matches!(record.status, Status::Processing | Status::Processed) {
            return Err(format!(
                "{} is {:?}, in runs that deliver nothing",
                transaction_id(*n),
                record.status
            ));
        }
        let read = store
            .get(&transaction_id(*n))
            .map_err(|e| format!("{}: read by id failed: {e}", transaction_id(*n)))?;
        if read.as_ref() != Some(record) {
            return Err(format!(
                "{}: read by id gives {read:?}, the log holds {record:?}",
                transaction_id(*n)
            ));
        }
    }
    drop(store);

    let tables = Tables::read(&disk)?;
    found.tombstones = tables.tombstones.len();
    found.tail_ids = tables.tail_ids;
    found.id_merge_part_way = tables.id_merge_part_way;
    found.job_rows = tables.job_rows;
    as_acknowledged(cut, &stored, &tables, &mut found)?;
    found.processing = stored
        .values()
        .filter(|r| r.status == Status::Processing)
        .count();
    found.processed_after = fresh_server(cut, &opener, dir, &stored, &tables)?;
    Ok(found)
}

/// Every id: stored as answered, or (if answered 202 before the cut)
/// purged with a tombstone no sooner than retention allows, or past that
/// tombstone's window.
fn as_acknowledged(
    cut: &Cut<'_>,
    stored: &HashMap<usize, Record>,
    tables: &Tables,
    found: &mut Found,
) -> Result<(), String> {
    let Cut {
        scenario,
        expect,
        moment,
        wall_ms,
    } = *cut;
    for (n, e) in expect.iter().enumerate() {
        let acked = e.acked_at.is_some_and(|at| at <= moment);
        match stored.get(&n) {
            Some(record) => {
                if let Some(at) = e.gone_at.filter(|&at| at <= moment) {
                    return Err(format!(
                        "{}: a read found it purged at moment {at}, and it is back after the cut at {moment}",
                        transaction_id(n)
                    ));
                }
                if acked {
                    found.acked_stored += 1;
                } else {
                    found.unacked_stored += 1;
                }
                as_answered(scenario, n, e, moment, record)?;
            }
            None if !acked => {}
            None => {
                let sent_ms = e.first_sent_ms.expect("an acknowledged id was sent");
                match tables.tombstones.get(&transaction_id(n)) {
                    Some(&until_ms) => {
                        // The window ends a window after the purge, which
                        // comes a retention after processing, which comes a
                        // delay after the post.
                        if scenario
                            .earliest_expiry_ms(sent_ms)
                            .is_none_or(|earliest| until_ms < earliest)
                        {
                            return Err(format!(
                                "{} was purged too early: tombstone until {until_ms}, sent at {sent_ms}",
                                transaction_id(n)
                            ));
                        }
                        found.acked_purged += 1;
                    }
                    None if scenario
                        .earliest_expiry_ms(sent_ms)
                        .is_some_and(|earliest| earliest <= wall_ms) =>
                    {
                        found.acked_expired += 1;
                    }
                    None => {
                        return Err(format!(
                            "LOST: {} was answered 202 at moment {} (cut at {moment}) and is neither stored nor purged",
                            transaction_id(n),
                            e.acked_at.unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether redb must repair the file before using it (a read-only open
/// refuses such a file).
fn needs_repair(disk: &Arc<Disk>) -> bool {
    if disk.file().is_empty() {
        return false;
    }
    matches!(
        redb::Builder::new().open_read_only_with_backend(disk.backend(Access::ReadOnly)),
        Err(redb::DatabaseError::RepairAborted)
    )
}

/// Every record of the log, by id number.
fn stored_records(store: &Store) -> Result<HashMap<usize, Record>, String> {
    let mut stored = HashMap::new();
    let mut failure = None;
    store
        .for_each_transaction(&NoProgress, |key, record| match record {
            Ok(record) => {
                if let Some(n) = id_number(&record.transaction.transaction_id) {
                    if stored.insert(n, record).is_some() {
                        failure = Some(format!("id number {n} stored twice"));
                    }
                } else {
                    failure = Some(format!("a transaction nobody sent: {record:?}"));
                }
                failure.is_none()
            }
            Err(e) => {
                failure = Some(format!("record at log key {key} does not decode: {e}"));
                false
            }
        })
        .map_err(|e| format!("reading the log failed: {e}"))?;
    failure.map_or(Ok(stored), Err)
}

/// The payload `n` was posted with, as parsed.
fn canonical(n: usize) -> NewTransaction {
    webhookd::model::parse_payload(payload(n, false).as_bytes()).expect("a valid payload")
}

/// Stored fields are exactly those of the id's one payload.
fn same_fields(n: usize, record: &Record) -> Result<(), String> {
    let want = canonical(n);
    let got = &record.transaction;
    let same = got.transaction_id == want.transaction_id
        && got.source_account == want.source_account
        && got.destination_account == want.destination_account
        && got.amount.serialize() == want.amount.serialize()
        && got.currency.as_str() == want.currency.as_str();
    if same {
        Ok(())
    } else {
        Err(format!(
            "{} is stored with other fields: {got:?}, posted {want:?}",
            transaction_id(n)
        ))
    }
}

/// A stored record agrees with every answer given before the cut.
fn as_answered(
    scenario: &Scenario,
    n: usize,
    e: &Expect,
    moment: usize,
    record: &Record,
) -> Result<(), String> {
    let id = transaction_id(n);
    for &(at, processed_ms) in &e.processed {
        if at > moment {
            continue;
        }
        if record.status != Status::Processed {
            return Err(format!(
                "{id} was shown PROCESSED at moment {at} and is {:?} after the cut at {moment}",
                record.status
            ));
        }
        if processed_ms.is_some_and(|ms| record.processed_at_ms != Some(ms)) {
            return Err(format!(
                "{id}: processed_at was {processed_ms:?} at moment {at}, is {:?} after the cut at {moment}",
                record.processed_at_ms
            ));
        }
    }
    for &(at, created_ms) in &e.created {
        if at <= moment && record.created_at_ms != created_ms {
            return Err(format!(
                "{id}: created_at was {created_ms} at moment {at}, is {} after the cut",
                record.created_at_ms
            ));
        }
    }
    if let Some(sent_ms) = e.first_sent_ms
        && record.created_at_ms < sent_ms
    {
        return Err(format!(
            "{id} created at {} before it was sent at {sent_ms}",
            record.created_at_ms
        ));
    }
    if record.status == Status::Processed {
        let due = record.created_at_ms + scenario.delay_ms;
        if record.processed_at_ms.is_none_or(|at| at < due) {
            return Err(format!("{id} processed before it fell due: {record:?}"));
        }
    }
    Ok(())
}

/// What the checks read straight from the file's tables.
struct Tables {
    /// Id of each tombstone → the end of its window.
    tombstones: HashMap<String, u64>,
    tail_ids: usize,
    id_merge_part_way: bool,
    job_rows: usize,
}

impl Tables {
    fn read(disk: &Arc<Disk>) -> Result<Tables, String> {
        let db = redb::Builder::new()
            .open_read_only_with_backend(disk.backend(Access::ReadOnly))
            .map_err(|e| format!("the file the store closed does not open read-only: {e}"))?;
        let read = || -> Result<Tables, redb::Error> {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let version = meta.get("schema_version")?.map(|v| v.value());
            assert_eq!(
                version,
                Some(SCHEMA_VERSION),
                "these checks know schema {SCHEMA_VERSION}"
            );
            let ids_upto = meta.get("ids_complete_upto")?.map_or(0, |v| v.value());
            let mut tombstones = HashMap::new();
            let tombstone_table = txn.open_table(TOMBSTONES)?;
            let mut tombstone_keys = std::collections::HashSet::new();
            for row in tombstone_table.iter()? {
                let (key, value) = row?;
                let (until, _, id) = value.value();
                tombstones.insert(id.to_owned(), until);
                tombstone_keys.insert(key.value());
            }
            let tail_ids = txn
                .open_table(LOG)?
                .range(ids_upto.saturating_add(1)..)?
                .count();
            let mut id_merge_part_way = false;
            for row in txn.open_table(ID_HASHES)?.iter()? {
                let key = row?.0.value().1;
                if key > ids_upto && !tombstone_keys.contains(&key) {
                    id_merge_part_way = true;
                    break;
                }
            }
            let job_rows = txn.open_table(JOBS_BY_DUE)?.len()? as usize;
            Ok(Tables {
                tombstones,
                tail_ids,
                id_merge_part_way,
                job_rows,
            })
        };
        read().map_err(|e| format!("reading the tables failed: {e}"))
    }
}

/// A fresh server on the file: processing, redeliveries, a conflict, a new
/// id; then the file it leaves. Returns how many jobs it processed.
fn fresh_server(
    cut: &Cut<'_>,
    opener: &DiskOpener,
    dir: &Path,
    stored: &HashMap<usize, Record>,
    tables: &Tables,
) -> Result<u64, String> {
    let pending = stored
        .values()
        .filter(|r| r.status == Status::Processing)
        .count() as u64;
    opener.stand_in(dir);
    let server = Server::start(dir, opener.clone(), &["--process-delay", "0s"]);
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
    after_processing(opener, dir, stored, new)?;
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
    opener: &DiskOpener,
    dir: &Path,
    stored: &HashMap<usize, Record>,
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
    let after = stored_records(&store)?;
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
            // Only a delivery fails a transaction; these runs deliver nothing.
            Status::Failed => false,
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
