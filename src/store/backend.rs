//! Where the database file's bytes live: the seam between redb and the
//! disk, and how one storage is shared by the handles opened on it.
//!
//! - [`StorageOpener`] opens the storage of `<data-dir>/webhookd.redb` as a
//!   redb [`StorageBackend`]. [`FileOpener`], the default, opens the file
//!   exactly as redb's own `Builder::create` and `Builder::open_read_only`
//!   do. Tests pass an opener whose backend fails writes or fsyncs on demand.
//! - `SharedStorage` and `Lease`: a [`Store`](super::Store) opens the
//!   storage once and lends it to every database handle it opens on it
//!   (the writable one, and after a storage error the read-only view and
//!   the attempts to reopen for writing). File locks taken through a lease
//!   are taken once on the storage and kept until the store is dropped, so
//!   this process's handles never exclude each other while every other
//!   process stays excluded, also between one handle and the next.
//!
//! The read-only view served while writes fail is a layer over a lease
//! ([`super::overlay`]).

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// How a [`StorageOpener`] is asked to open the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// For reading only (the schema check before the first writable open):
    /// the file must exist and is never written.
    ReadOnly,
    /// For reading and writing; a missing file is created empty.
    ReadWrite,
}

/// Opens the storage behind the database file. [`Store::open_with`] calls
/// it once per [`Access`] when the store is opened; the storage is then
/// kept for the store's lifetime, across reopens after storage errors.
///
/// [`Store::open_with`]: super::Store::open_with
pub trait StorageOpener: Send + Sync {
    /// Opens the storage for `path` (`<data-dir>/webhookd.redb`).
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>>;
}

/// The default [`StorageOpener`]: redb's [`FileBackend`] on the file,
/// opened with the options redb's `Builder::create` (read-write, created
/// if missing, never truncated) and `Builder::open_read_only` (read-only)
/// use, so locking and everything else behave as with those.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOpener;

impl StorageOpener for FileOpener {
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn StorageBackend>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = match access {
            Access::ReadOnly => OpenOptions::new().read(true).open(path)?,
            // Payment data: a new file is readable by its owner only,
            // whatever the umask.
            Access::ReadWrite => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?,
        };
        Ok(Box::new(FileBackend::new(file).map_err(io::Error::other)?))
    }
}

type Range = (Bound<u64>, Bound<u64>);

/// One storage shared by several database handles of this process, with
/// the file locks they took.
///
/// Invariant: a lock is taken on the inner storage the first time a handle
/// asks for it and released only when the storage is dropped (or when a
/// handle asks for an overlapping range that no handle holds any more).
/// Handles asking for a range another handle holds, in the same mode, get
/// it too: the [`Store`](super::Store) itself makes sure that only one of
/// them reads or writes at a time.
#[derive(Debug)]
pub(crate) struct SharedStorage {
    inner: Box<dyn StorageBackend>,
    locks: Mutex<Vec<HeldLock>>,
}

#[derive(Debug)]
struct HeldLock {
    range: Range,
    shared: bool,
    /// Handles holding it now; 0 means kept only for the next handle.
    users: usize,
}

impl SharedStorage {
    pub(crate) fn new(inner: Box<dyn StorageBackend>) -> Arc<SharedStorage> {
        Arc::new(SharedStorage {
            inner,
            locks: Mutex::new(Vec::new()),
        })
    }
}

impl Drop for SharedStorage {
    fn drop(&mut self) {
        // Releases every lock; nothing uses the storage any more.
        let _ = self.inner.close();
    }
}

/// One database handle's use of a [`SharedStorage`]: what redb is given.
#[derive(Debug)]
pub(crate) struct Lease {
    storage: Arc<SharedStorage>,
    /// Locks this handle took and has not released, with their mode.
    mine: Mutex<Vec<(Range, bool)>>,
}

impl Lease {
    pub(crate) fn new(storage: &Arc<SharedStorage>) -> Lease {
        Lease {
            storage: Arc::clone(storage),
            mine: Mutex::new(Vec::new()),
        }
    }

