//! Admin commands on a stopped daemon's data dir: `inspect`, `export`,
//! `check`, `backup`.
//!
//! They open the database the way the daemon does, so a dir still in use
//! by a running webhookd is refused with the same one-line error (redb
//! holds an exclusive lock; there is no online backup), a file left by a
//! crash is repaired first, and a newer schema is refused untouched.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{AdminCommand, ExportFormat};
use crate::model::Status;
use crate::store::{DB_FILE_NAME, IndexRows, OpenError, Store, StoreError, status_key};

/// Most problems `check` lists before only counting them.
const MAX_LISTED_PROBLEMS: usize = 20;

/// Why an admin command failed (exit code 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// There is no database in the data dir.
    #[error("no database in {0} (nothing to {1})")]
    NoDatabase(PathBuf, &'static str),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("cannot write {what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `inspect` of an id that is not stored.
    #[error("no transaction {0:?} in the database")]
    NotFound(String),
    /// `check` found damage.
    #[error("check found {0} problem(s) (listed above)")]
    Damaged(usize),
    /// `backup` would overwrite a file.
    #[error("{0} already exists; choose a new backup path")]
    BackupExists(PathBuf),
}

/// Runs one admin command against `data_dir`, writing results to stdout
/// and findings of `check` to stderr.
pub fn run(command: &AdminCommand, data_dir: &Path) -> Result<(), AdminError> {
    let file = data_dir.join(DB_FILE_NAME);
    if !file.exists() {
        return Err(AdminError::NoDatabase(data_dir.to_owned(), command.verb()));
    }
    if let AdminCommand::Backup { dest } = command {
        // Opening repairs a file left by a crash and refuses one in use;
        // closing again leaves the file clean, so the copy needs no repair.
        drop(Store::open(data_dir)?);
        return backup(&file, dest, data_dir);
    }
    let store = Store::open(data_dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| AdminError::Io { what, source }
    };
    match command {
        AdminCommand::Inspect { transaction_id } => {
            let record = store
                .get(transaction_id)?
                .ok_or_else(|| AdminError::NotFound(transaction_id.clone()))?;
            out.write_all(&crate::view::transaction_json(&record))
                .and_then(|()| out.write_all(b"\n"))
                .map_err(io("stdout"))?;
        }
        AdminCommand::Export {
            format: ExportFormat::Jsonl,
        } => {
            let mut failure = None;
            let mut undecodable = 0;
            store.for_each_transaction(|key, record| match record {
                Ok(record) => match out
                    .write_all(&crate::view::transaction_json(&record))
                    .and_then(|()| out.write_all(b"\n"))
                {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                },
                Err(e) => {
                    eprintln!("webhookd: cannot decode the record at log key {key}: {e}");
                    undecodable += 1;
                    true
                }
            })?;
            if let Some(e) = failure {
                return Err(io("stdout")(e));
            }
            if undecodable > 0 {
                return Err(AdminError::Damaged(undecodable));
            }
        }
        AdminCommand::Check => check(&store, &mut out).map_err(|e| match e {
            CheckFailure::Admin(e) => e,
            CheckFailure::Io(e) => io("stdout")(e),
        })?,
        AdminCommand::Backup { .. } => unreachable!("handled above"),
    }
    out.flush().map_err(io("stdout"))?;
    Ok(())
}

enum CheckFailure {
    Admin(AdminError),
    Io(std::io::Error),
}

impl From<StoreError> for CheckFailure {
    fn from(e: StoreError) -> Self {
        CheckFailure::Admin(e.into())
    }
}

