//! `webhookd check`: the indexes against the log they index.

use std::collections::{HashMap, HashSet};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::read::{Snapshot, for_each_in};
use super::schema::{
    ID_HASHES, ID_TOMBSTONES, IDS_INDEXED_UPTO_KEY, JOBS_BY_DUE, LOG, LOG_BY_PROCESSED_AT,
    LOG_BY_STATUS, ROWS_INDEXED_UPTO_KEY, status_key,
};
use super::tail::JobsPick;
use super::{Job, Progress, Store, StoreError};
use crate::model::Status;

/// What [`Store::check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Records in the log.
    pub transactions: u64,
    /// Of which PROCESSING.
    pub processing: u64,
    /// Of which PROCESSED.
    pub processed: u64,
    /// Of which FAILED (delivery gave up).
    pub failed: u64,
    /// Pending jobs: rows and the log's tail.
    pub pending_jobs: usize,
    /// Original bodies kept (`--payload-map`).
    pub original_bodies: u64,
    /// Every inconsistency, one sentence each; empty when all is well.
    pub problems: Vec<String>,
}

/// A record as the checks need it: id, status, `processed_at`.
type Checked = (String, Status, Option<u64>);

impl Store {
    /// Verifies, in one snapshot, that every record decodes and its id is
    /// stored once; every pending job names a PROCESSING transaction and
    /// every PROCESSING transaction has exactly one job; the id index files
    /// every record up to the id merge's watermark and every tombstone
    /// under its id's hash and holds nothing else; a tombstone stands where
    /// no record is; the listing and retention indexes hold exactly one
    /// matching row per transaction they cover; every original body
    /// belongs to a stored transaction and decodes.
    ///
    /// Reports one stage to `progress`, a step per row of the log and of
    /// the job, id, listing and retention indexes.
    pub fn check(&self, progress: &dyn Progress) -> Result<CheckReport, StoreError> {
        let (snapshot, tail_jobs) = self.snapshot_with_tail_jobs(JobsPick::All)?;
        progress.start(
            "checking the log and its indexes",
            rows_to_check(&snapshot)?,
        );
        let mut report = CheckReport::default();
        let (records, undecodable) = read_records(&snapshot, progress, &mut report)?;
        let problems = &mut report.problems;
        let mut jobs: Vec<Job> = keys(&snapshot, JOBS_BY_DUE, progress)?
            .into_iter()
            .map(|(due_ms, log_key)| Job { due_ms, log_key })
            .collect();
        jobs.extend(tail_jobs);
        report.pending_jobs = jobs.len();
        let with_job = check_jobs(&records, &jobs, problems);
        let tombstones = tombstones(&snapshot)?;
        for (key, id) in &tombstones {
            if let Some((stored, _, _)) = records.get(key) {
                problems.push(format!(
                    "tombstone of {id:?} at log key {key}, where {stored:?} is stored"
                ));
            }
        }
        let ids = keys(&snapshot, ID_HASHES, progress)?;
        let in_ids = check_id_rows(
            &records,
            &tombstones,
            &ids,
            &|id| self.id_hash(id),
            problems,
        );
        for (key, id) in &tombstones {
            if !in_ids.contains(key) {
                problems.push(format!("tombstone of {id:?} is missing from the id index"));
            }
        }
        let listed = check_listing_rows(
            &records,
            &keys(&snapshot, LOG_BY_STATUS, progress)?,
            problems,
        );
        let retained = check_retention_rows(
            &records,
            &keys(&snapshot, LOG_BY_PROCESSED_AT, progress)?,
            problems,
        );
        report.original_bodies = super::payloads::check(
            &snapshot,
            &|key| records.contains_key(&key) || undecodable.contains(&key),
            problems,
        )?;
        let ids_upto = snapshot.watermark(IDS_INDEXED_UPTO_KEY)?;
        let rows_upto = snapshot.watermark(ROWS_INDEXED_UPTO_KEY)?;
        for (key, (id, status, _)) in &records {
            if *status == Status::Processing && !with_job.contains(key) {
                problems.push(format!("{id:?} is PROCESSING but has no pending job"));
            }
            if *key <= ids_upto && !in_ids.contains(key) {
                problems.push(format!("{id:?} is missing from the id index"));
            }
            // A PROCESSING entry after the rows watermark gets its listing
            // row with its job's, in the writer's next rows merge.
            let listing_row_due = *key <= rows_upto || *status != Status::Processing;
            if listing_row_due && !listed.contains(key) {
                problems.push(format!("{id:?} is missing from the listing index"));
            }
            if *status == Status::Processed && !retained.contains(key) {
                problems.push(format!("{id:?} is missing from the retention index"));
            }
        }
        progress.finish();
        Ok(report)
    }
}

/// The rows [`Store::check`] reads one by one: the log's and those of the
/// job, id, listing and retention indexes (redb keeps each length).
fn rows_to_check(snapshot: &Snapshot) -> Result<u64, StoreError> {
    [
        snapshot.table(LOG)?.len(),
        snapshot.table(JOBS_BY_DUE)?.len(),
        snapshot.table(ID_HASHES)?.len(),
        snapshot.table(LOG_BY_STATUS)?.len(),
        snapshot.table(LOG_BY_PROCESSED_AT)?.len(),
    ]
    .into_iter()
    .map(|len| len.map_err(StoreError::storage))
    .sum()
}

