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
use crate::store::{DB_FILE_NAME, OpenError, Store, StoreError, status_key};

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
            out.write_all(&crate::http::transaction_json(&record))
                .and_then(|()| out.write_all(b"\n"))
                .map_err(io("stdout"))?;
        }
        AdminCommand::Export {
            format: ExportFormat::Jsonl,
        } => {
            let mut failure = None;
            let mut undecodable = 0;
            store.for_each_transaction(|id, record| match record {
                Ok(record) => match out
                    .write_all(&crate::http::transaction_json(&record))
                    .and_then(|()| out.write_all(b"\n"))
                {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                },
                Err(e) => {
                    eprintln!("webhookd: cannot decode transaction {id:?}: {e}");
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

/// Every record decodes; every pending job names a PROCESSING transaction;
/// every PROCESSING transaction has a pending job; the listing and
/// retention indexes hold exactly one row per transaction they cover, with
/// the record's status and times.
fn check(store: &Store, out: &mut impl Write) -> Result<(), CheckFailure> {
    let mut problems = Vec::new();
    let (mut total, mut processed) = (0_u64, 0_u64);
    let mut processing = HashSet::new();
    // id → (status, created_at, processed_at) of every decodable record.
    let mut indexed: HashMap<String, (Status, u64, Option<u64>)> = HashMap::new();
    store.for_each_transaction(|id, record| {
        total += 1;
        match record {
            Ok(record) => {
                if record.status == Status::Processing {
                    processing.insert(id.to_owned());
                } else {
                    processed += 1;
                    if record.processed_at_ms.is_none() {
                        problems.push(format!("{id:?} is PROCESSED without processed_at"));
                    }
                }
                indexed.insert(
                    id.to_owned(),
                    (record.status, record.created_at_ms, record.processed_at_ms),
                );
            }
            Err(e) => problems.push(format!("{id:?} does not decode: {e}")),
        }
        true
    })?;
    let jobs = store.all_jobs()?;
    let mut with_job = HashSet::new();
    for job in &jobs {
        if processing.contains(&job.transaction_id) {
            with_job.insert(job.transaction_id.as_str());
        } else {
            problems.push(format!(
                "job for {:?} has no PROCESSING transaction",
                job.transaction_id
            ));
        }
    }
    for id in &processing {
        if !with_job.contains(id.as_str()) {
            problems.push(format!("{id:?} is PROCESSING but has no pending job"));
        }
    }
    let (mut listed, mut retained) = (HashSet::new(), HashSet::new());
    let mut retention_problems = Vec::new();
    store.for_each_index_row(
        |status, created, id| match indexed.get(id) {
            Some(&(s, c, _)) if status_key(s) == status && c == created => {
                if !listed.insert(id.to_owned()) {
                    problems.push(format!("{id:?} is listed twice"));
                }
            }
            _ => problems.push(format!(
                "listing index row ({status}, {created}, {id:?}) does not match a stored transaction"
            )),
        },
        |processed_ms, id| match indexed.get(id) {
            Some(&(Status::Processed, _, Some(p))) if p == processed_ms => {
                retained.insert(id.to_owned());
            }
            _ => retention_problems.push(format!(
                "retention index row ({processed_ms}, {id:?}) does not match a PROCESSED transaction"
            )),
        },
    )?;
    problems.append(&mut retention_problems);
    for (id, (status, _, _)) in &indexed {
        if !listed.contains(id) {
            problems.push(format!("{id:?} is missing from the listing index"));
        }
        if *status == Status::Processed && !retained.contains(id) {
            problems.push(format!("{id:?} is missing from the retention index"));
        }
    }
    for problem in problems.iter().take(MAX_LISTED_PROBLEMS) {
        eprintln!("webhookd check: {problem}");
    }
    if problems.is_empty() {
        writeln!(
            out,
            "ok: {total} transactions ({} processing, {processed} processed), {} pending jobs",
            processing.len(),
            jobs.len()
        )
        .map_err(CheckFailure::Io)?;
        Ok(())
    } else {
        Err(CheckFailure::Admin(AdminError::Damaged(problems.len())))
    }
}

/// Copies the closed database file under an exclusive lock on it (the
/// same flock redb takes, so no webhookd can start and write meanwhile);
/// the copy is fsync'd.
fn backup(file: &Path, dest: &Path, data_dir: &Path) -> Result<(), AdminError> {
    let io = |what: String| move |source| AdminError::Io { what, source };
    let mut source = std::fs::File::open(file).map_err(io(file.display().to_string()))?;
    if source.try_lock().is_err() {
        return Err(AdminError::Open(OpenError::InUse {
            path: data_dir.to_owned(),
        }));
    }
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
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
