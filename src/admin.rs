//! Admin commands on a stopped daemon's data dir: `inspect`, `export`,
//! `check`, `backup`.
//!
//! They open the database the way the daemon does, so a dir still in use
//! by a running webhookd is refused with the same one-line error (redb
//! holds an exclusive lock; there is no online backup), a file left by a
//! crash is repaired first, and a newer schema is refused untouched.
//! `check` first verifies every page's checksum on an in-memory view of
//! the file ([`crate::store::integrity`]).
//!
//! `export`, `check`, `backup` and a migration on open show their progress
//! on stderr when it is a terminal ([`crate::progress_bar`]); their output
//! is the same with or without it.

use std::io::{IsTerminal as _, Read as _, Write};
use std::path::{Path, PathBuf};

use crate::cli::{AdminCommand, ExportFormat};
use crate::progress_bar::TerminalProgress;
use crate::store::integrity::{self, Pages};
use crate::store::{DB_FILE_NAME, FileOpener, OpenError, Progress as _, Store, StoreError};

/// Most problems `check` lists before only counting them.
const MAX_LISTED_PROBLEMS: usize = 20;

/// Bytes `backup` copies between two progress reports.
const BACKUP_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

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
    /// `check-map` works on its files, not on a data dir: it has its own
    /// entry point, [`crate::check_map::run`].
    #[error("check-map needs no data dir; run it as `webhookd check-map FILE SAMPLE`")]
    NotForDataDir,
}

/// Runs one admin command against `data_dir`, writing results to stdout
/// and findings of `check` to stderr; progress goes to stderr if it is a
/// terminal, unless `quiet`.
pub fn run(command: &AdminCommand, data_dir: &Path, quiet: bool) -> Result<(), AdminError> {
    if let AdminCommand::CheckMap { .. } = command {
        return Err(AdminError::NotForDataDir);
    }
    let file = data_dir.join(DB_FILE_NAME);
    if !file.exists() {
        return Err(AdminError::NoDatabase(data_dir.to_owned(), command.verb()));
    }
    // `export` on a terminal shows its lines there: a bar drawn between
    // them would tear them.
    let exports_to_terminal =
        matches!(command, AdminCommand::Export { .. }) && std::io::stdout().is_terminal();
    let progress = TerminalProgress::on_stderr(quiet || exports_to_terminal);
    if let AdminCommand::Backup { dest } = command {
        // Opening repairs a file left by a crash and refuses one in use;
        // closing again leaves the file clean, so the copy needs no repair.
        drop(Store::open_with(data_dir, &FileOpener, &progress)?);
        return backup(&file, dest, data_dir, &progress);
    }
    if matches!(command, AdminCommand::Check)
        && let Pages::Damaged(found) = integrity::verify_pages(data_dir)?
    {
        // Before anything reads the damaged pages as they are.
        eprintln!("webhookd check: pages fail their checksums: {found}");
        return Err(AdminError::Damaged(1));
    }
    let store = Store::open_with(data_dir, &FileOpener, &progress)?;
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
            store.for_each_transaction(&progress, |key, record| match record {
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
                    progress.suspend(|| {
                        eprintln!("webhookd: cannot decode the record at log key {key}: {e}");
                    });
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
        AdminCommand::Check => check(&store, &progress, &mut out)?,
        AdminCommand::Backup { .. } | AdminCommand::CheckMap { .. } => {
            unreachable!("handled above")
        }
    }
    out.flush().map_err(io("stdout"))?;
    Ok(())
}

/// Prints what [`Store::check`] found: the problems (the first
/// [`MAX_LISTED_PROBLEMS`]) to stderr, or the summary to `out`.
fn check(
    store: &Store,
    progress: &TerminalProgress,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let report = store.check(progress)?;
    for problem in report.problems.iter().take(MAX_LISTED_PROBLEMS) {
        eprintln!("webhookd check: {problem}");
    }
    if !report.problems.is_empty() {
        return Err(AdminError::Damaged(report.problems.len()));
    }
    // The count of original bodies only where some are kept (`--payload-map`),
    // and FAILED ones only where there are some (they exist only with delivery).
    let originals = match report.original_bodies {
        0 => String::new(),
        n => format!(", {n} original bodies"),
    };
    let failed = match report.failed {
        0 => String::new(),
        n => format!(", {n} failed"),
    };
    writeln!(
        out,
        "ok: {} transactions ({} processing, {} processed{failed}), {} pending jobs{originals}",
        report.transactions, report.processing, report.processed, report.pending_jobs
    )
    .map_err(|source| AdminError::Io {
        what: "stdout".to_owned(),
        source,
    })
}

/// Copies the closed database file under an exclusive lock on it (the
/// same flock redb takes, so no webhookd can start and write meanwhile);
/// the copy is fsync'd. Progress is counted in bytes of the file.
fn backup(
    file: &Path,
    dest: &Path,
    data_dir: &Path,
    progress: &TerminalProgress,
) -> Result<(), AdminError> {
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
    let size = source
        .metadata()
        .map_err(io(file.display().to_string()))?
        .len();
    progress.start_bytes("copying the database", size);
    let mut bytes = 0;
    loop {
        // A `Take` of the file keeps `io::copy`'s in-kernel copy.
        let copied = std::io::copy(&mut (&mut source).take(BACKUP_CHUNK_BYTES), &mut target)
            .map_err(io(dest.display().to_string()))?;
        if copied == 0 {
            break;
        }
        bytes += copied;
        progress.advance(copied);
    }
    target.sync_all().map_err(io(dest.display().to_string()))?;
    progress.finish();
    println!(
        "backup of {} written to {} ({bytes} bytes)",
        file.display(),
        dest.display()
    );
    Ok(())
}