/// Every record decodes and its id is stored once; every pending job names
/// a PROCESSING transaction and every PROCESSING transaction has a job;
/// the id index files every record up to its completeness mark under its
/// id's hash, and holds nothing else; the listing and retention indexes hold
/// exactly one matching row per transaction they cover.
fn check(store: &Store, out: &mut impl Write) -> Result<(), CheckFailure> {
    let mut problems = Vec::new();
    let (mut total, mut processed, mut processing) = (0_u64, 0_u64, 0_u64);
    // log key → (id, status, processed_at) of every decodable record.
    let mut records: HashMap<u64, (String, Status, Option<u64>)> = HashMap::new();
    let mut key_of_id: HashMap<String, u64> = HashMap::new();
    store.for_each_transaction(|key, record| {
        total += 1;
        match record {
            Ok(record) => {
                let id = record.transaction.transaction_id;
                if record.status == Status::Processing {
                    processing += 1;
                } else {
                    processed += 1;
                    if record.processed_at_ms.is_none() {
                        problems.push(format!("{id:?} is PROCESSED without processed_at"));
                    }
                }
                if let Some(other) = key_of_id.insert(id.clone(), key) {
                    problems.push(format!(
                        "{id:?} is stored twice (log keys {other} and {key})"
                    ));
                }
                records.insert(key, (id, record.status, record.processed_at_ms));
            }
            Err(e) => problems.push(format!("record at log key {key} does not decode: {e}")),
        }
        true
    })?;
    let rows = store.index_rows()?;
    check_indexes(&records, &rows, &|id| store.id_hash(id), &mut problems);
    for problem in problems.iter().take(MAX_LISTED_PROBLEMS) {
        eprintln!("webhookd check: {problem}");
    }
    if problems.is_empty() {
        writeln!(
            out,
            "ok: {total} transactions ({processing} processing, {processed} processed), {} pending jobs",
            rows.jobs.len() + rows.tail_jobs.len()
        )
        .map_err(CheckFailure::Io)?;
        Ok(())
    } else {
        Err(CheckFailure::Admin(AdminError::Damaged(problems.len())))
    }
}

/// The jobs, id index, listing and retention rows against the records
/// (log key → id, status, `processed_at`).
fn check_indexes(
    records: &HashMap<u64, (String, Status, Option<u64>)>,
    rows: &IndexRows,
    id_hash: &dyn Fn(&str) -> u64,
    problems: &mut Vec<String>,
) {
    let mut with_job = HashSet::new();
    for job in rows.jobs.iter().chain(&rows.tail_jobs) {
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
    let mut in_ids = HashSet::new();
    for &(hash, key) in &rows.ids {
        match records.get(&key) {
            Some((id, _, _)) if id_hash(id) == hash => {
                in_ids.insert(key);
            }
            _ => problems.push(format!(
                "id index row ({hash:#018x}, {key}) does not match the id of a stored transaction"
            )),
        }
    }
    let mut listed = HashSet::new();
    for &(status, key) in &rows.by_status {
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
    let mut retained = HashSet::new();
    for &(processed_ms, key) in &rows.by_processed {
        match records.get(&key) {
            Some((_, Status::Processed, Some(at))) if *at == processed_ms => {
                retained.insert(key);
            }
            _ => problems.push(format!(
                "retention index row ({processed_ms}, {key}) does not match a PROCESSED transaction"
            )),
        }
    }
    for (key, (id, status, _)) in records {
        if *status == Status::Processing && !with_job.contains(key) {
            problems.push(format!("{id:?} is PROCESSING but has no pending job"));
        }
        if *key <= rows.indexed_upto && !in_ids.contains(key) {
            problems.push(format!("{id:?} is missing from the id index"));
        }
        // A PROCESSING entry after the rows watermark gets its listing
        // row with its job's, in the writer's next bulk merge.
        let listing_row_due = *key <= rows.rows_upto || *status == Status::Processed;
        if listing_row_due && !listed.contains(key) {
            problems.push(format!("{id:?} is missing from the listing index"));
        }
        if *status == Status::Processed && !retained.contains(key) {
            problems.push(format!("{id:?} is missing from the retention index"));
        }
    }
}

/// Copies the closed database file under an exclusive lock on it (the
/// same flock redb takes, so no webhookd can start and write meanwhile);
/// the copy is fsync'd.
fn backup(file: &Path, dest: &Path, data_dir: &Path) -> Result<(), AdminError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |what: String| move |source| AdminError::Io { what, source };
    let mut source = std::fs::File::open(file).map_err(io(file.display().to_string()))?;
    if source.try_lock().is_err() {
        return Err(AdminError::Open(OpenError::InUse {
            path: data_dir.to_owned(),
        }));
    }
    // Readable by its owner only, like the database, whatever the umask.
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                AdminError::BackupExists(dest.to_owned())
            } else {
                io(dest.display().to_string())(e)
            }
        })?;
    let bytes = std::io::copy(&mut source, &mut target)
        .and_then(|n| target.sync_all().map(|()| n))
        .map_err(io(dest.display().to_string()))?;
    println!(
        "backup of {} written to {} ({bytes} bytes)",
        file.display(),
        dest.display()
    );
    Ok(())
}
