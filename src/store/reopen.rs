//! The open database, and how it is replaced after a storage fault.
//!
//! After an I/O error redb fails every later access of the file, reads
//! included (only pages still in its cache answer), until the file is
//! reopened; opening repairs the file back to its last durable commit, so
//! nothing acknowledged is lost. That repair writes, so while the fault
//! lasts the open fails. Meanwhile reads are served from a read-only view
//! ([`super::overlay`]) that repairs in memory, never touches the file and
//! keeps it locked; the first reopen that succeeds swaps it for a writable
//! handle again. What the writer does around a reopen (answering 503,
//! taking back a failed commit) is in [`super::writer`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

use super::backend::{Lease, SharedStorage};
use super::overlay::Overlay;
use super::{CACHE_BYTES, StoreError};

/// How long a reopen waits for in-flight reads to let go of the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// The database handle every read and write goes through, and the storage
/// it is opened on.
pub(crate) struct OpenDatabase {
    /// The file's storage, opened once and lent to every handle below.
    storage: Arc<SharedStorage>,
    /// Normally writable; after a storage error that a reopen could not
    /// clear, the read-only view; `None` only if neither could be opened.
    /// Readers hold the lock just long enough to clone the `Arc`, and keep
    /// the clone for the length of one read.
    current: RwLock<Option<Handle>>,
}

/// An open database and whether it may be written.
#[derive(Clone)]
enum Handle {
    Writable(Arc<Database>),
    /// Opened on a sealed [`Overlay`]: every write fails.
    ReadOnlyView(Arc<Database>),
}

impl OpenDatabase {
    /// Wraps the first writable handle opened on `storage`.
    pub(crate) fn new(storage: Arc<SharedStorage>, db: Database) -> OpenDatabase {
        OpenDatabase {
            storage,
            current: RwLock::new(Some(Handle::Writable(Arc::new(db)))),
        }
    }

    /// The database for one read: the writable one, or the read-only view
    /// while writes fail.
    pub(crate) fn for_reads(&self) -> Result<Arc<Database>, StoreError> {
        match &*self.current.read().unwrap_or_else(PoisonError::into_inner) {
            Some(Handle::Writable(db) | Handle::ReadOnlyView(db)) => Ok(Arc::clone(db)),
            None => Err(StoreError::Reopening),
        }
    }

    /// The database for the writer; never the read-only view.
    pub(crate) fn for_writes(&self) -> Result<Arc<Database>, StoreError> {
        match &*self.current.read().unwrap_or_else(PoisonError::into_inner) {
            Some(Handle::Writable(db)) => Ok(Arc::clone(db)),
            _ => Err(StoreError::Reopening),
        }
    }

    /// Opens the file for writing again after a storage error; while that
    /// fails, leaves the read-only view in place (opening it if needed).
    ///
    /// Only the writer thread calls this, with no handle of its own alive.
    /// Reads wait on the slot meanwhile; at most one handle is ever in use.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let mut view = None;
        if let Some(current) = slot.take() {
            // In-flight reads hold clones for the length of one read; the
            // old handle must be idle before another opens the file.
            match current {
                Handle::Writable(db) => match drain(db) {
                    // Dropping closes it; a handle that failed writes nothing.
                    Ok(db) => drop(db),
                    Err(db) => {
                        *slot = Some(Handle::Writable(db));
                        return Err(StoreError::Reopening);
                    }
                },
                Handle::ReadOnlyView(db) => match drain(db) {
                    Ok(db) => view = Some(db),
                    Err(db) => {
                        *slot = Some(Handle::ReadOnlyView(db));
                        return Err(StoreError::Reopening);
                    }
                },
            }
        }
        // An idle view may stay open meanwhile: it never writes, and the
        // pages of the durable commit it reads are not overwritten by an
        // open (redb only writes the header and free pages before the
        // first commit, and nothing commits until the view is dropped).
        match open_writable(&self.storage) {
            Ok(db) => {
                drop(view);
                *slot = Some(Handle::Writable(Arc::new(db)));
                Ok(())
            }
            Err(e) => {
                if view.is_none() {
                    view = open_view(&self.storage)
                        .inspect_err(|e| {
                            tracing::error!(error = %e, "cannot open a read-only view either; reads fail until storage recovers");
                        })
                        .ok();
                    if view.is_some() {
                        tracing::warn!(
                            "serving reads from a read-only view of the last durable commit until the database can be reopened for writing"
                        );
                    }
                }
                *slot = view.map(|db| Handle::ReadOnlyView(Arc::new(db)));
                Err(StoreError::Storage(e))
            }
        }
    }
}

/// Opens a writable database on `storage`: redb's repair of a file left by
/// a crash runs here.
pub(crate) fn open_writable(storage: &Arc<SharedStorage>) -> Result<Database, redb::Error> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(Lease::new(storage))?)
}

/// Opens the read-only view: the file's last durable commit, repaired in
/// memory, sealed before it is returned so nothing is ever written through it.
fn open_view(storage: &Arc<SharedStorage>) -> Result<Database, redb::Error> {
    let overlay = Overlay::new(Lease::new(storage))?;
    let seal = overlay.seal_handle();
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(overlay)?;
    seal.store(true, Ordering::Release);
    Ok(db)
}

/// Waits up to [`REOPEN_WAIT`] for in-flight reads to drop their clones.
fn drain(mut db: Arc<Database>) -> Result<Database, Arc<Database>> {
    let deadline = Instant::now() + REOPEN_WAIT;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Ok(db),
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(shared) => return Err(shared),
        }
    }
}