    fn acquire(&self, range: Range, shared: bool, wait: bool) -> Result<bool, BackendError> {
        let mut locks = lock(&self.storage.locks);
        if let Some(held) = locks
            .iter_mut()
            .find(|h| h.range == range && h.shared == shared)
        {
            held.users += 1;
            lock(&self.mine).push((range, shared));
            return Ok(true);
        }
        let mut i = 0;
        while i < locks.len() {
            if !overlaps(locks[i].range, range) {
                i += 1;
                continue;
            }
            if locks[i].users > 0 {
                // Held by another handle of this process in another shape.
                return if wait {
                    Err(BackendError::Io(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the range is locked by another handle of this process",
                    )))
                } else {
                    Ok(false)
                };
            }
            let stale = locks.remove(i);
            self.storage
                .inner
                .unlock_range(stale.range.0, stale.range.1)?;
        }
        let inner = &self.storage.inner;
        let taken = match (shared, wait) {
            (false, false) => inner.try_lock_range(range.0, range.1)?,
            (true, false) => inner.try_lock_shared_range(range.0, range.1)?,
            (false, true) => inner.lock_range(range.0, range.1).map(|()| true)?,
            (true, true) => inner.lock_shared_range(range.0, range.1).map(|()| true)?,
        };
        if taken {
            locks.push(HeldLock {
                range,
                shared,
                users: 1,
            });
            lock(&self.mine).push((range, shared));
        }
        Ok(taken)
    }

    /// Gives up this handle's use of a lock; the storage keeps it.
    fn release(&self, range: Range, shared: bool) {
        let mut locks = lock(&self.storage.locks);
        if let Some(held) = locks
            .iter_mut()
            .find(|h| h.range == range && h.shared == shared)
        {
            held.users = held.users.saturating_sub(1);
        }
    }
}

impl StorageBackend for Lease {
    fn len(&self) -> Result<u64, io::Error> {
        self.storage.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.storage.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.storage.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.storage.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.storage.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        let mine = std::mem::take(&mut *lock(&self.mine));
        for (range, shared) in mine {
            self.release(range, shared);
        }
        Ok(())
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.acquire((start, end), false, false)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.acquire((start, end), true, false)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.acquire((start, end), false, true).map(|_| ())
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.acquire((start, end), true, true).map(|_| ())
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        let mut mine = lock(&self.mine);
        if let Some(at) = mine.iter().position(|(r, _)| *r == (start, end)) {
            let (range, shared) = mine.remove(at);
            drop(mine);
            self.release(range, shared);
        }
        Ok(())
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        let range = (start, end);
        if lock(&self.storage.locks)
            .iter()
            .any(|h| h.users > 0 && overlaps(h.range, range))
        {
            return Ok(true);
        }
        self.storage.inner.query_lock_range(start, end)
    }
}

/// Whether two lock ranges share a byte.
fn overlaps(a: Range, b: Range) -> bool {
    match (inclusive(a), inclusive(b)) {
        (Some((a_low, a_high)), Some((b_low, b_high))) => a_low <= b_high && b_low <= a_high,
        _ => false,
    }
}

/// A range as `[low, high]`, or `None` if it is empty.
fn inclusive((start, end): Range) -> Option<(u64, u64)> {
    let low = match start {
        Bound::Unbounded => 0,
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.checked_add(1)?,
    };
    let high = match end {
        Bound::Unbounded => u64::MAX,
        Bound::Included(e) => e,
        Bound::Excluded(e) => e.checked_sub(1)?,
    };
    (low <= high).then_some((low, high))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is updated in single assignments or pushes; a
    // panic elsewhere cannot leave one half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ranges_overlap_only_when_they_share_a_byte() {
        let r = |a: Bound<u64>, b: Bound<u64>| (a, b);
        assert!(overlaps(
            r(Bound::Unbounded, Bound::Unbounded),
            r(Bound::Included(5), Bound::Included(5))
        ));
        assert!(!overlaps(
            r(Bound::Unbounded, Bound::Excluded(5)),
            r(Bound::Included(5), Bound::Unbounded)
        ));
        assert!(overlaps(
            r(Bound::Unbounded, Bound::Included(5)),
            r(Bound::Excluded(4), Bound::Unbounded)
        ));
        assert!(!overlaps(
            r(Bound::Excluded(4), Bound::Excluded(5)),
            r(Bound::Unbounded, Bound::Unbounded)
        ));
    }
}