/// Every key of a table whose rows are keys alone; a step per row.
fn keys<K>(
    snapshot: &Snapshot,
    table: TableDefinition<K, ()>,
    progress: &dyn Progress,
) -> Result<Vec<K>, StoreError>
where
    K: redb::Key + 'static + for<'a> redb::Value<SelfType<'a> = K>,
{
    let mut keys = Vec::new();
    for row in snapshot.table(table)?.iter().map_err(StoreError::storage)? {
        keys.push(row.map_err(StoreError::storage)?.0.value());
        progress.advance(1);
    }
    Ok(keys)
}

/// Each job names a PROCESSING record, once. Returns the log keys with a job.
fn check_jobs(
    records: &HashMap<u64, Checked>,
    jobs: &[Job],
    problems: &mut Vec<String>,
) -> HashSet<u64> {
    let mut with_job = HashSet::new();
    for job in jobs {
        match records.get(&job.log_key) {
            Some((_, Status::Processing, _)) => {
                if !with_job.insert(job.log_key) {
                    problems.push(format!("log key {} has two jobs", job.log_key));
                }
            }
            _ => problems.push(format!(
                "job at log key {} has no PROCESSING transaction",
                job.log_key
            )),
        }
    }
    with_job
}

/// Every tombstone: log key → the id it keeps.
fn tombstones(snapshot: &Snapshot) -> Result<HashMap<u64, String>, StoreError> {
    let mut tombstones = HashMap::new();
    for row in snapshot
        .table(ID_TOMBSTONES)?
        .iter()
        .map_err(StoreError::storage)?
    {
        let (key, value) = row.map_err(StoreError::storage)?;
        tombstones.insert(key.value(), value.value().2.to_owned());
    }
    Ok(tombstones)
}

/// Each `id_hashes` row files a record or a tombstone under its id's hash.
/// Returns the log keys filed.
fn check_id_rows(
    records: &HashMap<u64, Checked>,
    tombstones: &HashMap<u64, String>,
    rows: &[(u64, u64)],
    id_hash: &dyn Fn(&str) -> u64,
    problems: &mut Vec<String>,
) -> HashSet<u64> {
    let mut in_ids = HashSet::new();
    for &(hash, key) in rows {
        let id = records
            .get(&key)
            .map(|(id, _, _)| id)
            .or_else(|| tombstones.get(&key));
        match id {
            Some(id) if id_hash(id) == hash => {
                in_ids.insert(key);
            }
            _ => problems.push(format!(
                "id index row ({hash:#018x}, {key}) does not match the id of a stored transaction or of a tombstone"
            )),
        }
    }
    in_ids
}

/// Each `log_by_status` row lists a record under its status, once.
/// Returns the log keys listed.
fn check_listing_rows(
    records: &HashMap<u64, Checked>,
    rows: &[(u8, u64)],
    problems: &mut Vec<String>,
) -> HashSet<u64> {
    let mut listed = HashSet::new();
    for &(status, key) in rows {
        match records.get(&key) {
            Some((_, s, _)) if status_key(*s) == status => {
                if !listed.insert(key) {
                    problems.push(format!("log key {key} is listed twice"));
                }
            }
            _ => problems.push(format!(
                "listing index row ({status}, {key}) does not match a stored transaction"
            )),
        }
    }
    listed
}

/// Each `log_by_processed_at` row names a PROCESSED record at its
/// `processed_at`. Returns the log keys it holds.
fn check_retention_rows(
    records: &HashMap<u64, Checked>,
    rows: &[(u64, u64)],
    problems: &mut Vec<String>,
) -> HashSet<u64> {
    let mut retained = HashSet::new();
    for &(processed_ms, key) in rows {
        match records.get(&key) {
            Some((_, Status::Processed, Some(at))) if *at == processed_ms => {
                retained.insert(key);
            }
            _ => problems.push(format!(
                "retention index row ({processed_ms}, {key}) does not match a PROCESSED transaction"
            )),
        }
    }
    retained
}

/// Every record of the log, counted into `report` (and its problems):
/// log key → (id, status, `processed_at`) of each one that decodes, and
/// the log keys of those that do not.
fn read_records(
    snapshot: &Snapshot,
    progress: &dyn Progress,
    report: &mut CheckReport,
) -> Result<(HashMap<u64, Checked>, HashSet<u64>), StoreError> {
    let mut records: HashMap<u64, Checked> = HashMap::new();
    let mut key_of_id: HashMap<String, u64> = HashMap::new();
    let mut undecodable: HashSet<u64> = HashSet::new();
    let problems = &mut report.problems;
    for_each_in(snapshot, progress, |key, record| {
        report.transactions += 1;
        match record {
            Ok(record) => {
                let id = record.transaction.transaction_id;
                match record.status {
                    Status::Processing => report.processing += 1,
                    Status::Processed => {
                        report.processed += 1;
                        if record.processed_at_ms.is_none() {
                            problems.push(format!("{id:?} is PROCESSED without processed_at"));
                        }
                    }
                    Status::Failed => {
                        report.failed += 1;
                        if record.delivery.failed_at_ms.is_none() {
                            problems.push(format!("{id:?} is FAILED without failed_at"));
                        }
                    }
                }
                if let Some(other) = key_of_id.insert(id.clone(), key) {
                    problems.push(format!(
                        "{id:?} is stored twice (log keys {other} and {key})"
                    ));
                }
                records.insert(key, (id, record.status, record.processed_at_ms));
            }
            Err(e) => {
                undecodable.insert(key);
                problems.push(format!("record at log key {key} does not decode: {e}"));
            }
        }
        true
    })?;
    Ok((records, undecodable))
}
