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
//! 4. With deliveries: every request the destination received by the cut
//!    has its attempt journaled ([`crate::deliveries::check_journal`]).
//! 5. A fresh server on the file processes every pending job exactly once
//!    ([`crate::fresh`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use webhookd::model::{NewTransaction, Record, Status};
use webhookd::store::{Access, NoProgress, SCHEMA_VERSION, Store};

use crate::deliveries::{self, Received};
use crate::disk::{Disk, DiskOpener};
use crate::workload::{Exchange, Kind, Scenario, id_number, payload, transaction_id};

// The tables these checks read directly (the store has no API for them).
const TOMBSTONES: TableDefinition<u64, (u64, [u8; 32], &str)> =
    TableDefinition::new("id_tombstones");
const ID_HASHES: TableDefinition<(u64, u64), ()> = TableDefinition::new("id_hashes");
const JOBS_BY_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_by_due");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
const ATTEMPTS_OPEN: TableDefinition<u64, u32> = TableDefinition::new("attempts_open");

/// What the ledger says about one id.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    /// When its payload was first sent (ms).
    pub first_sent_ms: Option<u64>,
    /// The earliest moment a 202 for it was read.
    pub acked_at: Option<usize>,
    /// Answers that showed it PROCESSED: (moment read, `processed_at` if shown).
    pub processed: Vec<(usize, Option<u64>)>,
    /// Moments of answers that showed it FAILED.
    pub failed: Vec<usize>,
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
        if ex.shown_status.as_deref() == Some("FAILED") {
            e.failed.push(ex.answered_at);
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
    /// Requests received by the cut, each found journaled; FAILED
    /// transactions; attempts left open (in flight at the cut).
    pub requests_journaled: usize,
    pub failed: usize,
    pub open_attempts: usize,
    /// Jobs the fresh server processed.
    pub processed_after: u64,
}

/// One cut: the scenario it was recorded under, the ledger, its moment.
pub struct Cut<'a> {
    pub scenario: &'static Scenario,
    pub expect: &'a [Expect],
    /// The requests the destination received in the run.
    pub received: &'a [Received],
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
    let (stored, keys) = stored_records(&store)?;
    for (n, record) in &stored {
        same_fields(*n, record)?;
        if record.status == Status::Failed && !cut.scenario.deliver {
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
    found.open_attempts = tables.open_attempts.len();
    as_acknowledged(cut, &stored, &tables, &mut found)?;
    if cut.scenario.deliver {
        let journal = deliveries::check_journal(
            cut.received,
            cut.moment,
            &stored,
            &keys,
            &tables.attempts,
            &tables.open_attempts,
        )?;
        found.requests_journaled = journal.requests;
        found.failed = journal.failed;
    }
    found.processing = stored
        .values()
        .filter(|r| r.status == Status::Processing)
        .count();
    found.processed_after = crate::fresh::run(cut, &opener, dir, &stored, &keys, &tables)?;
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
        ..
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

/// Records and log keys, by id number.
pub type ByNumber = (HashMap<usize, Record>, HashMap<usize, u64>);

/// Every record of the log, and its log key, by id number.
pub fn stored_records(store: &Store) -> Result<ByNumber, String> {
    let mut stored = HashMap::new();
    let mut keys = HashMap::new();
    let mut failure = None;
    store
        .for_each_transaction(&NoProgress, |key, record| match record {
            Ok(record) => {
                if let Some(n) = id_number(&record.transaction.transaction_id) {
                    keys.insert(n, key);
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
    failure.map_or(Ok((stored, keys)), Err)
}

/// The payload `n` was posted with, as parsed.
pub fn canonical(n: usize) -> NewTransaction {
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
    if let Some(at) = e.failed.iter().copied().filter(|&at| at <= moment).min()
        && record.status != Status::Failed
    {
        return Err(format!(
            "{id} was shown FAILED at moment {at} and is {:?} after the cut at {moment}",
            record.status
        ));
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
pub struct Tables {
    /// Id of each tombstone → the end of its window.
    pub tombstones: HashMap<String, u64>,
    tail_ids: usize,
    id_merge_part_way: bool,
    job_rows: usize,
    /// `(log key, attempt)` of every journaled attempt, and of those open.
    attempts: HashSet<(u64, u32)>,
    pub open_attempts: Vec<(u64, u32)>,
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
            let mut attempts = HashSet::new();
            for row in txn.open_table(ATTEMPTS)?.iter()? {
                attempts.insert(row?.0.value());
            }
            let mut open_attempts = Vec::new();
            for row in txn.open_table(ATTEMPTS_OPEN)?.iter()? {
                let (key, attempt) = row?;
                open_attempts.push((key.value(), attempt.value()));
            }
            Ok(Tables {
                tombstones,
                tail_ids,
                id_merge_part_way,
                job_rows,
                attempts,
                open_attempts,
            })
        };
        read().map_err(|e| format!("reading the tables failed: {e}"))
    }
}
